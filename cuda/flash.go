package cuda

import (
	"math"
	"sort"

	"github.com/prolong-rl/prolong/engine"
)

// The tiled (FlashAttention-2 style) tensor-core attention of kernels/flash.cu, behind
// Options.TiledAttention: training attention (forward, backward) and the attention of scoring
// passes over fresh sequences. Memory is O(T): no [L, L] scores, so there is no length limit
// and no fallback to the row kernels for long sequences.

// flashTile is the query and key tile height of kernels/flash.cu (FL_TILE).
const flashTile = 64

// flashHeadDim reports whether kernels/flash.cu has kernels for head dim dh.
func flashHeadDim(dh int) bool { return dh == 64 || dh == 128 }

// SetTiledAttention switches the tiled attention kernels (Options.TiledAttention) on or off
// for the ops enqueued from now on. Open hands out one Backend per Options, so this changes
// it for every holder of b; benchmarks use it to time both paths on one backend.
func (b *Backend) SetTiledAttention(on bool) { b.tiled.Store(on) }

// useFlash reports whether an attention call of head dim dh takes the tiled kernels.
func (b *Backend) useFlash(dh int) bool { return b.tiled.Load() && flashHeadDim(dh) }

// flashTiles lists the flashTile-row tiles of every sequence of seqStart as the kernels'
// metadata, triples [t0, t1, r0] (the sequence's rows t0..t1-1 and the tile's first row), the
// costliest first so that the last blocks to start are short: for the forward and dQ
// (byKeys false) a query tile's cost is its number of key tiles, the tiles at a sequence's
// end cost most; for dK and dV (byKeys true) a key tile's cost is the number of query tiles
// at or after it, the tiles at a sequence's start cost most. Ties keep sequence order.
func flashTiles(seqStart []int32, byKeys bool) []int32 {
	type tile struct{ t0, t1, r0, cost int32 }
	var ts []tile
	for s := 0; s+1 < len(seqStart); s++ {
		t0, t1 := seqStart[s], seqStart[s+1]
		n := (t1 - t0 + flashTile - 1) / flashTile
		for i := int32(0); i < n; i++ {
			cost := i + 1
			if byKeys {
				cost = n - i
			}
			ts = append(ts, tile{t0, t1, t0 + i*flashTile, cost})
		}
	}
	sort.SliceStable(ts, func(i, j int) bool { return ts[i].cost > ts[j].cost })
	meta := make([]int32, 0, 3*len(ts))
	for _, t := range ts {
		meta = append(meta, t.t0, t.t1, t.r0)
	}
	return meta
}

// flashForward enqueues the tiled forward: out [T, H*Dh], lse [T, H] from q [T, H*Dh] and
// k, v [T, KV*Dh] over the packed sequences of seqStart. Inside an op.
func (b *Backend) flashForward(out, lse, q, k, v dptr, seqStart []int32, nh, nkv, dh int) {
	meta := flashTiles(seqStart, false)
	grid := [3]int{len(meta) / 3, nh, 1}
	scale := float32(1 / math.Sqrt(float64(dh)))
	md := b.constInts(meta)
	if dh == 64 {
		b.launchFlashFwd64(grid, 128, out, lse, q, k, v, md, int32(nh), int32(nkv), scale)
	} else {
		b.launchFlashFwd128(grid, 128, out, lse, q, k, v, md, int32(nh), int32(nkv), scale)
	}
}

// flashBackward enqueues the tiled backward: D = rowsum(dout∘out) (attn_rowdot), then dK, dV
// per (key tile, KV head), then dQ per (query tile, head), a second pass that recomputes P and
// dS from lse: every block writes its own rows, no atomics, so the result is deterministic.
// Inside an op.
func (b *Backend) flashBackward(dq, dk, dv, dout, q, k, v, out, lse *engine.Tensor, seqStart []int32, sh attnShape) {
	scale := float32(1 / math.Sqrt(float64(sh.dh)))
	D := dptr(b.tmp(uint64(4 * max(sh.T*sh.nh, 1))))
	b.launchAttnRowdot([3]int{(sh.T*sh.nh + 7) / 8, 1, 1}, 256, D, ptr(dout), ptr(out), int32(sh.T*sh.nh), int32(sh.dh))
	qTiles := flashTiles(seqStart, false)
	kvMeta, qMeta := b.constInts(flashTiles(seqStart, true)), b.constInts(qTiles)
	tiles := len(qTiles) / 3
	nh, nkv := int32(sh.nh), int32(sh.nkv)
	if sh.dh == 64 {
		b.launchFlashBwdDkv64([3]int{tiles, sh.nkv, 1}, 128, ptr(dk), ptr(dv), ptr(dout), ptr(q), ptr(k), ptr(v), ptr(lse), D, kvMeta, nh, nkv, scale)
		b.launchFlashBwdDq64([3]int{tiles, sh.nh, 1}, 128, ptr(dq), ptr(dout), ptr(q), ptr(k), ptr(v), ptr(lse), D, qMeta, nh, nkv, scale)
		return
	}
	b.launchFlashBwdDkv128([3]int{tiles, sh.nkv, 1}, 128, ptr(dk), ptr(dv), ptr(dout), ptr(q), ptr(k), ptr(v), ptr(lse), D, kvMeta, nh, nkv, scale)
	b.launchFlashBwdDq128([3]int{tiles, sh.nh, 1}, 128, ptr(dq), ptr(dout), ptr(q), ptr(k), ptr(v), ptr(lse), D, qMeta, nh, nkv, scale)
}

// freshScratch reports whether ab is a scoring pass (Scratch) over fresh sequences only (no
// context before the new tokens): its attention is the training forward's over the new
// tokens' q, k, v, so the tiled forward can run it. Generation batches keep the row kernels:
// a preempted sample is recomputed by prefill and must give its decode rows' values.
func freshScratch(ab *engine.AttnBatch) bool {
	if !ab.Scratch {
		return false
	}
	for s := range ab.CtxLen {
		if ab.CtxLen[s] != ab.SeqStart[s+1]-ab.SeqStart[s] {
			return false
		}
	}
	return true
}
