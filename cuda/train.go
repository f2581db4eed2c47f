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
	b.op(desc("MatMulDX dx dy w", dx, dy, w), func() {
		touched(dx)
		g := gemm{transA: opN, transB: opN, m: k, n: m, k: n, lda: k, ldb: n, c: uint64(ptr(dx)), cType: dtF32, ldc: k, compute: computeF32}
		b.operands(&g, b.useBF16(w), w, dy)
		b.gemm("MatMulDX", g)
	})
}

// MatMulDW implements engine.TrainBackend: dw[N,K] += dy[M,N]ᵀ·x[M,K]; column-major
// dwᵀ[K,N] += xᵀ[K,M]·dy[M,N], dy stored as dyᵀ column-major (op T), beta 1.
func (b *Backend) MatMulDW(dw, dy, x *engine.Tensor) {
	m, n, k := dy.Rows(), dy.Cols(), x.Cols()
	if x.Rows() != m || dw.Rows() != n || dw.Cols() != k {
		panic(fmt.Sprintf("cuda: matmul dw shapes dw %v dy %v x %v", dw.Shape, dy.Shape, x.Shape))
	}
	b.op(desc("MatMulDW dw dy x", dw, dy, x), func() {
		g := gemm{transA: opN, transB: opT, m: k, n: n, k: m, lda: k, ldb: n, beta: 1, c: uint64(ptr(dw)), cType: dtF32, ldc: k, compute: computeF32}
		b.operands(&g, b.opts.BF16Matmul, x, dy)
		b.gemm("MatMulDW", g)
		touched(dw)
	})
}

// colSplits is how many partial sums a column reduction over rows is split into (the Z of
// bias_dw_part and rmsnorm_bwd_dw_part): enough blocks to fill the GPU, each summing at least
// 32 rows.
func (b *Backend) colSplits(rows, cols int) int {
	colBlocks := (cols + 255) / 256
	z := max(1, 4*b.sms/colBlocks)
	return max(1, min(z, rows/32))
}

// BiasDW implements engine.TrainBackend: partial column sums in double, added in order.
func (b *Backend) BiasDW(db, dy *engine.Tensor) {
	b.op(desc("BiasDW db dy", db, dy), func() {
		n := db.Len()
		m := dy.Len() / n
		z := b.colSplits(m, n)
		part := dptr(b.tmp(uint64(8 * z * n)))
		b.launchBiasDwPart([3]int{(n + 255) / 256, z, 1}, 256, part, ptr(dy), int32(m), int32(n))
		b.launchColsumAdd([3]int{(n + 255) / 256, 1, 1}, 256, ptr(db), part, int32(z), int32(n))
		touched(db)
	})
}

// RMSNormBackward implements engine.TrainBackend: per-group statistics, then dw (partial
// column sums over groups, added in order), then dx (which may alias dy, so it comes last).
// With Options.FoldBF16, a norm over heads (qk-norm, whose dx the projections' backward GEMMs
// read) runs rmsnorm_bwd_dx_bf16, which also writes dx's bf16 copy.
func (b *Backend) RMSNormBackward(dx, dw, dy, x, w *engine.Tensor, eps float32) {
	b.op(desc("RMSNormBackward dx dw dy x w", dx, dw, dy, x, w), func() {
		n := w.Len()
		groups := x.Len() / n
		stats := dptr(b.tmp(uint64(16 * max(groups, 1))))
		b.launchRmsnormBwdStats([3]int{groups, 1, 1}, 256, stats, ptr(dy), ptr(x), ptr(w), int32(n), eps)
		if dw != nil {
			z := b.colSplits(groups, n)
			part := dptr(b.tmp(uint64(8 * z * n)))
			b.launchRmsnormBwdDwPart([3]int{(n + 255) / 256, z, 1}, 256, part, stats, ptr(dy), ptr(x), int32(groups), int32(n))
			b.launchColsumAdd([3]int{(n + 255) / 256, 1, 1}, 256, ptr(dw), part, int32(z), int32(n))
			touched(dw)
		}
		total := int64(x.Len())
		if n < dx.Cols() { // qk-norm's backward: dx feeds the Q or K projection's backward GEMMs
			if ob := b.foldDest(dx); ob != 0 { // Options.FoldBF16 (fold_bf16.go)
				b.launchRmsnormBwdDxBf16(b.gridFor(total), 256, ptr(dx), ob, stats, ptr(dy), ptr(x), ptr(w), total, int32(n))
				touched(dx)
				b.foldWritten(dx)
				return
			}
		}
		b.launchRmsnormBwdDx(b.gridFor(total), 256, ptr(dx), stats, ptr(dy), ptr(x), ptr(w), total, int32(n))
		touched(dx)
	})
}

// SwiGLUBackward implements engine.TrainBackend: swiglu_bwd; with Options.FoldBF16 and bf16
// GEMMs, swiglu_bwd_bf16, which also writes the bf16 copies of dgate and dup that the gate and
// up projections' MatMulDX and MatMulDW read.
func (b *Backend) SwiGLUBackward(dgate, dup, dout, gate, up *engine.Tensor) {
	b.op(desc("SwiGLUBackward dgate dup dout gate up", dgate, dup, dout, gate, up), func() {
		touched(dgate, dup)
		n := int64(dout.Len())
		if dgb, dub := b.foldDest(dgate), b.foldDest(dup); dgb != 0 && dub != 0 { // Options.FoldBF16 (fold_bf16.go)
			b.launchSwigluBwdBf16(b.gridFor(n), 256, ptr(dgate), ptr(dup), dgb, dub, ptr(dout), ptr(gate), ptr(up), n)
			b.foldWritten(dgate, dup)
			return
		}
		b.launchSwigluBwd(b.gridFor(n), 256, ptr(dgate), ptr(dup), ptr(dout), ptr(gate), ptr(up), n)
	})
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
	b.op(desc("ScatterAddRows out x", out, x), func() {
		b.launchScatterAddRows([3]int{u, 1, 1}, 256, ptr(out), ptr(x), b.ints(meta), int32(u), int32(x.Cols()))
		touched(out)
	})
}

// LogProbsBackward implements engine.TrainBackend.
func (b *Backend) LogProbsBackward(dlogits, logits *engine.Tensor, targets []int32, dlogp, dent []float32, temperature float32) {
	R, V := logits.Rows(), logits.Cols()
	if R == 0 {
		return
	}
	b.op(desc("LogProbsBackward dlogits logits", dlogits, logits), func() {
		touched(dlogits)
		var de dptr
		if dent != nil {
			de = b.floats(dent)
		}
		b.launchLogprobsBwd([3]int{R, 1, 1}, 1024, ptr(dlogits), ptr(logits), b.ints(targets), b.floats(dlogp), de,
			int32(V), temperature)
	})
}

// SumSquares implements engine.TrainBackend: block partials in double, added on the host in
// order. A device error (its own, or one an earlier op left) is returned, not a NaN.
func (b *Backend) SumSquares(x *engine.Tensor) (float64, error) {
	var s float64
	err := b.opErr(desc("SumSquares x", x), func() error {
		n := int64(x.Len())
		grid := b.gridFor(n)
		part := b.tmp(uint64(8 * grid[0]))
		b.launchSumsqPartial(grid, 256, dptr(part), ptr(x), n)
		host := make([]float64, grid[0])
		b.download(unsafe.Pointer(&host[0]), part, uint64(8*len(host)))
		for _, v := range host {
			s += v
		}
		return nil
	})
	if err != nil {
		return 0, err
	}
	return s, nil
}

// SumSquaresMany implements engine.SumSquaresManyBackend: one sumsq_partial launch per tensor
// (with Options.MultiTensorAdamW one sumsq_many launch for all) into one buffer of partial sums,
// one download and one synchronisation for all. Each tensor's partials are those SumSquares
// makes (same grid) and are added in the same order, so each result equals SumSquares of that
// tensor bit for bit.
func (b *Backend) SumSquaresMany(xs []*engine.Tensor) ([]float64, error) {
	out := make([]float64, len(xs))
	err := b.opErr(desc(fmt.Sprintf("SumSquaresMany of %d tensors", len(xs))), func() error {
		if len(xs) == 0 {
			return nil
		}
		offs := make([]int, len(xs)+1)
		for i, x := range xs {
			offs[i+1] = offs[i] + b.gridFor(int64(x.Len()))[0]
		}
		part := b.tmp(uint64(8 * offs[len(xs)]))
		if b.opts.MultiTensorAdamW {
			if !b.sumSquaresOneLaunch(dptr(part), xs, offs) {
				return nil
			}
		} else {
			for i, x := range xs {
				if !b.begin(desc("SumSquaresMany x", x)) {
					return nil
				}
				n := int64(x.Len())
				b.launchSumsqPartial(b.gridFor(n), 256, dptr(part+uint64(8*offs[i])), ptr(x), n)
			}
		}
		host := make([]float64, offs[len(xs)])
		b.download(unsafe.Pointer(&host[0]), part, uint64(8*len(host)))
		for i := range xs {
			for _, v := range host[offs[i]:offs[i+1]] {
				out[i] += v
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// Scale implements engine.TrainBackend.
func (b *Backend) Scale(x *engine.Tensor, s float32) {
	b.op(desc("Scale x", x), func() {
		n := int64(x.Len())
		b.launchScale(b.gridFor(n), 256, ptr(x), s, n)
		touched(x)
	})
}

// Dropout implements engine.TrainBackend: the key, threshold and scale are worked out here as
// the CPU backend does (engine.DropoutKey, DropoutThreshold, DropoutScale), the hash per
// element in the kernel.
func (b *Backend) Dropout(out, x *engine.Tensor, p float32, seed, stream uint64) {
	engine.CheckDropout(p)
	if out.Len() != x.Len() {
		panic(fmt.Sprintf("cuda: dropout of %v into %v", x.Shape, out.Shape))
	}
	b.op(desc("Dropout out x", out, x), func() {
		n := int64(x.Len())
		b.launchDropout(b.gridFor(n), 256, ptr(out), ptr(x), engine.DropoutKey(seed, stream), engine.DropoutThreshold(p), engine.DropoutScale(p), n)
		touched(out)
	})
}

// Copy implements engine.TrainBackend.
func (b *Backend) Copy(dst, src *engine.Tensor) {
	if dst.Len() != src.Len() {
		panic(fmt.Sprintf("cuda: copy of %v into %v", src.Shape, dst.Shape))
	}
	b.op(desc("Copy dst src", dst, src), func() {
		b.enq("cuMemcpyDtoDAsync", b.drv.memcpyDtoDAsync, uintptr(ptr(dst)), uintptr(ptr(src)), uintptr(4*src.Len()), b.strm)
		touched(dst)
	})
}

// AdamW implements engine.TrainBackend, with the constants folded as the CPU backend folds them.
func (b *Backend) AdamW(p, g, m, v *engine.Tensor, h engine.AdamWStep) {
	if h.ScalesGrad() {
		b.Scale(g, float32(h.GradScale)) // a launch of its own, as the optimizer's clipping did before
	}
	b.op(desc("AdamW p g m v", p, g, m, v), func() {
		touched(m, v)
		n := int64(p.Len())
		b.launchAdamw(b.gridFor(n), 256, ptr(p), ptr(g), ptr(m), ptr(v), n,
			float32(1-h.LR*h.WeightDecay), float32(h.Beta1), float32(h.Beta2), float32(1-h.Beta1), float32(1-h.Beta2),
			float32(h.LR/h.BC1), float32(1/math.Sqrt(h.BC2)), float32(h.Eps))
		touched(p)
	})
	if h.ZeroGrad {
		b.Scale(g, 0) // a launch of its own, as the optimizer's ZeroGrad did before
	}
}

// trainMeta is [first[T] | end[T]]: each row's sequence's first row and one past its last; the
// rows of sequences in skip get first = -1 (the row kernels leave them to the matmul path).
func trainMeta(T int, seqStart []int32, skip map[int]bool) []int32 {
	meta := make([]int32, 2*T)
	for s := 0; s+1 < len(seqStart); s++ {
		for t := seqStart[s]; t < seqStart[s+1]; t++ {
			meta[t] = seqStart[s]
			if skip[s] {
				meta[t] = -1
			}
			meta[int32(T)+t] = seqStart[s+1]
		}
	}
	return meta
}

// attnShape is the head layout of a training attention call.
type attnShape struct{ T, nh, nkv, dh, group int }

func trainShape(lse, q, k *engine.Tensor) attnShape {
	nh := lse.Cols()
	dh := q.Cols() / nh
	nkv := k.Cols() / dh
	if dh > maxHeadDim {
		panic(fmt.Sprintf("cuda: head_dim %d above the attention kernels' %d", dh, maxHeadDim))
	}
	return attnShape{T: q.Rows(), nh: nh, nkv: nkv, dh: dh, group: nh / nkv}
}

// longSeqs picks the sequences that run attention on matmuls: at least AttnGEMMMinLen rows
// (default 128), and scores of at most 1 GiB per key/value head. It returns them and the
// longest length.
func (b *Backend) longSeqs(seqStart []int32, group int) (map[int]bool, int) {
	minLen := b.opts.AttnGEMMMinLen
	if minLen <= 0 {
		minLen = 128
	}
	long := map[int]bool{}
	maxL := 0
	for s := 0; s+1 < len(seqStart); s++ {
		L := int(seqStart[s+1] - seqStart[s])
		if L >= minLen && int64(group)*int64(L)*int64(L)*4 <= 1<<30 {
			long[s] = true
			maxL = max(maxL, L)
		}
	}
	return long, maxL
}

// attnCompute is the compute type of the attention matmuls.
func (b *Backend) attnCompute() int {
	if b.opts.BF16Matmul {
		return computeF32FastTF32
	}
	return computeF32
}

// offset returns the device address of element (row, col) of a row-major [*, width] tensor.
func offset(t *engine.Tensor, row, col, width int) uint64 {
	return uint64(ptr(t)) + 4*uint64(row*width+col)
}

// scores enqueues S[i] = scale·Q_iK_jᵀ for the group's query heads i (row-major [L, L] each,
// S at s): in column-major terms Sᵀ = K·Qᵀ, K read through op T, the heads' Q columns Dh apart.
func (b *Backend) scores(S uint64, q, k *engine.Tensor, sh attnShape, t0, L, j int, scale float32) {
	b.gemm("attention scores", gemm{transA: opT, transB: opN, m: L, n: L, k: sh.dh, alpha: scale,
		a: offset(k, t0, j*sh.dh, sh.nkv*sh.dh), aType: dtF32, lda: sh.nkv * sh.dh,
		b: offset(q, t0, j*sh.group*sh.dh, sh.nh*sh.dh), bType: dtF32, ldb: sh.nh * sh.dh, strideB: int64(sh.dh),
		c: S, cType: dtF32, ldc: L, strideC: int64(L) * int64(L), batch: sh.group, compute: b.attnCompute()})
}

// AttentionTrain implements engine.TrainBackend: short sequences on the row kernel, long ones
// on batched matmuls per (sequence, key/value head): S = scale·QKᵀ, causal softmax, O = PV.
//
// With Options.TiledAttention and head dim 64 or 128, every sequence runs on the tiled
// tensor-core kernel instead (flash.go).
func (b *Backend) AttentionTrain(out, lse, q, k, v *engine.Tensor, seqStart []int32) {
	sh := trainShape(lse, q, k)
	if b.useFlash(sh.dh) {
		b.op(desc("AttentionTrain out lse q k v", out, lse, q, k, v), func() {
			touched(out, lse)
			b.flashForward(ptr(out), ptr(lse), ptr(q), ptr(k), ptr(v), seqStart, sh.nh, sh.nkv, sh.dh)
		})
		return
	}
	long, maxL := b.longSeqs(seqStart, sh.group)
	meta := trainMeta(sh.T, seqStart, long)
	b.op(desc("AttentionTrain out lse q k v", out, lse, q, k, v), func() {
		touched(out, lse)
		scale := float32(1 / math.Sqrt(float64(sh.dh)))
		if len(long) < len(seqStart)-1 {
			b.launchAttnTrain([3]int{sh.T, sh.nh, 1}, 128, ptr(out), ptr(lse), ptr(q), ptr(k), ptr(v), b.constInts(meta),
				int32(sh.nh), int32(sh.nkv), int32(sh.dh), scale)
		}
		if len(long) == 0 {
			return
		}
		S := b.tmp(uint64(sh.group) * uint64(maxL) * uint64(maxL) * 4)
		for s := 0; s+1 < len(seqStart); s++ {
			if !long[s] {
				continue
			}
			t0, L := int(seqStart[s]), int(seqStart[s+1]-seqStart[s])
			for j := 0; j < sh.nkv; j++ {
				h0 := j * sh.group
				b.scores(S, q, k, sh, t0, L, j, scale)
				b.launchAttnSoftmaxCausal([3]int{L, sh.group, 1}, 256, dptr(S), ptr(lse), int32(L), int32(t0), int32(sh.nh), int32(h0))
				// Oᵀ[Dh, L] = Vᵀ[Dh, L]·Pᵀ (P row-major is Pᵀ column-major).
				b.gemm("attention PV", gemm{transA: opN, transB: opN, m: sh.dh, n: L, k: L,
					a: offset(v, t0, j*sh.dh, sh.nkv*sh.dh), aType: dtF32, lda: sh.nkv * sh.dh,
					b: S, bType: dtF32, ldb: L, strideB: int64(L) * int64(L),
					c: offset(out, t0, h0*sh.dh, sh.nh*sh.dh), cType: dtF32, ldc: sh.nh * sh.dh, strideC: int64(sh.dh),
					batch: sh.group, compute: b.attnCompute()})
			}
		}
	})
}

// AttentionBackward implements engine.TrainBackend. Row kernels (short sequences): dq (and
// D = dout·out) per (row, head), then dk, dv per (row, kv head), each block writing only its
// rows. Matmul path (long sequences), per (sequence, kv head): P recomputed from S and lse,
// dP = dO·Vᵀ, dS = P⊙(dP - D)·scale, dQ = dS·K, dK = Σ_i dS_iᵀ·Q_i, dV = Σ_i P_iᵀ·dO_i (the
// sums over the group's heads i as one matmul over the heads stacked).
//
// With Options.TiledAttention and head dim 64 or 128: the tiled kernels (flash.go).
func (b *Backend) AttentionBackward(dq, dk, dv, dout, q, k, v, out, lse *engine.Tensor, seqStart []int32) {
	sh := trainShape(lse, q, k)
	if b.useFlash(sh.dh) {
		b.op(desc("AttentionBackward dq dk dv dout q k v out lse", dq, dk, dv, dout, q, k, v, out, lse), func() {
			touched(dq, dk, dv)
			b.flashBackward(dq, dk, dv, dout, q, k, v, out, lse, seqStart, sh)
		})
		return
	}
	long, maxL := b.longSeqs(seqStart, sh.group)
	meta := trainMeta(sh.T, seqStart, long)
	b.op(desc("AttentionBackward dq dk dv dout q k v out lse", dq, dk, dv, dout, q, k, v, out, lse), func() {
		touched(dq, dk, dv)
		scale := float32(1 / math.Sqrt(float64(sh.dh)))
		D := dptr(b.tmp(uint64(4 * max(sh.T*sh.nh, 1))))
		b.launchAttnRowdot([3]int{(sh.T*sh.nh + 7) / 8, 1, 1}, 256, D, ptr(dout), ptr(out), int32(sh.T*sh.nh), int32(sh.dh))
		if len(long) < len(seqStart)-1 {
			md := b.constInts(meta)
			b.launchAttnBwdDq([3]int{sh.T, sh.nh, 1}, 128, ptr(dq), D, ptr(dout), ptr(q), ptr(k), ptr(v), ptr(out), ptr(lse), md,
				int32(sh.nh), int32(sh.nkv), int32(sh.dh), scale)
			b.launchAttnBwdDkv([3]int{sh.T, sh.nkv, 1}, 128, ptr(dk), ptr(dv), ptr(dout), ptr(q), ptr(k), ptr(v), ptr(lse), D, md,
				int32(sh.T), int32(sh.nh), int32(sh.nkv), int32(sh.dh), scale)
		}
		if len(long) == 0 {
			return
		}
		size := uint64(sh.group) * uint64(maxL) * uint64(maxL) * 4
		P, dP := b.tmp(size), b.tmp(size)
		qw, kw := sh.nh*sh.dh, sh.nkv*sh.dh
		stack := uint64(sh.group) * uint64(maxL) * uint64(sh.dh) * 4
		stackQ, stackO := b.tmp(stack), b.tmp(stack)
		for s := 0; s+1 < len(seqStart); s++ {
			if !long[s] {
				continue
			}
			t0, L := int(seqStart[s]), int(seqStart[s+1]-seqStart[s])
			LL := int64(L) * int64(L)
			for j := 0; j < sh.nkv; j++ {
				h0 := j * sh.group
				b.scores(P, q, k, sh, t0, L, j, scale)
				b.launchAttnProbs([3]int{L, sh.group, 1}, 256, dptr(P), ptr(lse), int32(L), int32(t0), int32(sh.nh), int32(h0))
				// dP = dO·Vᵀ, as the scores with dO for Q and V for K.
				b.gemm("attention dP", gemm{transA: opT, transB: opN, m: L, n: L, k: sh.dh,
					a: offset(v, t0, j*sh.dh, kw), aType: dtF32, lda: kw,
					b: offset(dout, t0, h0*sh.dh, qw), bType: dtF32, ldb: qw, strideB: int64(sh.dh),
					c: dP, cType: dtF32, ldc: L, strideC: LL, batch: sh.group, compute: b.attnCompute()})
				b.launchAttnDsoftmax([3]int{L, sh.group, 1}, 256, dptr(dP), dptr(P), D, scale, int32(L), int32(t0), int32(sh.nh), int32(h0))
				// dQᵀ[Dh, L] = Kᵀ[Dh, L]·dSᵀ.
				b.gemm("attention dQ", gemm{transA: opN, transB: opN, m: sh.dh, n: L, k: L,
					a: offset(k, t0, j*sh.dh, kw), aType: dtF32, lda: kw,
					b: dP, bType: dtF32, ldb: L, strideB: LL,
					c: offset(dq, t0, h0*sh.dh, qw), cType: dtF32, ldc: qw, strideC: int64(sh.dh),
					batch: sh.group, compute: b.attnCompute()})
				// dK = Σ_i dS_iᵀ·Q_i and dV = Σ_i P_iᵀ·dO_i over the group's heads, as one matmul
				// each over the heads stacked: dKᵀ[Dh, L] = Q_stackedᵀ[Dh, G·L]·dS_stacked[G·L, L].
				n := int64(sh.group) * int64(L) * int64(sh.dh)
				b.launchStackHeads(b.gridFor(n), 256, dptr(stackQ), ptr(q), int32(L), int32(sh.group), int32(sh.dh), int32(qw), int32(t0), int32(h0))
				b.launchStackHeads(b.gridFor(n), 256, dptr(stackO), ptr(dout), int32(L), int32(sh.group), int32(sh.dh), int32(qw), int32(t0), int32(h0))
				b.gemm("attention dK", gemm{transA: opN, transB: opT, m: sh.dh, n: L, k: sh.group * L,
					a: stackQ, aType: dtF32, lda: sh.dh, b: dP, bType: dtF32, ldb: L,
					c: offset(dk, t0, j*sh.dh, kw), cType: dtF32, ldc: kw, compute: b.attnCompute()})
				b.gemm("attention dV", gemm{transA: opN, transB: opT, m: sh.dh, n: L, k: sh.group * L,
					a: stackO, aType: dtF32, lda: sh.dh, b: P, bType: dtF32, ldb: L,
					c: offset(dv, t0, j*sh.dh, kw), cType: dtF32, ldc: kw, compute: b.attnCompute()})
			}
		}
	})
}

var _ engine.TrainBackend = (*Backend)(nil)
