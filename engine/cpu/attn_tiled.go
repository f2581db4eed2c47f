package cpu

import (
	"math"

	"github.com/prolong-rl/prolong/engine/internal/kern"
)

// Tiled causal attention for training (FlashAttention-2 style) over packed sequences:
// seqStart plays cu_seqlens. Query and key tiles are attnTile rows, aligned at each
// sequence's first row, so a sequence's tile (i, j) is skipped when j > i and masked when
// j == i. Memory is O(T): one [attnTile, attnTile] score tile and a few [attnTile, Dh]
// accumulators per task, plus D = rowsum(dout∘out) [T, H] in the backward.
//
// Determinism: every task owns the rows it writes (forward and dQ: one (sequence, head, query
// tile); dK, dV: one (sequence, KV head, key tile), summing over its group's heads and the
// query tiles in order), so the bits depend on the inputs and attnTile only, never on the
// thread count or on which task finishes first.

// attnTile is the query and key tile height.
const attnTile = 64

// DefaultTiledAttentionFrom is the sequence length from which AttentionTrain and
// AttentionBackward take the tiled path (a call takes it when its longest sequence is at least
// this long): below it the per-row path is as fast or faster on the machine it was measured on
// (docs/train.md, "Long sequences").
const DefaultTiledAttentionFrom = 1024

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
	head   int
	tile   int // tile index within the sequence
}

// tileTasks lists the tasks of every sequence, heads innermost, longest (last) tiles first
// so that a pool that claims chunks in order ends on the cheap ones.
func tileTasks(seqStart []int32, heads int, lastFirst bool) []tileTask {
	var ts []tileTask
	for s := 0; s+1 < len(seqStart); s++ {
		t0, t1 := int(seqStart[s]), int(seqStart[s+1])
		n := (t1 - t0 + attnTile - 1) / attnTile
		for i := 0; i < n; i++ {
			ti := i
			if lastFirst {
				ti = n - 1 - i
			}
			for h := 0; h < heads; h++ {
				ts = append(ts, tileTask{t0, t1, h, ti})
			}
		}
	}
	return ts
}

// attnScratch is one goroutine's tiles.
type attnScratch struct {
	s, dp, acc, acc2 []float32 // [attnTile, attnTile] scores / dP; [attnTile, Dh] accumulators
	m, l             []float32 // [attnTile] running max (raw scores) and sum
	buf              kern.TileBuf
}

func newAttnScratch(dh int) *attnScratch {
	return &attnScratch{s: make([]float32, attnTile*attnTile), dp: make([]float32, attnTile*attnTile),
		acc: make([]float32, attnTile*dh), acc2: make([]float32, attnTile*dh),
		m: make([]float32, attnTile), l: make([]float32, attnTile)}
}

// attentionTrainTiled is AttentionTrain on query tiles: for each, over key tiles 0..diagonal,
// S = Q·Kᵀ, an online softmax (running max and sum per row), O += P·V; lse = max·scale + log sum.
func (c *Backend) attentionTrainTiled(os, ls, qs, ks, vs []float32, d attnDims, seqStart []int32) {
	tasks := tileTasks(seqStart, d.nh, true)
	dh, qw, kw := d.dh, d.qw, d.kw
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
			q := qs[r0*qw+h*dh:]
			for kt := 0; kt <= tk.tile; kt++ {
				k0 := tk.t0 + kt*attnTile
				n := min(attnTile, tk.t1-k0)
				s := sc.s[:m*n]
				kern.Gemm(false, true, m, n, dh, q, qw, ks[k0*kw+kvh*dh:], kw, s, n, false, &sc.buf)
				for i := 0; i < m; i++ {
					row := s[i*n : i*n+n]
					valid := n
					if kt == tk.tile {
						valid = i + 1 // keys k0..r0+i (k0 == r0 on the diagonal)
					}
					mx := sc.m[i]
					for _, x := range row[:valid] {
						mx = max(mx, x)
					}
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
				kern.Gemm(false, false, m, dh, n, s, n, vs[k0*kw+kvh*dh:], kw, o, dh, true, &sc.buf)
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
}

// probTile sets, for query rows r0..r0+m and key rows k0..k0+n of one head, s = P (the
// softmax probabilities, exp(scale·q·k - lse), zero above the diagonal when diag) and
// dp = dS = P∘(dO·Vᵀ - D)·scale.
func probTile(sc *attnScratch, qs, ks, vs, dos, ls, dd []float32, d attnDims, h, r0, m, k0, n int, diag bool) {
	dh, qw, kw, kvh := d.dh, d.qw, d.kw, h/d.group
	s, dp := sc.s[:m*n], sc.dp[:m*n]
	kern.Gemm(false, true, m, n, dh, qs[r0*qw+h*dh:], qw, ks[k0*kw+kvh*dh:], kw, s, n, false, &sc.buf)
	kern.Gemm(false, true, m, n, dh, dos[r0*qw+h*dh:], qw, vs[k0*kw+kvh*dh:], kw, dp, n, false, &sc.buf)
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
			nq := (tk.t1 - tk.t0 + attnTile - 1) / attnTile
			for h := kvh * d.group; h < (kvh+1)*d.group; h++ {
				for qt := tk.tile; qt < nq; qt++ {
					r0 := tk.t0 + qt*attnTile
					m := min(attnTile, tk.t1-r0)
					probTile(sc, qs, ks, vs, dos, ls, dd, d, h, r0, m, k0, n, qt == tk.tile)
					kern.Gemm(true, false, n, dh, m, sc.s[:m*n], n, dos[r0*qw+h*dh:], qw, dV, dh, true, &sc.buf)
					kern.Gemm(true, false, n, dh, m, sc.dp[:m*n], n, qs[r0*qw+h*dh:], qw, dK, dh, true, &sc.buf)
				}
			}
			for j := 0; j < n; j++ {
				copy(dks[(k0+j)*kw+kvh*dh:(k0+j)*kw+kvh*dh+dh], dK[j*dh:j*dh+dh])
				copy(dvs[(k0+j)*kw+kvh*dh:(k0+j)*kw+kvh*dh+dh], dV[j*dh:j*dh+dh])
			}
		}
	})
	qTasks := tileTasks(seqStart, d.nh, true)
	c.thr.ParallelFine(len(qTasks), 4, func(lo, hi int) {
		sc := newAttnScratch(dh)
		for _, tk := range qTasks[lo:hi] {
			h, kvh := tk.head, tk.head/d.group
			r0 := tk.t0 + tk.tile*attnTile
			m := min(attnTile, tk.t1-r0)
			dQ := sc.acc[:m*dh]
			clear(dQ)
			for kt := 0; kt <= tk.tile; kt++ {
				k0 := tk.t0 + kt*attnTile
				n := min(attnTile, tk.t1-k0)
				probTile(sc, qs, ks, vs, dos, ls, dd, d, h, r0, m, k0, n, kt == tk.tile)
				kern.Gemm(false, false, m, dh, n, sc.dp[:m*n], n, ks[k0*kw+kvh*dh:], kw, dQ, dh, true, &sc.buf)
			}
			for i := 0; i < m; i++ {
				copy(dqs[(r0+i)*qw+h*dh:(r0+i)*qw+h*dh+dh], dQ[i*dh:i*dh+dh])
			}
		}
	})
}
