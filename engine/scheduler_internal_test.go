package engine

import (
	"fmt"
	"math/rand/v2"
	"testing"
	"time"
)

// BenchmarkTopRow measures the 20 most likely tokens of one row of logits (what a request with
// top log-probs adds per token) at the vocabularies of Llama 2 and Qwen2.5, as a ratio of
// drawing a token from the same row (SampleLogits at temperature 1) in the same run.
func BenchmarkTopRow(b *testing.B) {
	for _, V := range []int{32000, 151936} {
		b.Run(fmt.Sprintf("vocab=%d", V), func(b *testing.B) {
			rng := rand.New(rand.NewPCG(1, 2))
			row := make([]float32, V)
			for i := range row {
				row[i] = float32(rng.NormFloat64() * 3)
			}
			r := SampleRow{Temperature: 1, U: 0.5}
			var sample, top time.Duration
			for b.Loop() {
				t0 := time.Now()
				SampleLogits(row, r)
				t1 := time.Now()
				TopLogProbsRow(row, r, 20)
				sample, top = sample+t1.Sub(t0), top+time.Since(t1)
			}
			b.ReportMetric(float64(top.Microseconds())/float64(b.N), "µs/row")
			b.ReportMetric(top.Seconds()/sample.Seconds(), "x-sample")
		})
	}
}
