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
// as a ratio of the FMA peak measured in the same run, and weight bytes streamed per second.
func BenchmarkMatMul(b *testing.B) {
	peak := benchPeak()
	r := rand.New(rand.NewPCG(1, 2))
	for _, bf := range []bool{false, true} {
		for _, s := range [][3]int{{512, 2048, 768}, {16, 2048, 768}, {1, 2048, 768}, {16, 32000, 768}, {1, 32000, 768}} {
			m, n, k := s[0], s[1], s[2]
			name := fmt.Sprintf("%s/f32/%dx%dx%d", ISA(), m, n, k)
			if bf {
				name = fmt.Sprintf("%s/bf16/%dx%dx%d", ISA(), m, n, k)
			}
			b.Run(name, func(b *testing.B) {
				w := newWeight(r, n, k, bf)
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
