package cpu

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/prolong-rl/prolong/engine"
)

// nmse is Σ(got-want)² / Σwant².
func nmse(got, want []float32) float64 {
	var e, n float64
	for i := range want {
		d := float64(got[i]) - float64(want[i])
		e += d * d
		n += float64(want[i]) * float64(want[i])
	}
	return e / max(n, 1e-300)
}

// TestTiledAttentionMatchesRows: the tiled training attention (forward: out and lse; backward:
// dq, dk, dv) against the per-row oracle, on odd lengths around the 64-row tile, GQA groups,
// packed sequences and one 4k-token sequence; and the tiled path gives the same bits on 1, 2
// and 3 threads.
func TestTiledAttentionMatchesRows(t *testing.T) {
	cases := []struct {
		h, kv, dh int
		lens      []int
	}{
		{4, 2, 64, []int{1, 63, 64, 65, 130}},
		{6, 6, 32, []int{257}},
		{7, 1, 16, []int{3, 200, 129}},
		{2, 1, 64, []int{4097}},
	}
	if testing.Short() {
		cases = cases[:3]
	}
	rng := rand.New(rand.NewPCG(5, 6))
	for _, tc := range cases {
		name := fmt.Sprintf("H%d-KV%d-Dh%d-%v", tc.h, tc.kv, tc.dh, tc.lens)
		t.Run(name, func(t *testing.T) {
			seq := []int32{0}
			for _, l := range tc.lens {
				seq = append(seq, seq[len(seq)-1]+int32(l))
			}
			T, qw, kw := int(seq[len(seq)-1]), tc.h*tc.dh, tc.kv*tc.dh
			data := func(n int, s float64) []float32 {
				d := make([]float32, n)
				for i := range d {
					d[i] = float32(s * rng.NormFloat64())
				}
				return d
			}
			qh, kh, vh, doh := data(T*qw, 2), data(T*kw, 2), data(T*kw, 1), data(T*qw, 1)
			run := func(c *Backend, tiled bool) map[string][]float32 {
				up := func(d []float32, cols int) *engine.Tensor {
					x, err := c.Upload(engine.F32, d, false, T, cols)
					if err != nil {
						t.Fatal(err)
					}
					return x
				}
				q, k, v, dout := up(qh, qw), up(kh, kw), up(vh, kw), up(doh, qw)
				out, lse := c.Alloc(T, qw), c.Alloc(T, tc.h)
				dq, dk, dv := c.Alloc(T, qw), c.Alloc(T, kw), c.Alloc(T, kw)
				d := newAttnDims(qw, kw, tc.h)
				if tiled {
					c.attentionTrainTiled(f32(out), f32(lse), f32(q), f32(k), f32(v), d, seq)
					c.attentionBackwardTiled(f32(dq), f32(dk), f32(dv), f32(dout), f32(q), f32(k), f32(v), f32(out), f32(lse), d, seq)
				} else {
					c.attentionTrainRows(out, lse, q, k, v, seq)
					c.attentionBackwardRows(dq, dk, dv, dout, q, k, v, out, lse, seq)
				}
				cp := func(x *engine.Tensor) []float32 { return append([]float32(nil), f32(x)...) }
				return map[string][]float32{"out": cp(out), "lse": cp(lse), "dq": cp(dq), "dk": cp(dk), "dv": cp(dv)}
			}
			want := run(New(), false)
			first := run(New(WithThreads(1)), true)
			for name, w := range want {
				if e := nmse(first[name], w); !(e < 1e-10) {
					t.Errorf("%s: NMSE %.3g against the per-row path (want < 1e-10)", name, e)
				}
			}
			for _, threads := range []int{2, 3} {
				got := run(New(WithThreads(threads)), true)
				for name, g := range got {
					for i := range g {
						if math.Float32bits(g[i]) != math.Float32bits(first[name][i]) {
							t.Fatalf("%d threads: %s[%d] = %g, one thread %g", threads, name, i, g[i], first[name][i])
						}
					}
				}
			}
		})
	}
}
