package engine

import (
	"math/rand/v2"
)

// RandomWeights makes a full set of weights for config c, seeded: linear weights and the
// embedding ~ N(0, std²), norm weights 1 + N(0, 0.1²), biases N(0, 0.1²). Used for benchmarks
// and tests that need a model of a given shape but no trained weights.
func RandomWeights(c *Config, seed uint64, std float32) map[string]HostTensor {
	r := rand.New(rand.NewPCG(seed, 0x9e3779b97f4a7c15))
	out := map[string]HostTensor{}
	for _, s := range NewWeightTable(c).Specs {
		d := make([]float32, prod(s.Shape))
		switch s.Role {
		case RoleEmbedding, RoleLinear:
			for i := range d {
				d[i] = float32(r.NormFloat64()) * std
			}
		case RoleBias:
			for i := range d {
				d[i] = float32(r.NormFloat64()) * 0.1
			}
		default:
			for i := range d {
				d[i] = 1 + float32(r.NormFloat64())*0.1
			}
		}
		out[s.Name] = HostTensor{Shape: s.Shape, Data: d}
	}
	return out
}

// Bench122M is a Qwen2-shaped config of about 122M parameters (untied, GQA 12/2, vocab 32000),
// the model of the speed figures in the README and tools/bench.
func Bench122M() *Config {
	return &Config{ModelType: "qwen2", VocabSize: 32000, HiddenSize: 768, NumHiddenLayers: 12,
		NumAttentionHeads: 12, NumKeyValueHeads: 2, HeadDim: 64, IntermediateSize: 2048,
		RMSNormEps: 1e-6, RopeTheta: 10000, MaxPositionEmbeddings: 4096, AttentionBias: true}
}

// LinearBytes is the number of bytes of linear weights (what one decode step streams).
func (m *Model) LinearBytes() int64 {
	var n int64
	add := func(t *Tensor) {
		if t == nil {
			return
		}
		if sz, ok := t.Buf.(interface{ Bytes() int64 }); ok {
			n += sz.Bytes()
			return
		}
		el := int64(4)
		if t.DType == BF16 {
			el = 2
		}
		n += int64(t.Len()) * el
	}
	for i := range m.Layers {
		l := &m.Layers[i]
		for _, t := range []*Tensor{l.Q, l.K, l.V, l.O, l.Gate, l.Up, l.Down} {
			add(t)
		}
	}
	add(m.LMHead)
	return n
}
