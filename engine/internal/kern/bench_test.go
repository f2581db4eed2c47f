package kern

import (
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"
)

var benchPeak = sync.OnceValue(func() float64 { return PeakFMA(500 * time.Millisecond) })

// BenchmarkMatMul measures MatMul on the active ISA at prefill (m=512), decode batch 16 and
// batch 1 shapes of the ~122M model (k=768; n=32000 is the LM head, larger than L3): GFLOP/s
// as a ratio of the fp32 FMA peak measured in the same run, and weight bytes streamed per
// second. Weights: fp32, bf16 widened to fp32 (bf16), and bf16 dot-product (dot, VDPBF16PS:
// up to twice the fp32 peak; only where the CPU has AVX512_BF16).
func BenchmarkMatMul(b *testing.B) {
	peak := benchPeak()
	r := rand.New(rand.NewPCG(1, 2))
	for _, kind := range []string{"f32", "bf16", "dot"} {
		for _, s := range [][3]int{{512, 2048, 768}, {16, 2048, 768}, {1, 2048, 768}, {16, 32000, 768}, {1, 32000, 768}} {
			m, n, k := s[0], s[1], s[2]
			b.Run(fmt.Sprintf("%s/%s/%dx%dx%d", ISA(), kind, m, n, k), func(b *testing.B) {
				var w *Weight
				switch kind {
				case "dot":
					if !HasBF16Dot() {
						b.Skip("no AVX512_BF16 on this CPU: the emulation is not worth timing")
					}
					w = Threads(0).NewWeightDot(randF32(r, n*k), n, k)
				default:
					w = newWeight(r, n, k, kind == "bf16")
				}
				x, y := randF32(r, m*k), make([]float32, m*n)
				for b.Loop() {
					MatMul(y, x, m, w)
				}
				sec := b.Elapsed().Seconds() / float64(b.N)
				gf := 2 * float64(m*n*k) / sec / 1e9
				b.ReportMetric(gf, "GFLOP/s")
				b.ReportMetric(100*gf/peak, "%peak")
				b.ReportMetric(float64(w.Bytes())/sec/1e9, "weightGB/s")
			})
		}
	}
}
