package cpu

import (
	"github.com/prolong-rl/prolong/engine"
)

// Tiled prefill: a scoring pass's attention (engine.AttnBatch.Scratch: Score and Logits, whose
// cache nothing decodes from) over fresh sequences (no context before the new tokens) is the
// training forward's causal attention over packed sequences, so it runs on the same tiled
// kernel (attn_tiled.go: query and key tiles on the GEMM micro-kernels, causal tiles skipped,
// parallel over sequences, heads and query tiles) with the new tokens' q, k, v as they are,
// instead of one dot product per (row, key) through the paged cache. Generation batches keep
// the row path: a preempted sample is recomputed by prefill and must give its decode rows' bits.

// DefaultTiledPrefillFrom is the sequence length from which a scoring pass's attention takes the
// tiled path (a call takes it when its longest sequence is at least this long): below it the
// row path is as fast (docs/train.md, "Scoring passes on the CPU": even at 256 tokens, tiled
// 1.4× faster at 512).
const DefaultTiledPrefillFrom = 512

// WithTiledPrefillFrom makes scoring passes' attention take the tiled path for calls whose
// longest sequence has at least n rows (DefaultTiledPrefillFrom if not given or n <= 0); tests
// use 1 to run it on short sequences. Both paths give the same values up to fp32 rounding.
func WithTiledPrefillFrom(n int) Option {
	return func(c *Backend) { c.prefillTiled = max(n, 0) }
}

// tiledPrefill runs the attention of b on the tiled path and returns true when b is a scoring
// pass over fresh sequences, the longest at least the tiled-prefill length; else it does
// nothing and returns false. q, out [T, H·Dh]; k, v [T, KV·Dh], the new tokens' keys and values.
func (c *Backend) tiledPrefill(out, q, k, v *engine.Tensor, dh int, b *engine.AttnBatch) bool {
	if !b.Scratch {
		return false
	}
	from := c.prefillTiled
	if from <= 0 {
		from = DefaultTiledPrefillFrom
	}
	longest := int32(0)
	for s := range b.CtxLen {
		n := b.SeqStart[s+1] - b.SeqStart[s]
		if b.CtxLen[s] != n {
			return false // keys before the new tokens are only in the cache
		}
		longest = max(longest, n)
	}
	if int(longest) < from {
		return false
	}
	nh := q.Cols() / dh
	d := newAttnDims(q.Cols(), k.Cols(), nh)
	lse := c.Alloc(q.Rows(), nh) // [T, H], not needed by the caller
	defer c.Free(lse)
	c.attentionTrainTiled(f32(out), f32(lse), f32(q), f32(k), f32(v), d, b.SeqStart)
	return true
}
