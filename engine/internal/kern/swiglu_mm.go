package kern

import "fmt"

// MatMulSwiGLU computes an MLP's gated activation out[m,n] = Silu(x·Gᵀ)·(x·Uᵀ) for its gate and
// up weights g, u [n,k] in one pass over the cores: each work item multiplies the same panel of
// 32 columns of both weights by a strip of row blocks of x (up to stripRows rows) into two
// tiles (in L1/L2), applies SwiGLU to them and writes only the result, instead of writing x·Gᵀ
// and x·Uᵀ out and reading them back.
// gy and uy, where not nil, receive x·Gᵀ and x·Uᵀ [m,n] too (the training forward keeps them for
// the backward). Every value is what MatMuls({gy, uy}, x, {g, u}) then SwiGLU give, bit for bit:
// each product is the same micro-kernel call on the same packed x (a row's result does not
// depend on where the tile is stored), and SwiGLU's vector and scalar paths agree bit for bit.
// out must not overlap x, gy or uy. g and u must have the same shape; a bf16 dot-product weight
// beside another kind runs as MatMuls then SwiGLU.
func (t Threads) MatMulSwiGLU(out, gy, uy, x []float32, m int, g, u *Weight) {
	n, k := g.n, g.k
	if u.n != n || u.k != k || m < 0 || len(x) < m*k || len(out) < m*n ||
		(gy != nil && len(gy) < m*n) || (uy != nil && len(uy) < m*n) {
		panic(fmt.Sprintf("kern: MatMulSwiGLU m=%d with len(x)=%d len(out)=%d for gate [%d,%d] and up [%d,%d]", m, len(x), len(out), g.n, g.k, u.n, u.k))
	}
	if m == 0 || n == 0 {
		return
	}
	if (g.dp == nil) != (u.dp == nil) {
		t.matmulThenSwiGLU(out, gy, uy, x, m, g, u)
		return
	}
	if k == 0 { // both products are zero, and so is Silu(0)·0
		for _, y := range [][]float32{out, gy, uy} {
			if y != nil {
				clear(y[:m*n])
			}
		}
		return
	}
	im := cur
	// The packed x of the path the weights take (see matmul, matmulDot, matmulAMX).
	var (
		mr      int
		apf     []float32 // fp32 kernels: row block r at first(r)*k, [k][rows]
		apd     []uint32  // dot kernel: row block r at first(r)*k2, [k2][rows]; AMX: [m][k2p]
		put     func()
		k2, k2p int
		useAMX  = g.dp != nil && im.amx != nil
		useDot  = g.dp != nil && im.amx == nil
	)
	switch {
	case useAMX:
		mr, k2p = 32, g.k2p()
		apd, put = t.packAMX(x, m, k, k2p, false)
	case useDot:
		mr, k2, k2p = im.dmr, g.k2(), g.k2p()
		apd, put = t.packDot(x, m, k, k2, mr, false)
	default:
		mr = im.mr
		apf, put = t.packF32(x, m, k, mr, false)
	}
	defer put()
	nrb := (m + mr - 1) / mr
	first := func(r int) int { return r * m / nrb }
	np := g.np
	p := t.count()
	nrg := 1
	if np < 4*p && nrb > 1 {
		nrg = min(nrb, (4*p+np-1)/np)
	}
	ws := [2]*Weight{g, u}
	t.ParallelFine(np*nrg, chunksPerThread, func(lo, hi int) {
		// The gate and up strips [rows][32] of up to stripRows rows of x (whole row blocks):
		// each weight's panel is streamed over a strip's row blocks in turn, as matmul streams
		// it, and the strips stay in L1/L2 until SwiGLU reads them.
		sr := min(m, stripRows) // rows of a strip: at most stripRows, or one row block (<= 32 rows)
		if mr > stripRows {
			sr = min(m, mr)
		}
		sb := getBuf(2 * sr * nr)
		defer putBuf(sb)
		strips := [2][]float32{(*sb)[:sr*nr], (*sb)[sr*nr : 2*sr*nr]}
		var wide [2]*[]float32 // widened bf16 panels, reused for every row block of an item
		for it := lo; it < hi; it++ {
			pn, grp := it/nrg, it%nrg
			rb0, rb1 := grp*nrb/nrg, (grp+1)*nrb/nrg
			var bf [2]*float32
			var bh [2]*uint16
			var bd [2]*uint32
			for i, w := range ws {
				switch {
				case w.dp != nil:
					bd[i] = &w.dp[pn*k2p*nr]
				case w.b16 != nil:
					bh[i] = &w.b16[pn*k*nr]
					if rb1-rb0 > 1 { // as matmul: widen the panel once for all the row blocks
						if wide[i] == nil {
							wide[i] = getBuf(k * nr)
							defer putBuf(wide[i])
						}
						im.widen(&(*wide[i])[0], bh[i], k*nr)
						bf[i], bh[i] = &(*wide[i])[0], nil
					}
				default:
					bf[i] = &w.f32[pn*k*nr]
				}
			}
			cols := nr
			if pn == np-1 && n%nr != 0 {
				cols = n % nr
			}
			for s0 := rb0; s0 < rb1; {
				// The strip: row blocks s0..s1-1, rows first(s0)..first(s1)-1.
				s1 := s0 + 1
				for s1 < rb1 && first(s1+1)-first(s0) <= stripRows {
					s1++
				}
				base := first(s0)
				for i := range ws {
					for r := s0; r < s1; r++ {
						r0, rows := first(r), first(r+1)-first(r)
						c := &strips[i][(r0-base)*nr]
						switch {
						case useAMX:
							rows0, mt := min(rows, 16), 1
							if rows > 16 {
								mt = 2
							}
							im.amx(amxConfig(rows0, rows-rows0), &apd[r0*k2p], bd[i], c, k2p/16, 4*k2p, 4*nr, mt)
						case useDot:
							im.dotk(&apd[r0*k2], bd[i], c, k2, rows, nr)
						case bh[i] != nil:
							im.b16(&apf[r0*k], bh[i], c, k, rows, nr)
						default:
							im.f32(&apf[r0*k], bf[i], c, k, rows, nr)
						}
					}
				}
				for i := 0; i < first(s1)-base; i++ {
					o := (base+i)*n + pn*nr
					gt, ut := strips[0][i*nr:i*nr+cols], strips[1][i*nr:i*nr+cols]
					SwiGLU(out[o:o+cols], gt, ut)
					if gy != nil {
						copy(gy[o:o+cols], gt)
					}
					if uy != nil {
						copy(uy[o:o+cols], ut)
					}
				}
				s0 = s1
			}
		}
	})
}

// stripRows bounds the rows of x whose gate and up tiles MatMulSwiGLU keeps before it applies
// SwiGLU (beyond one row block): 2 × 128 × 32 floats, 32 KiB.
const stripRows = 128

// matmulThenSwiGLU is MatMulSwiGLU as MatMuls then SwiGLU, through scratch where gy or uy is nil.
func (t Threads) matmulThenSwiGLU(out, gy, uy, x []float32, m int, g, u *Weight) {
	mn := m * g.n
	ys := [2][]float32{gy, uy}
	for i := range ys {
		if ys[i] == nil {
			b := getBuf(mn)
			defer putBuf(b)
			ys[i] = *b
		}
	}
	t.MatMuls([][]float32{ys[0][:mn], ys[1][:mn]}, x, m, []*Weight{g, u})
	t.Parallel(mn, 4096, func(lo, hi int) { SwiGLU(out[lo:hi], ys[0][lo:hi], ys[1][lo:hi]) })
}
