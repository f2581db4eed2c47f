package cuda

import (
	"math"

	"github.com/prolong-rl/prolong/engine"
)

// KVDTypes implements engine.KVDTyper: the KV cache holds fp32, and bf16 with Options.BF16KV.
func (b *Backend) KVDTypes() []engine.DType {
	if b.opts.BF16KV {
		return []engine.DType{engine.F32, engine.BF16}
	}
	return []engine.DType{engine.F32}
}

// elemBytes is the size of one cached key or value element.
func (s *kvStore) elemBytes() uint64 {
	if s.dt == engine.BF16 {
		return 2
	}
	return 4
}

// The decode_attn kernels' shape (decode_attn.cu): DA_WARPS warps per block, at most DA_MAXG
// query heads per block, tiles of 32 positions per warp.
const (
	decodeThreads  = 4 * 32
	decodeMaxGroup = 8
	decodeTile     = 32
	// defaultSplitKVMinPart is Options.SplitKVMinPart's default: the fewest positions a split
	// covers, one tile for each of a block's 4 warps, so that no warp of a split idles and a
	// split's fixed costs (its q rows, its partial) stay small beside its reads.
	defaultSplitKVMinPart = 128
	// splitBlocksPerSM is how many blocks per SM a split aims at: the decode_attn blocks that
	// fit on an SM at once (168 registers × 128 threads of 65,536 registers: 3), one wave.
	splitBlocksPerSM = 3
)

// decodeSplit chooses how a decode_attn launch of T query tokens, gy blocks per token (KV
// heads × head slices) and a longest context of maxN positions is split over the context: part
// positions per split (a multiple of decodeTile) and nsplit splits (the grid's z). Unsplit
// (nsplit 1, part covering maxN) without Options.SplitKVDecode, and where T·gy blocks already
// fill the GPU's SMs; else enough splits for about splitBlocksPerSM blocks per SM, each of at
// least Options.SplitKVMinPart positions.
func (b *Backend) decodeSplit(T, gy, maxN int) (part, nsplit int) {
	roundUp := func(n int) int { return max(decodeTile, (n+decodeTile-1)/decodeTile*decodeTile) }
	unsplit := roundUp(maxN)
	base := T * gy
	if !b.opts.SplitKVDecode || base >= b.sms || maxN <= decodeTile {
		return unsplit, 1
	}
	minPart := defaultSplitKVMinPart
	if b.opts.SplitKVMinPart > 0 {
		minPart = b.opts.SplitKVMinPart
	}
	want := (splitBlocksPerSM*b.sms + base - 1) / base
	part = max(roundUp((maxN+want-1)/want), roundUp(minPart))
	nsplit = (maxN + part - 1) / part
	if nsplit <= 1 {
		return unsplit, 1
	}
	return part, nsplit
}

// decodeAttention is Attention on the decode_attn kernels (Options.BF16KV's bf16 cache, and
// Options.SplitKVDecode): the new keys and values go to their slots (rounded to bf16 in a bf16
// cache), then decode_attn_f32 or decode_attn_bf16 runs on a grid (T, KV·ceil(G/8), nsplit),
// and, when split, decode_attn_combine merges the partials. meta is Attention's metadata.
// writeKV writes the batch's new keys and values (k, v [T, KV*Dh]) into layer of s at
// ab.Slots, rounded to bf16 for a bf16 store (kv_write_bf16) — unless QKVRoPE already wrote
// them (ab.KVWritten).
func (b *Backend) writeKV(s *kvStore, layer int, k, v *engine.Tensor, ab *engine.AttnBatch) {
	if ab.KVWritten {
		return
	}
	T, dh := k.Rows(), s.headDim
	grid := b.gridFor(int64(T * s.kvHeads * dh))
	if s.dt == engine.BF16 {
		b.launchKvWriteBf16(grid, 256, dptr(s.k[layer]), dptr(s.v[layer]), ptr(k), ptr(v),
			b.constInts(ab.Slots), int32(T), int32(s.kvHeads), int32(s.blockSize), int32(dh))
		return
	}
	b.launchKvWrite(grid, 256, dptr(s.k[layer]), dptr(s.v[layer]), ptr(k), ptr(v),
		b.constInts(ab.Slots), int32(T), int32(s.kvHeads), int32(s.blockSize), int32(dh))
}

// Called inside the op.
func (b *Backend) decodeAttention(out, q, k, v *engine.Tensor, s *kvStore, layer int, ab *engine.AttnBatch, meta []int32) {
	T := q.Rows()
	dh := s.headDim
	nh := q.Cols() / dh
	b.writeKV(s, layer, k, v, ab)
	maxN := 0
	for _, n := range ab.CtxLen {
		maxN = max(maxN, int(n))
	}
	group := nh / s.kvHeads
	gy := s.kvHeads * ((group + decodeMaxGroup - 1) / decodeMaxGroup)
	part, ns := b.decodeSplit(T, gy, maxN)
	scale := float32(1 / math.Sqrt(float64(dh)))
	dmeta := b.constInts(meta)
	var pm, pl, po dptr
	if ns > 1 {
		rows := uint64(T * nh * ns)
		need := 4 * rows * uint64(2+dh) // pm, pl [rows], po [rows, Dh]
		if need > b.splitBufBytes {
			if b.splitBuf != 0 {
				b.alloc.Free(b.splitBuf)
			}
			b.splitBuf, b.splitBufBytes = b.devAlloc(need), 0
			if b.splitBuf == 0 {
				return
			}
			b.splitBufBytes = need
		}
		pm, pl, po = dptr(b.splitBuf), dptr(b.splitBuf+4*rows), dptr(b.splitBuf+8*rows)
	}
	grid := [3]int{T, gy, ns}
	if s.dt == engine.BF16 {
		b.launchDecodeAttnBf16(grid, decodeThreads, ptr(out), pm, pl, po, ptr(q), dptr(s.k[layer]), dptr(s.v[layer]),
			dmeta, int32(nh), int32(s.kvHeads), int32(dh), int32(s.blockSize), scale, int32(part), int32(ns))
	} else {
		b.launchDecodeAttnF32(grid, decodeThreads, ptr(out), pm, pl, po, ptr(q), dptr(s.k[layer]), dptr(s.v[layer]),
			dmeta, int32(nh), int32(s.kvHeads), int32(dh), int32(s.blockSize), scale, int32(part), int32(ns))
	}
	if ns > 1 {
		b.launchDecodeAttnCombine([3]int{T, nh, 1}, decodeThreads, ptr(out), pm, pl, po, dmeta, int32(nh), int32(dh), int32(part), int32(ns))
	}
}
