package enginetest

import (
	"fmt"
	"math"

	"github.com/prolong-rl/prolong/engine"
)

// longContextCase is a decode batch at long context: one new token per sequence, after ctx-1
// cached positions.
type longContextCase struct {
	s   attnShape
	ctx []int
}

// longContextCases are batch-1 and small-batch decode rows at 4k-16k positions of context
// (where a GPU splits the context over blocks, flash-decoding) with GQA groups of 6 (the 1.5B
// shape) and 12 (more heads than one GPU block holds), contexts ending inside a block.
func longContextCases(o Options) []longContextCase {
	if o.Short {
		return []longContextCase{{attnShape{12, 1, 32}, []int{4099}}}
	}
	return []longContextCase{
		{attnShape{12, 2, 128}, []int{16384}},
		{attnShape{12, 2, 128}, []int{5003, 1200, 17}},
		{attnShape{12, 1, 32}, []int{4099}},
	}
}

// longContextAttention fills a KV store of dtype kvdt with ctx[i]-1 positions per sequence
// (written by Attention calls over one-block sequences, which cost little, so that no
// quadratic prefill is needed) and compares one decode step of the sequences: query row i at
// position ctx[i]-1, its block table over all of its blocks. With kvdt BF16 the reference runs
// an fp32 store given the keys and values rounded to bf16, as pagedAttention.
func longContextAttention(c *caseCtx, s attnShape, ctx []int, kvdt engine.DType) {
	if !engine.KVDTypeSupported(c.b, kvdt) {
		c.add(Result{Metric: MetricNMSE, Pass: true, BadIndex: -1,
			Detail: fmt.Sprintf("not run: the %s backend's KV store holds no %v", c.b.Name(), kvdt)})
		return
	}
	const bs = engine.DefaultBlockSize
	qw, kw := s.h*s.dh, s.kv*s.dh
	var tables [][]int32
	nb := int32(0)
	for _, n := range ctx {
		var tb []int32
		for p := 0; p < n; p += bs {
			tb = append(tb, nb)
			nb++
		}
		tables = append(tables, tb)
	}
	// The fill: chunks of one-block sequences of bs positions each (a block's unused slots
	// past a sequence's end are written too, and never read).
	const chunkBlocks = 256
	type chunk struct {
		b    *engine.AttnBatch
		k, v []float32
	}
	var fill []chunk
	for b0 := int32(0); b0 < nb; b0 += chunkBlocks {
		ab := &engine.AttnBatch{SeqStart: []int32{0}}
		for b := b0; b < min(nb, b0+chunkBlocks); b++ {
			ab.Blocks = append(ab.Blocks, []int32{b})
			ab.CtxLen = append(ab.CtxLen, bs)
			for i := int32(0); i < bs; i++ {
				ab.Slots = append(ab.Slots, b*bs+i)
			}
			ab.SeqStart = append(ab.SeqStart, int32(len(ab.Slots)))
		}
		t := len(ab.Slots)
		fill = append(fill, chunk{ab, randn(c.rng, t*kw, 1), randn(c.rng, t*kw, 1)})
	}
	// The fill's queries, one head per KV head (the store does not depend on the query heads;
	// a sixth of the work for the 1.5B shape's groups); its outputs are not compared.
	fillQ := randn(c.rng, chunkBlocks*bs*kw, 1)
	dec := &engine.AttnBatch{SeqStart: []int32{0}}
	for i, n := range ctx {
		dec.Blocks = append(dec.Blocks, tables[i])
		dec.CtxLen = append(dec.CtxLen, int32(n))
		dec.Slots = append(dec.Slots, tables[i][(n-1)/bs]*bs+int32((n-1)%bs))
		dec.SeqStart = append(dec.SeqStart, int32(i+1))
	}
	T := len(ctx)
	in := [][]float32{randn(c.rng, T*qw, 1), randn(c.rng, T*kw, 1), randn(c.rng, T*kw, 1), randn(c.rng, T*qw, 1)}
	c.both(c.tol.Attention, func(e *env) []output {
		dt, round := kvdt, func(x []float32) []float32 { return x }
		if kvdt != engine.F32 && e.b == c.ref {
			dt, round = engine.F32, roundedBF16
		}
		kv := e.kvOf(dt, 1, s.kv, bs, s.dh, int(nb))
		up := func(x []float32, rows, cols int) *engine.Tensor { // freed here, not by e
			t, err := e.b.Upload(engine.F32, x, false, rows, cols)
			if err != nil {
				panic(err)
			}
			return t
		}
		for _, f := range fill {
			t := len(f.b.Slots)
			q, k, v, out := up(fillQ[:t*kw], t, kw), up(round(f.k), t, kw), up(round(f.v), t, kw), e.b.Alloc(t, kw)
			e.b.Attention(out, q, k, v, kv, 0, f.b)
			for _, x := range []*engine.Tensor{q, k, v, out} {
				e.b.Free(x)
			}
		}
		out := e.up(in[3], T, qw)
		e.b.Attention(out, e.up(in[0], T, qw), e.up(round(in[1]), T, kw), e.up(round(in[2]), T, kw), kv, 0, dec)
		return []output{{"", e.down(out)}}
	})
}

// roundedBF16 is x rounded to bf16 (to nearest even) and widened back.
func roundedBF16(x []float32) []float32 {
	out := make([]float32, len(x))
	for i, v := range x {
		b := math.Float32bits(v)
		out[i] = math.Float32frombits((b + 0x7fff + (b>>16)&1) >> 16 << 16)
	}
	return out
}
