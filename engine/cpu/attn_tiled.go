package cpu

import (
	"math"

	"github.com/prolong-rl/prolong/engine"
	"github.com/prolong-rl/prolong/engine/internal/kern"
)

// Tiled causal attention for training (FlashAttention-2 style) over packed sequences:
// seqStart plays cu_seqlens. Query and key tiles are attnTile rows, aligned at each
// sequence's first row, so a sequence's tile (i, j) is skipped when j > i and masked when
// j == i. Memory is O(T): one [attnTile, attnTile] score tile and a few [attnTile, Dh]
// accumulators per task, plus D = rowsum(dout∘out) [T, H] in the backward, plus the operands
// that many tile products share packed once for the micro-kernel (tilePacks): K and V in the
// forward, Q and dO both ways round in the backward's first pass (4·T·H·Dh floats, the most at
// once), K and V in its second. Packing each operand per product instead cost as much as the
// products themselves at Dh 64.
//
// Determinism: every task owns the rows it writes (forward and dQ: one (sequence, head, query
// tile); dK, dV: one (sequence, KV head, key tile), summing over its group's heads and the
// query tiles in order), so the bits depend on the inputs and attnTile only, never on the
// thread count or on which task finishes first.

// attnTile is the query and key tile height.
const attnTile = 64

// DefaultTiledAttentionFrom is the sequence length from which AttentionTrain and
// AttentionBackward take the tiled path (a call takes it when its longest sequence is at least
// this long): below it the per-row path is as fast or faster on the machines it was measured on
// (docs/train.md, "Long sequences": per row faster at 64 tokens, tiled 1.5× faster at 128).
const DefaultTiledAttentionFrom = 128

// tiledAttention reports whether a training attention call over seqStart runs tiled.
func (c *Backend) tiledAttention(seqStart []int32) bool {
	from := c.attnTiled
	if from <= 0 {
		from = DefaultTiledAttentionFrom
	}
	return maxSeqLen(seqStart) >= from
}

// attnDims are the layout of one attention call: q, out, dq [T, H·Dh]; k, v, dk, dv
// [T, KV·Dh]; lse [T, H].
type attnDims struct {
	nh, dh, nkv, group, qw, kw int
	scale                      float32
}

func newAttnDims(qCols, kCols, nh int) attnDims {
	dh := qCols / nh
	nkv := kCols / dh
	return attnDims{nh: nh, dh: dh, nkv: nkv, group: nh / nkv, qw: nh * dh, kw: nkv * dh,
		scale: float32(1 / math.Sqrt(float64(dh)))}
}

// tileTask is one (sequence, head or KV head, tile) of a tiled pass.
type tileTask struct {
	t0, t1 int // the sequence's rows
	g0     int // the sequence's first tile, numbered over all sequences (tilePacks index)
	head   int
	tile   int // tile index within the sequence
}

// tileTasks lists the tasks of every sequence, heads innermost, longest (last) tiles first
// so that a pool that claims chunks in order ends on the cheap ones.
func tileTasks(seqStart []int32, heads int, lastFirst bool) []tileTask {
	var ts []tileTask
	g0 := 0
	for s := 0; s+1 < len(seqStart); s++ {
		t0, t1 := int(seqStart[s]), int(seqStart[s+1])
		n := (t1 - t0 + attnTile - 1) / attnTile
		for i := 0; i < n; i++ {
			ti := i
			if lastFirst {
				ti = n - 1 - i
			}
			for h := 0; h < heads; h++ {
				ts = append(ts, tileTask{t0: t0, t1: t1, g0: g0, head: h, tile: ti})
			}
		}
		g0 += n
	}
	return ts
}

// tilePacks holds one operand of a tiled pass packed for kern.GemmPacked once per (tile,
// head), instead of once per tile product that uses it: tile g (numbered over all sequences)
// of head h at (g·heads + h)·size.
type tilePacks struct {
	t           *engine.Tensor // the storage, from the backend's pool (free)
	data        []float32
	heads, size int
}

// free returns the storage to the backend's pool.
func (p *tilePacks) free(c *Backend) {
	c.Free(p.t)
	*p = tilePacks{}
}

// at is the packed tile g of head h.
func (p tilePacks) at(g, h int) []float32 {
	o := (g*p.heads + h) * p.size
	return p.data[o : o+p.size]
}

// packSize is the largest packed operand of an [attnTile, dh] tile, either side of a product.
func packSize(dh int) int {
	return max(attnTile*dh, kern.BSize(dh, attnTile), kern.BSize(attnTile, dh))
}

// packTiles packs every tile of every sequence for each head h < heads: pack(dst, x, rows)
// gets the tile's first row of the head's columns, x = src[row·ld + h·dh:], and its height.
func (c *Backend) packTiles(src []float32, ld, heads, dh int, seqStart []int32, pack func(dst, x []float32, rows int)) tilePacks {
	tasks := tileTasks(seqStart, heads, false)
	p := tilePacks{heads: heads, size: packSize(dh)}
	ntiles := 0
	if len(tasks) > 0 {
		last := tasks[len(tasks)-1]
		ntiles = last.g0 + (last.t1-last.t0+attnTile-1)/attnTile
	}
	p.t = c.AllocUninit(ntiles * heads * p.size) // every entry is packed before it is read
	p.data = f32(p.t)
	c.thr.Parallel(len(tasks), 8, func(lo, hi int) {
		for _, tk := range tasks[lo:hi] {
			r0 := tk.t0 + tk.tile*attnTile
			pack(p.at(tk.g0+tk.tile, tk.head), src[r0*ld+tk.head*dh:], min(attnTile, tk.t1-r0))
		}
	})
	return p
}

// Packers of the tile products' operands: an [m, dh] tile of rows as the left operand (A) or
// transposed as the right one (Bt: S = Q·Kᵀ), or as the right operand as it is (B: P·V).
func packA(d attnDims, ld int) func(dst, x []float32, rows int) {
	return func(dst, x []float32, rows int) { kern.PackA(false, rows, d.dh, x, ld, dst) }
}

func packBt(d attnDims, ld int) func(dst, x []float32, rows int) {
	return func(dst, x []float32, rows int) { kern.PackB(true, d.dh, rows, x, ld, dst) }
}

func packB(d attnDims, ld int) func(dst, x []float32, rows int) {
	return func(dst, x []float32, rows int) { kern.PackB(false, rows, d.dh, x, ld, dst) }
}

// attnScratch is one goroutine's tiles.
type attnScratch struct {
	s, dp, acc, acc2 []float32 // [attnTile, attnTile] scores / dP; [attnTile, Dh] accumulators
	m, l             []float32 // [attnTile] running max (raw scores) and sum
	pa               []float32 // P or dS packed as a left operand
	x, y             []float32 // the task's own tiles packed (the one tile every product of the task uses)
}

func newAttnScratch(dh int) *attnScratch {
	ps := packSize(dh)
	return &attnScratch{s: make([]float32, attnTile*attnTile), dp: make([]float32, attnTile*attnTile),
		acc: make([]float32, attnTile*dh), acc2: make([]float32, attnTile*dh),
		m: make([]float32, attnTile), l: make([]float32, attnTile),
		pa: make([]float32, attnTile*attnTile), x: make([]float32, ps), y: make([]float32, ps)}
}

// attentionTrainTiled is AttentionTrain on query tiles: for each, over key tiles 0..diagonal,
// S = Q·Kᵀ, an online softmax (running max and sum per row), O += P·V; lse = max·scale + log sum.
func (c *Backend) attentionTrainTiled(os, ls, qs, ks, vs []float32, d attnDims, seqStart []int32) {
	dh, qw, kw := d.dh, d.qw, d.kw
	kb := c.packTiles(ks, kw, d.nkv, dh, seqStart, packBt(d, kw))
	vb := c.packTiles(vs, kw, d.nkv, dh, seqStart, packB(d, kw))
	tasks := tileTasks(seqStart, d.nh, true)
	c.thr.ParallelFine(len(tasks), 4, func(lo, hi int) {
		sc := newAttnScratch(dh)
		for _, tk := range tasks[lo:hi] {
			h, kvh := tk.head, tk.head/d.group
			r0 := tk.t0 + tk.tile*attnTile
			m := min(attnTile, tk.t1-r0)
			o := sc.acc[:m*dh]
			clear(o)
			for i := 0; i < m; i++ {
				sc.m[i] = float32(math.Inf(-1))
				sc.l[i] = 0
			}
			kern.PackA(false, m, dh, qs[r0*qw+h*dh:], qw, sc.x)
			for kt := 0; kt <= tk.tile; kt++ {
				k0 := tk.t0 + kt*attnTile
				n := min(attnTile, tk.t1-k0)
				s := sc.s[:m*n]
				kern.GemmPacked(m, n, dh, sc.x, kb.at(tk.g0+kt, kvh), s, n, false)
				for i := 0; i < m; i++ {
					row := s[i*n : i*n+n]
					valid := n
					if kt == tk.tile {
						valid = i + 1 // keys k0..r0+i (k0 == r0 on the diagonal)
					}
					mx := kern.MaxOf(row[:valid], sc.m[i])
					sum := kern.ExpShift(row[:valid], mx, d.scale)
					clear(row[valid:])
					alpha := kern.Expf((sc.m[i] - mx) * d.scale)
					sc.m[i], sc.l[i] = mx, sc.l[i]*alpha+sum
					if alpha != 1 {
						for j := range o[i*dh : i*dh+dh] {
							o[i*dh+j] *= alpha
						}
					}
				}
				kern.PackA(false, m, n, s, n, sc.pa)
				kern.GemmPacked(m, dh, n, sc.pa, vb.at(tk.g0+kt, kvh), o, dh, true)
			}
			for i := 0; i < m; i++ {
				inv := 1 / sc.l[i]
				dst := os[(r0+i)*qw+h*dh : (r0+i)*qw+h*dh+dh]
				for j, x := range o[i*dh : i*dh+dh] {
					dst[j] = x * inv
				}
				ls[(r0+i)*d.nh+h] = sc.m[i]*d.scale + float32(math.Log(float64(sc.l[i])))
			}
		}
	})
	kb.free(c)
	vb.free(c)
}

// probTile sets, for query rows r0..r0+m and key rows k0..k0+n of head h, s = P (the
// softmax probabilities, exp(scale·q·k - lse), zero above the diagonal when diag) and
// dp = dS = P∘(dO·Vᵀ - D)·scale, from the packed tiles qa, doa (left operands) and kbt, vbt
// (Kᵀ and Vᵀ as right operands).
func probTile(sc *attnScratch, qa, doa, kbt, vbt, ls, dd []float32, d attnDims, h, r0, m, n int, diag bool) {
	s, dp := sc.s[:m*n], sc.dp[:m*n]
	kern.GemmPacked(m, n, d.dh, qa, kbt, s, n, false)
	kern.GemmPacked(m, n, d.dh, doa, vbt, dp, n, false)
	for i := 0; i < m; i++ {
		row, drow := s[i*n:i*n+n], dp[i*n:i*n+n]
		valid := n
		if diag {
			valid = i + 1
		}
		l, di := ls[(r0+i)*d.nh+h], dd[(r0+i)*d.nh+h]
		kern.ExpShift(row[:valid], l/d.scale, d.scale) // e^((x - lse/scale)·scale), vectorised
		for j, p := range row[:valid] {
			drow[j] = p * (drow[j] - di) * d.scale
		}
		clear(row[valid:])
		clear(drow[valid:])
	}
}

// attentionBackwardTiled is AttentionBackward in two passes that each own their output rows:
// dK, dV per (sequence, KV head, key tile), over the group's heads and the query tiles from
// the diagonal down (dV += Pᵀ·dO, dK += dSᵀ·Q); then dQ per (sequence, head, query tile),
// over the key tiles up to the diagonal (dQ += dS·K). P and dS are recomputed from lse in each.
func (c *Backend) attentionBackwardTiled(dqs, dks, dvs, dos, qs, ks, vs, os, ls []float32, d attnDims, seqStart []int32) {
	T := len(ls) / d.nh
	dh, qw, kw := d.dh, d.qw, d.kw
	clear(dqs) // rows outside every sequence stay zero
	clear(dks)
	clear(dvs)
	dd := make([]float32, T*d.nh) // [T, H] D = rowsum(dout∘out)
	c.thr.Parallel(T*d.nh, 64, func(lo, hi int) {
		for it := lo; it < hi; it++ {
			dd[it] = kern.Dot(dos[it*dh:it*dh+dh], os[it*dh:it*dh+dh])
		}
	})
	// Pass 1 multiplies each query tile (Q, dO) by every key tile at or before it: pack them
	// once, both ways round.
	qa, doa := c.packTiles(qs, qw, d.nh, dh, seqStart, packA(d, qw)), c.packTiles(dos, qw, d.nh, dh, seqStart, packA(d, qw))
	qb, dob := c.packTiles(qs, qw, d.nh, dh, seqStart, packB(d, qw)), c.packTiles(dos, qw, d.nh, dh, seqStart, packB(d, qw))
	kvTasks := tileTasks(seqStart, d.nkv, false) // first key tiles see the most query tiles
	c.thr.ParallelFine(len(kvTasks), 4, func(lo, hi int) {
		sc := newAttnScratch(dh)
		for _, tk := range kvTasks[lo:hi] {
			kvh := tk.head
			k0 := tk.t0 + tk.tile*attnTile
			n := min(attnTile, tk.t1-k0)
			dK, dV := sc.acc[:n*dh], sc.acc2[:n*dh]
			clear(dK)
			clear(dV)
			kern.PackB(true, dh, n, ks[k0*kw+kvh*dh:], kw, sc.x)
			kern.PackB(true, dh, n, vs[k0*kw+kvh*dh:], kw, sc.y)
			nq := (tk.t1 - tk.t0 + attnTile - 1) / attnTile
			for h := kvh * d.group; h < (kvh+1)*d.group; h++ {
				for qt := tk.tile; qt < nq; qt++ {
					r0 := tk.t0 + qt*attnTile
					m := min(attnTile, tk.t1-r0)
					g := tk.g0 + qt
					probTile(sc, qa.at(g, h), doa.at(g, h), sc.x, sc.y, ls, dd, d, h, r0, m, n, qt == tk.tile)
					kern.PackA(true, n, m, sc.s[:m*n], n, sc.pa)
					kern.GemmPacked(n, dh, m, sc.pa, dob.at(g, h), dV, dh, true)
					kern.PackA(true, n, m, sc.dp[:m*n], n, sc.pa)
					kern.GemmPacked(n, dh, m, sc.pa, qb.at(g, h), dK, dh, true)
				}
			}
			for j := 0; j < n; j++ {
				copy(dks[(k0+j)*kw+kvh*dh:(k0+j)*kw+kvh*dh+dh], dK[j*dh:j*dh+dh])
				copy(dvs[(k0+j)*kw+kvh*dh:(k0+j)*kw+kvh*dh+dh], dV[j*dh:j*dh+dh])
			}
		}
	})
	// Pass 2 multiplies each key tile (K, V) by every query tile at or after it.
	qb.free(c)
	dob.free(c)
	kbt, vbt := c.packTiles(ks, kw, d.nkv, dh, seqStart, packBt(d, kw)), c.packTiles(vs, kw, d.nkv, dh, seqStart, packBt(d, kw))
	kb := c.packTiles(ks, kw, d.nkv, dh, seqStart, packB(d, kw))
	qTasks := tileTasks(seqStart, d.nh, true)
	c.thr.ParallelFine(len(qTasks), 4, func(lo, hi int) {
		sc := newAttnScratch(dh)
		for _, tk := range qTasks[lo:hi] {
			h, kvh := tk.head, tk.head/d.group
			r0 := tk.t0 + tk.tile*attnTile
			m := min(attnTile, tk.t1-r0)
			dQ := sc.acc[:m*dh]
			clear(dQ)
			g := tk.g0 + tk.tile
			for kt := 0; kt <= tk.tile; kt++ {
				n := min(attnTile, tk.t1-(tk.t0+kt*attnTile))
				probTile(sc, qa.at(g, h), doa.at(g, h), kbt.at(tk.g0+kt, kvh), vbt.at(tk.g0+kt, kvh), ls, dd, d, h, r0, m, n, kt == tk.tile)
				kern.PackA(false, m, n, sc.dp[:m*n], n, sc.pa)
				kern.GemmPacked(m, dh, n, sc.pa, kb.at(tk.g0+kt, kvh), dQ, dh, true)
			}
			for i := 0; i < m; i++ {
				copy(dqs[(r0+i)*qw+h*dh:(r0+i)*qw+h*dh+dh], dQ[i*dh:i*dh+dh])
			}
		}
	})
	for _, p := range []*tilePacks{&qa, &doa, &kbt, &vbt, &kb} {
		p.free(c)
	}
}
