//go:build amd64

package kern

//go:generate go run gen_kernels.go

import "golang.org/x/sys/cpu"

// Micro-kernels (gemm_amd64.s, generated): see impl.f32 / impl.b16 for the contract.

//go:noescape
func gemmF32AVX512(a, b, c *float32, k, mr, ldc int)

//go:noescape
func gemmBF16AVX512(a *float32, b *uint16, c *float32, k, mr, ldc int)

//go:noescape
func gemmF32AVX2(a, b, c *float32, k, mr, ldc int)

//go:noescape
func gemmDotBF16AVX512(a, b *uint32, c *float32, k, mr, ldc int) // k: pairs

//go:noescape
func cvtBF16AVX512(dst *uint16, src *float32, n int)

//go:noescape
func gemmBF16AVX2(a *float32, b *uint16, c *float32, k, mr, ldc int)

// Vector helpers (vec_amd64.s).

//go:noescape
func dotAVX512(a, b []float32) float32

//go:noescape
func axpyAVX512(alpha float32, x, y []float32)

//go:noescape
func dotAVX2(a, b []float32) float32

//go:noescape
func axpyAVX2(alpha float32, x, y []float32)

func fmaAVX512(iters int) int

func fmaAVX2(iters int) int

//go:noescape
func triadAVX2(a, b, c *float32, n int, s float32)

//go:noescape
func widenAVX2(dst *float32, src *uint16, n int)

// triadAsm runs the AVX2 triad on the 32-aligned prefix and Go on the rest (bandwidth-bound:
// 256-bit stores saturate DRAM).
func triadAsm(a, b, c []float32, s float32) {
	n := len(a) &^ 31
	if n > 0 {
		triadAVX2(&a[0], &b[0], &c[0], n, s)
	}
	triadGo(a[n:], b[n:len(a)], c[n:len(a)], s)
}

// archImpls returns the AVX2+FMA and AVX-512 (F+BW) paths when the CPU has them; the AVX-512
// path runs bf16 dot-product weights on VDPBF16PS when the CPU has AVX512_BF16, and the amx
// path (AVX-512 otherwise) on AMX tiles where the CPU and the OS allow it (amxOK).
func archImpls() []*impl {
	var s []*impl
	if cpu.X86.HasAVX2 && cpu.X86.HasFMA {
		s = append(s, &impl{
			name:    "avx2",
			mr:      6,
			f32:     gemmF32AVX2,
			b16:     gemmBF16AVX2,
			widen:   widenAVX2,
			dotk:    kernelDotGo,
			dmr:     4,
			dot:     dotAVX2,
			axpy:    axpyAVX2,
			fmaLoop: fmaAVX2,
			triad:   triadAsm,
		})
		if cpu.X86.HasAVX512F && cpu.X86.HasAVX512BW {
			im := &impl{
				name:    "avx512",
				mr:      14,
				f32:     gemmF32AVX512,
				b16:     gemmBF16AVX512,
				widen:   widenAVX2,
				dotk:    kernelDotGo,
				dmr:     4,
				dot:     dotAVX512,
				axpy:    axpyAVX512,
				fmaLoop: fmaAVX512,
				triad:   triadAsm,
			}
			if cpu.X86.HasAVX512BF16 {
				im.dotk, im.dmr, im.dotHW, im.cvt = gemmDotBF16AVX512, 14, true, cvtBF16AVX512
				im.dotAuto = dotAutoVDPBF16(cpuVendor())
			}
			s = append(s, im)
			if amxOK {
				a := *im
				a.name, a.amx, a.amxHW, a.dotAuto = "amx", amxDotBF16, true, true
				s = append(s, &a)
			}
		}
	}
	return s
}

// dotAutoVDPBF16 is the automatic choice on a CPU whose bf16 dot products run on VDPBF16PS: on
// AMD (Zen 4 and later) they run at 1.3-2x the fp32 path and are chosen; on Intel (whose
// AVX512_BF16 CPUs without AMX, or with AMX refused, ran them at 0.6-0.8x of the fp32 path,
// issue 36) and on any other vendor they are not.
func dotAutoVDPBF16(vendor string) bool { return vendor == "AuthenticAMD" }
