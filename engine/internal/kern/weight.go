package kern

import (
	"fmt"
	"unsafe"
)

// nr is the panel width: the number of W rows (= output columns) packed side by side. Every ISA
// uses the same packed layout, so SetISA can switch paths on existing weights.
const nr = 32

// Weight is a linear layer weight W[N,K] (row-major, Hugging Face nn.Linear layout) for
// y = x·Wᵀ, stored packed in column panels of nr=32 rows of W, k-major:
//
//	panel p, element (kk, j) = W[p*32+j, kk] at index (p*K + kk)*32 + j   ([ceil(N/32)][K][32], zero padded)
//
// so the kernels stream each panel as one contiguous block. fp32 weights live in f32; bf16
// weights live in b16 (bit patterns, half the bytes) and are widened to fp32 in the kernel.
// A Weight is immutable after construction and safe for concurrent use.
type Weight struct {
	n, k int
	np   int       // number of panels, ceil(n/nr)
	f32  []float32 // [np][k][nr] or nil
	b16  []uint16  // [np][k][nr] or nil
	dp   []uint32  // bf16 dot-product layout [np][k2p][nr] (see dot.go) or nil
}

// NewWeightF32 packs the row-major fp32 matrix w[n,k] (copied) into a Weight.
func NewWeightF32(w []float32, n, k int) *Weight { return Threads(0).NewWeightF32(w, n, k) }

// NewWeightF32 is the package-level NewWeightF32 packing on at most t chunks at a time.
func (t Threads) NewWeightF32(w []float32, n, k int) *Weight {
	wt := &Weight{n: n, k: k, np: (n + nr - 1) / nr}
	wt.f32 = newPanels(t, w, n, k)
	return wt
}

// NewWeightBF16 packs the row-major bf16 matrix w[n,k] (bit patterns, copied) into a Weight that
// keeps bf16 in memory.
func NewWeightBF16(w []uint16, n, k int) *Weight { return Threads(0).NewWeightBF16(w, n, k) }

// NewWeightBF16 is the package-level NewWeightBF16 packing on at most t chunks at a time.
func (t Threads) NewWeightBF16(w []uint16, n, k int) *Weight {
	wt := &Weight{n: n, k: k, np: (n + nr - 1) / nr}
	wt.b16 = newPanels(t, w, n, k)
	return wt
}

// newPanels packs the row-major matrix w[n,k] into fresh panels [ceil(n/nr)][k][nr], asking
// for huge pages.
func newPanels[T float32 | uint16](t Threads, w []T, n, k int) []T {
	checkShape(len(w), n, k)
	dst := make([]T, (n+nr-1)/nr*k*nr)
	if len(dst) > 0 {
		adviseHuge(unsafe.Pointer(&dst[0]), int(unsafe.Sizeof(dst[0]))*len(dst))
	}
	packPanels(t, dst, w, n, k)
	return dst
}

func checkShape(l, n, k int) {
	if n < 0 || k < 0 || l != n*k {
		panic(fmt.Sprintf("kern: weight of %d values for shape [%d,%d]", l, n, k))
	}
}

// packPanels writes row-major src[n,k] into dst [ceil(n/nr)][k][nr] (dst pre-zeroed).
func packPanels[T float32 | uint16](t Threads, dst, src []T, n, k int) {
	t.Parallel(n, 64, func(lo, hi int) {
		for j := lo; j < hi; j++ {
			p, jj := j/nr, j%nr
			row := src[j*k : j*k+k]
			base := p*k*nr + jj
			for kk, v := range row {
				dst[base+kk*nr] = v
			}
		}
	})
}

// N is the number of output features (rows of W).
func (w *Weight) N() int { return w.n }

// K is the number of input features (columns of W).
func (w *Weight) K() int { return w.k }

// BF16 reports whether the weight is stored as bf16 (widened to fp32 in the kernel, or a bf16
// dot-product weight).
func (w *Weight) BF16() bool { return w.b16 != nil || w.dp != nil }

// Bytes is the number of bytes of weight storage MatMul streams per call (padding included).
func (w *Weight) Bytes() int64 {
	switch {
	case w.b16 != nil:
		return int64(len(w.b16)) * 2
	case w.dp != nil:
		return int64(len(w.dp)) * 4
	}
	return int64(len(w.f32)) * 4
}

// Unpack writes W as row-major fp32 [n,k] into dst (len(dst) >= n*k).
func (w *Weight) Unpack(dst []float32) {
	n, k := w.n, w.k
	if len(dst) < n*k {
		panic(fmt.Sprintf("kern: Unpack into %d values, need %d", len(dst), n*k))
	}
	for j := 0; j < n; j++ {
		p, jj := j/nr, j%nr
		base := p*k*nr + jj
		row := dst[j*k : j*k+k]
		if w.dp != nil {
			base = p*w.k2p()*nr + jj
			for kk := range row {
				pair := w.dp[base+kk/2*nr]
				row[kk] = bf16ToF32(uint16(pair >> (16 * (kk % 2))))
			}
		} else if w.b16 != nil {
			for kk := range row {
				row[kk] = bf16ToF32(w.b16[base+kk*nr])
			}
		} else {
			for kk := range row {
				row[kk] = w.f32[base+kk*nr]
			}
		}
	}
}

// NewWeightF32T packs the transpose of the row-major fp32 matrix a[k,n] as a Weight of shape
// [n,k] (W = aᵀ), without materialising the transpose: panel rows are contiguous runs of a.
// The training path uses it for x·Wᵀ products whose right operand is an activation or a
// weight read the other way round (dX = dY·W, dW = dYᵀ·X).
func NewWeightF32T(a []float32, k, n int) *Weight { return Threads(0).NewWeightF32T(a, k, n) }

// NewWeightF32T is the package-level NewWeightF32T packing on at most t chunks at a time.
func (t Threads) NewWeightF32T(a []float32, k, n int) *Weight {
	checkShape(len(a), k, n)
	wt := &Weight{n: n, k: k, np: (n + nr - 1) / nr}
	wt.f32 = make([]float32, wt.np*k*nr)
	t.RepackT(wt, a)
	return wt
}

// Repack overwrites an fp32 or bf16 dot-product Weight [n,k] with the row-major matrix w[n,k]
// (same shape), reusing its storage. It must not run concurrently with a MatMul reading the
// weight.
func (w *Weight) Repack(src []float32) { Threads(0).Repack(w, src) }

// Repack is w.Repack(src) packing on at most t chunks at a time.
func (t Threads) Repack(w *Weight, src []float32) {
	checkShape(len(src), w.n, w.k)
	switch {
	case w.dp != nil:
		t.repackDot(w, src)
	case w.f32 != nil:
		packPanels(t, w.f32, src, w.n, w.k)
	default:
		panic("kern: Repack of a bf16 weight")
	}
}

// RepackT overwrites an fp32 or bf16 dot-product Weight [n,k] with the transpose of the row-major matrix a[k,n],
// reusing its storage (see NewWeightF32T).
func (w *Weight) RepackT(a []float32) { Threads(0).RepackT(w, a) }

// RepackT is w.RepackT(a) packing on at most t chunks at a time.
func (t Threads) RepackT(w *Weight, a []float32) {
	n, k := w.n, w.k
	checkShape(len(a), k, n)
	if w.dp != nil {
		t.repackDotT(w, a)
		return
	}
	if w.f32 == nil {
		panic("kern: RepackT of a bf16 weight")
	}
	t.Parallel(w.np*k, 256, func(lo, hi int) {
		for it := lo; it < hi; it++ {
			p, kk := it/k, it%k
			j0 := p * nr
			cols := min(nr, n-j0)
			dst := w.f32[it*nr : it*nr+nr]
			copy(dst, a[kk*n+j0:kk*n+j0+cols])
			clear(dst[cols:])
		}
	})
}
