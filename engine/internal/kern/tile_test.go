package kern

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"
)

// TestGemm checks Gemm against GemmRef on every path, for each transpose, odd shapes around
// the register block height and the 32-column panel, strided operands, and acc on and off.
func TestGemm(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for _, isa := range ISAs() {
		restore := SetISA(isa)
		for _, sh := range [][3]int{{1, 1, 1}, {5, 31, 7}, {14, 32, 64}, {15, 33, 64}, {64, 64, 64}, {37, 70, 128}, {64, 64, 3}} {
			m, n, k := sh[0], sh[1], sh[2]
			for _, ta := range []bool{false, true} {
				for _, tb := range []bool{false, true} {
					for _, acc := range []bool{false, true} {
						name := fmt.Sprintf("%s/%dx%dx%d/ta=%v/tb=%v/acc=%v", isa, m, n, k, ta, tb, acc)
						lda, ldb, ldc := k+3, n+5, n+2
						if ta {
							lda = m + 3
						}
						if tb {
							ldb = k + 5
						}
						a := randSlice(rng, max(m, k)*lda)
						b := randSlice(rng, max(n, k)*ldb)
						c0 := randSlice(rng, m*ldc)
						got, want := append([]float32(nil), c0...), append([]float32(nil), c0...)
						var buf TileBuf
						Gemm(ta, tb, m, n, k, a, lda, b, ldb, got, ldc, acc, &buf)
						GemmRef(ta, tb, m, n, k, a, lda, b, ldb, want, ldc, acc)
						for i := range got {
							if d := math.Abs(float64(got[i] - want[i])); d > 1e-4*math.Sqrt(float64(k))+1e-5 {
								t.Fatalf("%s: c[%d] = %g, want %g", name, i, got[i], want[i])
							}
						}
					}
				}
			}
		}
		restore()
	}
}

func randSlice(rng *rand.Rand, n int) []float32 {
	s := make([]float32, n)
	for i := range s {
		s[i] = float32(rng.NormFloat64())
	}
	return s
}

// TestGemmPacked: operands packed once (PackA, PackB) and used by several GemmPacked calls give
// Gemm's bits each time, on every path; operands shorter than the shape panic instead of
// letting the micro-kernel read or write past them.
func TestGemmPacked(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	for _, isa := range ISAs() {
		restore := SetISA(isa)
		for _, sh := range [][3]int{{1, 1, 1}, {15, 33, 64}, {64, 64, 64}, {37, 70, 128}} {
			m, n, k := sh[0], sh[1], sh[2]
			for _, ta := range []bool{false, true} {
				for _, tb := range []bool{false, true} {
					lda, ldb, ldc := k+3, n+5, n+2
					if ta {
						lda = m + 3
					}
					if tb {
						ldb = k + 5
					}
					a, b := randSlice(rng, max(m, k)*lda), randSlice(rng, max(n, k)*ldb)
					ap, bp := make([]float32, m*k), make([]float32, BSize(k, n))
					PackA(ta, m, k, a, lda, ap)
					PackB(tb, k, n, b, ldb, bp)
					c0 := randSlice(rng, m*ldc)
					for _, acc := range []bool{false, true, false} {
						got, want := append([]float32(nil), c0...), append([]float32(nil), c0...)
						var buf TileBuf
						GemmPacked(m, n, k, ap, bp, got, ldc, acc)
						Gemm(ta, tb, m, n, k, a, lda, b, ldb, want, ldc, acc, &buf)
						for i := range got {
							if math.Float32bits(got[i]) != math.Float32bits(want[i]) {
								t.Fatalf("%s/%dx%dx%d/ta=%v/tb=%v/acc=%v: c[%d] = %g, Gemm gives %g", isa, m, n, k, ta, tb, acc, i, got[i], want[i])
							}
						}
					}
				}
			}
		}
		restore()
	}
	for _, tc := range []struct {
		name         string
		na, nb, nc   int
		m, n, k, ldc int
	}{
		{"short a", 63 * 64, BSize(64, 64), 64 * 64, 64, 64, 64, 64},
		{"short b", 64 * 64, BSize(64, 64) - 1, 64 * 64, 64, 64, 64, 64},
		{"short c", 64 * 64, BSize(64, 64), 64*64 - 1, 64, 64, 64, 64},
		{"ldc < n", 64 * 64, BSize(64, 64), 64 * 64, 64, 64, 64, 32},
	} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("%s: GemmPacked did not panic", tc.name)
				}
			}()
			GemmPacked(tc.m, tc.n, tc.k, make([]float32, tc.na), make([]float32, tc.nb), make([]float32, tc.nc), tc.ldc, false)
		}()
	}
}
