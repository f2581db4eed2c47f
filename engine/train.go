package engine

import (
	"context"
	"fmt"
	"math"
	"regexp"
	"strings"
)

// LossFunc turns the per-token log-probs and entropies of a micro-batch (one slice per
// sequence, for its scored tokens Tokens[Start:]) into a scalar loss and its derivatives with
// respect to each log-prob and each entropy. It is the one interface between the engine and
// every objective: SFT cross-entropy has dLogp = -1/N; the GRPO surrogate computes dLogp from
// the clipped ratio, advantages and KL, and dEntropy from its entropy coefficient. dEntropy
// may be nil when the loss has no entropy term (its backward is then skipped).
type LossFunc func(logp, entropy [][]float64) (loss float64, dLogp, dEntropy [][]float64, err error)

// CrossEntropy is the SFT loss: -Σ logp / norm over the micro-batch's scored tokens. With
// norm = 0 it divides by the micro-batch's own token count; pass the count of the whole batch
// when accumulating gradients over micro-batches so they add up to the big-batch gradient.
func CrossEntropy(norm float64) LossFunc {
	return func(logp, _ [][]float64) (float64, [][]float64, [][]float64, error) {
		n := norm
		if n == 0 {
			for _, s := range logp {
				n += float64(len(s))
			}
		}
		if n == 0 {
			return 0, nil, nil, fmt.Errorf("cross-entropy: no scored tokens")
		}
		var loss float64
		d := make([][]float64, len(logp))
		for i, s := range logp {
			d[i] = make([]float64, len(s))
			for j, v := range s {
				loss -= v / n
				d[i][j] = -1 / n
			}
		}
		return loss, d, nil, nil
	}
}

// WeightedLogProb is the loss Σ w·logp + Σ e·H over scored tokens with per-token weights
// given from outside (entWeights may be nil): the general form the GRPO surrogate reduces to
// for one backward pass.
func WeightedLogProb(weights, entWeights [][]float64) LossFunc {
	return func(logp, ent [][]float64) (float64, [][]float64, [][]float64, error) {
		if len(weights) != len(logp) || (entWeights != nil && len(entWeights) != len(logp)) {
			return 0, nil, nil, fmt.Errorf("weighted log-prob: weights for %d sequences, batch has %d", len(weights), len(logp))
		}
		var loss float64
		for i, s := range logp {
			if len(weights[i]) != len(s) || (entWeights != nil && len(entWeights[i]) != len(s)) {
				return 0, nil, nil, fmt.Errorf("weighted log-prob: sequence %d has %d scored tokens, weights %d", i, len(s), len(weights[i]))
			}
			for j, v := range s {
				loss += weights[i][j] * v
				if entWeights != nil {
					loss += entWeights[i][j] * ent[i][j]
				}
			}
		}
		return loss, weights, entWeights, nil
	}
}

// TrainOptions configures a Trainer.
type TrainOptions struct {
	// Optimizer holds the AdamW hyper-parameters, clipping and schedule.
	Optimizer AdamWConfig
	// Freeze lists regular expressions over HF weight names; matching weights get no gradient
	// and are never updated (e.g. `^model\.layers\.[0-5]\.` trains only the upper layers).
	Freeze []string
	// Recompute keeps only each layer's input during the forward pass and recomputes the
	// layer's activations right before its backward (less memory, about 1/3 more compute).
	Recompute bool
	// Temperature of the log-probs the loss sees (the rollout temperature); 0 means 1.
	Temperature float32
	// MaxLogitRows bounds the rows of [rows, vocab] logits materialised at once.
	MaxLogitRows int
}

// Trainer trains a model in place: the model's weights become trainable fp32 parameters on a
// TrainBackend, with gradients and AdamW state beside them. Generation and scoring keep
// working on the same model, so rollouts always see the latest weights.
type Trainer struct {
	Model *Model

	b      TrainBackend
	opts   TrainOptions
	names  []string           // trainable parameter names, fixed order
	params map[string]*Tensor // by HF name (tied lm head: only the embedding)
	grads  map[string]*Tensor // trainable ones only
	frozen map[string]bool
	negSin *Tensor // -sin table for the RoPE backward
	opt    *adamW
}

// NewTrainer turns m's weights into trainable parameters on m's backend, which must be a
// TrainBackend. BF16 linear weights are widened to fp32 master weights.
func NewTrainer(m *Model, opts TrainOptions) (*Trainer, error) {
	b, ok := m.Backend.(TrainBackend)
	if !ok {
		return nil, fmt.Errorf("train: backend %s cannot train", m.Backend.Name())
	}
	if opts.Temperature == 0 {
		opts.Temperature = 1
	}
	if !(opts.Temperature > 0) {
		return nil, fmt.Errorf("train: temperature must be positive, got %g", opts.Temperature)
	}
	var res []*regexp.Regexp
	for _, f := range opts.Freeze {
		re, err := regexp.Compile(f)
		if err != nil {
			return nil, fmt.Errorf("train: freeze pattern %q: %w", f, err)
		}
		res = append(res, re)
	}
	t := &Trainer{Model: m, b: b, opts: opts, params: map[string]*Tensor{}, grads: map[string]*Tensor{}, frozen: map[string]bool{}}
	for _, s := range m.specs() {
		old := *s.dst
		host := make([]float32, old.Len())
		if err := b.Download(old, host); err != nil {
			return nil, fmt.Errorf("train: weight %q: %w", s.name, err)
		}
		p, err := b.UploadParam(host, s.shape...)
		if err != nil {
			return nil, fmt.Errorf("train: weight %q: %w", s.name, err)
		}
		b.Free(old)
		*s.dst = p
		m.weights[s.name] = p
		t.params[s.name] = p
		for _, re := range res {
			if re.MatchString(s.name) {
				t.frozen[s.name] = true
			}
		}
		if !t.frozen[s.name] {
			t.names = append(t.names, s.name)
			t.grads[s.name] = b.Alloc(s.shape...)
		}
	}
	if len(res) > 0 && len(t.frozen) == 0 {
		return nil, fmt.Errorf("train: freeze patterns %q match no weight", opts.Freeze)
	}
	if m.Config.TieWordEmbeddings {
		b.Free(m.LMHead)
		m.LMHead = m.Embed
	}
	m.WeightDType = F32
	t.opt = newAdamW(t)
	if err := t.opt.check(); err != nil {
		return nil, err
	}
	return t, nil
}

// TrainableNames lists the names of the parameters that receive gradients.
func (t *Trainer) TrainableNames() []string { return append([]string(nil), t.names...) }

// Grad downloads the accumulated gradient of a trainable parameter (HF name).
func (t *Trainer) Grad(name string) ([]float32, error) {
	g, ok := t.grads[name]
	if !ok {
		return nil, fmt.Errorf("train: no gradient for %q (unknown or frozen)", name)
	}
	out := make([]float32, g.Len())
	return out, t.b.Download(g, out)
}

// ZeroGrad clears the accumulated gradients.
func (t *Trainer) ZeroGrad() {
	for _, g := range t.grads {
		t.b.Scale(g, 0)
	}
}

// layerActs are one layer's activations kept for its backward pass (shapes per comment).
type layerActs struct {
	x       *Tensor // [T, D] layer input
	h1      *Tensor // [T, D] input_layernorm(x)
	qb, kb  *Tensor // [T, H*Dh], [T, KV*Dh] projections before qk-norm (qk-norm only)
	q, k, v *Tensor // [T, H*Dh], [T, KV*Dh] x2: after qk-norm and RoPE (v as projected)
	a       *Tensor // [T, H*Dh] attention output
	lse     *Tensor // [T, H] log-sum-exp of attention scores
	xm      *Tensor // [T, D] residual after attention
	h2      *Tensor // [T, D] post_attention_layernorm(xm)
	g, u    *Tensor // [T, I] gate and up projections
	mm      *Tensor // [T, I] silu(g)*u
}

func (a *layerActs) free(b Backend, keepInput bool) {
	for _, p := range []**Tensor{&a.h1, &a.qb, &a.kb, &a.q, &a.k, &a.v, &a.a, &a.lse, &a.xm, &a.h2, &a.g, &a.u, &a.mm} {
		if *p != nil {
			b.Free(*p)
			*p = nil
		}
	}
	if !keepInput && a.x != nil {
		b.Free(a.x)
		a.x = nil
	}
}

// batchMeta is the packing of a micro-batch.
type batchMeta struct {
	ids, pos []int32 // [T]
	seqStart []int32 // [S+1]
	rows     []int32 // [R] rows whose logits are scored
	targets  []int32 // [R]
	nScored  []int   // [S]
}

func (m *Model) packBatch(seqs []ScoreRequest) (*batchMeta, error) {
	c := m.Config
	bm := &batchMeta{seqStart: []int32{0}}
	for i, s := range seqs {
		if s.Start < 1 || s.Start > len(s.Tokens) {
			return nil, fmt.Errorf("train sequence %d: start %d outside [1,%d]", i, s.Start, len(s.Tokens))
		}
		if len(s.Tokens) > c.MaxPositionEmbeddings {
			return nil, fmt.Errorf("train sequence %d: %d tokens exceed max_position_embeddings %d", i, len(s.Tokens), c.MaxPositionEmbeddings)
		}
		off := int32(len(bm.ids))
		for p, id := range s.Tokens {
			if id < 0 || int(id) >= c.VocabSize {
				return nil, fmt.Errorf("train sequence %d: token id %d at %d outside vocabulary [0,%d)", i, id, p, c.VocabSize)
			}
			bm.ids = append(bm.ids, id)
			bm.pos = append(bm.pos, int32(p))
		}
		for p := s.Start; p < len(s.Tokens); p++ {
			bm.rows = append(bm.rows, off+int32(p-1))
			bm.targets = append(bm.targets, s.Tokens[p])
		}
		bm.nScored = append(bm.nScored, len(s.Tokens)-s.Start)
		bm.seqStart = append(bm.seqStart, int32(len(bm.ids)))
	}
	return bm, nil
}

// layerForward runs decoder layer li on x [T, D], filling acts (which keeps x), and returns
// the layer's output [T, D].
func (t *Trainer) layerForward(li int, x *Tensor, bm *batchMeta, acts *layerActs) *Tensor {
	m, b, c := t.Model, t.b, t.Model.Config
	l := &m.Layers[li]
	T, eps := x.Rows(), float32(c.RMSNormEps)
	acts.x = x
	acts.h1 = b.Alloc(T, c.HiddenSize)
	b.RMSNorm(acts.h1, x, l.InputNorm, eps)
	acts.q, acts.k, acts.v = b.Alloc(T, c.QDim()), b.Alloc(T, c.KVDim()), b.Alloc(T, c.KVDim())
	b.MatMul(acts.q, acts.h1, l.Q)
	b.MatMul(acts.k, acts.h1, l.K)
	b.MatMul(acts.v, acts.h1, l.V)
	if l.QBias != nil {
		b.AddBias(acts.q, l.QBias)
		b.AddBias(acts.k, l.KBias)
		b.AddBias(acts.v, l.VBias)
	}
	if l.QNorm != nil {
		acts.qb, acts.kb = b.Alloc(T, c.QDim()), b.Alloc(T, c.KVDim())
		t.b.Copy(acts.qb, acts.q)
		t.b.Copy(acts.kb, acts.k)
		b.RMSNorm(acts.q, acts.qb, l.QNorm, eps)
		b.RMSNorm(acts.k, acts.kb, l.KNorm, eps)
	}
	b.RoPE(acts.q, c.HeadDim, bm.pos, m.cos, m.sin)
	b.RoPE(acts.k, c.HeadDim, bm.pos, m.cos, m.sin)
	acts.a, acts.lse = b.Alloc(T, c.QDim()), b.Alloc(T, c.NumAttentionHeads)
	b.AttentionTrain(acts.a, acts.lse, acts.q, acts.k, acts.v, bm.seqStart)
	acts.xm = b.Alloc(T, c.HiddenSize)
	b.MatMul(acts.xm, acts.a, l.O)
	b.Add(acts.xm, acts.xm, x)
	acts.h2 = b.Alloc(T, c.HiddenSize)
	b.RMSNorm(acts.h2, acts.xm, l.PostNorm, eps)
	acts.g, acts.u = b.Alloc(T, c.IntermediateSize), b.Alloc(T, c.IntermediateSize)
	b.MatMul(acts.g, acts.h2, l.Gate)
	b.MatMul(acts.u, acts.h2, l.Up)
	acts.mm = b.Alloc(T, c.IntermediateSize)
	b.SwiGLU(acts.mm, acts.g, acts.u)
	out := b.Alloc(T, c.HiddenSize)
	b.MatMul(out, acts.mm, l.Down)
	b.Add(out, out, acts.xm)
	return out
}

// grad returns the gradient tensor of a layer weight, or nil when it is frozen.
func (t *Trainer) grad(name string) *Tensor { return t.grads[name] }

// matmulBack backpropagates out = x·Wᵀ: dx = dy·W (when dx is not nil) and dW += dyᵀ·x.
func (t *Trainer) matmulBack(dx, dy, x, w *Tensor, name string) {
	if dx != nil {
		t.b.MatMulDX(dx, dy, w)
	}
	if g := t.grad(name); g != nil {
		t.b.MatMulDW(g, dy, x)
	}
}

// layerBackward takes dy = ∂L/∂(layer output) [T, D] and returns ∂L/∂x [T, D] (freeing dy),
// accumulating the layer's weight gradients.
func (t *Trainer) layerBackward(li int, dy *Tensor, bm *batchMeta, a *layerActs) *Tensor {
	m, b, c := t.Model, t.b, t.Model.Config
	l := &m.Layers[li]
	T, eps := dy.Rows(), float32(c.RMSNormEps)
	p := fmt.Sprintf("model.layers.%d.", li)
	// MLP: out = xm + down(silu(gate(h2)) * up(h2)).
	dmm := b.Alloc(T, c.IntermediateSize)
	t.matmulBack(dmm, dy, a.mm, l.Down, p+"mlp.down_proj.weight")
	dg, du := b.Alloc(T, c.IntermediateSize), b.Alloc(T, c.IntermediateSize)
	b.SwiGLUBackward(dg, du, dmm, a.g, a.u)
	b.Free(dmm)
	dh := b.Alloc(T, c.HiddenSize)
	tmp := b.Alloc(T, c.HiddenSize)
	t.matmulBack(dh, dg, a.h2, l.Gate, p+"mlp.gate_proj.weight")
	t.matmulBack(tmp, du, a.h2, l.Up, p+"mlp.up_proj.weight")
	b.Add(dh, dh, tmp)
	b.Free(dg)
	b.Free(du)
	b.RMSNormBackward(tmp, t.grad(p+"post_attention_layernorm.weight"), dh, a.xm, l.PostNorm, eps)
	dxm := dy // the residual passes dy through
	b.Add(dxm, dxm, tmp)
	// Attention: xm = x + o_proj(attn(rope(q), rope(k), v)).
	da := b.Alloc(T, c.QDim())
	t.matmulBack(da, dxm, a.a, l.O, p+"self_attn.o_proj.weight")
	dq, dk, dv := b.Alloc(T, c.QDim()), b.Alloc(T, c.KVDim()), b.Alloc(T, c.KVDim())
	b.AttentionBackward(dq, dk, dv, da, a.q, a.k, a.v, a.a, a.lse, bm.seqStart)
	b.Free(da)
	// RoPE is a rotation: its backward rotates by the opposite angle.
	b.RoPE(dq, c.HeadDim, bm.pos, m.cos, t.negSin)
	b.RoPE(dk, c.HeadDim, bm.pos, m.cos, t.negSin)
	if l.QNorm != nil {
		b.RMSNormBackward(dq, t.grad(p+"self_attn.q_norm.weight"), dq, a.qb, l.QNorm, eps)
		b.RMSNormBackward(dk, t.grad(p+"self_attn.k_norm.weight"), dk, a.kb, l.KNorm, eps)
	}
	if l.QBias != nil {
		for _, bb := range []struct {
			d    *Tensor
			name string
		}{{dq, "q"}, {dk, "k"}, {dv, "v"}} {
			if g := t.grad(p + "self_attn." + bb.name + "_proj.bias"); g != nil {
				b.BiasDW(g, bb.d)
			}
		}
	}
	t.matmulBack(dh, dq, a.h1, l.Q, p+"self_attn.q_proj.weight")
	t.matmulBack(tmp, dk, a.h1, l.K, p+"self_attn.k_proj.weight")
	b.Add(dh, dh, tmp)
	t.matmulBack(tmp, dv, a.h1, l.V, p+"self_attn.v_proj.weight")
	b.Add(dh, dh, tmp)
	b.Free(dq)
	b.Free(dk)
	b.Free(dv)
	b.RMSNormBackward(tmp, t.grad(p+"input_layernorm.weight"), dh, a.x, l.InputNorm, eps)
	b.Add(dxm, dxm, tmp)
	b.Free(dh)
	b.Free(tmp)
	return dxm
}

// StepStats reports one ForwardBackward call.
type StepStats struct {
	Loss    float64
	Tokens  int         // tokens in the micro-batch
	Scored  int         // scored tokens
	LogProb [][]float64 // per sequence, per scored token
	Entropy [][]float64
}

// ForwardBackward runs the micro-batch seqs (each from position 0, scored on Tokens[Start:])
// forward, evaluates loss on the per-token log-probs and entropies, and accumulates the
// gradient of every trainable weight (call ZeroGrad between optimizer steps). Sequences are
// packed without padding; attention stays within each sequence.
func (t *Trainer) ForwardBackward(ctx context.Context, seqs []ScoreRequest, loss LossFunc) (*StepStats, error) {
	m, b, c := t.Model, t.b, t.Model.Config
	bm, err := m.packBatch(seqs)
	if err != nil {
		return nil, err
	}
	T := len(bm.ids)
	maxLen := 0
	for _, s := range seqs {
		maxLen = max(maxLen, len(s.Tokens))
	}
	if err := t.ensureRope(maxLen); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	// Forward, keeping every layer's activations (or only its input, with Recompute).
	acts := make([]layerActs, c.NumHiddenLayers)
	defer func() {
		for i := range acts {
			acts[i].free(b, false)
		}
	}()
	x := b.Alloc(T, c.HiddenSize)
	b.Embedding(x, m.Embed, bm.ids)
	for li := range acts {
		out := t.layerForward(li, x, bm, &acts[li])
		if t.opts.Recompute {
			acts[li].free(b, true)
		}
		x = out
	}
	xf := x // [T, D] final residual
	defer b.Free(xf)
	if err := ctx.Err(); err != nil {
		return nil, err
	}

	// Head: log-probs of the scored rows, in chunks of rows.
	R := len(bm.rows)
	chunk := t.opts.MaxLogitRows
	if chunk <= 0 {
		chunk = max(1, min(1024, (64<<20)/(4*c.VocabSize)))
	}
	xr := b.Alloc(R, c.HiddenSize) // [R, D] scored rows of the final residual
	defer b.Free(xr)
	b.GatherRows(xr, xf, bm.rows)
	hn := b.Alloc(R, c.HiddenSize) // [R, D] after the final norm
	defer b.Free(hn)
	b.RMSNorm(hn, xr, m.Norm, float32(c.RMSNormEps))
	lp := make([]float32, 0, R)
	ent := make([]float32, 0, R)
	var kept []*Tensor // logits chunks kept for the backward when they are few
	keep := R*c.VocabSize <= 32<<20
	defer func() {
		for _, l := range kept {
			b.Free(l)
		}
	}()
	for r0 := 0; r0 < R; r0 += chunk {
		r1 := min(R, r0+chunk)
		logits := t.chunkLogits(hn, r0, r1)
		l, e, err := b.LogProbs(logits, bm.targets[r0:r1], t.opts.Temperature)
		if err != nil {
			b.Free(logits)
			return nil, err
		}
		lp, ent = append(lp, l...), append(ent, e...)
		if keep {
			kept = append(kept, logits)
		} else {
			b.Free(logits)
		}
	}
	st := &StepStats{Tokens: T, Scored: R}
	off := 0
	for _, n := range bm.nScored {
		sl, se := make([]float64, n), make([]float64, n)
		for j := 0; j < n; j++ {
			sl[j], se[j] = float64(lp[off+j]), float64(ent[off+j])
		}
		st.LogProb, st.Entropy = append(st.LogProb, sl), append(st.Entropy, se)
		off += n
	}
	lossV, dlp, dent, err := loss(st.LogProb, st.Entropy)
	if err != nil {
		return nil, fmt.Errorf("train: loss: %w", err)
	}
	if math.IsNaN(lossV) || math.IsInf(lossV, 0) {
		return nil, fmt.Errorf("train: loss is %v", lossV)
	}
	st.Loss = lossV
	dlpf, err := flatten(dlp, bm.nScored, "dLogp")
	if err != nil {
		return nil, err
	}
	var dentf []float32
	if dent != nil {
		if dentf, err = flatten(dent, bm.nScored, "dEntropy"); err != nil {
			return nil, err
		}
	}

	// Backward through the head, chunk by chunk.
	dhn := b.Alloc(R, c.HiddenSize) // [R, D]
	defer b.Free(dhn)
	headName := "lm_head.weight"
	if c.TieWordEmbeddings {
		headName = "model.embed_tokens.weight"
	}
	for i, r0 := 0, 0; r0 < R; i, r0 = i+1, r0+chunk {
		r1 := min(R, r0+chunk)
		var logits *Tensor
		if keep {
			logits = kept[i]
		} else {
			logits = t.chunkLogits(hn, r0, r1)
		}
		var de []float32
		if dentf != nil {
			de = dentf[r0:r1]
		}
		b.LogProbsBackward(logits, logits, bm.targets[r0:r1], dlpf[r0:r1], de, t.opts.Temperature)
		dpart := b.Alloc(r1-r0, c.HiddenSize)
		b.MatMulDX(dpart, logits, m.LMHead)
		if g := t.grad(headName); g != nil {
			hpart := b.Alloc(r1-r0, c.HiddenSize)
			b.GatherRows(hpart, hn, seqRange(r0, r1))
			b.MatMulDW(g, logits, hpart)
			b.Free(hpart)
		}
		b.ScatterAddRows(dhn, dpart, seqRange(r0, r1))
		b.Free(dpart)
		if !keep {
			b.Free(logits)
		}
	}
	dxr := b.Alloc(R, c.HiddenSize)
	b.RMSNormBackward(dxr, t.grad("model.norm.weight"), dhn, xr, m.Norm, float32(c.RMSNormEps))
	dx := b.Alloc(T, c.HiddenSize) // [T, D] ∂L/∂(final residual)
	b.ScatterAddRows(dx, dxr, bm.rows)
	b.Free(dxr)

	// Layers, last to first.
	for li := len(acts) - 1; li >= 0; li-- {
		if err := ctx.Err(); err != nil {
			b.Free(dx)
			return nil, err
		}
		if t.opts.Recompute {
			out := t.layerForward(li, acts[li].x, bm, &acts[li])
			b.Free(out)
		}
		dx = t.layerBackward(li, dx, bm, &acts[li])
		acts[li].free(b, false)
	}
	if g := t.grad("model.embed_tokens.weight"); g != nil {
		b.EmbeddingBackward(g, dx, bm.ids)
	}
	b.Free(dx)
	return st, nil
}

// chunkLogits returns the logits [r1-r0, V] of rows r0..r1-1 of hn.
func (t *Trainer) chunkLogits(hn *Tensor, r0, r1 int) *Tensor {
	b, c := t.b, t.Model.Config
	part := b.Alloc(r1-r0, c.HiddenSize)
	b.GatherRows(part, hn, seqRange(r0, r1))
	logits := b.Alloc(r1-r0, c.VocabSize)
	b.MatMul(logits, part, t.Model.LMHead)
	b.Free(part)
	return logits
}

func seqRange(lo, hi int) []int32 {
	s := make([]int32, hi-lo)
	for i := range s {
		s[i] = int32(lo + i)
	}
	return s
}

func flatten(d [][]float64, n []int, what string) ([]float32, error) {
	if len(d) != len(n) {
		return nil, fmt.Errorf("train: loss returned %s for %d sequences, batch has %d", what, len(d), len(n))
	}
	var out []float32
	for i, s := range d {
		if len(s) != n[i] {
			return nil, fmt.Errorf("train: loss returned %d %s values for sequence %d, which has %d scored tokens", len(s), what, i, n[i])
		}
		for _, v := range s {
			if math.IsNaN(v) || math.IsInf(v, 0) {
				return nil, fmt.Errorf("train: loss returned %s = %v for sequence %d", what, v, i)
			}
			out = append(out, float32(v))
		}
	}
	return out, nil
}

// ensureRope grows the model's RoPE tables and the negated sine table of the backward.
func (t *Trainer) ensureRope(n int) error {
	m := t.Model
	if err := m.ensureRope(n); err != nil {
		return err
	}
	if t.negSin != nil && t.negSin.Rows() == m.ropeLen {
		return nil
	}
	s := make([]float32, m.sin.Len())
	if err := t.b.Download(m.sin, s); err != nil {
		return err
	}
	for i := range s {
		s[i] = -s[i]
	}
	ns, err := t.b.Upload(F32, s, false, m.sin.Shape...)
	if err != nil {
		return err
	}
	t.b.Free(t.negSin)
	t.negSin = ns
	return nil
}

// HostWeights downloads every weight of m by HF name (the tied LM head is not listed).
func (m *Model) HostWeights() (map[string]HostTensor, error) {
	out := map[string]HostTensor{}
	for _, s := range m.specs() {
		w := *s.dst
		data := make([]float32, w.Len())
		if err := m.Backend.Download(w, data); err != nil {
			return nil, fmt.Errorf("weight %q: %w", s.name, err)
		}
		out[s.name] = HostTensor{Shape: append([]int(nil), s.shape...), Data: data}
	}
	return out, nil
}

// Snapshot returns an independent inference copy of m (linear weights as dt) on the same
// backend: the frozen reference policy, sharing nothing mutable with m.
func (m *Model) Snapshot(dt DType) (*Model, error) {
	w, err := m.HostWeights()
	if err != nil {
		return nil, err
	}
	return NewModel(m.Config, m.Backend, w, dt)
}

// LoadWeights overwrites m's weights in place from host tensors (HF names, as NewModel takes
// them): a reference reset to a checkpoint, or new weights pushed to a server. Every weight
// must be present with its shape; nothing is changed on error.
func (t *Trainer) LoadWeights(weights map[string]HostTensor) error {
	for name := range t.params {
		w, ok := weights[name]
		if !ok {
			return fmt.Errorf("load weights: weight %q is missing", name)
		}
		if !equalShape(w.Shape, t.params[name].Shape) || len(w.Data) != t.params[name].Len() {
			return fmt.Errorf("load weights: weight %q has shape %v, want %v", name, w.Shape, t.params[name].Shape)
		}
	}
	var extra []string
	for name := range weights {
		if _, ok := t.params[name]; !ok {
			extra = append(extra, name)
		}
	}
	if len(extra) > 0 {
		return fmt.Errorf("load weights: unexpected weight(s) %s", strings.Join(extra, ", "))
	}
	for name, p := range t.params {
		w := weights[name]
		src, err := t.b.Upload(F32, w.Data, false, w.Shape...)
		if err != nil {
			return fmt.Errorf("load weights: %q: %w", name, err)
		}
		t.b.Copy(p, src)
		t.b.Free(src)
	}
	return nil
}

// SetTemperature sets the temperature of the log-probs ForwardBackward hands to the loss (the
// rollout temperature, so that they match the old and reference log-probs).
func (t *Trainer) SetTemperature(temp float32) error {
	if !(temp > 0) {
		return fmt.Errorf("train: temperature must be positive, got %g", temp)
	}
	t.opts.Temperature = temp
	return nil
}

// Temperature is the temperature of the log-probs ForwardBackward computes.
func (t *Trainer) Temperature() float32 { return t.opts.Temperature }
