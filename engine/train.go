package engine

import (
	"context"
	"fmt"
	"regexp"
	"slices"
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

// TokenLoss is a loss that adds up one term per scored token, each a function of that token's
// own log-prob and entropy: SFT cross-entropy, or any per-token weighting whose weights are
// known before the forward pass. Since a token's derivatives are known as soon as its log-prob
// is, Trainer.ForwardBackwardTokens computes the LM head's gradients in the same pass as its
// log-probs.
type TokenLoss struct {
	// Term returns the loss term of scored token tok of sequence seq of the micro-batch, given
	// its log-prob and entropy, with its derivatives with respect to both.
	Term func(seq, tok int, logp, entropy float64) (loss, dLogp, dEntropy float64)
	// Entropy says whether Term depends on the entropy; when false its dEntropy is ignored and
	// the entropy's backward is skipped.
	Entropy bool
}

// LossFunc is the same loss as a LossFunc, for ForwardBackward: the terms in order (sequence
// by sequence, token by token), summed; a term that is not finite (or its derivatives) is an
// error naming the sequence and the token, as in ForwardBackwardTokens.
func (tl TokenLoss) LossFunc() LossFunc {
	return func(logp, ent [][]float64) (float64, [][]float64, [][]float64, error) {
		var loss float64
		dl := make([][]float64, len(logp))
		var de [][]float64
		if tl.Entropy {
			de = make([][]float64, len(logp))
		}
		for i, s := range logp {
			dl[i] = make([]float64, len(s))
			if de != nil {
				de[i] = make([]float64, len(s))
			}
			for j, v := range s {
				l, d, e := tl.Term(i, j, v, ent[i][j])
				if err := checkTerm(i, j, l, d, e); err != nil {
					return 0, nil, nil, err
				}
				loss += l
				dl[i][j] = d
				if de != nil {
					de[i][j] = e
				}
			}
		}
		return loss, dl, de, nil
	}
}

// TokenCrossEntropy is CrossEntropy(norm) as a TokenLoss: -logp / norm per scored token. norm
// must be positive (the scored-token count of the whole batch, or of the micro-batch).
func TokenCrossEntropy(norm float64) TokenLoss {
	return TokenLoss{Term: func(_, _ int, logp, _ float64) (float64, float64, float64) {
		return -logp / norm, -1 / norm, 0
	}}
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
	// MaxLogitRows bounds the rows of [rows, vocab] logits materialised at once; 0 means as many
	// as the backend's logit budget holds (DefaultLogitBudget, or LogitBudgeter's), at most 1024.
	MaxLogitRows int
	// LoRA, with Rank > 0, trains LoRA adapters instead of the weights: every base weight
	// stays frozen as the model holds it (F32 or BF16), and only the adapters' A and B (fp32)
	// get gradients and AdamW state. Freeze must be empty. With LoRA.Dropout > 0, training
	// passes drop the adapters' inputs (see SetDropoutKey).
	LoRA LoRAConfig
	// LoRAInit are the adapters to start from (names as LoRASpecs, e.g. an adapter a run
	// exported); nil: InitLoRA from LoRA.Seed.
	LoRAInit map[string]HostTensor
	// Shard, when set, shards the AdamW moments over its ranks from the start (ZeRO-1, see
	// Trainer.ShardOptimizer): this rank never holds the whole moments.
	Shard ShardComm
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
	gw     WeightSet          // the same gradients as the model lays out its weights (nil: frozen)
	frozen map[string]bool
	negSin *Tensor // -sin table for the RoPE backward
	opt    *adamW
	// lgrads are the gradients of the LoRA adapters, laid out as Model.Adapters.Layers.
	lgrads [][numLoRATargets]*LoRAPair
	// dropStep and dropMicro key the LoRA dropout masks of the next ForwardBackward
	// (SetDropoutKey); drop is the dropout of the pass under way (nil: none, or no pass).
	dropStep, dropMicro uint64
	drop                *loraDropout
	// layerOf is the decoder layer of each trainable weight (-1: the embedding, the final norm,
	// the LM head); gradReady is the next pass's SetGradReady.
	layerOf   map[string]int
	gradReady func(group int)
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
	t := &Trainer{Model: m, b: b, opts: opts, params: map[string]*Tensor{}, grads: map[string]*Tensor{}, frozen: map[string]bool{}, layerOf: map[string]int{},
		gw: WeightSet{Layers: make([]Layer, len(m.Layers))}}
	if opts.LoRA.Rank > 0 {
		return t, t.initLoRA()
	}
	for _, s := range m.table.Specs {
		if err := t.addParam(s, res); err != nil {
			return nil, err
		}
	}
	if len(res) > 0 && len(t.frozen) == 0 {
		return nil, fmt.Errorf("train: freeze patterns %q match no weight", opts.Freeze)
	}
	if m.Config.TieWordEmbeddings {
		b.Free(m.LMHead)
		m.LMHead = m.Embed
		t.gw.LMHead = t.gw.Embed
	}
	m.WeightDType = F32
	t.opt = newAdamW(t)
	if err := t.opt.check(); err != nil {
		return nil, err
	}
	return t, nil
}

// initLoRA attaches trainable adapters to the model (TrainOptions.LoRAInit, or fresh ones) and
// makes them the only parameters; the base weights stay as they are, frozen.
func (t *Trainer) initLoRA() error {
	m, lc := t.Model, t.opts.LoRA
	switch {
	case len(t.opts.Freeze) > 0:
		return fmt.Errorf("train: --freeze does not apply to LoRA training (the base is frozen; choose the adapted layers with the LoRA targets)")
	case lc.Dropout > 0 && len(m.Layers) >= 1<<12:
		return fmt.Errorf("train: lora dropout keys masks by layer below 4096; the model has %d layers", len(m.Layers))
	case m.Adapters != nil:
		return fmt.Errorf("train: the model already has adapters")
	}
	w := t.opts.LoRAInit
	if w == nil {
		var err error
		if w, err = InitLoRA(m.Config, lc); err != nil {
			return fmt.Errorf("train: %w", err)
		}
	}
	if err := m.AttachLoRA(lc, w, true); err != nil {
		return fmt.Errorf("train: %w", err)
	}
	specs, _ := LoRASpecs(m.Config, lc)
	t.lgrads = make([][numLoRATargets]*LoRAPair, len(m.Layers))
	for _, s := range specs {
		g := t.b.Alloc(s.Shape...)
		t.names = append(t.names, s.Name)
		t.layerOf[s.Name] = s.Layer
		t.params[s.Name] = m.Adapters.tensor(s)
		t.grads[s.Name] = g
		gp := t.lgrads[s.Layer][s.target]
		if gp == nil {
			gp = &LoRAPair{}
			t.lgrads[s.Layer][s.target] = gp
		}
		if s.isB {
			gp.B = g
		} else {
			gp.A = g
		}
	}
	t.opt = newAdamW(t)
	return t.opt.check()
}

// addParam turns the model's weight s into a trainable parameter, with a gradient unless a
// freeze pattern matches its name.
func (t *Trainer) addParam(s WeightSpec, freeze []*regexp.Regexp) error {
	b, m := t.b, t.Model
	old := *s.In(&m.WeightSet)
	host := make([]float32, old.Len())
	if err := b.Download(old, host); err != nil {
		return fmt.Errorf("train: weight %q: %w", s.Name, err)
	}
	p, err := b.UploadParam(host, s.Shape...)
	if err != nil {
		return fmt.Errorf("train: weight %q: %w", s.Name, err)
	}
	b.Free(old)
	*s.In(&m.WeightSet) = p
	m.weights[s.Name] = p
	t.params[s.Name] = p
	for _, re := range freeze {
		if re.MatchString(s.Name) {
			t.frozen[s.Name] = true
		}
	}
	if !t.frozen[s.Name] {
		g := b.Alloc(s.Shape...)
		t.names = append(t.names, s.Name)
		t.layerOf[s.Name] = s.Layer
		t.grads[s.Name] = g
		*s.In(&t.gw) = g
	}
	return nil
}

// SetDropoutKey sets the optimizer step (< 2³²) and micro-batch (< 2¹⁶) that key the LoRA
// dropout masks of the next ForwardBackward: layer li's adapter on target t draws its mask from
// the run's seed (LoRAConfig.Seed) and the stream step<<32 | micro<<16 | li<<4 | t (t the index
// in LoRATargets; LoRADropoutStream), so a run that sets the same keys draws the same masks,
// resumed or not. Each ForwardBackward then moves to the next micro-batch, and Step to the
// next step's micro-batch 0; a new Trainer starts at step 0, micro-batch 0. Without LoRA
// dropout the key is unused and never refused.
func (t *Trainer) SetDropoutKey(step, micro uint64) error {
	if ad := t.Model.Adapters; ad != nil && ad.Config.Dropout > 0 && (step >= 1<<32 || micro >= 1<<16) {
		return fmt.Errorf("train: dropout key step %d, micro-batch %d: the step must be below 2^32 and the micro-batch below 2^16", step, micro)
	}
	t.dropStep, t.dropMicro = step, micro
	return nil
}

// passDropout returns the LoRA dropout of the next training pass and moves the key to the
// next micro-batch; nil without LoRA dropout.
func (t *Trainer) passDropout() *loraDropout {
	ad := t.Model.Adapters
	if ad == nil || ad.Config.Dropout == 0 {
		return nil
	}
	d := &loraDropout{p: float32(ad.Config.Dropout), seed: ad.Config.Seed, step: t.dropStep, micro: t.dropMicro & (1<<16 - 1)}
	t.dropMicro++
	return d
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
// packed without padding; attention stays within each sequence. The LM head runs twice, chunk
// by chunk: once for the log-probs the loss needs all at once, once for the gradients (the
// logits are kept between the two only when they fit in a chunk's budget).
func (t *Trainer) ForwardBackward(ctx context.Context, seqs []ScoreRequest, loss LossFunc) (*StepStats, error) {
	return t.forwardBackward(ctx, seqs, loss, TokenLoss{})
}

// ForwardBackwardTokens is ForwardBackward for a loss of per-token terms: the LM head's
// log-probs, entropies and gradients are computed in one pass over its chunks (one LM-head
// GEMM per chunk fewer than ForwardBackward, and no logits kept), with the same gradients as
// ForwardBackward given loss.LossFunc().
func (t *Trainer) ForwardBackwardTokens(ctx context.Context, seqs []ScoreRequest, loss TokenLoss) (*StepStats, error) {
	if loss.Term == nil {
		return nil, fmt.Errorf("train: token loss has no Term")
	}
	return t.forwardBackward(ctx, seqs, nil, loss)
}

// forwardBackward is ForwardBackward with loss, or ForwardBackwardTokens with tl when loss is nil.
func (t *Trainer) forwardBackward(ctx context.Context, seqs []ScoreRequest, loss LossFunc, tl TokenLoss) (*StepStats, error) {
	b := t.b
	t.drop = t.passDropout()
	ready := t.gradReady
	t.gradReady = nil
	defer func() { t.drop = nil }()
	bm, err := t.Model.packBatch(seqs)
	if err != nil {
		return nil, err
	}
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
	acts := make([]layerActs, t.Model.Config.NumHiddenLayers)
	defer func() {
		for i := range acts {
			acts[i].free(b, false)
		}
	}()
	xf := t.forwardLayers(bm, acts) // [T, D] final residual
	defer b.Free(xf)
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	h := t.newHead(xf, bm)
	defer h.free()
	var st *StepStats
	var dx *Tensor // [T, D] ∂L/∂(final residual)
	_, into := b.(LogProbsIntoBackend)
	switch {
	case loss == nil && h.keep && into: // the logits fit: one host wait for the micro-batch
		if st, dx, err = h.fusedKept(tl); err != nil {
			return nil, err
		}
	case loss == nil:
		if st, dx, err = h.fused(tl); err != nil {
			return nil, err
		}
	default:
		var dlp, dent []float32
		if st, dlp, dent, err = h.forward(loss); err != nil {
			return nil, err
		}
		dx = h.backward(dlp, dent)
	}
	if err := t.backwardLayers(ctx, dx, bm, acts, ready); err != nil {
		return nil, err
	}
	if ready != nil {
		ready(len(acts))
	}
	return st, nil
}

// forwardLayers embeds the batch and runs every layer, keeping each layer's activations in
// acts (or only its input, with Recompute); it returns the final residual [T, D].
func (t *Trainer) forwardLayers(bm *batchMeta, acts []layerActs) *Tensor {
	m, b := t.Model, t.b
	x := AllocUninit(b, len(bm.ids), m.Config.HiddenSize) // [T, D] residual stream
	b.Embedding(x, m.Embed, bm.ids)
	for li := range acts {
		out := t.layerForward(li, x, bm, &acts[li])
		if t.opts.Recompute {
			acts[li].free(b, true)
		}
		x = out
	}
	return x
}

// backwardLayers backpropagates dx [T, D] (freed) through the layers, last to first, and into
// the embedding, calling ready (when not nil) with each layer's GradGroups index after its
// backward.
func (t *Trainer) backwardLayers(ctx context.Context, dx *Tensor, bm *batchMeta, acts []layerActs, ready func(int)) error {
	b := t.b
	for li := len(acts) - 1; li >= 0; li-- {
		if err := ctx.Err(); err != nil {
			b.Free(dx)
			return err
		}
		if t.opts.Recompute {
			out := t.layerForward(li, acts[li].x, bm, &acts[li])
			b.Free(out)
		}
		dx = t.layerBackward(li, dx, bm, &acts[li])
		acts[li].free(b, false)
		if ready != nil {
			ready(len(acts) - 1 - li)
		}
	}
	if g := t.gw.Embed; g != nil {
		b.EmbeddingBackward(g, dx, bm.ids)
	}
	b.Free(dx)
	return nil
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
	for _, s := range m.table.Specs {
		w := *s.In(&m.WeightSet)
		data := make([]float32, w.Len())
		if err := m.Backend.Download(w, data); err != nil {
			return nil, fmt.Errorf("weight %q: %w", s.Name, err)
		}
		out[s.Name] = HostTensor{Shape: append([]int(nil), s.Shape...), Data: data}
	}
	return out, nil
}

// Snapshot returns an independent inference copy of m (linear weights as dt) on the same
// backend: the frozen reference policy, sharing nothing mutable with m.
//
// A model with LoRA adapters shares its frozen base (as it holds it, whatever dt) with the
// copy and copies only the adapters: the reference policy of a LoRA run costs the adapters'
// size.
func (m *Model) Snapshot(dt DType) (*Model, error) {
	if m.Adapters != nil {
		c := &Model{Config: m.Config, Backend: m.Backend, WeightDType: m.WeightDType, WeightSet: m.WeightSet,
			table: m.table, weights: m.weights}
		c.Layers = slices.Clone(m.Layers)
		if err := m.snapshotAdapters(c); err != nil {
			return nil, err
		}
		return c, nil
	}
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
		if !slices.Equal(w.Shape, t.params[name].Shape) || len(w.Data) != t.params[name].Len() {
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
