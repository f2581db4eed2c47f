package kern

import "fmt"

// Tile products for attention: small GEMMs (tens to a few hundred rows) run by one goroutine on
// the active path's MatMul micro-kernel, with operands packed on the fly. The caller
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
	im := cur
	mr := im.mr
	nrb := (m + mr - 1) / mr
	np := (n + nr - 1) / nr
	// a packed as row blocks [k][rows] (block r at r*mr*k), b as panels [k][32] (zero padded).
	buf.a = grow(buf.a, nrb*mr*k)
	buf.b = grow(buf.b, np*nr*k)
	ap, bp := buf.a, buf.b
	for r := 0; r < nrb; r++ {
		r0 := r * mr
		rows := min(mr, m-r0)
		dst := ap[r0*k : r0*k+rows*k]
		for i := 0; i < rows; i++ {
			if ta {
				for kk := 0; kk < k; kk++ {
					dst[kk*rows+i] = a[kk*lda+r0+i]
				}
			} else {
				for kk, v := range a[(r0+i)*lda : (r0+i)*lda+k] {
					dst[kk*rows+i] = v
				}
			}
		}
	}
	for p := 0; p < np; p++ {
		j0 := p * nr
		cols := min(nr, n-j0)
		dst := bp[p*nr*k : (p+1)*nr*k]
		for kk := 0; kk < k; kk++ {
			row := dst[kk*nr : kk*nr+nr]
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
	var tile [maxMR * nr]float32
	for p := 0; p < np; p++ {
		j0 := p * nr
		cols := min(nr, n-j0)
		for r := 0; r < nrb; r++ {
			r0 := r * mr
			rows := min(mr, m-r0)
			im.f32(&ap[r0*k], &bp[p*nr*k], &tile[0], k, rows, nr)
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
