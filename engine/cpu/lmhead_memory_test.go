package cpu

import (
	"fmt"
	"runtime"
	"testing"
)

// allocated returns the bytes the Go heap allocated while f ran (runtime.MemStats.TotalAlloc:
// every buffer taken from the allocator, whether freed since or not).
func allocated(f func()) uint64 {
	var a, b runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&a)
	f()
	runtime.ReadMemStats(&b)
	return b.TotalAlloc - a.TotalAlloc
}

// TestMatMulDWInPlace: the weight gradient of a [8192, 512] weight (16 MiB, an LM head's shape
// scaled down) accumulates in place. A fresh backend allocates for it the packed Xᵀ and the
// packed rows of dYᵀ (2 MiB for 64 rows), not a product buffer of the gradient's size, which
// MatMulDW wrote and then added to the gradient before (16 MiB more, and a second pass over
// the gradient). The bound is a quarter of the gradient.
func TestMatMulDWInPlace(t *testing.T) {
	const n, k, m = 8192, 512, 64
	c := New()
	dw := c.Alloc(n, k)
	dy, x := c.Alloc(m, n), c.Alloc(m, k)
	for i := range f32(dy) {
		f32(dy)[i] = float32(i%13) - 6
	}
	for i := range f32(x) {
		f32(x)[i] = float32(i%7) * 0.25
	}
	got := allocated(func() { c.MatMulDW(dw, dy, x) })
	if limit := uint64(n * k * 4 / 4); got > limit {
		t.Fatalf("MatMulDW of a [%d, %d] gradient allocated %d bytes, over %d", n, k, got, limit)
	}
	// And it is the product: spot-check entries against float64 sums.
	g := f32(dw)
	for _, ij := range [][2]int{{0, 0}, {n - 1, k - 1}, {4097, 33}} {
		var s float64
		for r := 0; r < m; r++ {
			s += float64(f32(dy)[r*n+ij[0]]) * float64(f32(x)[r*k+ij[1]])
		}
		if d := float64(g[ij[0]*k+ij[1]]) - s; d > 1e-3 || d < -1e-3 {
			t.Fatalf("dW[%d,%d] = %g, want %g", ij[0], ij[1], g[ij[0]*k+ij[1]], s)
		}
	}
}

// BenchmarkMatMulDWLMHead times the LM head's weight gradient of one chunk of rows (dW [V, D]
// += dYᵀ·X for a vocabulary of 32000 and width 768, the 122M benchmark model's head) in place
// (MatMulDW) against the way it was done before: the product into a buffer of dW's size, then
// added to dW.
func BenchmarkMatMulDWLMHead(b *testing.B) {
	const n, k = 32000, 768
	for _, m := range []int{110, 512} {
		for _, path := range []string{"in-place", "buffer+add"} {
			b.Run(fmt.Sprintf("rows%d/%s", m, path), func(b *testing.B) {
				c := New()
				dw, dy, x := c.Alloc(n, k), c.Alloc(m, n), c.Alloc(m, k)
				for i := range f32(dy) {
					f32(dy)[i] = float32(i%13) - 6
				}
				for i := range f32(x) {
					f32(x)[i] = float32(i%7) * 0.25
				}
				b.ResetTimer()
				for range b.N {
					if path == "in-place" {
						c.MatMulDW(dw, dy, x)
						continue
					}
					xw := c.scratchWeightT(f32(x), m, k)
					tt := c.Alloc(n, k)
					tmp := f32(tt)
					c.thr.MatMulT(tmp, f32(dy), n, xw)
					g := f32(dw)
					c.thr.Parallel(len(g), 1<<14, func(lo, hi int) {
						for i := lo; i < hi; i++ {
							g[i] += tmp[i]
						}
					})
					c.Free(tt)
					c.putScratchWeight(xw)
				}
				b.ReportMetric(2*float64(m)*n*k*float64(b.N)/b.Elapsed().Seconds()/1e9, "GFLOP/s")
			})
		}
	}
}
