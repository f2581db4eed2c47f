package engine

import "fmt"

// The fixed-buffer decode step. A generation step whose every row is one running sample's next
// token (no prompt to prefill, nothing resumed) runs on buffers kept by the generator, and every
// step of the same batch size issues the same backend ops on the same tensors and the same host
// metadata arrays, with no Alloc, Free, Upload or Download inside it (docs/cuda.md says what a
// CUDA graph of it still needs). On a backend that replays captured steps (DecodePadder) the
// batch is padded to a few bucket sizes, whose buffers are all kept; elsewhere (the CPU, where a
// padded row costs its share of the matmuls) the buffers fit the batch exactly and only the
// current size's are kept. Steps that prefill go through Model.forward as before.

// DecodePadder is implemented by a backend that wants decode batches padded to a few fixed
// sizes (decodeBucket) with their buffers kept, as one that captures a decode step per size
// (a CUDA graph) and replays it does.
type DecodePadder interface {
	// PadDecode reports whether decode batches should be padded.
	PadDecode() bool
}

// StepGraphBackend is implemented by a backend that can replay a decode step as one captured
// unit (the CUDA backend's graphs, cuda.Options.DecodeGraphs). When DecodeGraphs says it is on,
// the generator brackets the device part of every fixed-buffer decode step (the embedding, the
// layers, the final norm and the LM head; not Sample, whose ids come back to the host) with
// BeginDecodeStep(key) and EndDecodeStep, key being the step's bucket (its padded batch size).
// Between the two the backend may enqueue nothing until EndDecodeStep, which must leave the
// step's results in its tensors exactly as the ops called between would have.
type StepGraphBackend interface {
	// DecodeGraphs reports whether decode steps should be bracketed.
	DecodeGraphs() bool
	// BeginDecodeStep starts the decode step of bucket key.
	BeginDecodeStep(key int)
	// EndDecodeStep ends it: the step's ops are enqueued (replayed or run) by its return. Its
	// error is the first error of the step's ops, as the next call returning one would give.
	EndDecodeStep() error
}

// decodeBucket is the bucket of a decode batch of n rows: the least power of two >= n, capped
// at maxSeqs (the largest batch the generator decodes), so the buckets of MaxSeqs 256 are
// 1, 2, 4, ..., 256 and those of MaxSeqs 6 are 1, 2, 4, 6.
func decodeBucket(n, maxSeqs int) int {
	p := 1
	for p < n {
		p <<= 1
	}
	return min(p, max(maxSeqs, n))
}

// decodeBufs are one bucket's buffers: P rows, of which the first B (the running samples) are
// real and the rest, when decode batches are padded, padding. Padded rows decode token 0 at position 0 of their own one-token
// sequence in the cache's padding block (KVCache.padBlock): every op computes each row as it
// would alone, so they change no real row's bits, and they stay finite.
type decodeBufs struct {
	P      int
	acts   *layerActs // [P, ...] one layer pass's scratch (newScratchActs); h1 also takes the final norm
	free   func()     // frees acts
	logits *Tensor    // [P, V]

	// meta is the host metadata of a step in one array at a fixed address, laid out as
	// ids [P] | pos [P] | slots [P] | ctxLen [P] | seqStart [P+1] | block tables [P][maxBlocks];
	// the slices below are its parts, and batch's slices point into it.
	meta      []int32
	ids, pos  []int32 // [P] token ids, positions
	tables    []int32 // [P*maxBlocks] row r's block table at tables[r*maxBlocks:]
	maxBlocks int     // blocks of a sequence of max_position_embeddings positions
	batch     AttnBatch
	rows      []SampleRow // [P]
}

// newDecodeBufs allocates bucket P's buffers for model m with cache kv; with padded, its rows
// start as padding rows in the cache's padding block.
func newDecodeBufs(m *Model, kv *KVCache, P int, padded bool) (*decodeBufs, error) {
	c, b := m.Config, m.Backend
	var pad int32 // without padding every row is a sample's in every step
	if padded {
		var err error
		if pad, err = kv.padBlock(); err != nil {
			return nil, err
		}
	}
	M := kv.BlocksFor(c.MaxPositionEmbeddings)
	d := &decodeBufs{P: P, maxBlocks: M, meta: make([]int32, 5*P+1+P*M), rows: make([]SampleRow, P)}
	at := 0
	part := func(n int) []int32 {
		s := d.meta[at : at+n : at+n]
		at += n
		return s
	}
	d.ids, d.pos = part(P), part(P)
	d.batch.Slots, d.batch.CtxLen, d.batch.SeqStart = part(P), part(P), part(P+1)
	d.tables = part(P * M)
	d.batch.Blocks = make([][]int32, P)
	for r := range P {
		d.batch.SeqStart[r+1] = int32(r + 1) // one new token per row
		d.padRow(r, pad, kv.blockSize)
	}
	d.acts, d.free = newScratchActs(b, c, P)
	d.logits = AllocUninit(b, P, c.VocabSize)
	return d, nil
}

// padRow makes row r a padding row: token 0 at position 0 of a sequence of one position in the
// padding block pad.
func (d *decodeBufs) padRow(r int, pad int32, blockSize int) {
	d.ids[r], d.pos[r] = 0, 0
	d.batch.Slots[r] = pad * int32(blockSize)
	d.batch.CtxLen[r] = 1
	d.tables[r*d.maxBlocks] = pad
	d.batch.Blocks[r] = d.tables[r*d.maxBlocks : r*d.maxBlocks+1]
	d.rows[r] = SampleRow{}
}

// release frees the bucket's tensors.
func (d *decodeBufs) release(b Backend) {
	d.free()
	b.Free(d.logits)
}

// releaseDecodeBufs frees every bucket's buffers (when Generate returns, and at Close: a trainer
// sharing the backend gets the memory back between rollouts).
func (g *Generator) releaseDecodeBufs() {
	for P, d := range g.decodeBufs {
		d.release(g.model.Backend)
		delete(g.decodeBufs, P)
	}
}

// decodeStep runs one decode step of samples (every one running, with its next token not yet in
// the cache) on the buffers of its bucket, and writes each sample's token, log-prob and top
// log-probs into ids, lps and tops. It gives the same bits as Model.forward on the same batch.
func (g *Generator) decodeStep(samples []*genSample, ids []int32, lps []float32, tops []topList) error {
	m, kv := g.model, g.cache
	c, b := m.Config, m.Backend
	B := len(samples)
	P := B
	if g.padDecode {
		P = decodeBucket(B, g.opts.MaxSeqs)
	}
	d := g.decodeBufs[P]
	if d == nil {
		if !g.padDecode {
			g.releaseDecodeBufs() // one batch size's buffers at a time
		}
		var err error
		if d, err = newDecodeBufs(m, kv, P, g.padDecode); err != nil {
			return fmt.Errorf("decode buffers for a batch of %d: %w", P, err)
		}
		if g.decodeBufs == nil {
			g.decodeBufs = map[int]*decodeBufs{}
		}
		g.decodeBufs[P] = d
	}
	// The RoPE tables cover every position the running samples can reach, so that they are
	// grown (a new upload) at most once per request rather than inside a run of decode steps.
	reach := 0
	for i, s := range samples {
		if s.seq.Len()+1 > c.MaxPositionEmbeddings {
			return fmt.Errorf("sequence %d: %d positions exceed max_position_embeddings %d", i, s.seq.Len()+1, c.MaxPositionEmbeddings)
		}
		reach = max(reach, len(s.r.req.Prompt)+s.r.req.Params.MaxNewTokens, s.seq.Len()+1)
	}
	if err := m.ensureRope(min(reach, c.MaxPositionEmbeddings)); err != nil {
		return err
	}
	for i, s := range samples {
		start := s.seq.Len()
		slots, err := s.seq.reserve(1)
		if err != nil {
			for _, t := range samples[:i] {
				t.seq.truncate(t.seq.Len() - 1)
			}
			return fmt.Errorf("sequence %d: %w", i, err)
		}
		d.ids[i], d.pos[i] = s.next, int32(start)
		d.batch.Slots[i] = slots[0]
		d.batch.CtxLen[i] = int32(s.seq.Len())
		row := d.tables[i*d.maxBlocks : (i+1)*d.maxBlocks]
		d.batch.Blocks[i] = row[:copy(row, s.seq.blocks)]
		p := s.r.req.Params
		d.rows[i] = SampleRow{Temperature: p.Temperature, TopK: p.TopK, TopP: p.TopP}
		if p.Temperature > 0 {
			d.rows[i].U = s.rng.Float64()
		}
	}
	for r := B; r < P; r++ { // a larger batch of this bucket may have taken them last time
		d.padRow(r, kv.pad, kv.blockSize)
	}
	a := d.acts
	sg, graphs := b.(StepGraphBackend)
	graphs = graphs && sg.DecodeGraphs()
	if graphs {
		sg.BeginDecodeStep(P)
	}
	b.Embedding(a.x, m.Embed, d.ids)
	p := layerPass{b: b, c: c, pos: d.pos, cos: m.cos, sin: m.sin, ad: m.Adapters,
		attn: pagedAttention{b: b, kv: kv.store, batch: &d.batch}}
	for li := range m.Layers {
		p.forward(li, &m.Layers[li], a)
	}
	b.RMSNorm(a.h1, a.x, m.Norm, float32(c.RMSNormEps))
	b.MatMul(d.logits, a.h1, m.LMHead)
	if graphs {
		if err := sg.EndDecodeStep(); err != nil {
			return fmt.Errorf("decode step of a batch of %d: %w", P, err)
		}
	}
	id, lp, err := b.Sample(d.logits, d.rows)
	if err != nil {
		return err
	}
	g.fixedSteps++
	copy(ids, id[:B])
	copy(lps, lp[:B])
	return g.topLists(d.logits, samples, d.rows[:B], tops)
}
