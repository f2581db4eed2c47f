package cuda

import (
	"fmt"
	"math"
	"sort"
	"unsafe"

	"github.com/prolong-rl/prolong/engine"
)

// maxHeadDim is the largest head dim the attention kernels hold in registers (32 lanes x 8).
const maxHeadDim = 256

// UploadParam implements engine.TrainBackend: an fp32 parameter (with a bf16 copy made on
// demand for BF16Matmul).
func (b *Backend) UploadParam(data []float32, shape ...int) (*engine.Tensor, error) {
	t, err := b.Upload(engine.F32, data, false, shape...)
	if err != nil {
		return nil, err
	}
	devBuf(t).param = true
	return t, nil
}

// MatMulDX implements engine.TrainBackend: dx[M,K] = dy[M,N]·w[N,K]; column-major
// dxᵀ[K,M] = wᵀ[K,N]·dyᵀ[N,M], with w stored as wᵀ column-major (op N).
func (b *Backend) MatMulDX(dx, dy, w *engine.Tensor) {
	m, n, k := dy.Rows(), dy.Cols(), w.Shape[1]
	if w.Shape[0] != n || dx.Cols() != k || dx.Rows() != m {
		panic(fmt.Sprintf("cuda: matmul dx shapes dx %v dy %v w %v", dx.Shape, dy.Shape, w.Shape))
	}
	if !b.enter() {
		b.leave()
		return
	}
	defer b.leave()
	g := gemm{transA: opN, transB: opN, m: k, n: m, k: n, lda: k, ldb: n, c: uint64(ptr(dx)), cType: dtF32, ldc: k, compute: computeF32}
	if b.useBF16(w) {
		g.a, g.aType = uint64(b.weightBF16(w)), dtBF16
		g.b, g.bType = uint64(b.bf16Of(dy)), dtBF16
	} else {
		g.a, g.aType = uint64(ptr(w)), dtF32
		g.b, g.bType = uint64(ptr(dy)), dtF32
	}
	b.gemm("MatMulDX", g)
}

// MatMulDW implements engine.TrainBackend: dw[N,K] += dy[M,N]ᵀ·x[M,K]; column-major
// dwᵀ[K,N] += xᵀ[K,M]·dy[M,N], dy stored as dyᵀ column-major (op T), beta 1.
func (b *Backend) MatMulDW(dw, dy, x *engine.Tensor) {
	m, n, k := dy.Rows(), dy.Cols(), x.Cols()
	if x.Rows() != m || dw.Rows() != n || dw.Cols() != k {
		panic(fmt.Sprintf("cuda: matmul dw shapes dw %v dy %v x %v", dw.Shape, dy.Shape, x.Shape))
	}
	if !b.enter() {
		b.leave()
		return
	}
	defer b.leave()
	g := gemm{transA: opN, transB: opT, m: k, n: n, k: m, lda: k, ldb: n, beta: 1, c: uint64(ptr(dw)), cType: dtF32, ldc: k, compute: computeF32}
	if b.opts.BF16Matmul {
		g.a, g.aType = uint64(b.bf16Of(x)), dtBF16
		g.b, g.bType = uint64(b.bf16Of(dy)), dtBF16
	} else {
		g.a, g.aType = uint64(ptr(x)), dtF32
		g.b, g.bType = uint64(ptr(dy)), dtF32
	}
	b.gemm("MatMulDW", g)
	touched(dw)
}

// BiasDW implements engine.TrainBackend.
func (b *Backend) BiasDW(db, dy *engine.Tensor) {
	if !b.enter() {
		b.leave()
		return
	}
	defer b.leave()
	n := db.Len()
	b.launch("bias_dw", [3]int{(n + 255) / 256, 1, 1}, 256, ptr(db), ptr(dy), int32(dy.Len()/n), int32(n))
	touched(db)
}

// RMSNormBackward implements engine.TrainBackend: per-group statistics, then dw (column sums
// over groups in order), then dx (which may alias dy, so it comes last).
func (b *Backend) RMSNormBackward(dx, dw, dy, x, w *engine.Tensor, eps float32) {
	if !b.enter() {
		b.leave()
		return
	}
	defer b.leave()
	n := w.Len()
	groups := x.Len() / n
	stats := dptr(b.tmp(uint64(16 * max(groups, 1))))
	b.launch("rmsnorm_bwd_stats", [3]int{groups, 1, 1}, 256, stats, ptr(dy), ptr(x), ptr(w), int32(n), eps)
	if dw != nil {
		b.launch("rmsnorm_bwd_dw", [3]int{(n + 255) / 256, 1, 1}, 256, ptr(dw), stats, ptr(dy), ptr(x), int32(groups), int32(n))
		touched(dw)
	}
	total := int64(x.Len())
	b.launch("rmsnorm_bwd_dx", b.gridFor(total), 256, ptr(dx), stats, ptr(dy), ptr(x), ptr(w), total, int32(n))
}

// SwiGLUBackward implements engine.TrainBackend.
func (b *Backend) SwiGLUBackward(dgate, dup, dout, gate, up *engine.Tensor) {
	if !b.enter() {
		b.leave()
		return
	}
	defer b.leave()
	n := int64(dout.Len())
	b.launch("swiglu_bwd", b.gridFor(n), 256, ptr(dgate), ptr(dup), ptr(dout), ptr(gate), ptr(up), n)
}

// scatterMeta groups rows by destination: [uniq[U] | starts[U+1] | order[R]], destinations
// ascending and, within one, sources in increasing order (the CPU's order of addition).
func scatterMeta(dst []int32) (meta []int32, u int) {
	order := make([]int32, len(dst))
	for i := range order {
		order[i] = int32(i)
	}
	sort.SliceStable(order, func(a, c int) bool { return dst[order[a]] < dst[order[c]] })
	var uniq, starts []int32
	for i, o := range order {
		if i == 0 || dst[o] != dst[order[i-1]] {
			uniq = append(uniq, dst[o])
			starts = append(starts, int32(i))
		}
	}
	starts = append(starts, int32(len(order)))
	meta = append(append(uniq, starts...), order...)
	return meta, len(uniq)
}

// EmbeddingBackward implements engine.TrainBackend.
func (b *Backend) EmbeddingBackward(dtable, dx *engine.Tensor, ids []int32) {
	b.ScatterAddRows(dtable, dx, ids)
}

// ScatterAddRows implements engine.TrainBackend, deterministically (no atomics).
func (b *Backend) ScatterAddRows(out, x *engine.Tensor, rows []int32) {
	if len(rows) == 0 {
		return
	}
	meta, u := scatterMeta(rows)
	if !b.enter() {
		b.leave()
		return
	}
	defer b.leave()
	b.launch("scatter_add_rows", [3]int{u, 1, 1}, 256, ptr(out), ptr(x), b.ints(meta), int32(u), int32(x.Cols()))
	touched(out)
}

// LogProbsBackward implements engine.TrainBackend.
func (b *Backend) LogProbsBackward(dlogits, logits *engine.Tensor, targets []int32, dlogp, dent []float32, temperature float32) {
	R, V := logits.Rows(), logits.Cols()
	if R == 0 {
		return
	}
	if !b.enter() {
		b.leave()
		return
	}
	defer b.leave()
	var de dptr
	if dent != nil {
		de = b.floats(dent)
	}
	b.launch("logprobs_bwd", [3]int{R, 1, 1}, 256, ptr(dlogits), ptr(logits), b.ints(targets), b.floats(dlogp), de,
		int32(V), temperature)
}

// SumSquares implements engine.TrainBackend: block partials in double, added on the host in order.
func (b *Backend) SumSquares(x *engine.Tensor) float64 {
	if !b.enter() {
		b.leave()
		return math.NaN()
	}
	defer b.leave()
	n := int64(x.Len())
	grid := b.gridFor(n)
	part := b.tmp(uint64(8 * grid[0]))
	b.launch("sumsq_partial", grid, 256, dptr(part), ptr(x), n)
	host := make([]float64, grid[0])
	b.download(unsafe.Pointer(&host[0]), part, uint64(8*len(host)))
	if b.err != nil {
		return math.NaN()
	}
	var s float64
	for _, v := range host {
		s += v
	}
	return s
}

// Scale implements engine.TrainBackend.
func (b *Backend) Scale(x *engine.Tensor, s float32) {
	if !b.enter() {
		b.leave()
		return
	}
	defer b.leave()
	n := int64(x.Len())
	b.launch("scale", b.gridFor(n), 256, ptr(x), s, n)
	touched(x)
}

// Copy implements engine.TrainBackend.
func (b *Backend) Copy(dst, src *engine.Tensor) {
	if dst.Len() != src.Len() {
		panic(fmt.Sprintf("cuda: copy of %v into %v", src.Shape, dst.Shape))
	}
	if !b.enter() {
		b.leave()
		return
	}
	defer b.leave()
	b.fail(b.drv.check("cuMemcpyDtoDAsync", call(b.drv.memcpyDtoDAsync, uintptr(ptr(dst)), uintptr(ptr(src)), uintptr(4*src.Len()), b.strm)))
	touched(dst)
}

// AdamW implements engine.TrainBackend, with the constants folded as the CPU backend folds them.
func (b *Backend) AdamW(p, g, m, v *engine.Tensor, h engine.AdamWStep) {
	if !b.enter() {
		b.leave()
		return
	}
	defer b.leave()
	n := int64(p.Len())
	b.launch("adamw", b.gridFor(n), 256, ptr(p), ptr(g), ptr(m), ptr(v), n,
		float32(1-h.LR*h.WeightDecay), float32(h.Beta1), float32(h.Beta2), float32(1-h.Beta1), float32(1-h.Beta2),
		float32(h.LR/h.BC1), float32(1/math.Sqrt(h.BC2)), float32(h.Eps))
	touched(p)
}

// trainMeta is [first[T] | end[T]]: each row's sequence's first row and one past its last.
func trainMeta(T int, seqStart []int32) []int32 {
	meta := make([]int32, 2*T)
	for s := 0; s+1 < len(seqStart); s++ {
		for t := seqStart[s]; t < seqStart[s+1]; t++ {
			meta[t] = seqStart[s]
			meta[int32(T)+t] = seqStart[s+1]
		}
	}
	return meta
}

// AttentionTrain implements engine.TrainBackend.
func (b *Backend) AttentionTrain(out, lse, q, k, v *engine.Tensor, seqStart []int32) {
	nh := lse.Cols()
	dh := q.Cols() / nh
	nkv := k.Cols() / dh
	T := q.Rows()
	if dh > maxHeadDim {
		panic(fmt.Sprintf("cuda: head_dim %d above the attention kernels' %d", dh, maxHeadDim))
	}
	meta := trainMeta(T, seqStart)
	if !b.enter() {
		b.leave()
		return
	}
	defer b.leave()
	b.launch("attn_train", [3]int{T, nh, 1}, 128, ptr(out), ptr(lse), ptr(q), ptr(k), ptr(v), b.constInts(meta),
		int32(nh), int32(nkv), int32(dh), float32(1/math.Sqrt(float64(dh))))
}

// AttentionBackward implements engine.TrainBackend: dq (and D = dout·out) per (row, head),
// then dk, dv per (row, kv head); each block writes only its own rows.
func (b *Backend) AttentionBackward(dq, dk, dv, dout, q, k, v, out, lse *engine.Tensor, seqStart []int32) {
	nh := lse.Cols()
	dh := q.Cols() / nh
	nkv := k.Cols() / dh
	T := q.Rows()
	meta := trainMeta(T, seqStart)
	if !b.enter() {
		b.leave()
		return
	}
	defer b.leave()
	scale := float32(1 / math.Sqrt(float64(dh)))
	md := b.constInts(meta)
	D := dptr(b.tmp(uint64(4 * max(T*nh, 1))))
	b.launch("attn_bwd_dq", [3]int{T, nh, 1}, 128, ptr(dq), D, ptr(dout), ptr(q), ptr(k), ptr(v), ptr(out), ptr(lse), md,
		int32(nh), int32(nkv), int32(dh), scale)
	b.launch("attn_bwd_dkv", [3]int{T, nkv, 1}, 128, ptr(dk), ptr(dv), ptr(dout), ptr(q), ptr(k), ptr(v), ptr(lse), D, md,
		int32(T), int32(nh), int32(nkv), int32(dh), scale)
}

var _ engine.TrainBackend = (*Backend)(nil)
