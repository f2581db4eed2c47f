package cpu

import (
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/prolong-rl/prolong/engine"
	"github.com/prolong-rl/prolong/engine/internal/kern"
)

var peakOnce = sync.OnceValue(func() float64 { return kern.PeakFMA(200 * time.Millisecond) })

// BenchmarkAttentionTrain times forward + backward of training attention on one sequence of
// Qwen2-0.5B-like heads (14 query heads, 2 KV heads, Dh 64) on the per-row and tiled paths,
// reporting GFLOP/s (causal flops: 4·L²/2·H·Dh forward, twice that backward) and the ratio to
// the FMA peak.
func BenchmarkAttentionTrain(b *testing.B) {
	const h, kv, dh = 14, 2, 64
	for _, L := range []int{16, 64, 128, 256, 1024, 4096} {
		for _, path := range []string{"rows", "tiled"} {
			b.Run(fmt.Sprintf("L%d/%s", L, path), func(b *testing.B) {
				c := New()
				rng := rand.New(rand.NewPCG(1, 1))
				data := func(n int) []float32 {
					d := make([]float32, n)
					for i := range d {
						d[i] = float32(rng.NormFloat64())
					}
					return d
				}
				up := func(cols int) *engine.Tensor {
					x, _ := c.Upload(engine.F32, data(L*cols), false, L, cols)
					return x
				}
				q, k, v, dout := up(h*dh), up(kv*dh), up(kv*dh), up(h*dh)
				out, lse := c.Alloc(L, h*dh), c.Alloc(L, h)
				dq, dk, dv := c.Alloc(L, h*dh), c.Alloc(L, kv*dh), c.Alloc(L, kv*dh)
				seq := []int32{0, int32(L)}
				d := newAttnDims(h*dh, kv*dh, h)
				b.ResetTimer()
				for range b.N {
					if path == "tiled" {
						c.attentionTrainTiled(f32(out), f32(lse), f32(q), f32(k), f32(v), d, seq)
						c.attentionBackwardTiled(f32(dq), f32(dk), f32(dv), f32(dout), f32(q), f32(k), f32(v), f32(out), f32(lse), d, seq)
					} else {
						c.attentionTrainRows(out, lse, q, k, v, seq)
						c.attentionBackwardRows(dq, dk, dv, dout, q, k, v, out, lse, seq)
					}
				}
				flops := 3 * 4 * float64(L) * float64(L+1) / 2 * h * dh
				gf := flops * float64(b.N) / b.Elapsed().Seconds() / 1e9
				b.ReportMetric(gf, "GFLOP/s")
				b.ReportMetric(gf/peakOnce(), "of-peak")
			})
		}
	}
}
