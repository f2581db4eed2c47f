package kern

import (
	"fmt"
	"sync"
)

// maxMR bounds the register block height of every path (AVX-512 uses 14).
const maxMR = 16

// MatMul computes y[m,n] = x[m,k]·Wᵀ (x row-major stride k, y row-major stride n, y
// overwritten) on all cores. Every output is one fp32 FMA chain over k in order, so a row's
// result does not depend on m or on how the work is split across threads (it may differ in
// the last bits between ISA paths).
//
// Plan: x is packed into ceil(m/mr) blocks of near-equal height, at most mr rows (each
// [k][rows]; m == 1 uses x as is); the work items are (panel of 32 columns, group of row
// blocks); each item streams its panel once per row block (from L1/L2 after the first) with
// the rows×32 micro-kernel over the whole of k.
func MatMul(y, x []float32, m int, w *Weight) { Threads(0).MatMul(y, x, m, w) }

// MatMul is the package-level MatMul on at most t chunks of work at a time.
func (t Threads) MatMul(y, x []float32, m int, w *Weight) { t.matmul1(y, x, m, w, false) }

// MatMulT is MatMul with x given transposed: xt is row-major [k, m] and y[m,n] = xtᵀ·Wᵀ. The
// training path uses it for weight gradients (dW = dYᵀ·X) without materialising dYᵀ; the
// transpose is folded into the packing MatMul does anyway.
func MatMulT(y, xt []float32, m int, w *Weight) { Threads(0).MatMulT(y, xt, m, w) }

// MatMulT is the package-level MatMulT on at most t chunks of work at a time.
func (t Threads) MatMulT(y, xt []float32, m int, w *Weight) { t.matmul1(y, xt, m, w, true) }

// MatMulTAcc is MatMulT adding into y instead of overwriting it: y[m,n] += xtᵀ·Wᵀ. Each
// output's product is the same FMA chain as MatMulT's, added to y once, so a weight gradient
// accumulates in place without a product buffer of y's size.
func (t Threads) MatMulTAcc(y, xt []float32, m int, w *Weight) {
	t.matmul([][]float32{y}, xt, m, []*Weight{w}, true, true)
}

// MatMuls computes ys[i][m,n_i] = x[m,k]·W_iᵀ for several weights of the same k in one pass
// over the cores: x is packed once and the panels of all the weights are one list of work
// items, so the projections of one input (Q, K, V; gate and up) cost one dispatch and one
// wait rather than one each. Each ys[i] gets the bits MatMul(ys[i], x, m, ws[i]) gives.
// Bf16 dot-product weights mixed with others run as a second pass.
func (t Threads) MatMuls(ys [][]float32, x []float32, m int, ws []*Weight) {
	if len(ys) != len(ws) {
		panic(fmt.Sprintf("kern: MatMuls with %d outputs for %d weights", len(ys), len(ws)))
	}
	var dys, oys [][]float32
	var dws, ows []*Weight
	for i, w := range ws {
		if w.dp != nil {
			dys, dws = append(dys, ys[i]), append(dws, w)
		} else {
			oys, ows = append(oys, ys[i]), append(ows, w)
		}
	}
	for _, g := range []struct {
		ys [][]float32
		ws []*Weight
	}{{oys, ows}, {dys, dws}} {
		if len(g.ws) > 0 {
			t.matmul(g.ys, x, m, g.ws, false, false)
		}
	}
}

func (t Threads) matmul1(y, x []float32, m int, w *Weight, trans bool) {
	t.matmul([][]float32{y}, x, m, []*Weight{w}, trans, false)
}

// matmul computes ys[i] = x·ws[i]ᵀ, or adds it to ys[i] when acc.
func (t Threads) matmul(ys [][]float32, x []float32, m int, ws []*Weight, trans, acc bool) {
	k, np := ws[0].k, 0
	for i, w := range ws {
		if m < 0 || w.k != k || len(x) < m*k || len(ys[i]) < m*w.n {
			panic(fmt.Sprintf("kern: MatMul m=%d with len(x)=%d len(y)=%d for weight [%d,%d] (k %d)", m, len(x), len(ys[i]), w.n, w.k, k))
		}
		if (w.dp == nil) != (ws[0].dp == nil) {
			panic("kern: MatMuls mixing bf16 dot-product weights with others")
		}
		np += w.np
	}
	if m == 0 || np == 0 {
		return
	}
	if k == 0 {
		if !acc {
			for i, w := range ws {
				clear(ys[i][:m*w.n])
			}
		}
		return
	}
	if ws[0].dp != nil {
		t.matmulDot(ys, x, m, ws, trans, acc)
		return
	}
	im := cur
	nrb := (m + im.mr - 1) / im.mr
	// Row block r holds rows [first(r), first(r+1)): near-equal heights of at most mr, so m=16 on
	// mr=6 runs blocks of 6,5,5 rather than 6,6,4 (and m=7 runs 4,3 rather than 6,1).
	first := func(r int) int { return r * m / nrb }

	ap, put := t.packF32(x, m, k, im.mr, trans)
	defer put()

	// Split rows into groups only when there are too few panels to keep every core busy.
	p := t.count()
	nrg := 1
	if np < 4*p && nrb > 1 {
		nrg = min(nrb, (4*p+np-1)/np)
	}
	if acc {
		nrg = accGroups(nrb, nrg, im.mr, ws)
	}
	t.ParallelFine(np*nrg, chunksPerThread, func(lo, hi int) {
		var tile [maxMR * nr]float32 // [mr][32] output tile for the partial last panel
		var wide *[]float32
		for it := lo; it < hi; it++ {
			pn, g := it/nrg, it%nrg
			if acc {
				g, pn = it/np, it%np
			}
			wi := 0 // the weight of global panel pn, and pn within it
			for pn >= ws[wi].np {
				pn -= ws[wi].np
				wi++
			}
			w, y, n := ws[wi], ys[wi], ws[wi].n
			rb0, rb1 := g*nrb/nrg, (g+1)*nrb/nrg
			var bf *float32
			var bh *uint16
			if w.b16 != nil {
				bh = &w.b16[pn*k*nr]
				if rb1-rb0 > 1 { // widen the panel once, reuse it for every row block
					if wide == nil {
						wide = getBuf(k * nr)
						defer putBuf(wide)
					}
					im.widen(&(*wide)[0], bh, k*nr)
					bf, bh = &(*wide)[0], nil
				}
			} else {
				bf = &w.f32[pn*k*nr]
			}
			edge := n % nr // valid columns of the last panel, 0 if full
			last := edge != 0 && pn == w.np-1
			for r := rb0; r < rb1; r++ {
				r0, rows := first(r), first(r+1)-first(r)
				a := &ap[r0*k]
				c, ldc := &tile[0], nr
				if !last && !acc {
					c, ldc = &y[r0*n+pn*nr], n
				}
				if bh != nil {
					im.b16(a, bh, c, k, rows, ldc)
				} else {
					im.f32(a, bf, c, k, rows, ldc)
				}
				if last || acc {
					storeTile(y, tile[:], r0, rows, n, pn, edge, last, acc)
				}
			}
		}
	})
}

// accGroups is the number of row groups of an accumulating matmul (at least nrg): groups of
// row blocks whose rows of the outputs (over all the weights' columns) take about 256 KiB, and
// the work items ordered group by group, so that the outputs a group reads and adds to stay in
// the caches across its panels instead of being streamed from memory once per panel.
func accGroups(nrb, nrg, mr int, ws []*Weight) int {
	n := 0
	for _, w := range ws {
		n += w.n
	}
	bpg := max(1, (256<<10)/(4*n*mr)) // row blocks per group
	return max(nrg, (nrb+bpg-1)/bpg)
}

// storeTile writes (or, when acc, adds) the rows×32 tile of panel pn, row block r0.. into y
// [m, n]: the first edge columns only when the panel is the partial last one.
func storeTile(y, tile []float32, r0, rows, n, pn, edge int, last, acc bool) {
	cols := nr
	if last {
		cols = edge
	}
	for i := 0; i < rows; i++ {
		dst := y[(r0+i)*n+pn*nr : (r0+i)*n+pn*nr+cols]
		src := tile[i*nr : i*nr+cols]
		if !acc {
			copy(dst, src)
			continue
		}
		for j, v := range src {
			dst[j] += v
		}
	}
}

// packF32 packs x [m,k] (or xᵀ given as [k,m] when trans) for the fp32 kernels: row block r
// of ceil(m/mr) near-equal blocks (rows r*m/nrb ..) at offset (r*m/nrb)*k, laid out as
// [k][rows of block r]; m == 1 uses x as is. put returns the scratch.
func (t Threads) packF32(x []float32, m, k, mr int, trans bool) (ap []float32, put func()) {
	if m <= 1 {
		return x[:k], func() {}
	}
	nrb := (m + mr - 1) / mr
	first := func(r int) int { return r * m / nrb }
	bp := getBuf(m * k)
	ap = *bp
	t.Parallel(nrb, max(1, 16384/(mr*k)), func(r0, r1 int) {
		for r := r0; r < r1; r++ {
			packRows(ap, x, first(r), first(r+1), m, k, trans)
		}
	})
	return ap, func() { putBuf(bp) }
}

// packRows writes rows [r0, r1) of x [m][k] (or of xᵀ, x given as [k][m], when trans) into
// ap[r0*k:r1*k] as [k][r1-r0].
func packRows(ap, x []float32, r0, r1, m, k int, trans bool) {
	rows := r1 - r0
	dst := ap[r0*k : r1*k]
	if trans {
		for kk := 0; kk < k; kk++ {
			copy(dst[kk*rows:kk*rows+rows], x[kk*m+r0:kk*m+r1])
		}
		return
	}
	for i := 0; i < rows; i++ {
		for kk, v := range x[(r0+i)*k : (r0+i)*k+k] {
			dst[kk*rows+i] = v
		}
	}
}

var bufPool sync.Pool // *[]float32 scratch

func getBuf(n int) *[]float32 {
	if b, ok := bufPool.Get().(*[]float32); ok && cap(*b) >= n {
		*b = (*b)[:n]
		return b
	}
	b := make([]float32, n, n+n/4)
	return &b
}

func putBuf(b *[]float32) { bufPool.Put(b) }

// MatMulRef is the pure-Go oracle for MatMul (same contract): plain loops over the row-major
// unpacked weight, accumulating in float64. Never optimised.
func MatMulRef(y, x []float32, m int, w *Weight) {
	n, k := w.n, w.k
	wr := make([]float32, n*k)
	w.Unpack(wr)
	for i := 0; i < m; i++ {
		for j := 0; j < n; j++ {
			var s float64
			for kk := 0; kk < k; kk++ {
				s += float64(x[i*k+kk]) * float64(wr[j*k+kk])
			}
			y[i*n+j] = float32(s)
		}
	}
}

// Dot returns Σ a[i]·b[i] (SIMD; len(b) >= len(a)).
func Dot(a, b []float32) float32 {
	if len(b) < len(a) {
		panic("kern: Dot length mismatch")
	}
	return cur.dot(a, b[:len(a)])
}

// Axpy computes y[i] += alpha·x[i] (SIMD; len(y) >= len(x)).
func Axpy(alpha float32, x, y []float32) {
	if len(y) < len(x) {
		panic("kern: Axpy length mismatch")
	}
	cur.axpy(alpha, x, y[:len(x)])
}

// chunksPerThread is how many chunks per thread MatMul splits its (panel, row group) items
// into, claimed by whichever thread is free: a worker that starts late (woken from sleep) or
// is slowed by other load takes fewer of them. In alternating runs on 2 cores: decode at batch
// 1 38-44 -> 46-48 tok/s; prefill of 256 tokens (with attention split the same way) faster in
// 7 of 8 pairs, median 578 -> 617 tok/s.
const chunksPerThread = 4
