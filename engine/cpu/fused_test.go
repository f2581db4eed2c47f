package cpu

import (
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/prolong-rl/prolong/engine"
)

// normals returns rnd(n, s): n values drawn from r, normal with standard deviation s.
func normals(r *rand.Rand) func(n int, s float64) []float32 {
	return func(n int, s float64) []float32 {
		d := make([]float32, n)
		for i := range d {
			d[i] = float32(r.NormFloat64() * s)
		}
		return d
	}
}

// f32Uploader returns up(v, shape...): a copy of v on c as an fp32 activation of that shape,
// failing t on an error.
func f32Uploader(t *testing.T, c *Backend) func(v []float32, shape ...int) *engine.Tensor {
	return func(v []float32, shape ...int) *engine.Tensor {
		t.Helper()
		tt, err := c.Upload(engine.F32, slices.Clone(v), false, shape...)
		if err != nil {
			t.Fatal(err)
		}
		return tt
	}
}

// TestAddRMSNormBitExact: the fused op gives Add's and RMSNorm's results bit for bit, with sum
// apart from x and in place (sum is x), on rows that do not split evenly over the threads.
func TestAddRMSNormBitExact(t *testing.T) {
	r := rand.New(rand.NewPCG(8, 8))
	rnd := normals(r)
	c := New()
	for _, tc := range []struct {
		rows, d int
		inplace bool
	}{{1, 7, false}, {130, 96, false}, {67, 257, true}, {3, 4096, true}} {
		x, y, w := rnd(tc.rows*tc.d, 3), rnd(tc.rows*tc.d, 1), rnd(tc.d, 1)
		up := f32Uploader(t, c)
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

// TestGateUpSwiGLUBitExact: the fused MLP op gives MatMul, MatMul, SwiGLU's results bit for bit,
// for fp32 and bf16 weights (bf16 ones at every precision: widened to fp32, or as bf16 dot
// products where the CPU has them) and trainable parameters, with and without the products
// kept, on rows that split unevenly over register blocks and threads, including one decode row.
func TestGateUpSwiGLUBitExact(t *testing.T) {
	r := rand.New(rand.NewPCG(9, 9))
	rnd := normals(r)
	for _, prec := range []Precision{PrecisionAuto, PrecisionFP32, PrecisionBF16} {
		c := New(WithMatMulPrecision(prec))
		for _, tc := range []struct{ m, k, n int }{{1, 64, 96}, {1, 896, 4864}, {7, 130, 67}, {33, 256, 200}, {130, 96, 33}} {
			for _, kind := range []string{"f32", "bf16", "param"} {
				if prec == PrecisionBF16 && kind == "bf16" && !HasBF16Dot() && tc.n > 1000 {
					continue // the exact emulation of bf16 dot products: slow, covered by the small shapes
				}
				x, wg, wu := rnd(tc.m*tc.k, 2), rnd(tc.n*tc.k, 0.1), rnd(tc.n*tc.k, 0.1)
				up := func(v []float32, linear bool, shape ...int) *engine.Tensor {
					var tt *engine.Tensor
					var err error
					switch {
					case !linear:
						tt, err = c.Upload(engine.F32, slices.Clone(v), false, shape...)
					case kind == "param":
						tt, err = c.UploadParam(v, shape...)
					case kind == "bf16":
						tt, err = c.Upload(engine.BF16, v, true, shape...)
					default:
						tt, err = c.Upload(engine.F32, v, true, shape...)
					}
					if err != nil {
						t.Fatal(err)
					}
					return tt
				}
				xt, gt, ut := up(x, false, tc.m, tc.k), up(wg, true, tc.n, tc.k), up(wu, true, tc.n, tc.k)
				ga, ua, outA := c.Alloc(tc.m, tc.n), c.Alloc(tc.m, tc.n), c.Alloc(tc.m, tc.n)
				c.MatMul(ga, xt, gt)
				c.MatMul(ua, xt, ut)
				c.SwiGLU(outA, ga, ua)
				for _, keep := range []bool{false, true} {
					outF := up(rnd(tc.m*tc.n, 1), false, tc.m, tc.n)
					var gf, uf *engine.Tensor
					if keep {
						gf, uf = up(rnd(tc.m*tc.n, 1), false, tc.m, tc.n), up(rnd(tc.m*tc.n, 1), false, tc.m, tc.n)
					}
					c.GateUpSwiGLU(outF, gf, uf, xt, gt, ut)
					parts := []struct {
						what      string
						got, want *engine.Tensor
					}{{"out", outF, outA}}
					if keep {
						parts = append(parts, struct {
							what      string
							got, want *engine.Tensor
						}{"gate", gf, ga}, struct {
							what      string
							got, want *engine.Tensor
						}{"up", uf, ua})
					}
					for _, p := range parts {
						got, want := f32(p.got), f32(p.want)
						for i := range want {
							if math.Float32bits(got[i]) != math.Float32bits(want[i]) {
								t.Fatalf("%v %d×%d×%d %s keep=%v: %s[%d] = %v fused, %v by MatMul, MatMul, SwiGLU", prec, tc.m, tc.k, tc.n, kind, keep, p.what, i, got[i], want[i])
							}
						}
					}
				}
			}
		}
	}
}

// BenchmarkGateUpSwiGLU: the fused MLP op against MatMuls then SwiGLU (what the engine runs
// without it) on the Qwen2.5-0.5B MLP (D 896, I 4864), bf16 weights at decode batches of 1 and
// 16 rows and a prefill of 256 rows, fp32 weights at 16 and 256 rows. Each iteration runs both,
// in alternating order, so that load from other processes falls on both alike; it reports the
// median time of each and the speedup (unfused/fused).
func BenchmarkGateUpSwiGLU(b *testing.B) {
	const d, inter = 896, 4864
	c := New()
	r := rand.New(rand.NewPCG(1, 1))
	w := func() []float32 {
		v := make([]float32, inter*d)
		for i := range v {
			v[i] = float32(r.NormFloat64() * 0.03)
		}
		return v
	}
	for _, s := range []struct {
		rows int
		dt   engine.DType
	}{{1, engine.BF16}, {16, engine.BF16}, {256, engine.BF16}, {16, engine.F32}, {256, engine.F32}} {
		wg, _ := c.Upload(s.dt, w(), true, inter, d)
		wu, _ := c.Upload(s.dt, w(), true, inter, d)
		x := c.Alloc(s.rows, d)
		c.Scale(x, 0)
		g, u, out := c.Alloc(s.rows, inter), c.Alloc(s.rows, inter), c.Alloc(s.rows, inter)
		b.Run(fmt.Sprintf("rows=%d,%v", s.rows, s.dt), func(b *testing.B) {
			var tu, tf []float64 // seconds per call, unfused and fused
			run := func(fused bool) {
				t0 := time.Now()
				if fused {
					c.GateUpSwiGLU(out, nil, nil, x, wg, wu)
				} else {
					c.MatMuls([]*engine.Tensor{g, u}, x, []*engine.Tensor{wg, wu})
					c.SwiGLU(out, g, u)
				}
				sec := time.Since(t0).Seconds()
				if fused {
					tf = append(tf, sec)
				} else {
					tu = append(tu, sec)
				}
			}
			i := 0
			for b.Loop() {
				run(i%2 == 0)
				run(i%2 != 0)
				i++
			}
			mu, mf := median(tu), median(tf)
			b.ReportMetric(mu*1e6, "unfused-µs")
			b.ReportMetric(mf*1e6, "fused-µs")
			b.ReportMetric(mu/mf, "speedup")
		})
	}
}

func median(s []float64) float64 {
	s = slices.Clone(s)
	slices.Sort(s)
	return s[len(s)/2]
}
