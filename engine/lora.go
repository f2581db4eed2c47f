package engine

// LoRA: low-rank adapters on a frozen base, as PEFT (huggingface/peft, tuners/lora) defines
// them. A targeted linear layer y = x·Wᵀ becomes
//
//	y = x·Wᵀ + s·(x·Aᵀ)·Bᵀ,    A [r, in], B [out, r], s = alpha/r (alpha/sqrt(r) with rsLoRA)
//
// A starts as nn.Linear's reset (kaiming_uniform_ with a = sqrt(5): U(-1/sqrt(in), 1/sqrt(in)))
// and B as zeros, so a fresh adapter leaves the model unchanged. The adapters run in the
// decoder layer from the backend's existing ops (MatMul, Scale, Add and their backward), so
// every TrainBackend runs them. Base weights stay as the model holds them (F32 or BF16) and get
// no gradient.

import (
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
)

// LoRATargets are the PEFT module names of the decoder's linear layers, in layer order; PEFT's
// "all-linear" is all of them (the LM head is never targeted).
var LoRATargets = []string{"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}

// loraTarget indexes LoRATargets.
type loraTarget uint8

const (
	tQ loraTarget = iota
	tK
	tV
	tO
	tGate
	tUp
	tDown
	numLoRATargets
)

// loraModule is the module path of a target under model.layers.N. (HF names).
var loraModule = [numLoRATargets]string{"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
	"mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"}

// LoRAConfig describes the adapters of a run. Rank 0 means no adapters (full fine-tuning).
type LoRAConfig struct {
	// Rank is r, the inner dimension of each adapter.
	Rank int
	// Alpha is lora_alpha; the adapter's output is scaled by Alpha/Rank (Alpha/sqrt(Rank) with
	// RSLoRA).
	Alpha float64
	// RSLoRA is PEFT's use_rslora.
	RSLoRA bool
	// Targets are PEFT module names among LoRATargets; empty or "all-linear" means all of them.
	Targets []string
	// Dropout is lora_dropout, in [0, 1): in training (Trainer.ForwardBackward), each adapter's
	// input x is replaced by dropout(x), PEFT's nn.Dropout (elements zeroed with probability
	// Dropout, the others scaled by 1/(1-Dropout)), with masks drawn from Seed, the optimizer
	// step, the micro-batch, the layer and the target (see Trainer.SetDropoutKey); generation
	// and scoring never drop (PEFT's eval mode).
	Dropout float64
	// Seed draws the initial A matrices.
	Seed uint64
}

// Scaling is the factor of the adapters' output: Alpha/Rank, or Alpha/sqrt(Rank) with RSLoRA.
func (c LoRAConfig) Scaling() float64 {
	if c.RSLoRA {
		return c.Alpha / math.Sqrt(float64(c.Rank))
	}
	return c.Alpha / float64(c.Rank)
}

// TargetModules returns the targets as PEFT module names in LoRATargets order, "all-linear"
// and the empty list expanded, or an error naming an unknown one.
func (c LoRAConfig) TargetModules() ([]string, error) {
	if len(c.Targets) == 0 || (len(c.Targets) == 1 && c.Targets[0] == "all-linear") {
		return slices.Clone(LoRATargets), nil
	}
	var out []string
	for _, want := range LoRATargets {
		if slices.Contains(c.Targets, want) {
			out = append(out, want)
		}
	}
	for _, t := range c.Targets {
		if !slices.Contains(LoRATargets, t) {
			return nil, fmt.Errorf("lora target %q is not a linear layer of the decoder (have %s, or all-linear)", t, strings.Join(LoRATargets, ", "))
		}
	}
	return out, nil
}

// Validate checks the configuration.
func (c LoRAConfig) Validate() error {
	if c.Rank < 0 {
		return fmt.Errorf("lora rank must be >= 0, got %d", c.Rank)
	}
	if c.Rank == 0 {
		return nil
	}
	if !(c.Alpha > 0) {
		return fmt.Errorf("lora alpha must be > 0, got %g", c.Alpha)
	}
	if !(c.Dropout >= 0 && c.Dropout < 1) {
		return fmt.Errorf("lora dropout must be in [0,1), got %g", c.Dropout)
	}
	_, err := c.TargetModules()
	return err
}

// LoRAPair is one adapted layer's matrices.
type LoRAPair struct {
	A *Tensor // [r, in]
	B *Tensor // [out, r]
}

// Adapters are a model's LoRA adapters.
type Adapters struct {
	Config LoRAConfig
	// Layers[i][t] is layer i's adapter on target t (LoRATargets order), nil where untargeted.
	Layers [][numLoRATargets]*LoRAPair
	// param: A and B are trainable parameters (else fp32 matmul weights).
	param bool
}

// LoRASpec is one adapter tensor: its name (HF module path + ".lora_A.weight" or
// ".lora_B.weight", PEFT's key without the "base_model.model." prefix), shape and place.
type LoRASpec struct {
	Name   string
	Shape  []int
	Layer  int
	target loraTarget
	isB    bool
}

// LoRAPrefix is what PEFT puts before a module's HF name in adapter_model.safetensors.
const LoRAPrefix = "base_model.model."

// LoRASpecs lists the adapter tensors of config c under lc, layer by layer, each target's A
// then B, targets in LoRATargets order.
func LoRASpecs(c *Config, lc LoRAConfig) ([]LoRASpec, error) {
	mods, err := lc.TargetModules()
	if err != nil {
		return nil, err
	}
	var out []LoRASpec
	for i := 0; i < c.NumHiddenLayers; i++ {
		for tg := range numLoRATargets {
			if !slices.Contains(mods, LoRATargets[tg]) {
				continue
			}
			n, k := loraShape(c, tg)
			base := LayerWeight(i, loraModule[tg])
			out = append(out, LoRASpec{Name: base + ".lora_A.weight", Shape: []int{lc.Rank, k}, Layer: i, target: tg},
				LoRASpec{Name: base + ".lora_B.weight", Shape: []int{n, lc.Rank}, Layer: i, target: tg, isB: true})
		}
	}
	return out, nil
}

// BaseWeight is the HF name of the base weight the adapter tensor s belongs to.
func (s LoRASpec) BaseWeight() string { return LayerWeight(s.Layer, loraModule[s.target]+".weight") }

// IsB reports whether s is a B matrix ([out, r]) rather than an A ([r, in]).
func (s LoRASpec) IsB() bool { return s.isB }

// loraShape is the [out, in] of target tg's base weight.
func loraShape(c *Config, tg loraTarget) (n, k int) {
	switch tg {
	case tQ:
		return c.QDim(), c.HiddenSize
	case tK, tV:
		return c.KVDim(), c.HiddenSize
	case tO:
		return c.HiddenSize, c.QDim()
	case tGate, tUp:
		return c.IntermediateSize, c.HiddenSize
	}
	return c.HiddenSize, c.IntermediateSize
}

// InitLoRA returns fresh adapter weights for c under lc, by name (LoRASpecs): every A drawn as
// PEFT's reset_lora_parameters does (kaiming_uniform_(a=sqrt(5)): U(-1/sqrt(in), 1/sqrt(in)))
// from lc.Seed, in LoRASpecs order, and every B zero.
func InitLoRA(c *Config, lc LoRAConfig) (map[string]HostTensor, error) {
	specs, err := LoRASpecs(c, lc)
	if err != nil {
		return nil, err
	}
	r := rand.New(rand.NewPCG(lc.Seed, 0x10a4_10a4))
	out := map[string]HostTensor{}
	for _, s := range specs {
		d := make([]float32, prod(s.Shape))
		if !s.isB {
			// gain = sqrt(2/(1+a²)) with a² = 5; bound = gain*sqrt(3/fan_in) = 1/sqrt(fan_in).
			bound := 1 / math.Sqrt(float64(s.Shape[1]))
			for i := range d {
				d[i] = float32((2*r.Float64() - 1) * bound)
			}
		}
		out[s.Name] = HostTensor{Shape: slices.Clone(s.Shape), Data: d}
	}
	return out, nil
}

// CheckLoRA checks host adapter weights against the specs of c under lc: every tensor present,
// none extra, shapes right, values finite. Errors name the tensor.
func CheckLoRA(c *Config, lc LoRAConfig, w map[string]HostTensor) error {
	specs, err := LoRASpecs(c, lc)
	if err != nil {
		return err
	}
	want := map[string]bool{}
	for _, s := range specs {
		want[s.Name] = true
		h, ok := w[s.Name]
		if !ok {
			return fmt.Errorf("adapter tensor %q is missing", s.Name)
		}
		if !slices.Equal(h.Shape, s.Shape) || len(h.Data) != prod(s.Shape) {
			return fmt.Errorf("adapter tensor %q has shape %v, want %v (rank %d)", s.Name, h.Shape, s.Shape, lc.Rank)
		}
		for _, v := range h.Data {
			if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
				return fmt.Errorf("adapter tensor %q holds NaN or Inf", s.Name)
			}
		}
	}
	var extra []string
	for n := range w {
		if !want[n] {
			extra = append(extra, n)
		}
	}
	if len(extra) > 0 {
		slices.Sort(extra)
		return fmt.Errorf("unexpected adapter tensor(s) for targets %v: %s", lc.Targets, strings.Join(extra, ", "))
	}
	return nil
}

// AttachLoRA gives m adapters from host weights (names as LoRASpecs; CheckLoRA's errors). The
// model's backend must be a TrainBackend (the adapters' forward scales with Scale). With
// param, A and B become trainable parameters (UploadParam); otherwise fp32 matmul weights.
func (m *Model) AttachLoRA(lc LoRAConfig, w map[string]HostTensor, param bool) error {
	if err := lc.Validate(); err != nil {
		return err
	}
	if lc.Rank == 0 {
		return fmt.Errorf("lora: rank 0 has no adapters")
	}
	tb, ok := m.Backend.(TrainBackend)
	if !ok {
		return fmt.Errorf("lora: backend %s cannot run adapters (it has no Scale)", m.Backend.Name())
	}
	if err := CheckLoRA(m.Config, lc, w); err != nil {
		return err
	}
	specs, _ := LoRASpecs(m.Config, lc)
	ad := &Adapters{Config: lc, Layers: make([][numLoRATargets]*LoRAPair, m.Config.NumHiddenLayers), param: param}
	for _, s := range specs {
		h := w[s.Name]
		var t *Tensor
		var err error
		if param {
			t, err = tb.UploadParam(h.Data, s.Shape...)
		} else {
			t, err = tb.Upload(F32, h.Data, true, s.Shape...)
		}
		if err != nil {
			return fmt.Errorf("adapter tensor %q: %w", s.Name, err)
		}
		p := ad.Layers[s.Layer][s.target]
		if p == nil {
			p = &LoRAPair{}
			ad.Layers[s.Layer][s.target] = p
		}
		if s.isB {
			p.B = t
		} else {
			p.A = t
		}
	}
	m.Adapters = ad
	return nil
}

// tensor returns the adapter tensor of spec s.
func (a *Adapters) tensor(s LoRASpec) *Tensor {
	p := a.Layers[s.Layer][s.target]
	if s.isB {
		return p.B
	}
	return p.A
}

// AdapterWeights downloads m's adapters by name (LoRASpecs); nil when m has none.
func (m *Model) AdapterWeights() (map[string]HostTensor, error) {
	if m.Adapters == nil {
		return nil, nil
	}
	specs, err := LoRASpecs(m.Config, m.Adapters.Config)
	if err != nil {
		return nil, err
	}
	out := map[string]HostTensor{}
	for _, s := range specs {
		t := m.Adapters.tensor(s)
		d := make([]float32, t.Len())
		if err := m.Backend.Download(t, d); err != nil {
			return nil, fmt.Errorf("adapter tensor %q: %w", s.Name, err)
		}
		out[s.Name] = HostTensor{Shape: slices.Clone(s.Shape), Data: d}
	}
	return out, nil
}

// SetAdapterWeights overwrites m's adapters in place from host tensors (CheckLoRA's errors;
// nothing changes on error).
func (m *Model) SetAdapterWeights(w map[string]HostTensor) error {
	if m.Adapters == nil {
		return fmt.Errorf("lora: the model has no adapters")
	}
	lc := m.Adapters.Config
	if err := CheckLoRA(m.Config, lc, w); err != nil {
		return err
	}
	if !m.Adapters.param { // matmul weights: new ones replace them
		return m.AttachLoRA(lc, w, false)
	}
	tb := m.Backend.(TrainBackend)
	specs, _ := LoRASpecs(m.Config, lc)
	for _, s := range specs {
		h := w[s.Name]
		src, err := tb.Upload(F32, h.Data, false, s.Shape...)
		if err != nil {
			return fmt.Errorf("adapter tensor %q: %w", s.Name, err)
		}
		tb.Copy(m.Adapters.tensor(s), src)
		tb.Free(src)
	}
	return nil
}

// MergeLoRA returns base weights with adapters merged, W + s·B·A for every adapted layer (the
// sum over r in float64, rounded once to fp32), and every other weight as given. base is not
// changed.
func MergeLoRA(c *Config, lc LoRAConfig, base, adapters map[string]HostTensor) (map[string]HostTensor, error) {
	if err := CheckLoRA(c, lc, adapters); err != nil {
		return nil, err
	}
	specs, _ := LoRASpecs(c, lc)
	s := lc.Scaling()
	out := make(map[string]HostTensor, len(base))
	for k, v := range base {
		out[k] = v
	}
	for _, sp := range specs {
		if !sp.isB {
			continue
		}
		wn := sp.BaseWeight()
		w, ok := base[wn]
		if !ok {
			return nil, fmt.Errorf("lora merge: base weight %q is missing", wn)
		}
		bm := adapters[sp.Name]
		am := adapters[strings.TrimSuffix(sp.Name, ".lora_B.weight")+".lora_A.weight"]
		n, r := bm.Shape[0], bm.Shape[1]
		k := am.Shape[1]
		if !slices.Equal(w.Shape, []int{n, k}) {
			return nil, fmt.Errorf("lora merge: base weight %q has shape %v, adapter wants [%d %d]", wn, w.Shape, n, k)
		}
		d := make([]float32, n*k)
		for i := 0; i < n; i++ {
			for j := 0; j < k; j++ {
				var acc float64
				for q := 0; q < r; q++ {
					acc += float64(bm.Data[i*r+q]) * float64(am.Data[q*k+j])
				}
				d[i*k+j] = float32(float64(w.Data[i*k+j]) + s*acc)
			}
		}
		out[wn] = HostTensor{Shape: slices.Clone(w.Shape), Data: d}
	}
	return out, nil
}

// MergedWeights downloads m's weights with its adapters merged in (MergeLoRA); without
// adapters, HostWeights.
func (m *Model) MergedWeights() (map[string]HostTensor, error) {
	w, err := m.HostWeights()
	if err != nil || m.Adapters == nil {
		return w, err
	}
	ad, err := m.AdapterWeights()
	if err != nil {
		return nil, err
	}
	return MergeLoRA(m.Config, m.Adapters.Config, w, ad)
}

// loraDropout is the LoRA dropout of one training pass (PEFT's lora_dropout: nn.Dropout on
// each adapter's input, in training only): probability p, the run's seed, and the optimizer
// step and micro-batch that, with the layer and target, make each mask's stream.
type loraDropout struct {
	p           float32
	seed        uint64
	step, micro uint64
}

// apply writes into a new tensor the dropout of x [T, K] on the input of target tg of layer li
// (Backend.Dropout under this pass's key), or applies the same mask to x in place when inPlace.
func (d *loraDropout) apply(b TrainBackend, li int, tg loraTarget, x *Tensor, inPlace bool) *Tensor {
	out := x
	if !inPlace {
		out = AllocUninit(b, x.Shape...)
	}
	b.Dropout(out, x, d.p, d.seed, dropoutStream(d.step, d.micro, li, tg))
	return out
}

// adapt adds target tg's adapter of layer li to out [T, N] for input x [T, K]:
// out += s·(drop(x)·Aᵀ)·Bᵀ, where drop is p.drop's dropout (training with LoRA dropout) or
// nothing. It keeps s·drop(x)·Aᵀ [T, r] in a.lu for the backward when a.keepLoRA.
func (p *layerPass) adapt(li int, tg loraTarget, out, x *Tensor, a *layerActs) {
	if p.ad == nil {
		return
	}
	pr := p.ad.Layers[li][tg]
	if pr == nil {
		return
	}
	b := p.b
	xin := x // [T, K]
	if p.drop != nil {
		xin = p.drop.apply(b.(TrainBackend), li, tg, x, false)
	}
	u := AllocUninit(b, x.Rows(), p.ad.Config.Rank) // [T, r]
	b.MatMul(u, xin, pr.A)
	if xin != x {
		b.Free(xin)
	}
	b.(TrainBackend).Scale(u, float32(p.ad.Config.Scaling()))
	d := AllocUninit(b, out.Shape...) // [T, N]
	b.MatMul(d, u, pr.B)
	b.Add(out, out, d)
	b.Free(d)
	if a.keepLoRA {
		a.lu[tg] = u
	} else {
		b.Free(u)
	}
}

// loraBack backpropagates target tg's adapter of layer li: given dy [T, N] = ∂L/∂out and the
// input x [T, K], it accumulates ∂L/∂B += dyᵀ·u (u = s·drop(x)·Aᵀ, kept by adapt),
// ∂L/∂A += (s·dy·B)ᵀ·drop(x), and adds drop((s·dy·B)·A) to dx [T, K]: dropout is linear, its
// backward applies the forward's mask and scale, drawn again from the same key (t.drop), so
// no mask is kept between the passes.
func (t *Trainer) loraBack(li int, tg loraTarget, dx, dy, x *Tensor, a *layerActs) {
	ad := t.Model.Adapters
	if ad == nil || ad.Layers[li][tg] == nil {
		return
	}
	b, pr, g := t.b, ad.Layers[li][tg], t.lgrads[li][tg]
	T, r := dy.Rows(), ad.Config.Rank
	b.MatMulDW(g.B, dy, a.lu[tg])
	du := AllocUninit(b, T, r) // [T, r]
	b.MatMulDX(du, dy, pr.B)
	b.Scale(du, float32(ad.Config.Scaling()))
	xin := x // [T, K]
	if t.drop != nil {
		xin = t.drop.apply(b, li, tg, x, false)
	}
	b.MatMulDW(g.A, du, xin)
	if xin != x {
		b.Free(xin)
	}
	tmp := AllocUninit(b, dx.Shape...) // [T, K]
	b.MatMulDX(tmp, du, pr.A)
	if t.drop != nil {
		t.drop.apply(b, li, tg, tmp, true)
	}
	b.Add(dx, dx, tmp)
	b.Free(tmp)
	b.Free(du)
}

// snapshotAdapters gives dst (sharing m's frozen base) an fp32 copy of m's adapters.
func (m *Model) snapshotAdapters(dst *Model) error {
	w, err := m.AdapterWeights()
	if err != nil {
		return err
	}
	return dst.AttachLoRA(m.Adapters.Config, w, false)
}

// WithLoRA returns a model that shares m's base weights (not copied) and runs adapters w under
// lc on top of them, as fp32 matmul weights (AttachLoRA's errors): a server's adapter costs
// its own tensors only. m's own adapters, if any, are not carried over.
func (m *Model) WithLoRA(lc LoRAConfig, w map[string]HostTensor) (*Model, error) {
	c := &Model{Config: m.Config, Backend: m.Backend, WeightDType: m.WeightDType, WeightSet: m.WeightSet,
		table: m.table, weights: m.weights} // RoPE tables: its own (ensureRope frees the old ones)
	c.Layers = slices.Clone(m.Layers)
	if err := c.AttachLoRA(lc, w, false); err != nil {
		return nil, err
	}
	return c, nil
}
