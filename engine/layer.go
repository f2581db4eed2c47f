package engine

// The decoder layer, forward and backward side by side. One forward serves generation and
// scoring (attention over the paged KV cache, buffers reused by every layer) and training
// (attention within each sequence of a packed batch, every buffer kept for the backward):
//
//	h1 = input_layernorm(x)
//	q, k, v = h1·Qᵀ (+bias), h1·Kᵀ (+bias), h1·Vᵀ (+bias)
//	q, k = q_norm(q), k_norm(k)              (qk-norm)
//	q, k = rope(q), rope(k)
//	a = attention(q, k, v)
//	xm = x + a·Oᵀ
//	h2 = post_attention_layernorm(xm)
//	out = xm + (silu(h2·Gateᵀ) * h2·Upᵀ)·Downᵀ
//
// Shapes: T tokens, D hidden, H/KV heads, Dh head dim, I intermediate.

// layerActs are one decoder layer's buffers. In generation they are scratch that every layer
// reuses and several fields alias one tensor (see newScratchActs); in training each layer has
// its own, kept for its backward (see Trainer.newActs).
type layerActs struct {
	x       *Tensor // [T, D] layer input
	h1      *Tensor // [T, D] input_layernorm(x)
	qb, kb  *Tensor // [T, H*Dh], [T, KV*Dh] projections before qk-norm; nil: project into q, k
	q, k, v *Tensor // [T, H*Dh], [T, KV*Dh] x2: after qk-norm and RoPE (v as projected)
	a       *Tensor // [T, H*Dh] attention output
	lse     *Tensor // [T, H] log-sum-exp of attention scores (training only)
	o       *Tensor // [T, D] o_proj(a)
	xm      *Tensor // [T, D] residual after attention
	h2      *Tensor // [T, D] post_attention_layernorm(xm)
	g, u    *Tensor // [T, I] gate and up projections
	mm      *Tensor // [T, I] silu(g)*u
	dn      *Tensor // [T, D] down_proj(mm)
	out     *Tensor // [T, D] layer output
	// lu[t] is s·x·Aᵀ [T, r] of LoRA target t, kept for the backward when keepLoRA.
	lu       [numLoRATargets]*Tensor
	keepLoRA bool
}

// attention is the attention step of a layer: it reads a.q, a.k, a.v (after RoPE) and writes
// a.a (and a.lse when it keeps it). written says that QKVRoPE has put a.k and a.v in the KV
// cache already.
type attention interface {
	attend(layer int, a *layerActs, written bool)
}

// pagedAttention attends over the paged KV cache, writing the new keys and values into it.
type pagedAttention struct {
	b     Backend
	kv    KVStore
	batch *AttnBatch
}

func (p pagedAttention) attend(layer int, a *layerActs, written bool) {
	p.batch.KVWritten = written
	p.b.Attention(a.a, a.q, a.k, a.v, p.kv, layer, p.batch)
}

// packedAttention attends within each sequence of a packed training batch and keeps the
// log-sum-exp for the backward.
type packedAttention struct {
	b        TrainBackend
	seqStart []int32 // [S+1]
}

func (p packedAttention) attend(_ int, a *layerActs, _ bool) {
	p.b.AttentionTrain(a.a, a.lse, a.q, a.k, a.v, p.seqStart)
}

// layerPass is what one pass over the layers shares: backend, config, positions, RoPE tables
// and the attention step.
type layerPass struct {
	b        Backend
	c        *Config
	pos      []int32 // [T] position of each token
	cos, sin *Tensor // [P, Dh/2] RoPE tables
	attn     attention
	ad       *Adapters    // LoRA adapters, nil: none
	drop     *loraDropout // LoRA dropout of a training pass, nil: none
}

// forward runs decoder layer li with weights l on a.x, writing every buffer of a; the result
// is a.out.
func (p *layerPass) forward(li int, l *Layer, a *layerActs) {
	b, eps := p.b, float32(p.c.RMSNormEps)
	b.RMSNorm(a.h1, a.x, l.InputNorm, eps)
	qp, kp := a.q, a.k // projections, before qk-norm
	if a.qb != nil {
		qp, kp = a.qb, a.kb
	}
	matMuls(b, []*Tensor{qp, kp, a.v}, a.h1, l.Q, l.K, l.V)
	p.adapt(li, tQ, qp, a.h1, a)
	p.adapt(li, tK, kp, a.h1, a)
	p.adapt(li, tV, a.v, a.h1, a)
	qb, kb, vb := l.QBias, l.KBias, l.VBias // the biases ropeQKV adds
	if l.QNorm != nil {
		// qk-norm sits between the biases and RoPE: the biases go first, on their own.
		if qb != nil {
			b.AddBias(qp, qb)
			b.AddBias(kp, kb)
			b.AddBias(a.v, vb)
			qb, kb, vb = nil, nil, nil
		}
		b.RMSNorm(a.q, qp, l.QNorm, eps)
		b.RMSNorm(a.k, kp, l.KNorm, eps)
	}
	written := p.ropeQKV(li, a, qb, kb, vb)
	p.attn.attend(li, a, written)
	b.MatMul(a.o, a.a, l.O)
	p.adapt(li, tO, a.o, a.a, a)
	addRMSNorm(b, a.xm, a.h2, a.x, a.o, l.PostNorm, eps)
	if p.ad == nil || (p.ad.Layers[li][tGate] == nil && p.ad.Layers[li][tUp] == nil) {
		// gate/up and SwiGLU, one op where the backend fuses them; a training pass keeps the
		// products for the backward (in generation mm is g's buffer and they are scratch).
		gateUpSwiGLU(b, a.mm, a.g, a.u, a.h2, l.Gate, l.Up, a.mm != a.g)
	} else {
		matMuls(b, []*Tensor{a.g, a.u}, a.h2, l.Gate, l.Up)
		p.adapt(li, tGate, a.g, a.h2, a)
		p.adapt(li, tUp, a.u, a.h2, a)
		b.SwiGLU(a.mm, a.g, a.u)
	}
	b.MatMul(a.dn, a.mm, l.Down)
	p.adapt(li, tDown, a.dn, a.mm, a)
	b.Add(a.out, a.xm, a.dn)
}

// ropeQKV adds the biases qb, kb, vb (nil: none) to a.q, a.k, a.v and runs RoPE on a.q and
// a.k: in one QKVRoPE call where the backend fuses it, which in a pass over the paged KV cache
// also writes a.k and a.v there (and ropeQKV reports that it did), else op by op.
func (p *layerPass) ropeQKV(li int, a *layerActs, qb, kb, vb *Tensor) (written bool) {
	b, dh := p.b, p.c.HeadDim
	if fb := fusesQKVRoPE(b); fb != nil {
		var kv KVStore
		var slots []int32
		if pa, ok := p.attn.(pagedAttention); ok {
			kv, slots = pa.kv, pa.batch.Slots
		}
		fb.QKVRoPE(a.q, a.k, a.v, qb, kb, vb, dh, p.pos, p.cos, p.sin, kv, li, slots)
		return kv != nil
	}
	if qb != nil {
		b.AddBias(a.q, qb)
		b.AddBias(a.k, kb)
		b.AddBias(a.v, vb)
	}
	b.RoPE(a.q, dh, p.pos, p.cos, p.sin)
	b.RoPE(a.k, dh, p.pos, p.cos, p.sin)
	return false
}

// newScratchActs allocates the buffers of a generation pass over T tokens, shared by every
// layer: x is the residual stream, updated in place (xm and out are x); h takes the normed
// inputs and each sub-block's output (h1, o, h2, dn); g takes silu(g)*u (mm); qk-norm runs in
// place on q and k. free releases them. They start uninitialised (AllocUninit): the pass writes
// each before it reads it.
func newScratchActs(b Backend, c *Config, T int) (a *layerActs, free func()) {
	x := AllocUninit(b, T, c.HiddenSize)       // [T, D] residual stream
	h := AllocUninit(b, T, c.HiddenSize)       // [T, D] normed input, sub-block output
	q := AllocUninit(b, T, c.QDim())           // [T, H*Dh]
	k := AllocUninit(b, T, c.KVDim())          // [T, KV*Dh]
	v := AllocUninit(b, T, c.KVDim())          // [T, KV*Dh]
	att := AllocUninit(b, T, c.QDim())         // [T, H*Dh]
	g := AllocUninit(b, T, c.IntermediateSize) // [T, I]
	u := AllocUninit(b, T, c.IntermediateSize) // [T, I]
	a = &layerActs{x: x, h1: h, q: q, k: k, v: v, a: att, o: h, xm: x, h2: h, g: g, u: u, mm: g, dn: h, out: x}
	return a, func() {
		for _, t := range []*Tensor{x, h, q, k, v, att, g, u} {
			b.Free(t)
		}
	}
}

// newActs allocates layer buffers for training on input x [T, D], each its own tensor (o is
// xm and dn is out, both added to in place), with the projections kept before qk-norm. They
// start uninitialised (AllocUninit): the forward writes each before it reads it (the adds into
// o and dn follow the MatMuls that write them).
func (t *Trainer) newActs(a *layerActs, x *Tensor) {
	b, c, T := t.b, t.Model.Config, x.Rows()
	a.x = x
	a.h1 = AllocUninit(b, T, c.HiddenSize)
	a.q, a.k, a.v = AllocUninit(b, T, c.QDim()), AllocUninit(b, T, c.KVDim()), AllocUninit(b, T, c.KVDim())
	if c.QKNorm {
		a.qb, a.kb = AllocUninit(b, T, c.QDim()), AllocUninit(b, T, c.KVDim())
	}
	a.a, a.lse = AllocUninit(b, T, c.QDim()), AllocUninit(b, T, c.NumAttentionHeads)
	a.xm = AllocUninit(b, T, c.HiddenSize)
	a.o = a.xm
	a.h2 = AllocUninit(b, T, c.HiddenSize)
	a.g, a.u = AllocUninit(b, T, c.IntermediateSize), AllocUninit(b, T, c.IntermediateSize)
	a.mm = AllocUninit(b, T, c.IntermediateSize)
	a.out = AllocUninit(b, T, c.HiddenSize)
	a.dn = a.out
	a.keepLoRA = t.Model.Adapters != nil
}

// free releases training buffers from newActs except the output (the next layer's input),
// and the input too unless keepInput.
func (a *layerActs) free(b Backend, keepInput bool) {
	for _, p := range []**Tensor{&a.h1, &a.qb, &a.kb, &a.q, &a.k, &a.v, &a.a, &a.lse, &a.xm, &a.h2, &a.g, &a.u, &a.mm} {
		if *p != nil {
			b.Free(*p)
			*p = nil
		}
	}
	for i, u := range a.lu {
		if u != nil {
			b.Free(u)
			a.lu[i] = nil
		}
	}
	a.o, a.dn, a.out = nil, nil, nil
	if !keepInput && a.x != nil {
		b.Free(a.x)
		a.x = nil
	}
}

// layerForward runs decoder layer li on x [T, D] for training, filling acts (which keeps x),
// and returns the layer's output [T, D].
func (t *Trainer) layerForward(li int, x *Tensor, bm *batchMeta, acts *layerActs) *Tensor {
	m := t.Model
	t.newActs(acts, x)
	p := layerPass{b: t.b, c: m.Config, pos: bm.pos, cos: m.cos, sin: m.sin, ad: m.Adapters, drop: t.drop,
		attn: packedAttention{b: t.b, seqStart: bm.seqStart}}
	p.forward(li, &m.Layers[li], acts)
	return acts.out
}

// matmulBack backpropagates out = x·Wᵀ: dx = dy·W (when dx is not nil) and dW += dyᵀ·x
// (when the gradient g is not nil).
func (t *Trainer) matmulBack(dx, dy, x, w, g *Tensor) {
	if dx != nil {
		t.b.MatMulDX(dx, dy, w)
	}
	if g != nil {
		t.b.MatMulDW(g, dy, x)
	}
}

// layerBackward takes dy = ∂L/∂(layer output) [T, D] and returns ∂L/∂x [T, D] (freeing dy),
// accumulating the layer's weight gradients. Its scratch starts uninitialised (AllocUninit): each
// buffer's first op writes it (MatMulDX, SwiGLUBackward, AttentionBackward).
func (t *Trainer) layerBackward(li int, dy *Tensor, bm *batchMeta, a *layerActs) *Tensor {
	b, c := t.b, t.Model.Config
	l, gl := &t.Model.Layers[li], &t.gw.Layers[li]
	T, eps := dy.Rows(), float32(c.RMSNormEps)
	// MLP: out = xm + down(silu(gate(h2)) * up(h2)).
	dmm := AllocUninit(b, T, c.IntermediateSize) // [T, I]
	t.matmulBack(dmm, dy, a.mm, l.Down, gl.Down)
	t.loraBack(li, tDown, dmm, dy, a.mm, a)
	dg, du := AllocUninit(b, T, c.IntermediateSize), AllocUninit(b, T, c.IntermediateSize) // [T, I] x2
	b.SwiGLUBackward(dg, du, dmm, a.g, a.u)
	b.Free(dmm)
	dh := AllocUninit(b, T, c.HiddenSize)  // [T, D]
	tmp := AllocUninit(b, T, c.HiddenSize) // [T, D]
	t.matmulBack(dh, dg, a.h2, l.Gate, gl.Gate)
	t.loraBack(li, tGate, dh, dg, a.h2, a)
	t.matmulBack(tmp, du, a.h2, l.Up, gl.Up)
	t.loraBack(li, tUp, tmp, du, a.h2, a)
	b.Add(dh, dh, tmp)
	b.Free(dg)
	b.Free(du)
	b.RMSNormBackward(tmp, gl.PostNorm, dh, a.xm, l.PostNorm, eps)
	dxm := dy // [T, D] the residual passes dy through
	b.Add(dxm, dxm, tmp)
	t.attentionBackward(li, dh, tmp, dxm, bm, a)
	b.RMSNormBackward(tmp, gl.InputNorm, dh, a.x, l.InputNorm, eps)
	b.Add(dxm, dxm, tmp)
	b.Free(dh)
	b.Free(tmp)
	return dxm
}

// attentionBackward backpropagates xm = x + o_proj(attn(rope(q), rope(k), v)) from dxm [T, D]
// into dh [T, D] = ∂L/∂h1, using tmp [T, D] as scratch.
func (t *Trainer) attentionBackward(li int, dh, tmp, dxm *Tensor, bm *batchMeta, a *layerActs) {
	b, m, c := t.b, t.Model, t.Model.Config
	l, gl := &m.Layers[li], &t.gw.Layers[li]
	T, eps := dxm.Rows(), float32(c.RMSNormEps)
	da := AllocUninit(b, T, c.QDim()) // [T, H*Dh]
	t.matmulBack(da, dxm, a.a, l.O, gl.O)
	t.loraBack(li, tO, da, dxm, a.a, a)
	dq, dk, dv := AllocUninit(b, T, c.QDim()), AllocUninit(b, T, c.KVDim()), AllocUninit(b, T, c.KVDim()) // [T, H*Dh], [T, KV*Dh] x2
	b.AttentionBackward(dq, dk, dv, da, a.q, a.k, a.v, a.a, a.lse, bm.seqStart)
	b.Free(da)
	// RoPE is a rotation: its backward rotates by the opposite angle.
	b.RoPE(dq, c.HeadDim, bm.pos, m.cos, t.negSin)
	b.RoPE(dk, c.HeadDim, bm.pos, m.cos, t.negSin)
	if l.QNorm != nil {
		b.RMSNormBackward(dq, gl.QNorm, dq, a.qb, l.QNorm, eps)
		b.RMSNormBackward(dk, gl.KNorm, dk, a.kb, l.KNorm, eps)
	}
	for _, bb := range [][2]*Tensor{{gl.QBias, dq}, {gl.KBias, dk}, {gl.VBias, dv}} {
		if bb[0] != nil {
			b.BiasDW(bb[0], bb[1])
		}
	}
	t.matmulBack(dh, dq, a.h1, l.Q, gl.Q)
	t.loraBack(li, tQ, dh, dq, a.h1, a)
	t.matmulBack(tmp, dk, a.h1, l.K, gl.K)
	t.loraBack(li, tK, tmp, dk, a.h1, a)
	b.Add(dh, dh, tmp)
	t.matmulBack(tmp, dv, a.h1, l.V, gl.V)
	t.loraBack(li, tV, tmp, dv, a.h1, a)
	b.Add(dh, dh, tmp)
	b.Free(dq)
	b.Free(dk)
	b.Free(dv)
}
