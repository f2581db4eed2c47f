package engine

import "strconv"

// Hugging Face names of the weights outside the decoder layers.
const (
	EmbedWeight  = "model.embed_tokens.weight" // [V, D]
	NormWeight   = "model.norm.weight"         // [D]
	LMHeadWeight = "lm_head.weight"            // [V, D], absent when the embeddings are tied
)

// Hugging Face names of a decoder layer's weights, relative to "model.layers.N."; LayerWeight
// makes the full name.
const (
	InputNormWeight = "input_layernorm.weight"          // [D]
	QProjWeight     = "self_attn.q_proj.weight"         // [H*Dh, D]
	KProjWeight     = "self_attn.k_proj.weight"         // [KV*Dh, D]
	VProjWeight     = "self_attn.v_proj.weight"         // [KV*Dh, D]
	QProjBias       = "self_attn.q_proj.bias"           // [H*Dh] (attention bias)
	KProjBias       = "self_attn.k_proj.bias"           // [KV*Dh]
	VProjBias       = "self_attn.v_proj.bias"           // [KV*Dh]
	QNormWeight     = "self_attn.q_norm.weight"         // [Dh] (qk-norm)
	KNormWeight     = "self_attn.k_norm.weight"         // [Dh]
	OProjWeight     = "self_attn.o_proj.weight"         // [D, H*Dh]
	PostNormWeight  = "post_attention_layernorm.weight" // [D]
	GateProjWeight  = "mlp.gate_proj.weight"            // [I, D]
	UpProjWeight    = "mlp.up_proj.weight"              // [I, D]
	DownProjWeight  = "mlp.down_proj.weight"            // [D, I]
)

// LayerWeight returns the Hugging Face name of weight suffix of decoder layer i:
// LayerWeight(3, QProjWeight) is "model.layers.3.self_attn.q_proj.weight".
func LayerWeight(i int, suffix string) string {
	return "model.layers." + strconv.Itoa(i) + "." + suffix
}

// HeadWeight is the name of the weight the LM head reads: lm_head.weight, or the embedding
// when the config ties them.
func HeadWeight(c *Config) string {
	if c.TieWordEmbeddings {
		return EmbedWeight
	}
	return LMHeadWeight
}

// WeightRole says what a weight does, which decides how it is stored (linear weights may be
// BF16 and in a backend's matmul layout; the rest stay fp32) and how RandomWeights draws it.
type WeightRole uint8

// Weight roles.
const (
	RoleEmbedding WeightRole = iota // [V, D] lookup table (also the LM head when tied)
	RoleLinear                      // [N, K] matmul weight, nn.Linear layout
	RoleNorm                        // [D] or [Dh] RMSNorm weight
	RoleBias                        // [N] bias of a linear layer
)

// WeightSet holds one tensor per weight of a model, laid out as the weight table says: a
// model's weights, or a trainer's gradients (nil where a weight is frozen or absent).
type WeightSet struct {
	Embed  *Tensor // [V, D] lookup table, model.embed_tokens.weight
	Norm   *Tensor // [D] model.norm.weight
	LMHead *Tensor // [V, D] linear weight: lm_head.weight, or the embedding when tied
	Layers []Layer
}

// Layer holds one decoder layer's weights; layerRows gives each field's name (under
// model.layers.N.), shape and role.
type Layer struct {
	InputNorm *Tensor // [D]
	Q         *Tensor // [H*Dh, D]
	K         *Tensor // [KV*Dh, D]
	V         *Tensor // [KV*Dh, D]
	QBias     *Tensor // [H*Dh] (attention bias)
	KBias     *Tensor // [KV*Dh]
	VBias     *Tensor // [KV*Dh]
	QNorm     *Tensor // [Dh] (qk-norm)
	KNorm     *Tensor // [Dh]
	O         *Tensor // [D, H*Dh]
	PostNorm  *Tensor // [D]
	Gate      *Tensor // [I, D]
	Up        *Tensor // [I, D]
	Down      *Tensor // [D, I]
}

// WeightSpec is one row of a config's weight table.
type WeightSpec struct {
	Name  string // Hugging Face name
	Shape []int
	Role  WeightRole
	Layer int // decoder layer; -1 for the embedding, the final norm and the LM head

	slot func(w *WeightSet) **Tensor
}

// In returns where this weight lives in w, whose Layers must cover the spec's layer.
func (s WeightSpec) In(w *WeightSet) **Tensor { return s.slot(w) }

// dim is a symbolic dimension of a weight's shape, resolved against a config.
type dim uint8

const (
	dimD  dim = iota // hidden size
	dimQ             // H*Dh
	dimKV            // KV*Dh
	dimI             // intermediate size
	dimDh            // head dim
	dimV             // vocabulary
)

func (d dim) of(c *Config) int {
	return [...]int{c.HiddenSize, c.QDim(), c.KVDim(), c.IntermediateSize, c.HeadDim, c.VocabSize}[d]
}

// cond says for which configs a weight exists.
type cond uint8

const (
	always     cond = iota
	withBias        // attention_bias (Qwen2)
	withQKNorm      // qk-norm (Qwen3)
	untied          // tie_word_embeddings false
)

func (k cond) holds(c *Config) bool {
	return [...]bool{true, c.AttentionBias, c.QKNorm, !c.TieWordEmbeddings}[k]
}

// row is one entry of the weight table before a config gives it a shape.
type row[T any] struct {
	name  string
	role  WeightRole
	shape []dim
	when  cond
	field func(*T) **Tensor
}

// modelRows are the weights outside the layers, in table order.
var modelRows = []row[WeightSet]{
	{EmbedWeight, RoleEmbedding, []dim{dimV, dimD}, always, func(w *WeightSet) **Tensor { return &w.Embed }},
	{NormWeight, RoleNorm, []dim{dimD}, always, func(w *WeightSet) **Tensor { return &w.Norm }},
	{LMHeadWeight, RoleLinear, []dim{dimV, dimD}, untied, func(w *WeightSet) **Tensor { return &w.LMHead }},
}

// layerRows are a decoder layer's weights, in table order.
var layerRows = []row[Layer]{
	{InputNormWeight, RoleNorm, []dim{dimD}, always, func(l *Layer) **Tensor { return &l.InputNorm }},
	{QProjWeight, RoleLinear, []dim{dimQ, dimD}, always, func(l *Layer) **Tensor { return &l.Q }},
	{KProjWeight, RoleLinear, []dim{dimKV, dimD}, always, func(l *Layer) **Tensor { return &l.K }},
	{VProjWeight, RoleLinear, []dim{dimKV, dimD}, always, func(l *Layer) **Tensor { return &l.V }},
	{QProjBias, RoleBias, []dim{dimQ}, withBias, func(l *Layer) **Tensor { return &l.QBias }},
	{KProjBias, RoleBias, []dim{dimKV}, withBias, func(l *Layer) **Tensor { return &l.KBias }},
	{VProjBias, RoleBias, []dim{dimKV}, withBias, func(l *Layer) **Tensor { return &l.VBias }},
	{QNormWeight, RoleNorm, []dim{dimDh}, withQKNorm, func(l *Layer) **Tensor { return &l.QNorm }},
	{KNormWeight, RoleNorm, []dim{dimDh}, withQKNorm, func(l *Layer) **Tensor { return &l.KNorm }},
	{OProjWeight, RoleLinear, []dim{dimD, dimQ}, always, func(l *Layer) **Tensor { return &l.O }},
	{PostNormWeight, RoleNorm, []dim{dimD}, always, func(l *Layer) **Tensor { return &l.PostNorm }},
	{GateProjWeight, RoleLinear, []dim{dimI, dimD}, always, func(l *Layer) **Tensor { return &l.Gate }},
	{UpProjWeight, RoleLinear, []dim{dimI, dimD}, always, func(l *Layer) **Tensor { return &l.Up }},
	{DownProjWeight, RoleLinear, []dim{dimD, dimI}, always, func(l *Layer) **Tensor { return &l.Down }},
}

func (r row[T]) dims(c *Config) []int {
	s := make([]int, len(r.shape))
	for i, d := range r.shape {
		s[i] = d.of(c)
	}
	return s
}

// WeightTable is the one table of a config's weights: every weight's Hugging Face name, shape
// and role, in a fixed order (embedding, final norm, LM head when untied, then layer by layer:
// input norm, q/k/v projections, their biases, q/k norms, o projection, post-attention norm,
// gate, up, down). Model loading, the trainer, the reference model, ONNX export and the
// checkpoints all read it.
type WeightTable struct {
	Specs []WeightSpec
	index map[string]int
}

// NewWeightTable builds the weight table of config c.
func NewWeightTable(c *Config) *WeightTable {
	t := &WeightTable{index: map[string]int{}}
	add := func(s WeightSpec) {
		t.index[s.Name] = len(t.Specs)
		t.Specs = append(t.Specs, s)
	}
	for _, r := range modelRows {
		if r.when.holds(c) {
			add(WeightSpec{Name: r.name, Shape: r.dims(c), Role: r.role, Layer: -1, slot: r.field})
		}
	}
	for i := 0; i < c.NumHiddenLayers; i++ {
		for _, r := range layerRows {
			if !r.when.holds(c) {
				continue
			}
			field := r.field
			add(WeightSpec{Name: LayerWeight(i, r.name), Shape: r.dims(c), Role: r.role, Layer: i,
				slot: func(w *WeightSet) **Tensor { return field(&w.Layers[i]) }})
		}
	}
	return t
}

// Lookup returns the row of the named weight.
func (t *WeightTable) Lookup(name string) (WeightSpec, bool) {
	i, ok := t.index[name]
	if !ok {
		return WeightSpec{}, false
	}
	return t.Specs[i], true
}

// Has reports whether the config has the named weight.
func (t *WeightTable) Has(name string) bool {
	_, ok := t.index[name]
	return ok
}

// Names lists the weights' names in table order.
func (t *WeightTable) Names() []string {
	names := make([]string, len(t.Specs))
	for i, s := range t.Specs {
		names[i] = s.Name
	}
	return names
}

// WeightNames lists the Hugging Face names of the weights a model of config c has, in table
// order (embedding, final norm, LM head if untied, then layer by layer).
func WeightNames(c *Config) []string { return NewWeightTable(c).Names() }

// WeightShape returns the shape of the named weight in a model of config c.
func WeightShape(c *Config, name string) ([]int, bool) {
	s, ok := NewWeightTable(c).Lookup(name)
	return s.Shape, ok
}
