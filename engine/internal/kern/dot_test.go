package kern

import (
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"testing"
)

// roundBF16 returns src rounded to bf16 as the dot path rounds x (bf16Of), widened back.
func roundBF16(src []float32) []float32 {
	out := make([]float32, len(src))
	for i, v := range src {
		out[i] = bf16ToF32(bf16Of(v))
	}
	return out
}

// TestDotEmulation checks the Go emulation of VDPBF16PS (dotStep, kernelDotGo) and of
// VCVTNE2PS2BF16 (bf16Of) against the hardware bit for bit, over magnitudes that reach the
// denormal range (where the instruction flushes sums and ignores denormal inputs), for every
// row count of the kernel. It needs a CPU with AVX512_BF16.
func TestDotEmulation(t *testing.T) {
	restore := SetISA(ISAs()[0])
	defer restore()
	if !HasBF16Dot() {
		t.Skipf("this CPU has no AVX512_BF16 (kernel path %s): the hardware the emulation is checked against is absent; TestMatMulDot still checks the emulation against the float64 oracle", ISA())
	}
	r := rand.New(rand.NewPCG(7, 8))
	scaled := func(lo, hi int) float32 {
		return float32(r.NormFloat64()) * float32(math.Ldexp(1, lo+r.IntN(hi-lo)))
	}
	pair := func(lo, hi int) uint32 {
		return uint32(bf16Of(scaled(lo, hi))) | uint32(bf16Of(scaled(lo, hi)))<<16
	}
	for _, rng := range [][2]int{{-8, 8}, {-70, -50}, {-140, -100}, {100, 127}} {
		for mr := 1; mr <= cur.dmr; mr++ {
			for _, k2 := range []int{1, 2, 7, 64} {
				a := make([]uint32, k2*mr)
				b := make([]uint32, k2*nr)
				for i := range a {
					a[i] = pair(rng[0], rng[1])
				}
				for i := range b {
					b[i] = pair(-20, 20)
				}
				got := make([]float32, mr*nr)
				cur.dotk(&a[0], &b[0], &got[0], k2, mr, nr)
				for i := 0; i < mr; i++ {
					col := make([]uint32, k2) // row i of a alone: the emulation with mr = 1
					for kk := range col {
						col[kk] = a[kk*mr+i]
					}
					want := make([]float32, nr)
					kernelDotGo(&col[0], &b[0], &want[0], k2, 1, nr)
					for j := range want {
						if math.Float32bits(got[i*nr+j]) != math.Float32bits(want[j]) {
							t.Fatalf("range 2^%v, mr=%d k2=%d: c[%d,%d] = %v (%#x) in hardware, %v (%#x) emulated",
								rng, mr, k2, i, j, got[i*nr+j], math.Float32bits(got[i*nr+j]), want[j], math.Float32bits(want[j]))
						}
					}
				}
			}
		}
	}
	// Directed cases at the edge of the normal range, each two k pairs (odd k first in each):
	// the first puts v in the sum, the second adds a product. The fp32 sum is flushed when it is
	// tiny after rounding to 24 bits (2^-126 - 0.75·2^-150 -> 2^-126 - 2^-150: flushed), kept
	// when it rounds up to 2^-126; a product below the normal range is not flushed on its own.
	for _, d := range [][3]float32{ // v, then x·y
		{0x1p-126, 1.5 * 0x1p-76, -0x1p-75},  // 2^-126 - 0.75·2^-150: flushed
		{0x1p-126, 1.25 * 0x1p-76, -0x1p-75}, // 2^-126 - 0.625·2^-150: flushed
		{0x1p-126, 0x1p-76, -0x1p-75},        // 2^-126 - 0.5·2^-150: a tie, up to 2^-126
		{0x1p-126, 0.5 * 0x1p-76, -0x1p-75},  // 2^-126 - 0.25·2^-150: 2^-126
		{0x1p-126, -0x1p-64, 0x1p-63},        // 2^-126 - 2^-127: flushed (fused)
		{-0x1p-126, 0x1p-76, 0x1p-75},        // the same, negative: a tie, to -2^-126
	} {
		a := []uint32{uint32(bf16Of(1)) << 16, uint32(bf16Of(d[1])) << 16}
		b := make([]uint32, 2*nr)
		for j := 0; j < nr; j++ {
			b[j] = uint32(bf16Of(d[0])) << 16
			b[nr+j] = uint32(bf16Of(d[2])) << 16
		}
		got := make([]float32, nr)
		cur.dotk(&a[0], &b[0], &got[0], 2, 1, nr)
		want := dotStep(dotStep(0, a[0], b[0]), a[1], b[nr])
		if math.Float32bits(got[0]) != math.Float32bits(want) {
			t.Errorf("%g + %g·%g: %g (%#x) in hardware, %g (%#x) emulated", d[0], d[1], d[2], got[0], math.Float32bits(got[0]), want, math.Float32bits(want))
		}
	}
	// The conversion: random bit patterns (every class: zeros, denormals, normals, Inf, NaN).
	src := make([]float32, 32*1000)
	for i := range src {
		src[i] = math.Float32frombits(r.Uint32())
		if i%5 == 0 {
			src[i] = math.Float32frombits(r.Uint32() & 0x807fffff) // denormal or zero
		}
	}
	got := make([]uint16, len(src))
	cur.cvt(&got[0], &src[0], len(src))
	for i, v := range src {
		if want := bf16Of(v); got[i] != want {
			t.Fatalf("bf16 of %#x: %#x in hardware, %#x emulated", math.Float32bits(v), got[i], want)
		}
	}
}

// TestDotStepByHand: one lane worked by hand, the order (odd k first) and the flushing.
func TestDotStepByHand(t *testing.T) {
	bf := func(v float32) uint32 { return uint32(bf16Of(v)) }
	for _, tc := range []struct {
		name string
		acc  float32
		a, b uint32 // lo: even k, hi: odd k
		want float32
	}{
		// 1 + 3·5 + 2·0.5 = 17
		{"small integers", 1, bf(2) | bf(3)<<16, bf(0.5) | bf(5)<<16, 17},
		// Odd k first: 2^24 + 1·1 is a tie, to even: 2^24; then + 2·1: 2^24 + 2. Even k first
		// would give 2^24 + 2, then + 1: a tie between 2^24+2 and 2^24+4, to even: 2^24 + 4.
		{"odd k first, ties to even", 1 << 24, bf(2) | bf(1)<<16, bf(1) | bf(1)<<16, 1<<24 + 2},
		// A denormal bf16 input counts as zero: 0x0001 is the smallest bf16 denormal.
		{"denormal input", 0, 0x0001 | bf(1)<<16, bf(1) | bf(0)<<16, 0},
		// 2^-70·2^-70 is exact in the sum's float64 but denormal in fp32: flushed to zero.
		{"denormal sum flushed", 0, bf(0x1p-70), bf(0x1p-70), 0},
		// 2^-63·2^-63 = 2^-126 is the smallest normal: kept.
		{"smallest normal kept", 0, bf(0x1p-63), bf(0x1p-63), 0x1p-126},
		// 2^-126 + (-1.5·2^-76)·2^-75 = 2^-126 - 0.75·2^-150 rounds (24 bits) to 2^-126 - 2^-150:
		// tiny after rounding, flushed (rounding in fp32's denormal steps first would give 2^-126).
		{"tiny after rounding", 0x1p-126, bf(1.5*0x1p-76) << 16, bf(-0x1p-75) << 16, 0},
		// 2^-126 - 0.5·2^-150 is a tie between 2^-126 - 2^-150 (odd) and 2^-126: up, kept.
		{"tie up to the smallest normal", 0x1p-126, bf(0x1p-76) << 16, bf(-0x1p-75) << 16, 0x1p-126},
	} {
		if got := dotStep(tc.acc, tc.a, tc.b); got != tc.want {
			t.Errorf("%s: dotStep = %v, want %v", tc.name, got, tc.want)
		}
	}
}

// TestMatMulDot: bf16 dot-product weights on every ISA — close to the float64 oracle on the
// bf16-rounded operands, and the same bits on every path and thread count (the hardware kernel
// and the emulation agree exactly; the amx path among the AMX paths); MatMulT, MatMuls, the transposed and bf16-bits
// constructors and Repack agree with the plain ones.
func TestMatMulDot(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	type key struct {
		amx     bool // the AMX paths sum in their own order (amx.go): compared among themselves
		m, n, k int
	}
	first := map[key][]float32{} // bits of the first ISA's result
	for _, isa := range ISAs() {
		restore := SetISA(isa)
		for _, n := range []int{1, 31, 33, 100} {
			for _, k := range []int{1, 2, 17, 300} {
				src := randF32(rand.New(rand.NewPCG(uint64(n), uint64(k))), n*k) // the same on every ISA
				w := Threads(0).NewWeightDot(src, n, k)
				unp := make([]float32, n*k)
				w.Unpack(unp)
				if want := roundBF16(src); !slices.Equal(unp, want) {
					t.Fatalf("%s n=%d k=%d: Unpack of a dot weight is not its values rounded to bf16", isa, n, k)
				}
				for _, m := range []int{1, 3, 4, 5, 14, 15, 33} {
					x := randF32(r, m*k)
					got := make([]float32, m*n)
					for i := range got {
						got[i] = float32(math.NaN())
					}
					MatMul(got, x, m, w)
					want := make([]float32, m*n)
					xr := roundBF16(x)
					MatMulRef(want, xr, m, w)
					name := fmt.Sprintf("%s m=%d n=%d k=%d", isa, m, n, k)
					checkClose(t, name, got, want, xr, m, w)
					// x transposed gives the same bits.
					xt := make([]float32, m*k)
					for i := 0; i < m; i++ {
						for c := 0; c < k; c++ {
							xt[c*m+i] = x[i*k+c]
						}
					}
					gt := make([]float32, m*n)
					MatMulT(gt, xt, m, w)
					if !slices.Equal(gt, got) {
						t.Fatalf("%s: MatMulT bits differ from MatMul", name)
					}
				}
				// Every ISA gives the same bits on a fixed x.
				xf := make([]float32, 5*k)
				for i := range xf {
					xf[i] = float32(math.Sin(float64(i)))
				}
				got := make([]float32, 5*n)
				MatMul(got, xf, 5, w)
				kk := key{cur.amx != nil, 5, n, k}
				if prev, ok := first[kk]; ok && !slices.Equal(prev, got) {
					t.Fatalf("%s n=%d k=%d: bits differ from %s's", isa, n, k, ISAs()[0])
				}
				first[kk] = got

				// The transposed and bf16-bits constructors, and Repack, build the same weight.
				tr := make([]float32, n*k)
				for j := 0; j < n; j++ {
					for c := 0; c < k; c++ {
						tr[c*n+j] = src[j*k+c]
					}
				}
				bits := make([]uint16, n*k)
				for i, v := range src {
					bits[i] = bf16Of(v)
				}
				re := Threads(0).NewWeightDot(randF32(r, n*k), n, k)
				re.Repack(src)
				for name, o := range map[string]*Weight{"NewWeightDotT": Threads(0).NewWeightDotT(tr, k, n),
					"NewWeightDotBF16": Threads(0).NewWeightDotBF16(bits, n, k), "Repack": re} {
					if !slices.Equal(o.dp, w.dp) {
						t.Fatalf("%s n=%d k=%d: %s packs differently from NewWeightDot", isa, n, k, name)
					}
				}
			}
		}
		restore()
	}
}

// TestMatMulsDot: several dot weights in one call, or dot weights mixed with fp32 ones, give
// each one's MatMul bits.
func TestMatMulsDot(t *testing.T) {
	r := rand.New(rand.NewPCG(9, 10))
	k := 70
	ws := []*Weight{Threads(0).NewWeightDot(randF32(r, 96*k), 96, k), Threads(0).NewWeightDot(randF32(r, 7*k), 7, k)}
	for _, m := range []int{1, 16, 20} {
		for _, thr := range []Threads{1, 2, 3} {
			x := randF32(r, m*k)
			ys := [][]float32{make([]float32, m*96), make([]float32, m*7)}
			thr.MatMuls(ys, x, m, ws)
			for i, w := range ws {
				alone := make([]float32, m*w.N())
				MatMul(alone, x, m, w)
				if !slices.Equal(alone, ys[i]) {
					t.Fatalf("m=%d threads %d: weight %d differs from its own MatMul", m, thr, i)
				}
			}
		}
	}
	// A dot weight mixed with an fp32 one: each gets its own MatMul's bits.
	mixed := []*Weight{NewWeightF32(randF32(r, 5*k), 5, k), ws[0]}
	x := randF32(r, 3*k)
	ys := [][]float32{make([]float32, 3*5), make([]float32, 3*96)}
	Threads(0).MatMuls(ys, x, 3, mixed)
	for i, w := range mixed {
		alone := make([]float32, 3*w.N())
		MatMul(alone, x, 3, w)
		if !slices.Equal(alone, ys[i]) {
			t.Fatalf("mixed: weight %d differs from its own MatMul", i)
		}
	}
}
