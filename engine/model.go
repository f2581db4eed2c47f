package engine

import (
	"fmt"
	"math"
	"sort"
	"strings"
)

// HostTensor is a named weight in host memory, row-major fp32.
type HostTensor struct {
	Shape []int
	Data  []float32
}

// Layer holds one decoder layer's weights; the tag gives the Hugging Face name under
// model.layers.N.
type Layer struct {
	InputNorm *Tensor `hf:"input_layernorm.weight"`          // [D]
	Q         *Tensor `hf:"self_attn.q_proj.weight"`         // [H*Dh, D]
	K         *Tensor `hf:"self_attn.k_proj.weight"`         // [KV*Dh, D]
	V         *Tensor `hf:"self_attn.v_proj.weight"`         // [KV*Dh, D]
	QBias     *Tensor `hf:"self_attn.q_proj.bias"`           // [H*Dh] (attention bias)
	KBias     *Tensor `hf:"self_attn.k_proj.bias"`           // [KV*Dh]
	VBias     *Tensor `hf:"self_attn.v_proj.bias"`           // [KV*Dh]
	QNorm     *Tensor `hf:"self_attn.q_norm.weight"`         // [Dh] (qk-norm)
	KNorm     *Tensor `hf:"self_attn.k_norm.weight"`         // [Dh]
	O         *Tensor `hf:"self_attn.o_proj.weight"`         // [D, H*Dh]
	PostNorm  *Tensor `hf:"post_attention_layernorm.weight"` // [D]
	Gate      *Tensor `hf:"mlp.gate_proj.weight"`            // [I, D]
	Up        *Tensor `hf:"mlp.up_proj.weight"`              // [I, D]
	Down      *Tensor `hf:"mlp.down_proj.weight"`            // [D, I]
}

// Model is a decoder on a backend: weights addressed by their Hugging Face names.
type Model struct {
	Config  *Config
	Backend Backend
	// WeightDType is the dtype of the linear weights (F32 or BF16); norms, biases and the
	// embedding table stay fp32.
	WeightDType DType

	Embed  *Tensor // [V, D] lookup table, model.embed_tokens.weight
	Layers []Layer
	Norm   *Tensor // [D] model.norm.weight
	LMHead *Tensor // [V, D] linear weight: lm_head.weight, or the embedding when tied

	weights  map[string]*Tensor
	cos, sin *Tensor // [P, Dh/2] RoPE tables
	ropeLen  int
}

// weightSpec is one expected weight: its name, shape, whether it is a linear (matmul) weight,
// and where it goes.
type weightSpec struct {
	name   string
	shape  []int
	linear bool
	dst    **Tensor
}

func (m *Model) specs() []weightSpec {
	c := m.Config
	d, q, kv, in, v := c.HiddenSize, c.QDim(), c.KVDim(), c.IntermediateSize, c.VocabSize
	specs := []weightSpec{
		{"model.embed_tokens.weight", []int{v, d}, false, &m.Embed},
		{"model.norm.weight", []int{d}, false, &m.Norm},
	}
	if !c.TieWordEmbeddings {
		specs = append(specs, weightSpec{"lm_head.weight", []int{v, d}, true, &m.LMHead})
	}
	for i := range m.Layers {
		l := &m.Layers[i]
		p := fmt.Sprintf("model.layers.%d.", i)
		add := func(suffix string, linear bool, dst **Tensor, shape ...int) {
			specs = append(specs, weightSpec{p + suffix, shape, linear, dst})
		}
		add("input_layernorm.weight", false, &l.InputNorm, d)
		add("self_attn.q_proj.weight", true, &l.Q, q, d)
		add("self_attn.k_proj.weight", true, &l.K, kv, d)
		add("self_attn.v_proj.weight", true, &l.V, kv, d)
		if c.AttentionBias {
			add("self_attn.q_proj.bias", false, &l.QBias, q)
			add("self_attn.k_proj.bias", false, &l.KBias, kv)
			add("self_attn.v_proj.bias", false, &l.VBias, kv)
		}
		if c.QKNorm {
			add("self_attn.q_norm.weight", false, &l.QNorm, c.HeadDim)
			add("self_attn.k_norm.weight", false, &l.KNorm, c.HeadDim)
		}
		add("self_attn.o_proj.weight", true, &l.O, d, q)
		add("post_attention_layernorm.weight", false, &l.PostNorm, d)
		add("mlp.gate_proj.weight", true, &l.Gate, in, d)
		add("mlp.up_proj.weight", true, &l.Up, in, d)
		add("mlp.down_proj.weight", true, &l.Down, d, in)
	}
	return specs
}

// WeightNames lists the Hugging Face names of the weights a model of config c has, in a
// fixed order (embedding, final norm, LM head if untied, then layer by layer).
func WeightNames(c *Config) []string {
	m := &Model{Config: c, Layers: make([]Layer, c.NumHiddenLayers)}
	var names []string
	for _, s := range m.specs() {
		names = append(names, s.name)
	}
	return names
}

// WeightShape returns the shape of the named weight in a model of config c.
func WeightShape(c *Config, name string) ([]int, bool) {
	m := &Model{Config: c, Layers: make([]Layer, c.NumHiddenLayers)}
	for _, s := range m.specs() {
		if s.name == name {
			return s.shape, true
		}
	}
	return nil, false
}

// NewModel uploads host weights (HF names) to backend b. Linear weights are stored as dt (F32
// or BF16). Every expected weight must be present with the right shape; unexpected names are
// an error too (except rotary inv_freq buffers some checkpoints carry). Errors name the tensor.
func NewModel(c *Config, b Backend, weights map[string]HostTensor, dt DType) (*Model, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	m := &Model{Config: c, Backend: b, WeightDType: dt, Layers: make([]Layer, c.NumHiddenLayers),
		weights: map[string]*Tensor{}}
	seen := map[string]bool{}
	for _, s := range m.specs() {
		w, ok := weights[s.name]
		if !ok {
			return nil, fmt.Errorf("weight %q is missing", s.name)
		}
		if !equalShape(w.Shape, s.shape) {
			return nil, fmt.Errorf("weight %q has shape %v, config wants %v", s.name, w.Shape, s.shape)
		}
		if len(w.Data) != prod(s.shape) {
			return nil, fmt.Errorf("weight %q has %d values for shape %v", s.name, len(w.Data), s.shape)
		}
		for _, v := range w.Data {
			if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
				return nil, fmt.Errorf("weight %q holds NaN or Inf", s.name)
			}
		}
		wdt := F32
		if s.linear {
			wdt = dt
		}
		t, err := b.Upload(wdt, w.Data, s.linear, s.shape...)
		if err != nil {
			return nil, fmt.Errorf("weight %q: %w", s.name, err)
		}
		*s.dst = t
		m.weights[s.name] = t
		seen[s.name] = true
	}
	var extra []string
	for name := range weights {
		if !seen[name] && !strings.HasSuffix(name, "rotary_emb.inv_freq") {
			extra = append(extra, name)
		}
	}
	if len(extra) > 0 {
		sort.Strings(extra)
		return nil, fmt.Errorf("unexpected weight(s) for this config: %s", strings.Join(extra, ", "))
	}
	if c.TieWordEmbeddings {
		e := weights["model.embed_tokens.weight"]
		t, err := b.Upload(dt, e.Data, true, e.Shape...)
		if err != nil {
			return nil, fmt.Errorf("tied lm head: %w", err)
		}
		m.LMHead = t
	}
	return m, nil
}

// Weight returns the named weight tensor (HF name), or nil.
func (m *Model) Weight(name string) *Tensor { return m.weights[name] }

func equalShape(a, b []int) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func prod(s []int) int {
	n := 1
	for _, d := range s {
		n *= d
	}
	return n
}

// ensureRope grows the RoPE cos/sin tables [P, Dh/2] to cover positions below n. Angles are
// computed in float64.
func (m *Model) ensureRope(n int) error {
	if n <= m.ropeLen {
		return nil
	}
	size := max(n, 2*m.ropeLen, 256)
	half := m.Config.HeadDim / 2
	inv := m.Config.InvFreq()
	cos := make([]float32, size*half)
	sin := make([]float32, size*half)
	for p := 0; p < size; p++ {
		for i, f := range inv {
			s, c := math.Sincos(float64(p) * f)
			cos[p*half+i], sin[p*half+i] = float32(c), float32(s)
		}
	}
	ct, err := m.Backend.Upload(F32, cos, false, size, half)
	if err != nil {
		return err
	}
	st, err := m.Backend.Upload(F32, sin, false, size, half)
	if err != nil {
		return err
	}
	m.Backend.Free(m.cos)
	m.Backend.Free(m.sin)
	m.cos, m.sin, m.ropeLen = ct, st, size
	return nil
}

// step is one sequence's part of a forward pass: new tokens appended to its cache sequence.
type step struct {
	seq    *Seq
	tokens []int32
}

// forward runs the decoder over a ragged batch: each step's tokens are appended to its
// sequence (keys and values written to the cache). Logits are produced only for the batch
// rows listed in logitRows, in chunks of at most chunk rows, each chunk handed to onLogits
// with the index of its first row in logitRows. The caller must not keep the logits tensor.
func (m *Model) forward(steps []step, logitRows []int32, chunk int, onLogits func(first int, logits *Tensor) error) error {
	c, b := m.Config, m.Backend
	var T int
	for _, s := range steps {
		T += len(s.tokens)
	}
	if T == 0 {
		return nil
	}
	ids := make([]int32, 0, T)
	pos := make([]int32, 0, T)
	ab := &AttnBatch{SeqStart: make([]int32, 1, len(steps)+1)}
	maxPos := 0
	for i, s := range steps {
		if s.seq.cache != steps[0].seq.cache {
			return fmt.Errorf("sequence %d: all sequences of a batch must share one KV cache", i)
		}
		for _, id := range s.tokens {
			if id < 0 || int(id) >= c.VocabSize {
				return fmt.Errorf("sequence %d: token id %d outside vocabulary [0,%d)", i, id, c.VocabSize)
			}
		}
		start := s.seq.Len()
		if start+len(s.tokens) > c.MaxPositionEmbeddings {
			return fmt.Errorf("sequence %d: %d positions exceed max_position_embeddings %d", i, start+len(s.tokens), c.MaxPositionEmbeddings)
		}
		maxPos = max(maxPos, start+len(s.tokens))
	}
	if err := m.ensureRope(maxPos); err != nil {
		return err
	}
	// Reserve cache slots; roll back every sequence on failure.
	for i, s := range steps {
		start := s.seq.Len()
		slots, err := s.seq.reserve(len(s.tokens))
		if err != nil {
			for j := 0; j < i; j++ {
				steps[j].seq.truncate(steps[j].seq.Len() - len(steps[j].tokens))
			}
			return fmt.Errorf("sequence %d: %w", i, err)
		}
		ids = append(ids, s.tokens...)
		for j := range s.tokens {
			pos = append(pos, int32(start+j))
		}
		ab.Slots = append(ab.Slots, slots...)
		ab.SeqStart = append(ab.SeqStart, int32(len(ids)))
		ab.CtxLen = append(ab.CtxLen, int32(s.seq.Len()))
		ab.Blocks = append(ab.Blocks, s.seq.blocks)
	}

	d, eps := c.HiddenSize, float32(c.RMSNormEps)
	x := b.Alloc(T, d)                  // [T, D] residual stream
	h := b.Alloc(T, d)                  // [T, D] normed input
	q := b.Alloc(T, c.QDim())           // [T, H*Dh]
	k := b.Alloc(T, c.KVDim())          // [T, KV*Dh]
	v := b.Alloc(T, c.KVDim())          // [T, KV*Dh]
	att := b.Alloc(T, c.QDim())         // [T, H*Dh]
	g := b.Alloc(T, c.IntermediateSize) // [T, I]
	u := b.Alloc(T, c.IntermediateSize) // [T, I]
	defer func() {
		for _, t := range []*Tensor{x, h, q, k, v, att, g, u} {
			b.Free(t)
		}
	}()
	b.Embedding(x, m.Embed, ids)
	for li := range m.Layers {
		l := &m.Layers[li]
		b.RMSNorm(h, x, l.InputNorm, eps)
		b.MatMul(q, h, l.Q)
		b.MatMul(k, h, l.K)
		b.MatMul(v, h, l.V)
		if l.QBias != nil {
			b.AddBias(q, l.QBias)
			b.AddBias(k, l.KBias)
			b.AddBias(v, l.VBias)
		}
		if l.QNorm != nil {
			b.RMSNorm(q, q, l.QNorm, eps)
			b.RMSNorm(k, k, l.KNorm, eps)
		}
		b.RoPE(q, c.HeadDim, pos, m.cos, m.sin)
		b.RoPE(k, c.HeadDim, pos, m.cos, m.sin)
		b.Attention(att, q, k, v, m.cache(steps), li, ab)
		b.MatMul(h, att, l.O)
		b.Add(x, x, h)
		b.RMSNorm(h, x, l.PostNorm, eps)
		b.MatMul(g, h, l.Gate)
		b.MatMul(u, h, l.Up)
		b.SwiGLU(g, g, u)
		b.MatMul(h, g, l.Down)
		b.Add(x, x, h)
	}
	for first := 0; first < len(logitRows); first += chunk {
		rows := logitRows[first:min(first+chunk, len(logitRows))]
		xr := b.Alloc(len(rows), d)               // [R, D]
		logits := b.Alloc(len(rows), c.VocabSize) // [R, V]
		b.GatherRows(xr, x, rows)
		b.RMSNorm(xr, xr, m.Norm, eps)
		b.MatMul(logits, xr, m.LMHead)
		err := onLogits(first, logits)
		b.Free(xr)
		b.Free(logits)
		if err != nil {
			return err
		}
	}
	return nil
}

func (m *Model) cache(steps []step) KVStore { return steps[0].seq.cache.store }
