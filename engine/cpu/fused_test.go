package cpu

import (
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/prolong-rl/prolong/engine"
)

// TestAddRMSNormBitExact: the fused op gives Add's and RMSNorm's results bit for bit, with sum
// apart from x and in place (sum is x), on rows that do not split evenly over the threads.
func TestAddRMSNormBitExact(t *testing.T) {
	r := rand.New(rand.NewPCG(8, 8))
	rnd := func(n int, s float64) []float32 {
		d := make([]float32, n)
		for i := range d {
			d[i] = float32(r.NormFloat64() * s)
		}
		return d
	}
	c := New()
	for _, tc := range []struct {
		rows, d int
		inplace bool
	}{{1, 7, false}, {130, 96, false}, {67, 257, true}, {3, 4096, true}} {
		x, y, w := rnd(tc.rows*tc.d, 3), rnd(tc.rows*tc.d, 1), rnd(tc.d, 1)
		up := func(v []float32, shape ...int) *engine.Tensor {
			tt, err := c.Upload(engine.F32, slices.Clone(v), false, shape...)
			if err != nil {
				t.Fatal(err)
			}
			return tt
		}
		// Add then RMSNorm.
		xa, ya, wt := up(x, tc.rows, tc.d), up(y, tc.rows, tc.d), up(w, tc.d)
		sumA, normA := c.Alloc(tc.rows, tc.d), c.Alloc(tc.rows, tc.d)
		c.Add(sumA, xa, ya)
		c.RMSNorm(normA, sumA, wt, 1e-6)
		// Fused.
		xf := up(x, tc.rows, tc.d)
		sumF := c.Alloc(tc.rows, tc.d)
		if tc.inplace {
			sumF = xf
		}
		normF := c.Alloc(tc.rows, tc.d)
		c.AddRMSNorm(sumF, normF, xf, ya, wt, 1e-6)
		for _, p := range []struct {
			what      string
			got, want []float32
		}{{"sum", f32(sumF), f32(sumA)}, {"normed", f32(normF), f32(normA)}} {
			for i := range p.want {
				if math.Float32bits(p.got[i]) != math.Float32bits(p.want[i]) {
					t.Fatalf("%d×%d inplace=%v: %s[%d] = %v fused, %v by Add then RMSNorm", tc.rows, tc.d, tc.inplace, p.what, i, p.got[i], p.want[i])
				}
			}
		}
	}
}

// BenchmarkAddRMSNorm: the fused op against Add then RMSNorm on a prefill's residual stream
// (1024 tokens) and a decode batch (64), hidden 896 (Qwen2.5-0.5B) and 1536 (1.5B).
func BenchmarkAddRMSNorm(b *testing.B) {
	c := New()
	for _, s := range []struct{ rows, d int }{{1024, 896}, {64, 896}, {1024, 1536}} {
		x, y, sum, out := c.Alloc(s.rows, s.d), c.Alloc(s.rows, s.d), c.Alloc(s.rows, s.d), c.Alloc(s.rows, s.d)
		w := c.Alloc(s.d)
		c.Scale(w, 0)
		for _, fused := range []bool{false, true} {
			b.Run(fmt.Sprintf("rows=%d,D=%d/fused=%v", s.rows, s.d, fused), func(b *testing.B) {
				b.SetBytes(int64(4 * 4 * s.rows * s.d)) // read x, y; write sum, out
				for b.Loop() {
					if fused {
						c.AddRMSNorm(sum, out, x, y, w, 1e-6)
					} else {
						c.Add(sum, x, y)
						c.RMSNorm(out, sum, w, 1e-6)
					}
				}
			})
		}
	}
}
