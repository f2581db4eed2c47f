package engine

import (
	"fmt"
	"math"
)

// RefModel is the float64 reference implementation of the decoder's forward and backward
// passes: plain loops, one sequence at a time, every layer's forward and backward side by side
// (as in llm.c). It is the oracle the backends' training paths are tested against, and is
// only meant for tiny models.
//
// Shapes: L tokens of one sequence, D hidden, H/KV heads, Dh head dim, I intermediate, V vocab.
type RefModel struct {
	Config *Config
	// W holds every weight by its Hugging Face name, row-major.
	W map[string][]float64
}

// NewRefModel copies host weights into a reference model.
func NewRefModel(c *Config, weights map[string]HostTensor) (*RefModel, error) {
	r := &RefModel{Config: c, W: map[string][]float64{}}
	for _, name := range WeightNames(c) {
		w, ok := weights[name]
		if !ok {
			return nil, fmt.Errorf("weight %q is missing", name)
		}
		d := make([]float64, len(w.Data))
		for i, v := range w.Data {
			d[i] = float64(v)
		}
		r.W[name] = d
	}
	return r, nil
}

// RefLoss turns per-token log-probs and entropies into a loss and its derivatives with respect
// to each of them: the general form of both SFT cross-entropy (dLogp = -1/N) and the GRPO
// surrogate (dLogp from the clipped ratio, advantages and KL).
type RefLoss func(logp, entropy []float64) (loss float64, dLogp, dEntropy []float64)

// refLayerActs are the activations of one layer kept for the backward pass.
type refLayerActs struct {
	x        []float64 // [L, D] layer input (residual stream)
	h1, r1   []float64 // [L, D] normed input; [L] inverse rms
	qb, kb   []float64 // [L, H*Dh], [L, KV*Dh] projections with bias, before qk-norm
	rq, rk   []float64 // [L*H], [L*KV] inverse rms of qk-norm
	qn, kn   []float64 // after qk-norm, before RoPE (== qb, kb without qk-norm)
	q, k, v  []float64 // after RoPE (v as projected)
	p        []float64 // [H, L, L] attention probabilities
	a        []float64 // [L, H*Dh] attention output
	xm       []float64 // [L, D] residual after attention
	h2, r2   []float64 // [L, D], [L]
	g, u, mm []float64 // [L, I] gate, up, silu(gate)*up
}

// ForwardBackward runs each sequence, takes log-probs and entropies (temperature 1) at the
// positions listed in targets (targets[s][i] is the id expected after position pos[s][i]),
// evaluates loss on all of them together and returns the loss and the gradient of every
// weight by HF name.
func (r *RefModel) ForwardBackward(seqs [][]int32, pos [][]int, targets [][]int32, loss RefLoss) (float64, map[string][]float64) {
	type seqState struct {
		acts   []refLayerActs
		xf     []float64 // [L, D] final residual
		hf, rf []float64
		probs  [][]float64 // per scored row: softmax [V]
	}
	c := r.Config
	var states []seqState
	var logp, ent []float64
	for s, ids := range seqs {
		st := seqState{}
		x := r.embed(ids)
		for l := 0; l < c.NumHiddenLayers; l++ {
			var a refLayerActs
			x = r.layerForward(l, x, len(ids), &a)
			st.acts = append(st.acts, a)
		}
		st.xf = x
		st.hf, st.rf = rmsnormFwd(x, r.W[NormWeight], c.RMSNormEps)
		head := r.lmHead()
		for i, p := range pos[s] {
			logits := matvecT(st.hf[p*c.HiddenSize:(p+1)*c.HiddenSize], head, c.VocabSize)
			pr, lse := softmax64(logits)
			var h float64
			for j, q := range pr {
				if q > 0 {
					h -= q * (logits[j] - lse)
				}
			}
			logp = append(logp, logits[targets[s][i]]-lse)
			ent = append(ent, h)
			st.probs = append(st.probs, pr)
		}
		states = append(states, st)
	}
	lossV, dlp, dent := loss(logp, ent)

	grads := map[string][]float64{}
	for name, w := range r.W {
		grads[name] = make([]float64, len(w))
	}
	k := 0
	for s, ids := range seqs {
		st := states[s]
		L, D, V := len(ids), c.HiddenSize, c.VocabSize
		dhf := make([]float64, L*D)
		head := r.lmHead()
		dhead := grads[HeadWeight(c)]
		for i, p := range pos[s] {
			pr := st.probs[i]
			// d logp / d z = onehot - p;  d H / d z_j = -p_j (log p_j + H).
			dz := make([]float64, V)
			for j, q := range pr {
				dz[j] = -dlp[k] * q
				if q > 0 {
					dz[j] -= dent[k] * q * (math.Log(q) + ent[k])
				}
			}
			dz[targets[s][i]] += dlp[k]
			hrow := st.hf[p*D : (p+1)*D]
			for j := 0; j < V; j++ {
				if dz[j] == 0 {
					continue
				}
				for d := 0; d < D; d++ {
					dhf[p*D+d] += dz[j] * head[j*D+d]
					dhead[j*D+d] += dz[j] * hrow[d]
				}
			}
			k++
		}
		dx := rmsnormBwd(dhf, st.xf, st.rf, r.W[NormWeight], grads[NormWeight])
		for l := c.NumHiddenLayers - 1; l >= 0; l-- {
			dx = r.layerBackward(l, dx, L, &st.acts[l], grads)
		}
		demb := grads[EmbedWeight]
		for t, id := range ids {
			for d := 0; d < D; d++ {
				demb[int(id)*D+d] += dx[t*D+d]
			}
		}
	}
	return lossV, grads
}

func (r *RefModel) lmHead() []float64 { return r.W[HeadWeight(r.Config)] }

func (r *RefModel) embed(ids []int32) []float64 {
	D := r.Config.HiddenSize
	x := make([]float64, len(ids)*D)
	e := r.W[EmbedWeight]
	for t, id := range ids {
		copy(x[t*D:(t+1)*D], e[int(id)*D:(int(id)+1)*D])
	}
	return x
}

// Logits returns the reference logits [L*V] of one sequence.
func (r *RefModel) Logits(ids []int32) []float64 {
	c := r.Config
	x := r.embed(ids)
	for l := 0; l < c.NumHiddenLayers; l++ {
		var a refLayerActs
		x = r.layerForward(l, x, len(ids), &a)
	}
	h, _ := rmsnormFwd(x, r.W[NormWeight], c.RMSNormEps)
	var out []float64
	for t := range ids {
		out = append(out, matvecT(h[t*c.HiddenSize:(t+1)*c.HiddenSize], r.lmHead(), c.VocabSize)...)
	}
	return out
}

func (r *RefModel) lw(l int, suffix string) []float64 {
	return r.W[LayerWeight(l, suffix)]
}

// layerForward: x [L,D] -> [L,D], filling a.
func (r *RefModel) layerForward(l int, x []float64, L int, a *refLayerActs) []float64 {
	c := r.Config
	D, H, KV, Dh, I := c.HiddenSize, c.NumAttentionHeads, c.NumKeyValueHeads, c.HeadDim, c.IntermediateSize
	a.x = x
	a.h1, a.r1 = rmsnormFwd(x, r.lw(l, InputNormWeight), c.RMSNormEps)
	a.qb = linear(a.h1, L, D, r.lw(l, QProjWeight), H*Dh, r.lw(l, QProjBias))
	a.kb = linear(a.h1, L, D, r.lw(l, KProjWeight), KV*Dh, r.lw(l, KProjBias))
	a.v = linear(a.h1, L, D, r.lw(l, VProjWeight), KV*Dh, r.lw(l, VProjBias))
	a.qn, a.kn = a.qb, a.kb
	if qn := r.lw(l, QNormWeight); qn != nil { // the table has q/k norms for qk-norm configs
		a.qn, a.rq = rmsnormFwd(a.qb, qn, c.RMSNormEps)
		a.kn, a.rk = rmsnormFwd(a.kb, r.lw(l, KNormWeight), c.RMSNormEps)
	}
	inv := c.InvFreq()
	a.q = ropeApply(a.qn, L, Dh, inv, 1, r.Config.RopeAttentionFactor())
	a.k = ropeApply(a.kn, L, Dh, inv, 1, r.Config.RopeAttentionFactor())
	// attention
	scale := 1 / math.Sqrt(float64(Dh))
	a.p = make([]float64, H*L*L)
	a.a = make([]float64, L*H*Dh)
	for h := 0; h < H; h++ {
		kvh := h / (H / KV)
		for i := 0; i < L; i++ {
			row := a.p[(h*L+i)*L : (h*L+i+1)*L]
			mx := math.Inf(-1)
			for j := 0; j <= i; j++ {
				var s float64
				for d := 0; d < Dh; d++ {
					s += a.q[i*H*Dh+h*Dh+d] * a.k[j*KV*Dh+kvh*Dh+d]
				}
				row[j] = s * scale
				mx = math.Max(mx, row[j])
			}
			var z float64
			for j := 0; j <= i; j++ {
				row[j] = math.Exp(row[j] - mx)
				z += row[j]
			}
			for j := 0; j <= i; j++ {
				row[j] /= z
				for d := 0; d < Dh; d++ {
					a.a[i*H*Dh+h*Dh+d] += row[j] * a.v[j*KV*Dh+kvh*Dh+d]
				}
			}
		}
	}
	o := linear(a.a, L, H*Dh, r.lw(l, OProjWeight), D, nil)
	a.xm = make([]float64, L*D)
	for i := range o {
		a.xm[i] = x[i] + o[i]
	}
	a.h2, a.r2 = rmsnormFwd(a.xm, r.lw(l, PostNormWeight), c.RMSNormEps)
	a.g = linear(a.h2, L, D, r.lw(l, GateProjWeight), I, nil)
	a.u = linear(a.h2, L, D, r.lw(l, UpProjWeight), I, nil)
	a.mm = make([]float64, L*I)
	for i := range a.mm {
		a.mm[i] = a.g[i] / (1 + math.Exp(-a.g[i])) * a.u[i]
	}
	dn := linear(a.mm, L, I, r.lw(l, DownProjWeight), D, nil)
	out := make([]float64, L*D)
	for i := range out {
		out[i] = a.xm[i] + dn[i]
	}
	return out
}

// layerBackward: dout [L,D] (gradient of the layer output) -> gradient of the layer input;
// weight gradients are added into grads.
func (r *RefModel) layerBackward(l int, dout []float64, L int, a *refLayerActs, grads map[string][]float64) []float64 {
	c := r.Config
	D, H, KV, Dh, I := c.HiddenSize, c.NumAttentionHeads, c.NumKeyValueHeads, c.HeadDim, c.IntermediateSize
	g := func(suffix string) []float64 { return grads[LayerWeight(l, suffix)] }
	// MLP: out = xm + down(silu(g)*u)
	dmm := linearBwd(dout, a.mm, L, I, r.lw(l, DownProjWeight), D, g(DownProjWeight), nil)
	dg := make([]float64, L*I)
	du := make([]float64, L*I)
	for i := range dmm {
		sg := 1 / (1 + math.Exp(-a.g[i]))
		silu := a.g[i] * sg
		du[i] = dmm[i] * silu
		dg[i] = dmm[i] * a.u[i] * (sg + a.g[i]*sg*(1-sg))
	}
	dh2 := linearBwd(dg, a.h2, L, D, r.lw(l, GateProjWeight), I, g(GateProjWeight), nil)
	dh2b := linearBwd(du, a.h2, L, D, r.lw(l, UpProjWeight), I, g(UpProjWeight), nil)
	for i := range dh2 {
		dh2[i] += dh2b[i]
	}
	dxm := rmsnormBwd(dh2, a.xm, a.r2, r.lw(l, PostNormWeight), g(PostNormWeight))
	for i := range dxm {
		dxm[i] += dout[i]
	}
	// attention: xm = x + o(att)
	da := linearBwd(dxm, a.a, L, H*Dh, r.lw(l, OProjWeight), D, g(OProjWeight), nil)
	scale := 1 / math.Sqrt(float64(Dh))
	dq := make([]float64, L*H*Dh)
	dk := make([]float64, L*KV*Dh)
	dv := make([]float64, L*KV*Dh)
	for h := 0; h < H; h++ {
		kvh := h / (H / KV)
		for i := 0; i < L; i++ {
			row := a.p[(h*L+i)*L : (h*L+i+1)*L]
			dp := make([]float64, i+1)
			var dot float64
			for j := 0; j <= i; j++ {
				for d := 0; d < Dh; d++ {
					dv[j*KV*Dh+kvh*Dh+d] += row[j] * da[i*H*Dh+h*Dh+d]
					dp[j] += da[i*H*Dh+h*Dh+d] * a.v[j*KV*Dh+kvh*Dh+d]
				}
				dot += dp[j] * row[j]
			}
			for j := 0; j <= i; j++ {
				ds := row[j] * (dp[j] - dot) * scale
				for d := 0; d < Dh; d++ {
					dq[i*H*Dh+h*Dh+d] += ds * a.k[j*KV*Dh+kvh*Dh+d]
					dk[j*KV*Dh+kvh*Dh+d] += ds * a.q[i*H*Dh+h*Dh+d]
				}
			}
		}
	}
	inv := c.InvFreq()
	dq = ropeApply(dq, L, Dh, inv, -1, r.Config.RopeAttentionFactor()) // the transpose of a rotation is the opposite rotation
	dk = ropeApply(dk, L, Dh, inv, -1, r.Config.RopeAttentionFactor())
	if r.lw(l, QNormWeight) != nil {
		dq = rmsnormBwd(dq, a.qb, a.rq, r.lw(l, QNormWeight), g(QNormWeight))
		dk = rmsnormBwd(dk, a.kb, a.rk, r.lw(l, KNormWeight), g(KNormWeight))
	}
	dh1 := linearBwd(dq, a.h1, L, D, r.lw(l, QProjWeight), H*Dh, g(QProjWeight), g(QProjBias))
	for _, part := range []struct {
		dy           []float64
		weight, bias string
	}{{dk, KProjWeight, KProjBias}, {dv, VProjWeight, VProjBias}} {
		d := linearBwd(part.dy, a.h1, L, D, r.lw(l, part.weight), KV*Dh, g(part.weight), g(part.bias))
		for i := range dh1 {
			dh1[i] += d[i]
		}
	}
	dx := rmsnormBwd(dh1, a.x, a.r1, r.lw(l, InputNormWeight), g(InputNormWeight))
	for i := range dx {
		dx[i] += dxm[i]
	}
	return dx
}

// rmsnormFwd normalises each group of len(w) values: y = x*r*w with r = 1/sqrt(mean(x²)+eps).
func rmsnormFwd(x, w []float64, eps float64) (y, r []float64) {
	n := len(w)
	y = make([]float64, len(x))
	r = make([]float64, len(x)/n)
	for gi := range r {
		row := x[gi*n : (gi+1)*n]
		var ss float64
		for _, v := range row {
			ss += v * v
		}
		r[gi] = 1 / math.Sqrt(ss/float64(n)+eps)
		for i, v := range row {
			y[gi*n+i] = v * r[gi] * w[i]
		}
	}
	return y, r
}

// rmsnormBwd: dx = r*(w*dy) - x*r³/n * sum(w*dy*x); dw += dy*x*r.
func rmsnormBwd(dy, x, r, w, dw []float64) []float64 {
	n := len(w)
	dx := make([]float64, len(x))
	for gi := range r {
		var s float64
		for i := 0; i < n; i++ {
			s += w[i] * dy[gi*n+i] * x[gi*n+i]
		}
		rr := r[gi]
		for i := 0; i < n; i++ {
			j := gi*n + i
			dx[j] = rr*w[i]*dy[j] - x[j]*rr*rr*rr*s/float64(n)
			dw[i] += dy[j] * x[j] * rr
		}
	}
	return dx
}

// linear: y[L,N] = x[L,K]·Wᵀ (+ b).
func linear(x []float64, L, K int, w []float64, N int, b []float64) []float64 {
	y := make([]float64, L*N)
	for t := 0; t < L; t++ {
		for n := 0; n < N; n++ {
			var s float64
			for k := 0; k < K; k++ {
				s += x[t*K+k] * w[n*K+k]
			}
			if b != nil {
				s += b[n]
			}
			y[t*N+n] = s
		}
	}
	return y
}

// linearBwd: dx = dy·W; dW += dyᵀ·x; db += sum dy.
func linearBwd(dy, x []float64, L, K int, w []float64, N int, dw, db []float64) []float64 {
	dx := make([]float64, L*K)
	for t := 0; t < L; t++ {
		for n := 0; n < N; n++ {
			d := dy[t*N+n]
			if d == 0 {
				continue
			}
			if db != nil {
				db[n] += d
			}
			for k := 0; k < K; k++ {
				dx[t*K+k] += d * w[n*K+k]
				dw[n*K+k] += d * x[t*K+k]
			}
		}
	}
	return dx
}

func matvecT(x, w []float64, n int) []float64 {
	k := len(x)
	y := make([]float64, n)
	for j := 0; j < n; j++ {
		var s float64
		for i, v := range x {
			s += v * w[j*k+i]
		}
		y[j] = s
	}
	return y
}

func softmax64(z []float64) ([]float64, float64) {
	mx := math.Inf(-1)
	for _, v := range z {
		mx = math.Max(mx, v)
	}
	var s float64
	p := make([]float64, len(z))
	for i, v := range z {
		p[i] = math.Exp(v - mx)
		s += p[i]
	}
	for i := range p {
		p[i] /= s
	}
	return p, mx + math.Log(s)
}

// ropeApply rotates x [L, heads*Dh] (rotate-half convention) by +angle (dir 1) or -angle
// (dir -1); token t sits at position t.
func ropeApply(x []float64, L, dh int, inv []float64, dir, scale float64) []float64 {
	half := dh / 2
	width := len(x) / L
	out := make([]float64, len(x))
	for t := 0; t < L; t++ {
		for h := 0; h < width; h += dh {
			row := x[t*width+h : t*width+h+dh]
			o := out[t*width+h : t*width+h+dh]
			for i := 0; i < half; i++ {
				sn, cs := math.Sincos(float64(t) * inv[i])
				sn *= dir * scale
				cs *= scale
				o[i] = row[i]*cs - row[i+half]*sn
				o[i+half] = row[i+half]*cs + row[i]*sn
			}
		}
	}
	return out
}
