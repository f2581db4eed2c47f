package cpu

import (
	"fmt"
	"math"

	"github.com/prolong-rl/prolong/engine"
	"github.com/prolong-rl/prolong/engine/internal/kern"
)

// cpuKV is the CPU KV store: per layer, per block, K and V of [kvHeads, blockSize, headDim],
// as fp32 (k, v) or as bf16 bit patterns (k16, v16).
type cpuKV struct {
	layers, kvHeads, blockSize, headDim int
	dt                                  engine.DType
	k, v                                [][][]float32 // [layer][block] -> [kvHeads*blockSize*headDim], fp32 store
	k16, v16                            [][][]uint16  // [layer][block] -> [kvHeads*blockSize*headDim], bf16 store
}

// KVDTypes implements engine.KVDTyper: the CPU's KV store holds fp32 or bf16.
func (c *Backend) KVDTypes() []engine.DType { return []engine.DType{engine.F32, engine.BF16} }

// NewKVStore implements engine.Backend.
func (c *Backend) NewKVStore(layers, kvHeads, blockSize, headDim, blocks int, dt engine.DType) (engine.KVStore, error) {
	s := &cpuKV{layers: layers, kvHeads: kvHeads, blockSize: blockSize, headDim: headDim, dt: dt}
	switch dt {
	case engine.F32:
		s.k, s.v = make([][][]float32, layers), make([][][]float32, layers)
	case engine.BF16:
		s.k16, s.v16 = make([][][]uint16, layers), make([][][]uint16, layers)
	default:
		return nil, fmt.Errorf("cpu: KV cache of %v: want F32 or BF16", dt)
	}
	return s, s.Grow(blocks)
}

func (s *cpuKV) NumBlocks() int {
	if s.dt == engine.BF16 {
		return len(s.k16[0])
	}
	return len(s.k[0])
}

func (s *cpuKV) Grow(n int) error {
	size := s.kvHeads * s.blockSize * s.headDim
	for l := 0; l < s.layers; l++ {
		if s.dt == engine.BF16 {
			for len(s.k16[l]) < n {
				s.k16[l] = append(s.k16[l], make([]uint16, size))
				s.v16[l] = append(s.v16[l], make([]uint16, size))
			}
			continue
		}
		for len(s.k[l]) < n {
			s.k[l] = append(s.k[l], make([]float32, size))
			s.v[l] = append(s.v[l], make([]float32, size))
		}
	}
	return nil
}

func (s *cpuKV) CopyBlock(dst, src int) {
	for l := 0; l < s.layers; l++ {
		if s.dt == engine.BF16 {
			copy(s.k16[l][dst], s.k16[l][src])
			copy(s.v16[l][dst], s.v16[l][src])
			continue
		}
		copy(s.k[l][dst], s.k[l][src])
		copy(s.v[l][dst], s.v[l][src])
	}
}

func (s *cpuKV) Free() { s.k, s.v, s.k16, s.v16 = nil, nil, nil, nil }

// write stores the keys and values of token rows ks, vs [T, KV*Dh] of layer at their slots,
// rounded to bf16 (to nearest even) in a bf16 store.
func (s *cpuKV) write(layer int, slots []int32, ks, vs []float32) {
	kvw := s.kvHeads * s.headDim
	for t, slot := range slots {
		s.writeRow(layer, slot, ks[t*kvw:(t+1)*kvw], vs[t*kvw:(t+1)*kvw])
	}
}

// writeRow stores one token's keys and values k, v [KV*Dh] of layer at slot.
func (s *cpuKV) writeRow(layer int, slot int32, k, v []float32) {
	bs, dh := s.blockSize, s.headDim
	blk, off := int(slot)/bs, int(slot)%bs
	for h := 0; h < s.kvHeads; h++ {
		dst, src := (h*bs+off)*dh, h*dh
		if s.dt == engine.BF16 {
			kern.F32ToBF16(s.k16[layer][blk][dst:dst+dh], k[src:src+dh])
			kern.F32ToBF16(s.v16[layer][blk][dst:dst+dh], v[src:src+dh])
			continue
		}
		copy(s.k[layer][blk][dst:dst+dh], k[src:src+dh])
		copy(s.v[layer][blk][dst:dst+dh], v[src:src+dh])
	}
}

// rows returns n rows of head_dim keys (values when val) of KV head h in block blk of layer,
// positions 0..n-1 of the block one after another: the store's own memory for fp32, widened
// into buf [n*headDim] (exactly) for bf16.
func (s *cpuKV) rows(layer, blk, h, n int, val bool, buf []float32) []float32 {
	off := h * s.blockSize * s.headDim
	end := off + n*s.headDim
	if s.dt == engine.BF16 {
		src := s.k16[layer][blk]
		if val {
			src = s.v16[layer][blk]
		}
		kern.WidenBF16(buf[:end-off], src[off:end])
		return buf[:end-off]
	}
	if val {
		return s.v[layer][blk][off:end]
	}
	return s.k[layer][blk][off:end]
}

// AttnChunk is the number of context positions one partial of a query row covers (a multiple
// of engine.DefaultBlockSize). A row over more positions is computed as in flash-decoding: one
// partial (max score, sum of exponentials, unnormalised output) per chunk of AttnChunk
// positions, combined in chunk order. Every row is computed this way whatever the batch, so a
// row's bits depend on its context alone (prefill and decode rows agree); what the batch
// changes is only how the partials are spread over the cores.
const AttnChunk = 1024

// Attention implements engine.Backend: store the new keys/values (unless QKVRoPE did), then for every query token and
// head, softmax(q·K/sqrt(Dh)) V over positions 0..pos of its sequence (causal). The work items
// are (token, KV head): the query heads of a GQA group share each block of keys and values (read,
// and widened from bf16, once). When there are too few of them to keep every core busy (batch-1
// decode at long context), the items are (token, KV head, chunk) and a second pass combines the
// partials (flash-decoding).
func (c *Backend) Attention(out, q, k, v *engine.Tensor, store engine.KVStore, layer int, b *engine.AttnBatch) {
	s := store.(*cpuKV)
	if !b.KVWritten {
		s.write(layer, b.Slots, f32(k), f32(v))
	}
	dh, nkv := s.headDim, s.kvHeads
	if c.tiledPrefill(out, q, k, v, dh, b) {
		return
	}
	nh := q.Cols() / dh
	G := nh / nkv
	nseq := len(b.CtxLen)
	T := int(b.SeqStart[nseq])
	// seqOf[t] and the context length n[t] (positions 0..pos) of each token.
	seqOf, ctx := make([]int32, T), make([]int32, T)
	multi := false
	for sq := 0; sq < nseq; sq++ {
		nNew := b.SeqStart[sq+1] - b.SeqStart[sq]
		for t := b.SeqStart[sq]; t < b.SeqStart[sq+1]; t++ {
			seqOf[t] = int32(sq)
			ctx[t] = b.CtxLen[sq] - nNew + (t - b.SeqStart[sq]) + 1
			multi = multi || ctx[t] > AttnChunk
		}
	}
	a := attnRun{s: s, layer: layer, b: b, qs: f32(q), os: f32(out), nh: nh, G: G, seqOf: seqOf, ctx: ctx,
		scale: float32(1 / math.Sqrt(float64(dh)))}
	part := G * (dh + 2) // one partial: G maxima, G sums, G rows of Dh
	if !multi || T*nkv >= 4*c.thr.Count() || !flashDecoding {
		// Four chunks per thread: causal rows differ in cost, and a late worker takes fewer.
		c.thr.ParallelFine(T*nkv, 4, func(lo, hi int) {
			w := a.scratch()
			for i := lo; i < hi; i++ {
				t, h := i/nkv, i%nkv
				nc := chunks(ctx[t])
				if nc == 1 {
					a.chunk(w, t, h, 0, nil)
					continue
				}
				if cap(w.parts) < nc*part {
					w.parts = make([]float32, nc*part)
				}
				for ch := 0; ch < nc; ch++ {
					a.chunk(w, t, h, ch, w.parts[ch*part:(ch+1)*part])
				}
				a.combine(t, h, w.parts[:nc*part])
			}
		})
		return
	}
	// Flash-decoding: items (token, KV head, chunk), then the combination of each row's partials.
	first := make([]int, T+1) // first[t]: index of token t's first chunk among all tokens' chunks
	for t := range T {
		first[t+1] = first[t] + chunks(ctx[t])
	}
	parts := make([]float32, first[T]*nkv*part) // [chunk of all tokens][KV head][partial]
	c.thr.ParallelFine(first[T]*nkv, 4, func(lo, hi int) {
		w := a.scratch()
		t := 0
		for i := lo; i < hi; i++ {
			j, h := i/nkv, i%nkv
			for first[t+1] <= j {
				t++
			}
			ch := j - first[t]
			if chunks(ctx[t]) == 1 {
				a.chunk(w, t, h, 0, nil)
				continue
			}
			a.chunk(w, t, h, ch, parts[i*part:(i+1)*part])
		}
	})
	c.thr.ParallelFine(T*nkv, 4, func(lo, hi int) {
		var rows []float32
		for i := lo; i < hi; i++ {
			t, h := i/nkv, i%nkv
			nc := chunks(ctx[t])
			if nc == 1 {
				continue
			}
			// The partials of (t, h) are nkv apart: gather them in chunk order.
			rows = rows[:0]
			for ch := range nc {
				k := (first[t]+ch)*nkv + h
				rows = append(rows, parts[k*part:(k+1)*part]...)
			}
			a.combine(t, h, rows)
		}
	})
}

// flashDecoding, when false (benchmarks), keeps every row's partials on one core.
var flashDecoding = true

// chunks is the number of AttnChunk partials of a row over n positions.
func chunks(n int32) int { return max(1, (int(n)+AttnChunk-1)/AttnChunk) }

// attnRun is one Attention call's inputs, shared by its work items.
type attnRun struct {
	s          *cpuKV
	layer      int
	b          *engine.AttnBatch
	qs, os     []float32 // [T, H*Dh] queries, outputs
	nh, G      int       // query heads, query heads per KV head
	seqOf, ctx []int32   // [T] sequence and context length of each token
	scale      float32
}

// pagedScratch is one worker's buffers.
type pagedScratch struct {
	sc     []float32 // [G][AttnChunk] scores, then weights
	kb, vb []float32 // [blockSize*Dh] a bf16 block widened
	parts  []float32 // a row's partials
}

func (a *attnRun) scratch() *pagedScratch {
	n := a.s.blockSize * a.s.headDim
	return &pagedScratch{sc: make([]float32, a.G*AttnChunk), kb: make([]float32, n), vb: make([]float32, n)}
}

// chunk computes, for token t and the query heads of KV head kvh, attention over positions
// [ch*AttnChunk, min(ctx, (ch+1)*AttnChunk)). With part nil (a row of one chunk) it writes the
// normalised output; else it writes the partial to part [G maxima | G sums | G rows of Dh,
// unnormalised].
func (a *attnRun) chunk(w *pagedScratch, t, kvh, ch int, part []float32) {
	s, dh, bs, G := a.s, a.s.headDim, a.s.blockSize, a.G
	n := int(a.ctx[t])
	p0, p1 := ch*AttnChunk, min(n, (ch+1)*AttnChunk)
	m := p1 - p0
	blocks := a.b.Blocks[a.seqOf[t]]
	qrow := a.qs[t*a.nh*dh : (t+1)*a.nh*dh]
	orow := a.os[t*a.nh*dh : (t+1)*a.nh*dh]
	for b0 := p0; b0 < p1; b0 += bs {
		b1 := min(p1, b0+bs)
		keys := s.rows(a.layer, int(blocks[b0/bs]), kvh, b1-b0, false, w.kb)
		for g := range G {
			h := kvh*G + g
			kern.Dots(qrow[h*dh:(h+1)*dh], keys, w.sc[g*AttnChunk+b0-p0:g*AttnChunk+b1-p0])
		}
	}
	var sums [64]float32 // G <= 64 query heads per KV head on the stack, more on the heap
	sum := sums[:0]
	if G > len(sums) {
		sum = make([]float32, 0, G)
	}
	for g := range G {
		sc := w.sc[g*AttnChunk : g*AttnChunk+m]
		maxv := sc[0]
		for _, d := range sc[1:] {
			maxv = max(maxv, d)
		}
		sum = append(sum, kern.ExpShift(sc, maxv, a.scale)) // e^((q·k - max)/sqrt(Dh))
		if part != nil {
			part[g], part[G+g] = maxv, sum[g]
		}
	}
	o := func(g int) []float32 {
		if part != nil {
			return part[2*G+g*dh : 2*G+(g+1)*dh]
		}
		h := kvh*G + g
		return orow[h*dh : (h+1)*dh]
	}
	for g := range G {
		clear(o(g))
	}
	for b0 := p0; b0 < p1; b0 += bs {
		b1 := min(p1, b0+bs)
		vals := s.rows(a.layer, int(blocks[b0/bs]), kvh, b1-b0, true, w.vb)
		for g := range G {
			kern.AxpyRows(w.sc[g*AttnChunk+b0-p0:g*AttnChunk+b1-p0], vals, o(g))
		}
	}
	if part == nil {
		for g := range G {
			og, inv := o(g), 1/sum[g]
			for j := range og {
				og[j] *= inv
			}
		}
	}
}

// combine writes token t's output for the query heads of KV head kvh from its partials, one per
// chunk in order (as chunk writes them): with M the largest maximum and f_c =
// e^((max_c - M)/sqrt(Dh)), out = Σ f_c·o_c / Σ f_c·sum_c, summed in chunk order.
func (a *attnRun) combine(t, kvh int, parts []float32) {
	dh, G := a.s.headDim, a.G
	part := G * (dh + 2)
	nc := len(parts) / part
	for g := range G {
		h := kvh*G + g
		og := a.os[(t*a.nh+h)*dh : (t*a.nh+h+1)*dh]
		M := parts[g]
		for ch := 1; ch < nc; ch++ {
			M = max(M, parts[ch*part+g])
		}
		clear(og)
		var l float32
		for ch := range nc {
			p := parts[ch*part : (ch+1)*part]
			f := kern.Expf((p[g] - M) * a.scale)
			l += f * p[G+g]
			kern.Axpy(f, p[2*G+g*dh:2*G+(g+1)*dh], og)
		}
		inv := 1 / l
		for j := range og {
			og[j] *= inv
		}
	}
}
