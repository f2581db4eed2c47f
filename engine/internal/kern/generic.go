package kern

import "unsafe"

// The pure-Go path: same packed layouts and blocking as the asm paths, plain loops.

var genericImpl = impl{
	name:    "generic",
	mr:      4,
	f32:     kernelF32Go,
	b16:     kernelBF16Go,
	widen:   widenGo,
	dotk:    kernelDotGo,
	dmr:     4,
	dot:     dotGo,
	axpy:    axpyGo,
	fmaLoop: fmaLoopGo,
	triad:   triadGo,
}

// kernelF32Go: a [k][mr] packed rows of x, b [k][32] one panel, c[i*ldc+j] for i<mr, j<32.
// Accumulates each output in k order, starting from zero.
func kernelF32Go(a, b, c *float32, k, mr, ldc int) {
	as := unsafe.Slice(a, k*mr)
	bs := unsafe.Slice(b, k*nr)
	var acc [4][nr]float32 // mr <= 4
	for kk := 0; kk < k; kk++ {
		br := (*[nr]float32)(bs[kk*nr:])
		for i := 0; i < mr; i++ {
			av := as[kk*mr+i]
			ai := &acc[i]
			for j := range ai {
				ai[j] += av * br[j]
			}
		}
	}
	cs := unsafe.Slice(c, (mr-1)*ldc+nr)
	for i := 0; i < mr; i++ {
		copy(cs[i*ldc:i*ldc+nr], acc[i][:])
	}
}

// kernelBF16Go is kernelF32Go with a bf16 panel.
func kernelBF16Go(a *float32, b *uint16, c *float32, k, mr, ldc int) {
	as := unsafe.Slice(a, k*mr)
	bs := unsafe.Slice(b, k*nr)
	var acc [4][nr]float32
	var bw [nr]float32
	for kk := 0; kk < k; kk++ {
		for j, v := range (*[nr]uint16)(bs[kk*nr:]) {
			bw[j] = bf16ToF32(v)
		}
		for i := 0; i < mr; i++ {
			av := as[kk*mr+i]
			ai := &acc[i]
			for j := range ai {
				ai[j] += av * bw[j]
			}
		}
	}
	cs := unsafe.Slice(c, (mr-1)*ldc+nr)
	for i := 0; i < mr; i++ {
		copy(cs[i*ldc:i*ldc+nr], acc[i][:])
	}
}

func widenGo(dst *float32, src *uint16, n int) {
	BF16ToF32(unsafe.Slice(dst, n), unsafe.Slice(src, n))
}

func dotGo(a, b []float32) float32 {
	var s0, s1, s2, s3 float32
	b = b[:len(a)]
	i := 0
	for ; i+4 <= len(a); i += 4 {
		s0 += a[i] * b[i]
		s1 += a[i+1] * b[i+1]
		s2 += a[i+2] * b[i+2]
		s3 += a[i+3] * b[i+3]
	}
	for ; i < len(a); i++ {
		s0 += a[i] * b[i]
	}
	return (s0 + s1) + (s2 + s3)
}

func axpyGo(alpha float32, x, y []float32) {
	y = y[:len(x)]
	for i, v := range x {
		y[i] += alpha * v
	}
}

func fmaLoopGo(iters int) int {
	var a0, a1, a2, a3, a4, a5, a6, a7 float32 = 0, 1, 2, 3, 4, 5, 6, 7
	const m, c = 0.999, 0.001
	for i := 0; i < iters; i++ {
		a0 = a0*m + c
		a1 = a1*m + c
		a2 = a2*m + c
		a3 = a3*m + c
		a4 = a4*m + c
		a5 = a5*m + c
		a6 = a6*m + c
		a7 = a7*m + c
	}
	sink = a0 + a1 + a2 + a3 + a4 + a5 + a6 + a7
	return 16
}

var sink float32

func triadGo(a, b, c []float32, s float32) {
	b = b[:len(a)]
	c = c[:len(a)]
	for i := range a {
		a[i] = b[i] + s*c[i]
	}
}
