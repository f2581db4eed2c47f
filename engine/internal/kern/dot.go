package kern

import (
	"math"
	"unsafe"
)

// bf16 dot-product weights: both operands of the matmul in bf16, products summed in fp32 — the
// arithmetic of AVX512_BF16's VDPBF16PS, which does two multiply-adds per fp32 lane where an
// fp32 FMA does one. A dot Weight holds W rounded to bf16 in panels of bf16 pairs:
//
//	panel p, element (kk2, j) = bf16(W[p*32+j, 2*kk2]) | bf16(W[p*32+j, 2*kk2+1])<<16
//	at index (p*k2p + kk2)*32 + j, k2 = ceil(K/2), k2p = k2 rounded up to 16
//	([ceil(N/32)][k2p][32] uint32, zero padded: whole AMX tiles of 16 pairs, see amx.go)
//
// and MatMul with it rounds x to bf16 the same way (pairs along k) before the kernel. The
// result of each output is defined bit for bit by dotStep, in k order from zero: the hardware
// kernel (HasBF16Dot) and the Go emulation every other CPU runs give the same bits. A path with
// AMX computes each output in its own order (amx.go), defined bit for bit the same way.

// HasBF16Dot reports whether the CPU runs the bf16 dot-product kernel in hardware (AVX512_BF16
// on the avx512 path, AMX on the amx path). Without it, dot weights still work through an exact Go emulation that is
// far slower than the fp32 path: callers choose dot weights only when this is true.
func HasBF16Dot() bool { return cur.dotHW || cur.amxHW }

// NewWeightDot packs the row-major fp32 matrix w[n,k] as a bf16 dot-product Weight (values
// rounded to the nearest bf16, ties to even, denormals to zero).
func (t Threads) NewWeightDot(w []float32, n, k int) *Weight {
	checkShape(len(w), n, k)
	wt := newDot(n, k)
	t.Repack(wt, w)
	return wt
}

// NewWeightDotT packs the transpose of the row-major fp32 matrix a[k,n] as a bf16 dot-product
// Weight of shape [n,k] (see NewWeightF32T).
func (t Threads) NewWeightDotT(a []float32, k, n int) *Weight {
	checkShape(len(a), k, n)
	wt := newDot(n, k)
	t.RepackT(wt, a)
	return wt
}

// NewWeightDotBF16 packs the row-major bf16 matrix w[n,k] (bit patterns; denormals become zero)
// as a bf16 dot-product Weight.
func (t Threads) NewWeightDotBF16(w []uint16, n, k int) *Weight {
	checkShape(len(w), n, k)
	wt := newDot(n, k)
	k2, k2p := wt.k2(), wt.k2p()
	t.Parallel(n, 64, func(lo, hi int) {
		for j := lo; j < hi; j++ {
			row := w[j*k : j*k+k]
			base := (j/nr*k2p)*nr + j%nr
			for kk2 := 0; kk2 < k2; kk2++ {
				var pair uint32 = uint32(bf16DAZ(row[2*kk2]))
				if 2*kk2+1 < k {
					pair |= uint32(bf16DAZ(row[2*kk2+1])) << 16
				}
				wt.dp[base+kk2*nr] = pair
			}
		}
	})
	return wt
}

func newDot(n, k int) *Weight {
	wt := &Weight{n: n, k: k, np: (n + nr - 1) / nr}
	wt.dp = make([]uint32, wt.np*wt.k2p()*nr)
	if len(wt.dp) > 0 {
		adviseHuge(unsafe.Pointer(&wt.dp[0]), 4*len(wt.dp))
	}
	return wt
}

// Dot reports whether w is a bf16 dot-product weight.
func (w *Weight) Dot() bool { return w.dp != nil }

// k2 is the number of k pairs of a dot weight.
func (w *Weight) k2() int { return (w.k + 1) / 2 }

// k2p is the number of k pairs of a dot weight's panels: k2 rounded up to 16 (zero pairs).
func (w *Weight) k2p() int { return (w.k2() + 15) &^ 15 }

// repackDot fills a dot weight from row-major src[n,k].
func (t Threads) repackDot(w *Weight, src []float32) {
	n, k, k2, k2p := w.n, w.k, w.k2(), w.k2p()
	t.Parallel(n, 64, func(lo, hi int) {
		row := make([]uint16, 2*k2) // one row in bf16, padded to pairs
		pairs := unsafe.Slice((*uint32)(unsafe.Pointer(&row[0])), k2)
		for j := lo; j < hi; j++ {
			cvtRow(row[:k], src[j*k:j*k+k])
			base := (j/nr*k2p)*nr + j%nr
			for kk2, v := range pairs {
				w.dp[base+kk2*nr] = v
			}
		}
	})
}

// repackDotT fills a dot weight [n,k] from the transpose, row-major a[k,n].
func (t Threads) repackDotT(w *Weight, a []float32) {
	n, k, k2, k2p := w.n, w.k, w.k2(), w.k2p()
	t.Parallel(k2, 8, func(lo, hi int) {
		r0, r1 := make([]uint16, n), make([]uint16, n) // rows 2*kk2 and 2*kk2+1 of a in bf16
		for kk2 := lo; kk2 < hi; kk2++ {
			cvtRow(r0, a[2*kk2*n:2*kk2*n+n])
			if 2*kk2+1 < k {
				cvtRow(r1, a[(2*kk2+1)*n:(2*kk2+1)*n+n])
			} else {
				clear(r1)
			}
			for p := 0; p < w.np; p++ {
				j0 := p * nr
				dst := w.dp[(p*k2p+kk2)*nr : (p*k2p+kk2+1)*nr]
				cols := min(nr, n-j0)
				for jj := 0; jj < cols; jj++ {
					dst[jj] = uint32(r0[j0+jj]) | uint32(r1[j0+jj])<<16
				}
				clear(dst[cols:])
			}
		}
	})
}

// cvtRow rounds src to bf16 into dst (len(dst) == len(src)): the active path's vector
// conversion on the 32-multiple prefix where it has one, bf16Of on the rest (same bits).
func cvtRow(dst []uint16, src []float32) {
	n := 0
	if cur.cvt != nil {
		n = len(src) &^ 31
		if n > 0 {
			cur.cvt(&dst[0], &src[0], n)
		}
	}
	for i := n; i < len(src); i++ {
		dst[i] = bf16Of(src[i])
	}
}

// bf16Of rounds v to bf16 as VCVTNE2PS2BF16 does: to nearest, ties to even; denormals to a
// zero of their sign; NaN stays a quiet NaN.
func bf16Of(v float32) uint16 {
	b := math.Float32bits(v)
	if b&0x7f800000 == 0 {
		return uint16(b>>16) & 0x8000
	}
	return f32ToBF16(v)
}

// bf16DAZ is a bf16 value as the dot kernel reads it: denormals as a zero of their sign.
func bf16DAZ(v uint16) uint16 {
	if v&0x7f80 == 0 {
		return v & 0x8000
	}
	return v
}

// dotStep is one VDPBF16PS lane: acc + a.hi·b.hi, rounded to fp32, then + a.lo·b.lo, rounded,
// where a and b are pairs of bf16 (lo: the even k, hi: the odd k). bf16 inputs that are denormal
// count as zero, each product is exact, and each sum that is tiny after rounding (below 2^-126
// when rounded to 24 bits) is flushed to a zero of its sign (roundFTZ; checked bit for bit
// against the hardware by TestDotEmulation and TestDotStepByHand's boundary cases).
func dotStep(acc float32, a, b uint32) float32 {
	acc = fmaFTZ(acc, uint16(a>>16), uint16(b>>16))
	return fmaFTZ(acc, uint16(a), uint16(b))
}

// fmaFTZ is one fp32 fused multiply-add of VDPBF16PS and TDPBF16PS: acc + x·y rounded once, with x and y bf16
// (bit patterns) read as zero when denormal and the result flushed when tiny.
func fmaFTZ(acc float32, x, y uint16) float32 {
	p := float64(bf16ToF32(bf16DAZ(x))) * float64(bf16ToF32(bf16DAZ(y))) // exact: 8 x 8 bits
	return roundFTZ(float64(acc) + p)
}

// roundFTZ rounds s to fp32 to nearest even and flushes a result that is tiny after rounding
// (below 2^-126 when rounded to 24 bits with an unbounded exponent, as x86 detects tininess) to
// a zero of its sign. s must be the float64 sum of an fp32 value and an exact product of two
// bf16 (or of two fp32 values): rounding it first to float64 and then to 24 bits gives the
// correctly rounded sum, since 53 >= 2·24 + 2.
func roundFTZ(s float64) float32 {
	if a := math.Abs(s); a < 0x1p-126 && a != 0 {
		if math.Abs(float64(float32(s*0x1p100))) < 0x1p-26 { // rounded with 24 bits, scaled into range
			return float32(math.Copysign(0, s))
		}
		return float32(math.Copysign(0x1p-126, s)) // rounds up to the smallest normal
	}
	return float32(s)
}

// dazF32 reads a denormal fp32 as a zero of its sign.
func dazF32(v float32) float32 { return ftz(v) }

// ftz flushes a denormal fp32 to a zero of its sign.
func ftz(v float32) float32 {
	if b := math.Float32bits(v); b&0x7f800000 == 0 {
		return math.Float32frombits(b & 0x80000000)
	}
	return v
}

// kernelDotGo is the Go emulation of the bf16 dot-product micro-kernel: a [k2][mr] packed pairs
// of x rows, b [k2][32] one panel of pairs, c[i*ldc+j] for i < mr <= 4, j < 32.
func kernelDotGo(a, b *uint32, c *float32, k2, mr, ldc int) {
	as := unsafe.Slice(a, k2*mr)
	bs := unsafe.Slice(b, k2*nr)
	var acc [4][nr]float32
	for kk := 0; kk < k2; kk++ {
		br := (*[nr]uint32)(bs[kk*nr:])
		for i := 0; i < mr; i++ {
			av := as[kk*mr+i]
			ai := &acc[i]
			for j := range ai {
				ai[j] = dotStep(ai[j], av, br[j])
			}
		}
	}
	cs := unsafe.Slice(c, (mr-1)*ldc+nr)
	for i := 0; i < mr; i++ {
		copy(cs[i*ldc:i*ldc+nr], acc[i][:])
	}
}

// matmulDot is matmul for dot weights (all of ws): x is rounded to bf16 pairs and packed per row
// block as [k2][rows], then every (panel, row group) item runs the dot kernel over all of k.
func (t Threads) matmulDot(ys [][]float32, x []float32, m int, ws []*Weight, trans, acc bool) {
	if cur.amx != nil {
		if !acc {
			t.matmulAMX(ys, x, m, ws, trans)
			return
		}
		// The AMX kernel stores its tiles: accumulate through a product buffer.
		prods := make([][]float32, len(ys))
		for i, w := range ws {
			prods[i] = make([]float32, m*w.n)
		}
		t.matmulAMX(prods, x, m, ws, trans)
		for i, p := range prods {
			y := ys[i]
			t.Parallel(len(p), 1<<14, func(lo, hi int) {
				for j := lo; j < hi; j++ {
					y[j] += p[j]
				}
			})
		}
		return
	}
	k, np := ws[0].k, 0
	for _, w := range ws {
		np += w.np
	}
	k2 := ws[0].k2()
	im := cur
	mr := im.dmr
	nrb := (m + mr - 1) / mr
	first := func(r int) int { return r * m / nrb }

	ap, put := t.packDot(x, m, k, k2, mr, trans)
	defer put()

	p := t.count()
	nrg := 1
	if np < 4*p && nrb > 1 {
		nrg = min(nrb, (4*p+np-1)/np)
	}
	if acc {
		nrg = accGroups(nrb, nrg, mr, ws)
	}
	t.ParallelFine(np*nrg, chunksPerThread, func(lo, hi int) {
		var tile [maxMR * nr]float32
		for it := lo; it < hi; it++ {
			pn, g := it/nrg, it%nrg
			if acc {
				g, pn = it/np, it%np
			}
			wi := 0
			for pn >= ws[wi].np {
				pn -= ws[wi].np
				wi++
			}
			w, y, n := ws[wi], ys[wi], ws[wi].n
			b := &w.dp[pn*ws[0].k2p()*nr]
			last := n%nr != 0 && pn == w.np-1
			for r := g * nrb / nrg; r < (g+1)*nrb/nrg; r++ {
				r0, rows := first(r), first(r+1)-first(r)
				c, ldc := &tile[0], nr
				if !last && !acc {
					c, ldc = &y[r0*n+pn*nr], n
				}
				im.dotk(&ap[r0*k2], b, c, k2, rows, ldc)
				if last || acc {
					storeTile(y, tile[:], r0, rows, n, pn, n%nr, last, acc)
				}
			}
		}
	})
}

// packDot rounds x [m,k] (or xᵀ given as [k,m] when trans) to bf16 and packs it for the dot
// kernel: pairs along k, row block r of ceil(m/mr) near-equal blocks (rows r*m/nrb ..) at
// offset (r*m/nrb)*k2, laid out as [k2][rows of block r]. put returns the scratch.
func (t Threads) packDot(x []float32, m, k, k2, mr int, trans bool) (ap []uint32, put func()) {
	nrb := (m + mr - 1) / mr
	first := func(r int) int { return r * m / nrb }
	bp := getBuf(m * k2)
	ap = unsafe.Slice((*uint32)(unsafe.Pointer(&(*bp)[0])), m*k2) // row block r at first(r)*k2: [k2][rows]
	var xt []uint16                                               // trans: all of x [k][m] in bf16
	if trans {
		tp := getBuf((m*k + 1) / 2)
		defer putBuf(tp)
		xt = unsafe.Slice((*uint16)(unsafe.Pointer(&(*tp)[0])), m*k)
		t.Parallel(k, max(1, 16384/m), func(lo, hi int) {
			cvtRow(xt[lo*m:hi*m], x[lo*m:hi*m])
		})
	}
	t.Parallel(nrb, max(1, 16384/(mr*k)), func(r0, r1 int) {
		row := make([]uint16, 2*k2)
		pairs := unsafe.Slice((*uint32)(unsafe.Pointer(&row[0])), k2)
		for r := r0; r < r1; r++ {
			lo, hi := first(r), first(r+1)
			rows := hi - lo
			dst := ap[lo*k2 : hi*k2]
			if trans { // pairs of rows 2kk2, 2kk2+1 of xt, columns lo..hi
				for kk2 := 0; kk2 < k2; kk2++ {
					e := xt[2*kk2*m+lo : 2*kk2*m+hi]
					d := dst[kk2*rows : kk2*rows+rows]
					if 2*kk2+1 == k {
						for i, v := range e {
							d[i] = uint32(v)
						}
						continue
					}
					o := xt[(2*kk2+1)*m+lo : (2*kk2+1)*m+hi]
					for i, v := range e {
						d[i] = uint32(v) | uint32(o[i])<<16
					}
				}
				continue
			}
			for i := 0; i < rows; i++ {
				cvtRow(row[:k], x[(lo+i)*k:(lo+i)*k+k])
				for kk2, v := range pairs {
					dst[kk2*rows+i] = v
				}
			}
		}
	})
	return ap, func() { putBuf(bp) }
}
