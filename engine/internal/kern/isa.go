package kern

import "fmt"

// impl is one instruction-set path. Kernels take raw pointers so the asm and Go versions share
// one signature; see kernelF32Go for the contract.
type impl struct {
	name string
	mr   int // rows of x per micro-kernel call (register block height)
	// f32 computes c[i, 0:32] = Σ_kk a[kk*mr'+i]·b[kk*32+j] for i < mr' (mr' <= mr rows),
	// a: packed x block [k][mr'], b: one fp32 panel [k][32], c: row stride ldc floats.
	f32 func(a, b, c *float32, k, mr, ldc int)
	// b16 is f32 with a bf16 panel [k][32].
	b16 func(a *float32, b *uint16, c *float32, k, mr, ldc int)
	// widen converts n bf16 values to fp32 (n multiple of 32).
	widen func(dst *float32, src *uint16, n int)
	// dotk is the bf16 dot-product kernel (see dot.go): f32 over k2 pairs of bf16, a: packed
	// pairs of x [k2][mr'] (mr' <= dmr), b: one panel of pairs [k2][32].
	dotk  func(a, b *uint32, c *float32, k2, mr, ldc int)
	dmr   int
	dotHW bool // dotk runs VDPBF16PS (else the Go emulation)
	// amx, where set, multiplies dot weights instead of dotk: the AMX micro-kernel (amx.go),
	// in hardware when amxHW (else its Go emulation, in tests).
	amx   amxKernel
	amxHW bool
	// dotAuto: PrecisionAuto multiplies bf16 weights as dot products on this path because they
	// run faster than the fp32 path here (see BF16DotPreferred).
	dotAuto bool
	// cvt rounds n fp32 values to bf16 as bf16Of does (n multiple of 32); nil: use bf16Of.
	cvt  func(dst *uint16, src *float32, n int)
	dot  func(a, b []float32) float32
	axpy func(alpha float32, x, y []float32)
	// fmaLoop runs iters iterations of independent FMAs; returns the flops per iteration.
	fmaLoop func(iters int) int
	// triad computes a[i] = b[i] + s*c[i].
	triad func(a, b, c []float32, s float32)
}

var (
	impls = buildImpls()
	order = []string{"amx", "avx512", "avx2", "generic"} // best first
	cur   = best()
)

// buildImpls collects the generic path and the ones archImpls (per GOARCH) finds usable.
func buildImpls() map[string]*impl {
	m := map[string]*impl{"generic": &genericImpl}
	for _, im := range archImpls() {
		m[im.name] = im
	}
	return m
}

func best() *impl {
	for _, name := range order {
		if im, ok := impls[name]; ok {
			return im
		}
	}
	return &genericImpl
}

// ISA names the active kernel path: "amx" (avx512 with AMX tiles for bf16 dot products),
// "avx512", "avx2" or "generic".
func ISA() string { return cur.name }

// ISAs lists the paths this CPU supports, best first.
func ISAs() []string {
	var s []string
	for _, name := range order {
		if _, ok := impls[name]; ok {
			s = append(s, name)
		}
	}
	return s
}

// SetISA forces the kernel path name (one of ISAs()) and returns a function restoring the
// previous one. It panics on a path the CPU lacks. Meant for tests and benchmarks: it must not
// race with running kernels.
func SetISA(name string) (restore func()) {
	im, ok := impls[name]
	if !ok {
		panic(fmt.Sprintf("kern: ISA %q not supported on this CPU (have %v)", name, ISAs()))
	}
	prev := cur
	cur = im
	return func() { cur = prev }
}

// BF16DotEngine names what multiplies bf16 dot-product weights on the active path: "amx" (AMX
// tiles, TDPBF16PS), "avx512-bf16" (VDPBF16PS), or "emulated" (the exact Go emulation, far
// slower than the fp32 path; "amx-emulated" in tests).
func BF16DotEngine() string {
	switch {
	case cur.amx != nil && cur.amxHW:
		return "amx"
	case cur.amx != nil:
		return "amx-emulated"
	case cur.dotHW:
		return "avx512-bf16"
	}
	return "emulated"
}

// BF16DotPreferred reports whether bf16 dot products beat the fp32 path on this CPU, so that
// the automatic choice (PrecisionAuto in engine/cpu) multiplies bf16 weights that way: with AMX,
// and with AVX512_BF16 on AMD (VDPBF16PS at 1.3-2x the fp32 FMA rate, see docs); not on Intel
// CPUs that have AVX512_BF16 but no usable AMX, where VDPBF16PS ran at 0.6-0.8x of the fp32 path
// (2026-12-07), nor where the bf16 dot products are emulated.
func BF16DotPreferred() bool { return cur.dotAuto }
