package cpu

import (
	"fmt"
	"maps"
	"math"
	"slices"
	"sync"

	"github.com/prolong-rl/prolong/engine"
	"github.com/prolong-rl/prolong/engine/internal/kern"
)

// cpuParam is a trainable parameter on the CPU: fp32 row-major data, plus the packed copies
// the matmul kernels read (W for the forward, Wᵀ for the input gradient), rebuilt lazily after
// every write.
type cpuParam struct {
	data []float32 // row-major, the tensor's shape
	n, k int       // [N, K] when 2-D, else 0

	mu       sync.Mutex
	ver      int        // bumped by every write
	fwd, bwd packedCopy // packed W [N,K] and Wᵀ [K,N]
}

// packedCopy is a packed copy of a parameter and the parameter's version it was packed at.
type packedCopy struct {
	w   *kern.Weight
	ver int
}

func (p *cpuParam) touch() {
	p.mu.Lock()
	p.ver++
	p.mu.Unlock()
}

// packedW is W packed for the forward (bf16 dot-product layout with dot).
func (p *cpuParam) packedW(thr kern.Threads, dot bool) *kern.Weight {
	if p.n == 0 {
		panic("engine/cpu: matmul with a parameter that is not 2-D")
	}
	pack := thr.NewWeightF32
	if dot {
		pack = thr.NewWeightDot
	}
	return p.packed(&p.fwd, pack, thr.Repack)
}

// packedWT is Wᵀ packed for the input gradient (bf16 dot-product layout with dot).
func (p *cpuParam) packedWT(thr kern.Threads, dot bool) *kern.Weight {
	pack := thr.NewWeightF32T
	if dot {
		pack = thr.NewWeightDotT
	}
	return p.packed(&p.bwd, pack, thr.RepackT)
}

// packed returns the copy c of the parameter, packed by pack at first use and by repack
// whenever the parameter was written since.
func (p *cpuParam) packed(c *packedCopy, pack func([]float32, int, int) *kern.Weight, repack func(*kern.Weight, []float32)) *kern.Weight {
	p.mu.Lock()
	defer p.mu.Unlock()
	switch {
	case c.w == nil:
		c.w = pack(p.data, p.n, p.k)
	case c.ver != p.ver:
		repack(c.w, p.data)
	}
	c.ver = p.ver
	return c.w
}

// packed returns the matmul layout of a weight: an inference weight as uploaded, or a
// parameter's packed copy (bf16 dot-product with PrecisionBF16).
func (c *Backend) packed(w *engine.Tensor) *kern.Weight {
	switch b := w.Buf.(type) {
	case *kern.Weight:
		return b
	case *cpuParam:
		return b.packedW(c.thr, c.trainDot())
	}
	panic(fmt.Sprintf("engine/cpu: tensor %v (%T) is not a matmul weight", w.Shape, w.Buf))
}

// packedT returns Wᵀ [K,N] packed for dX = dY·W, and a release to call when it is no longer
// used. A parameter keeps its own; an inference weight (a LoRA run's frozen base) is unpacked
// and packed transposed into a pooled scratch weight (scratchWeightT) each time, so that a
// backward pass reuses a few of them instead of leaving one W-sized copy per call to the GC.
func (c *Backend) packedT(w *engine.Tensor) (wt *kern.Weight, release func()) {
	switch b := w.Buf.(type) {
	case *kern.Weight:
		full := c.Alloc(b.N(), b.K()) // [N, K]
		defer c.Free(full)
		b.Unpack(f32(full))
		wt := c.scratchWeightT(f32(full), b.N(), b.K())
		return wt, func() { c.putScratchWeight(wt) }
	case *cpuParam:
		return b.packedWT(c.thr, c.trainDot()), func() {}
	}
	panic(fmt.Sprintf("engine/cpu: tensor %v (%T) is not a matmul weight", w.Shape, w.Buf))
}

// UploadParam implements engine.TrainBackend.
func (c *Backend) UploadParam(data []float32, shape ...int) (*engine.Tensor, error) {
	t := &engine.Tensor{Shape: append([]int(nil), shape...), DType: engine.F32}
	if t.Len() != len(data) {
		return nil, fmt.Errorf("upload param: %d values for shape %v", len(data), shape)
	}
	p := &cpuParam{data: append([]float32(nil), data...)}
	if len(shape) == 2 {
		p.n, p.k = shape[0], shape[1]
	}
	t.Buf = p
	return t, nil
}

// written marks a parameter as changed so its packed copies are rebuilt.
func written(t *engine.Tensor) {
	if p, ok := t.Buf.(*cpuParam); ok {
		p.touch()
	}
}

// MatMulDX implements engine.TrainBackend.
func (c *Backend) MatMulDX(dx, dy, w *engine.Tensor) {
	wt, release := c.packedT(w) // [K, N]
	defer release()
	if dy.Cols() != wt.K() || dx.Cols() != wt.N() || dx.Rows() != dy.Rows() {
		panic(fmt.Sprintf("engine/cpu: matmul dx shapes dx %v dy %v w %v", dx.Shape, dy.Shape, w.Shape))
	}
	c.thr.MatMul(f32(dx), f32(dy), dy.Rows(), wt)
}

// MatMulDW implements engine.TrainBackend: dW[N,K] += dYᵀ·X, as a kern.MatMulTAcc of dY [M,N]
// (dYᵀ given transposed) against X packed as the weight Xᵀ [K,M], added into dW tile by tile:
// no product buffer of dW's size (for an LM head, [vocab, hidden]) is written and read back.
func (c *Backend) MatMulDW(dw, dy, x *engine.Tensor) {
	m, n, k := dy.Rows(), dy.Cols(), x.Cols()
	if x.Rows() != m || dw.Rows() != n || dw.Cols() != k {
		panic(fmt.Sprintf("engine/cpu: matmul dw shapes dw %v dy %v x %v", dw.Shape, dy.Shape, x.Shape))
	}
	if m == 0 {
		return
	}
	xw := c.scratchWeightT(f32(x), m, k) // Xᵀ [K, M]
	defer c.putScratchWeight(xw)
	c.thr.MatMulTAcc(f32(dw), f32(dy), n, xw) // dy is dYᵀ given transposed
	written(dw)
}

// maxScratchWeights bounds the free scratch weights a Backend keeps: a backward pass packs
// activations of a few shapes ([K, T] for the few widths K of the model's inputs to matmuls, T the
// micro-batch's tokens), one at a time.
const maxScratchWeights = 8

// scratchWeightT returns a packed Xᵀ for x [m,k], reusing a free scratch weight of that shape, so
// that every training step does not fault in fresh pages for it.
func (c *Backend) scratchWeightT(x []float32, m, k int) *kern.Weight {
	c.mu.Lock()
	for i := len(c.wpool) - 1; i >= 0; i-- {
		if w := c.wpool[i]; w.N() == k && w.K() == m {
			c.wpool = slices.Delete(c.wpool, i, i+1)
			c.mu.Unlock()
			c.thr.RepackT(w, x)
			return w
		}
	}
	c.mu.Unlock()
	if c.trainDot() {
		return c.thr.NewWeightDotT(x, m, k)
	}
	return c.thr.NewWeightF32T(x, m, k)
}

// putScratchWeight frees a scratch weight: it joins the free ones, and the least recently freed
// beyond maxScratchWeights is dropped. Weights of a shape that no longer comes back (the token
// count of a past micro-batch) so leave the pool instead of filling it.
func (c *Backend) putScratchWeight(w *kern.Weight) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.wpool = append(c.wpool, w)
	if len(c.wpool) > maxScratchWeights {
		c.wpool = slices.Delete(c.wpool, 0, 1)
	}
}

// BiasDW implements engine.TrainBackend.
func (c *Backend) BiasDW(db, dy *engine.Tensor) {
	b, ys, n := f32(db), f32(dy), db.Len()
	for r := 0; r < len(ys); r += n {
		for i, v := range ys[r : r+n] {
			b[i] += v
		}
	}
	written(db)
}

// RMSNormBackward implements engine.TrainBackend. With r = 1/sqrt(mean(x²)+eps) and g = dy·w:
// dx = r·g - x·r³·Σ(g·x)/n, dw += Σ_groups dy·x·r. dx may alias dy.
func (c *Backend) RMSNormBackward(dx, dw, dy, x, w *engine.Tensor, eps float32) {
	dxs, dys, xs, ws := f32(dx), f32(dy), f32(x), f32(w)
	n := len(ws)
	groups := len(xs) / n
	// Each chunk's dw partial is kept by its first group and added in order afterwards, so
	// that the sum does not depend on which thread finishes first (seeded determinism).
	var mu sync.Mutex
	var dws []float32
	partials := map[int][]float64{}
	if dw != nil {
		dws = f32(dw)
	}
	c.thr.Parallel(groups, 32, func(lo, hi int) {
		var acc []float64
		if dws != nil {
			acc = make([]float64, n)
		}
		for g := lo; g < hi; g++ {
			xr, yr, out := xs[g*n:(g+1)*n], dys[g*n:(g+1)*n], dxs[g*n:(g+1)*n]
			var ss, gx float64
			for i, v := range xr {
				ss += float64(v) * float64(v)
				gx += float64(yr[i]) * float64(ws[i]) * float64(v)
			}
			r := 1 / math.Sqrt(ss/float64(n)+float64(eps))
			if acc != nil {
				for i, v := range xr {
					acc[i] += float64(yr[i]) * float64(v) * r
				}
			}
			c3 := r * r * r * gx / float64(n)
			for i, v := range xr {
				out[i] = float32(r*float64(yr[i])*float64(ws[i]) - float64(v)*c3)
			}
		}
		if acc != nil {
			mu.Lock()
			partials[lo] = acc
			mu.Unlock()
		}
	})
	if dw != nil {
		for _, lo := range slices.Sorted(maps.Keys(partials)) {
			for i, v := range partials[lo] {
				dws[i] += float32(v)
			}
		}
		written(dw)
	}
}

// SwiGLUBackward implements engine.TrainBackend: with s = sigmoid(g), kern.Silu(g) = g·s and
// silu'(g) = s·(1 + g·(1-s)).
func (c *Backend) SwiGLUBackward(dgate, dup, dout, gate, up *engine.Tensor) {
	dg, du, do, g, u := f32(dgate), f32(dup), f32(dout), f32(gate), f32(up)
	c.thr.Parallel(len(do), 4096, func(lo, hi int) {
		kern.SwiGLUBackward(dg[lo:hi], du[lo:hi], do[lo:hi], g[lo:hi], u[lo:hi])
	})
}

// EmbeddingBackward implements engine.TrainBackend.
func (c *Backend) EmbeddingBackward(dtable, dx *engine.Tensor, ids []int32) {
	c.ScatterAddRows(dtable, dx, ids)
	written(dtable)
}

// ScatterAddRows implements engine.TrainBackend.
func (c *Backend) ScatterAddRows(out, x *engine.Tensor, rows []int32) {
	o, xs, n := f32(out), f32(x), x.Cols()
	for r, dst := range rows {
		row := o[int(dst)*n : (int(dst)+1)*n]
		for i, v := range xs[r*n : (r+1)*n] {
			row[i] += v
		}
	}
}

// LogProbsBackward implements engine.TrainBackend. With z = logits/τ, p = softmax(z), the target t
// and H = -Σ p·log p: ∂logp_t/∂z = onehot_t - p and ∂H/∂z_i = -p_i·(log p_i + H).
func (c *Backend) LogProbsBackward(dlogits, logits *engine.Tensor, targets []int32, dlogp, dent []float32, temperature float32) {
	ls, ds, v := f32(logits), f32(dlogits), logits.Cols()
	inv := 1 / float64(temperature)
	c.thr.Parallel(len(targets), 1, func(lo, hi int) {
		for r := lo; r < hi; r++ {
			z, out := ls[r*v:(r+1)*v], ds[r*v:(r+1)*v]
			mx := float32(math.Inf(-1))
			for _, x := range z {
				mx = max(mx, x)
			}
			// Pass 1: s = (z-max)/τ into out (z may be out), Σe^s and Σ s·e^s in float64, so
			// that lse = log Σe^s and H = lse - Σ s·e^s / Σe^s.
			var sum, ses float64
			for i, x := range z {
				sv := float32(float64(x-mx) * inv)
				out[i] = sv
				e := float64(kern.Expf(sv))
				sum += e
				ses += float64(sv) * e
			}
			lse := math.Log(sum)
			h := lse - ses/sum
			gl := float64(dlogp[r])
			var ge float64
			if dent != nil {
				ge = float64(dent[r])
			}
			// Pass 2: the gradient, from p = e^(s-lse).
			for i, sv := range out {
				lp := float64(sv) - lse
				p := float64(kern.Expf(float32(lp)))
				g := -gl*p - ge*p*(lp+h)
				out[i] = float32(g * inv)
			}
			out[targets[r]] += float32(gl * inv)
		}
	})
}

// SumSquares implements engine.TrainBackend.
func (c *Backend) SumSquares(x *engine.Tensor) (float64, error) {
	xs := f32(x)
	var mu sync.Mutex
	partials := map[int]float64{} // by chunk start, added in order: deterministic
	c.thr.Parallel(len(xs), 1<<15, func(lo, hi int) {
		var s float64
		for _, v := range xs[lo:hi] {
			s += float64(v) * float64(v)
		}
		mu.Lock()
		partials[lo] = s
		mu.Unlock()
	})
	var total float64
	for _, lo := range slices.Sorted(maps.Keys(partials)) {
		total += partials[lo]
	}
	return total, nil
}

// Scale implements engine.TrainBackend; s == 0 clears x (NaN and Inf included).
func (c *Backend) Scale(x *engine.Tensor, s float32) {
	xs := f32(x)
	if s == 0 {
		clear(xs)
		written(x)
		return
	}
	for i := range xs {
		xs[i] *= s
	}
	written(x)
}

// Copy implements engine.TrainBackend.
func (c *Backend) Copy(dst, src *engine.Tensor) {
	d, s := f32(dst), f32(src)
	if len(d) != len(s) {
		panic(fmt.Sprintf("engine/cpu: copy of %v into %v", src.Shape, dst.Shape))
	}
	copy(d, s)
	written(dst)
}

// Dropout implements engine.TrainBackend: the mask of engine.DropoutBits, element by element
// (a pure function of the key and the index, so the chunks run in parallel).
func (c *Backend) Dropout(out, x *engine.Tensor, p float32, seed, stream uint64) {
	engine.CheckDropout(p)
	o, xs := f32(out), f32(x)
	if len(o) != len(xs) {
		panic(fmt.Sprintf("engine/cpu: dropout of %v into %v", x.Shape, out.Shape))
	}
	key, thr, s := engine.DropoutKey(seed, stream), engine.DropoutThreshold(p), engine.DropoutScale(p)
	c.thr.Parallel(len(o), 1<<14, func(lo, hi int) {
		for i := lo; i < hi; i++ {
			if engine.DropoutBits(key, uint64(i)) >= thr {
				o[i] = xs[i] * s
			} else {
				o[i] = 0
			}
		}
	})
	written(out)
}

// AdamW implements engine.TrainBackend (element-wise in fp32, constants folded in float64).
func (c *Backend) AdamW(p, g, m, v *engine.Tensor, h engine.AdamWStep) {
	if h.ScalesGrad() {
		c.Scale(g, float32(h.GradScale)) // in place, as the optimizer's clipping did before
	}
	ps, gs, ms, vs := f32(p), f32(g), f32(m), f32(v)
	c1, c2 := float32(1-h.Beta1), float32(1-h.Beta2)
	k := kern.AdamWConsts{Decay: float32(1 - h.LR*h.WeightDecay), B1: float32(h.Beta1), B2: float32(h.Beta2), C1: c1, C2: c2,
		Step: float32(h.LR / h.BC1), InvSqrtBC2: float32(1 / math.Sqrt(h.BC2)), Eps: float32(h.Eps)}
	c.thr.Parallel(len(ps), 1<<16, func(lo, hi int) {
		kern.AdamW(ps[lo:hi], gs[lo:hi], ms[lo:hi], vs[lo:hi], k)
	})
	written(p)
	if h.ZeroGrad {
		c.Scale(g, 0)
	}
}

// maxSeqLen is the length of the longest sequence of seqStart.
func maxSeqLen(seqStart []int32) int {
	n := 0
	for s := 0; s+1 < len(seqStart); s++ {
		n = max(n, int(seqStart[s+1]-seqStart[s]))
	}
	return n
}

// AttentionTrain implements engine.TrainBackend: for every sequence, head and query row, softmax of
// the scaled scores over the rows of the sequence up to and including it, times V. Calls whose
// longest sequence has at least WithTiledAttentionFrom's rows run the tiled path (attn_tiled.go), the
// others the per-row one.
func (c *Backend) AttentionTrain(out, lse, q, k, v *engine.Tensor, seqStart []int32) {
	if c.tiledAttention(seqStart) {
		c.attentionTrainTiled(f32(out), f32(lse), f32(q), f32(k), f32(v), newAttnDims(q.Cols(), k.Cols(), lse.Cols()), seqStart)
		return
	}
	c.attentionTrainRows(out, lse, q, k, v, seqStart)
}

// attentionTrainRows is AttentionTrain one (row, head) at a time, one dot product per key: the
// oracle of the tiled path.
func (c *Backend) attentionTrainRows(out, lse, q, k, v *engine.Tensor, seqStart []int32) {
	qs, ks, vs, os, ls := f32(q), f32(k), f32(v), f32(out), f32(lse)
	nh := lse.Cols()
	dh := q.Cols() / nh
	nkv := k.Cols() / dh
	group := nh / nkv
	qw, kw := nh*dh, nkv*dh
	scale := float32(1 / math.Sqrt(float64(dh)))
	T := q.Rows()
	first := make([]int32, T) // first row of each row's sequence
	for s := 0; s+1 < len(seqStart); s++ {
		for t := seqStart[s]; t < seqStart[s+1]; t++ {
			first[t] = seqStart[s]
		}
	}
	c.thr.Parallel(T*nh, 1, func(lo, hi int) {
		var scores []float32
		for it := lo; it < hi; it++ {
			t, h := it/nh, it%nh
			t0 := int(first[t])
			n := t - t0 + 1
			if cap(scores) < n {
				scores = make([]float32, n+64)
			}
			sc := scores[:n]
			qv := qs[t*qw+h*dh : t*qw+(h+1)*dh]
			kvh := h / group
			mx := float32(math.Inf(-1))
			for j := range sc {
				r := t0 + j
				d := kern.Dot(qv, ks[r*kw+kvh*dh:r*kw+(kvh+1)*dh]) * scale
				sc[j] = d
				mx = max(mx, d)
			}
			var sum float32
			for j := range sc {
				e := kern.Expf(sc[j] - mx)
				sc[j] = e
				sum += e
			}
			o := os[t*qw+h*dh : t*qw+(h+1)*dh]
			clear(o)
			inv := 1 / sum
			for j := range sc {
				r := t0 + j
				kern.Axpy(sc[j]*inv, vs[r*kw+kvh*dh:r*kw+(kvh+1)*dh], o)
			}
			ls[t*nh+h] = mx + float32(math.Log(float64(sum)))
		}
	})
}

// AttentionBackward implements engine.TrainBackend: the tiled path (attn_tiled.go) when the
// longest sequence has at least WithTiledAttentionFrom's rows, else attentionBackwardRows.
func (c *Backend) AttentionBackward(dq, dk, dv, dout, q, k, v, out, lse *engine.Tensor, seqStart []int32) {
	if c.tiledAttention(seqStart) {
		c.attentionBackwardTiled(f32(dq), f32(dk), f32(dv), f32(dout), f32(q), f32(k), f32(v), f32(out), f32(lse),
			newAttnDims(q.Cols(), k.Cols(), lse.Cols()), seqStart)
		return
	}
	c.attentionBackwardRows(dq, dk, dv, dout, q, k, v, out, lse, seqStart)
}

// attentionBackwardRows is AttentionBackward parallel over (sequence, kv head) so that each
// task owns its rows of dk, dv and of dq for the query heads of its group. With
// p_ij = exp(s·q_i·k_j - lse_i) and D_i = dout_i·out_i: dv_j += p_ij·dout_i,
// ds_ij = p_ij·(dout_i·v_j - D_i), dq_i += s·ds_ij·k_j, dk_j += s·ds_ij·q_i.
func (c *Backend) attentionBackwardRows(dq, dk, dv, dout, q, k, v, out, lse *engine.Tensor, seqStart []int32) {
	qs, ks, vs, os, ls := f32(q), f32(k), f32(v), f32(out), f32(lse)
	dqs, dks, dvs, dos := f32(dq), f32(dk), f32(dv), f32(dout)
	clear(dqs)
	clear(dks)
	clear(dvs)
	nh := lse.Cols()
	dh := q.Cols() / nh
	nkv := k.Cols() / dh
	group := nh / nkv
	qw, kw := nh*dh, nkv*dh
	scale := float32(1 / math.Sqrt(float64(dh)))
	nseq := len(seqStart) - 1
	c.thr.Parallel(nseq*nkv, 1, func(lo, hi int) {
		for it := lo; it < hi; it++ {
			s, kvh := it/nkv, it%nkv
			t0, t1 := int(seqStart[s]), int(seqStart[s+1])
			for h := kvh * group; h < (kvh+1)*group; h++ {
				for i := t0; i < t1; i++ {
					qi := qs[i*qw+h*dh : i*qw+(h+1)*dh]
					doi := dos[i*qw+h*dh : i*qw+(h+1)*dh]
					dqi := dqs[i*qw+h*dh : i*qw+(h+1)*dh]
					di := kern.Dot(doi, os[i*qw+h*dh:i*qw+(h+1)*dh])
					l := ls[i*nh+h]
					for j := t0; j <= i; j++ {
						kj := ks[j*kw+kvh*dh : j*kw+(kvh+1)*dh]
						vj := vs[j*kw+kvh*dh : j*kw+(kvh+1)*dh]
						p := kern.Expf(kern.Dot(qi, kj)*scale - l)
						kern.Axpy(p, doi, dvs[j*kw+kvh*dh:j*kw+(kvh+1)*dh])
						ds := p * (kern.Dot(doi, vj) - di) * scale
						kern.Axpy(ds, kj, dqi)
						kern.Axpy(ds, qi, dks[j*kw+kvh*dh:j*kw+(kvh+1)*dh])
					}
				}
			}
		}
	})
}

var _ engine.TrainBackend = (*Backend)(nil)
