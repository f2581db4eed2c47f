package kern

import "fmt"

// Tile products for attention: small GEMMs (tens to a few hundred rows) run by one goroutine on
// the active path's MatMul micro-kernel, with operands packed on the fly (Gemm) or packed once
// by the caller and reused (PackA, PackB, GemmPacked). The caller
// parallelises over tiles. Each output is the micro-kernel's sum over k in order from zero,
// then stored or added to c once, so the bits depend only on the operands and the shape.

// TileBuf is the packing scratch of Gemm; the zero value is ready, and one goroutine owns it.
type TileBuf struct {
	a, b []float32
}

func grow(s []float32, n int) []float32 {
	if cap(s) < n {
		return make([]float32, n, n+n/4)
	}
	return s[:n]
}

// Gemm computes c[m,n] = op(a)·op(b), or adds it to c when acc, on the calling goroutine.
// op(a) is [m,k]: a[i*lda+kk], or a[kk*lda+i] when ta; op(b) is [k,n]: b[kk*ldb+j], or
// b[j*ldb+kk] when tb; c[i*ldc+j] row-major.
func Gemm(ta, tb bool, m, n, k int, a []float32, lda int, b []float32, ldb int, c []float32, ldc int, acc bool, buf *TileBuf) {
	if m < 0 || n < 0 || k < 0 {
		panic(fmt.Sprintf("kern: Gemm of shape m=%d n=%d k=%d", m, n, k))
	}
	if m == 0 || n == 0 || k == 0 {
		GemmPacked(m, n, k, nil, nil, c, ldc, acc) // nothing to pack: c cleared or left as it is
		return
	}
	buf.a = grow(buf.a, m*k)
	buf.b = grow(buf.b, BSize(k, n))
	PackA(ta, m, k, a, lda, buf.a)
	PackB(tb, k, n, b, ldb, buf.b)
	GemmPacked(m, n, k, buf.a, buf.b, c, ldc, acc)
}

// PackA packs op(a) [m,k] (a[i*lda+kk], or a[kk*lda+i] when ta) into dst[:m*k] for
// GemmPacked: row blocks of the active path's height, each [k][rows], block r at r*mr*k. A
// caller that multiplies one operand by many others packs it once (attention's tiles).
func PackA(ta bool, m, k int, a []float32, lda int, dst []float32) {
	mr := cur.mr
	for r0 := 0; r0 < m; r0 += mr {
		rows := min(mr, m-r0)
		blk := dst[r0*k : r0*k+rows*k]
		if ta { // each kk is a contiguous run of rows in a
			for kk := 0; kk < k; kk++ {
				copy(blk[kk*rows:kk*rows+rows], a[kk*lda+r0:kk*lda+r0+rows])
			}
			continue
		}
		for i := 0; i < rows; i++ {
			for kk, v := range a[(r0+i)*lda : (r0+i)*lda+k] {
				blk[kk*rows+i] = v
			}
		}
	}
}

// BSize is the length of op(b) [k,n] packed by PackB: ⌈n/32⌉ zero-padded panels of [k][32].
func BSize(k, n int) int { return (n + nr - 1) / nr * nr * k }

// PackB packs op(b) [k,n] (b[kk*ldb+j], or b[j*ldb+kk] when tb) into dst[:BSize(k, n)] for
// GemmPacked: column panels [k][32], panel p at p*32*k, columns past n zero.
func PackB(tb bool, k, n int, b []float32, ldb int, dst []float32) {
	for j0 := 0; j0 < n; j0 += nr {
		cols := min(nr, n-j0)
		pan := dst[j0*k : j0*k+nr*k]
		for kk := 0; kk < k; kk++ {
			row := pan[kk*nr : kk*nr+nr]
			if tb {
				for j := 0; j < cols; j++ {
					row[j] = b[(j0+j)*ldb+kk]
				}
			} else {
				copy(row[:cols], b[kk*ldb+j0:kk*ldb+j0+cols])
			}
			clear(row[cols:])
		}
	}
}

// GemmPacked is Gemm on operands packed by PackA and PackB (on the same path): c[m,n] = a·b,
// or c += a·b when acc. Same bits as Gemm on the unpacked operands.
func GemmPacked(m, n, k int, ap, bp []float32, c []float32, ldc int, acc bool) {
	if m == 0 || n == 0 {
		return
	}
	if k == 0 {
		if !acc {
			for i := 0; i < m; i++ {
				clear(c[i*ldc : i*ldc+n])
			}
		}
		return
	}
	// The micro-kernel takes raw pointers: check every operand's extent here.
	if len(ap) < m*k || len(bp) < BSize(k, n) || len(c) < (m-1)*ldc+n || ldc < n {
		panic(fmt.Sprintf("kern: GemmPacked m=%d n=%d k=%d with %d packed a, %d packed b, %d c (ldc %d)", m, n, k, len(ap), len(bp), len(c), ldc))
	}
	im := cur
	mr := im.mr
	var tile [maxMR * nr]float32
	for j0 := 0; j0 < n; j0 += nr {
		cols := min(nr, n-j0)
		pan := &bp[j0*k]
		for r0 := 0; r0 < m; r0 += mr {
			rows := min(mr, m-r0)
			if !acc && cols == nr { // a whole panel straight into c
				im.f32(&ap[r0*k], pan, &c[r0*ldc+j0], k, rows, ldc)
				continue
			}
			im.f32(&ap[r0*k], pan, &tile[0], k, rows, nr)
			for i := 0; i < rows; i++ {
				dst := c[(r0+i)*ldc+j0 : (r0+i)*ldc+j0+cols]
				src := tile[i*nr : i*nr+cols]
				if acc {
					for j, v := range src {
						dst[j] += v
					}
				} else {
					copy(dst, src)
				}
			}
		}
	}
}

// GemmRef is the pure-Go oracle for Gemm (same contract, float64 sums).
func GemmRef(ta, tb bool, m, n, k int, a []float32, lda int, b []float32, ldb int, c []float32, ldc int, acc bool) {
	for i := 0; i < m; i++ {
		for j := 0; j < n; j++ {
			var s float64
			for kk := 0; kk < k; kk++ {
				av, bv := a[i*lda+kk], b[kk*ldb+j]
				if ta {
					av = a[kk*lda+i]
				}
				if tb {
					bv = b[j*ldb+kk]
				}
				s += float64(av) * float64(bv)
			}
			if acc {
				c[i*ldc+j] += float32(s)
			} else {
				c[i*ldc+j] = float32(s)
			}
		}
	}
}
