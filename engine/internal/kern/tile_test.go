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
