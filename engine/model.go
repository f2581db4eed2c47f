package engine

import (
	"fmt"
	"math"
	"slices"
	"sort"
	"strings"
)

// HostTensor is a named weight in host memory, row-major fp32.
type HostTensor struct {
	Shape []int
	Data  []float32
}

// Model is a decoder on a backend: weights addressed by their Hugging Face names.
type Model struct {
	Config  *Config
	Backend Backend
	// WeightDType is the dtype of the linear weights (F32 or BF16); norms, biases and the
	// embedding table stay fp32.
	WeightDType DType
	// WeightSet holds the weights as the weight table lays them out (Embed, Norm, LMHead,
	// Layers); LMHead is a BF16/F32 linear copy of the embedding when tied.
	WeightSet
	// Adapters are LoRA adapters applied on top of the (then frozen) linear weights; nil: none.
	Adapters *Adapters

	table    *WeightTable
	weights  map[string]*Tensor
	cos, sin *Tensor // [P, Dh/2] RoPE tables
	ropeLen  int
}

// NewModel uploads host weights (HF names) to backend b. Linear weights are stored as dt (F32
// or BF16). Every expected weight must be present with the right shape; unexpected names are
// an error too (except rotary inv_freq buffers some checkpoints carry). Errors name the tensor.
func NewModel(c *Config, b Backend, weights map[string]HostTensor, dt DType) (*Model, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	m := &Model{Config: c, Backend: b, WeightDType: dt, WeightSet: WeightSet{Layers: make([]Layer, c.NumHiddenLayers)},
		table: NewWeightTable(c), weights: map[string]*Tensor{}}
	for _, s := range m.table.Specs {
		w, ok := weights[s.Name]
		if !ok {
			return nil, fmt.Errorf("weight %q is missing", s.Name)
		}
		if err := checkHost(s, w); err != nil {
			return nil, err
		}
		wdt := F32
		if s.Role == RoleLinear {
			wdt = dt
		}
		t, err := b.Upload(wdt, w.Data, s.Role == RoleLinear, s.Shape...)
		if err != nil {
			return nil, fmt.Errorf("weight %q: %w", s.Name, err)
		}
		*s.In(&m.WeightSet) = t
		m.weights[s.Name] = t
	}
	var extra []string
	for name := range weights {
		if !m.table.Has(name) && !strings.HasSuffix(name, "rotary_emb.inv_freq") {
			extra = append(extra, name)
		}
	}
	if len(extra) > 0 {
		sort.Strings(extra)
		return nil, fmt.Errorf("unexpected weight(s) for this config: %s", strings.Join(extra, ", "))
	}
	if c.TieWordEmbeddings {
		e := weights[EmbedWeight]
		t, err := b.Upload(dt, e.Data, true, e.Shape...)
		if err != nil {
			return nil, fmt.Errorf("tied lm head: %w", err)
		}
		m.LMHead = t
	}
	return m, nil
}

// checkHost checks a host weight against its row of the table: shape, length, finite values.
func checkHost(s WeightSpec, w HostTensor) error {
	if !slices.Equal(w.Shape, s.Shape) {
		return fmt.Errorf("weight %q has shape %v, config wants %v", s.Name, w.Shape, s.Shape)
	}
	if len(w.Data) != prod(s.Shape) {
		return fmt.Errorf("weight %q has %d values for shape %v", s.Name, len(w.Data), s.Shape)
	}
	for _, v := range w.Data {
		if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
			return fmt.Errorf("weight %q holds NaN or Inf", s.Name)
		}
	}
	return nil
}

// Weight returns the named weight tensor (HF name), or nil.
func (m *Model) Weight(name string) *Tensor { return m.weights[name] }

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
	cos, sin := m.Config.RopeTables(size) // [size, Dh/2] each, yarn's attention factor included
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
	ids, pos, ab, err := m.packSteps(steps, T)
	if err != nil {
		return err
	}
	a, free := newScratchActs(b, c, T)
	defer free()
	b.Embedding(a.x, m.Embed, ids)
	p := layerPass{b: b, c: c, pos: pos, cos: m.cos, sin: m.sin, ad: m.Adapters,
		attn: pagedAttention{b: b, kv: m.cache(steps), batch: ab}}
	for li := range m.Layers {
		p.forward(li, &m.Layers[li], a)
	}
	return m.headLogits(a.x, logitRows, chunk, onLogits)
}

// packSteps checks a batch of T new tokens, grows the RoPE tables, reserves cache slots
// (rolling every sequence back on failure) and returns the token ids [T], positions [T] and
// the attention batch.
func (m *Model) packSteps(steps []step, T int) (ids, pos []int32, ab *AttnBatch, err error) {
	c := m.Config
	maxPos := 0
	for i, s := range steps {
		if s.seq.cache != steps[0].seq.cache {
			return nil, nil, nil, fmt.Errorf("sequence %d: all sequences of a batch must share one KV cache", i)
		}
		for _, id := range s.tokens {
			if id < 0 || int(id) >= c.VocabSize {
				return nil, nil, nil, fmt.Errorf("sequence %d: token id %d outside vocabulary [0,%d)", i, id, c.VocabSize)
			}
		}
		start := s.seq.Len()
		if start+len(s.tokens) > c.MaxPositionEmbeddings {
			return nil, nil, nil, fmt.Errorf("sequence %d: %d positions exceed max_position_embeddings %d", i, start+len(s.tokens), c.MaxPositionEmbeddings)
		}
		maxPos = max(maxPos, start+len(s.tokens))
	}
	if err := m.ensureRope(maxPos); err != nil {
		return nil, nil, nil, err
	}
	ids, pos = make([]int32, 0, T), make([]int32, 0, T)
	ab = &AttnBatch{SeqStart: make([]int32, 1, len(steps)+1), Scratch: steps[0].seq.cache.scratch}
	for i, s := range steps {
		start := s.seq.Len()
		slots, err := s.seq.reserve(len(s.tokens))
		if err != nil {
			for j := 0; j < i; j++ {
				steps[j].seq.truncate(steps[j].seq.Len() - len(steps[j].tokens))
			}
			return nil, nil, nil, fmt.Errorf("sequence %d: %w", i, err)
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
	return ids, pos, ab, nil
}

// headLogits runs the final norm and the LM head on the rows of x [T, D] listed in logitRows,
// chunk rows at a time, handing each chunk's logits to onLogits.
func (m *Model) headLogits(x *Tensor, logitRows []int32, chunk int, onLogits func(first int, logits *Tensor) error) error {
	c, b := m.Config, m.Backend
	for first := 0; first < len(logitRows); first += chunk {
		rows := logitRows[first:min(first+chunk, len(logitRows))]
		xr := AllocUninit(b, len(rows), c.HiddenSize)    // [R, D]
		logits := AllocUninit(b, len(rows), c.VocabSize) // [R, V]
		b.GatherRows(xr, x, rows)
		b.RMSNorm(xr, xr, m.Norm, float32(c.RMSNormEps))
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
