package engine

// TrainBackend is a Backend that can also train: parameters it updates in place, the backward
// of every op of the decoder, and the optimizer step. Training runs in fp32 (master weights,
// gradients and optimizer moments); only scalars (SumSquares) come back to the host.
//
// Shapes as in Backend: T tokens of a packed batch of sequences, D hidden size, H/KV heads,
// Dh head dim. Backward ops write (overwrite) the gradient of their inputs unless they say
// they accumulate (+=); weight gradients always accumulate, so micro-batches add up.
type TrainBackend interface {
	Backend

	// UploadParam copies host data into a new trainable fp32 parameter. A parameter serves
	// both as a matmul weight (2-D, [N, K]) and as an ordinary tensor (embedding table, norm,
	// bias); writes through AdamW or Copy are seen by the next MatMul.
	UploadParam(data []float32, shape ...int) (*Tensor, error)

	// AttentionTrain computes causal GQA attention within each sequence of a packed batch:
	// sequence s owns rows seqStart[s]..seqStart[s+1]-1 at positions 0, 1, ... . q [T, H*Dh],
	// k, v [T, KV*Dh] (after RoPE); out [T, H*Dh]; lse [T, H] receives the log-sum-exp of each
	// row's scaled scores for the backward pass.
	AttentionTrain(out, lse, q, k, v *Tensor, seqStart []int32)
	// AttentionBackward writes dq, dk, dv from dout, given the forward's q, k, v, out and lse.
	AttentionBackward(dq, dk, dv, dout, q, k, v, out, lse *Tensor, seqStart []int32)

	// MatMulDX: dx[M,K] = dy[M,N]·w[N,K] (the input gradient of MatMul).
	MatMulDX(dx, dy, w *Tensor)
	// MatMulDW: dw[N,K] += dy[M,N]ᵀ·x[M,K] (the weight gradient of MatMul).
	MatMulDW(dw, dy, x *Tensor)
	// BiasDW: db[N] += Σ_m dy[m, :].
	BiasDW(db, dy *Tensor)
	// RMSNormBackward of out = x / rms(x) * w over groups of len(w): dx = ∂/∂x given dy;
	// dw += ∂/∂w unless dw is nil.
	RMSNormBackward(dx, dw, dy, x, w *Tensor, eps float32)
	// SwiGLUBackward of out = silu(gate)*up: dgate, dup from dout.
	SwiGLUBackward(dgate, dup, dout, gate, up *Tensor)
	// EmbeddingBackward: dtable[ids[t], :] += dx[t, :].
	EmbeddingBackward(dtable, dx *Tensor, ids []int32)
	// ScatterAddRows: out[rows[r], :] += x[r, :] (the backward of GatherRows).
	ScatterAddRows(out, x *Tensor, rows []int32)
	// LogProbsBackward writes into dlogits [R, V] the gradient of
	// Σ_r dlogp[r]·logp_r + dent[r]·H_r, where logp_r = log softmax(logits[r]/temperature) at
	// targets[r] and H_r the entropy of that distribution. dent may be nil. dlogits may alias
	// logits.
	LogProbsBackward(dlogits, logits *Tensor, targets []int32, dlogp, dent []float32, temperature float32)

	// SumSquares returns Σ x² (for the global gradient norm), or the device error that kept it
	// from being computed (never a NaN standing for one).
	SumSquares(x *Tensor) (float64, error)
	// Scale: x *= s; s == 0 clears x (NaN and Inf included).
	Scale(x *Tensor, s float32)
	// Copy: dst = src, same number of elements (dst may be a parameter).
	Copy(dst, src *Tensor)
	// Dropout: out[i] = x[i]·float32(1/(1-p)) where element i (row-major) is kept under
	// (seed, stream), else 0, with the mask of engine/dropout.go (DropoutKey, DropoutBits,
	// DropoutThreshold): the same on every backend, bit for bit, and drawn again by the same
	// call in a backward pass. 0 <= p < 1; out may alias x.
	Dropout(out, x *Tensor, p float32, seed, stream uint64)
	// AdamW updates parameter p in place from gradient g and the moments m, v (fp32 tensors
	// of p's shape), as torch.optim.AdamW: p -= lr·wd·p; m = β1·m + (1-β1)·g;
	// v = β2·v + (1-β2)·g²; p -= lr·(m/bc1) / (sqrt(v/bc2) + eps). With h.GradScale (not 0
	// or 1) g is first scaled as Scale(g, float32(GradScale)) would scale it; g's contents after
	// the call are the backend's (it may scale it in place), or zeros with h.ZeroGrad.
	AdamW(p, g, m, v *Tensor, h AdamWStep)
}

// AdamWStep holds the hyper-parameters of one AdamW update, with the bias corrections
// bc1 = 1-β1^t and bc2 = 1-β2^t of step t worked out by the host.
type AdamWStep struct {
	LR, Beta1, Beta2, Eps, WeightDecay float64
	BC1, BC2                           float64
	// GradScale multiplies the gradient, in float32 as Scale does, before the update: gradient
	// clipping's scale, which the optimizer hands to AdamW (and AdamWMany, one pass over all
	// gradients less) instead of scaling every gradient first. 0 or 1: no scaling.
	GradScale float64
	// ZeroGrad leaves the gradient all zeros after the update (the optimizer's ZeroGrad, which
	// AdamWMany then does in the same pass: one launch per tensor less).
	ZeroGrad bool
}

// ScalesGrad reports whether h scales the gradient (GradScale is neither 0 nor 1).
func (h AdamWStep) ScalesGrad() bool { return h.GradScale != 0 && h.GradScale != 1 }

// AdamWManyBackend is implemented by a TrainBackend that applies AdamW to several tensors in one
// call: AdamWMany(ps, gs, ms, vs, hs) leaves every ps[i], ms[i], vs[i] as AdamW(ps[i], gs[i],
// ms[i], vs[i], hs[i]) would, bit for bit (each tensor with its own hyper-parameters: the
// weight decay differs between weights). The slices have one length. The CUDA backend has it
// (one launch for all tensors); the optimizer falls back to AdamW per tensor on other backends,
// and where the backend's AdamWManySwitch says so.
type AdamWManyBackend interface {
	AdamWMany(ps, gs, ms, vs []*Tensor, hs []AdamWStep)
}

// AdamWManySwitch is implemented by an AdamWManyBackend that may keep AdamWMany off until a run
// on its hardware verified it: where FusesAdamWMany is false the optimizer calls AdamW per
// tensor (the conformance suite checks AdamWMany either way).
type AdamWManySwitch interface {
	FusesAdamWMany() bool
}

// adamWMany applies AdamW to each tensor, through b's AdamWMany where it has one and uses it.
func adamWMany(b TrainBackend, ps, gs, ms, vs []*Tensor, hs []AdamWStep) {
	if sw, ok := b.(AdamWManySwitch); !ok || sw.FusesAdamWMany() {
		if mb, ok := b.(AdamWManyBackend); ok {
			mb.AdamWMany(ps, gs, ms, vs, hs)
			return
		}
	}
	for i, p := range ps {
		b.AdamW(p, gs[i], ms[i], vs[i], hs[i])
	}
}
