package engine_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/prolong-rl/prolong/engine"
	"github.com/prolong-rl/prolong/engine/cpu"
	"github.com/prolong-rl/prolong/engine/internal/kern"
)

var (
	benchOnce sync.Once
	benchPeak float64 // GFLOP/s
	benchBW   float64 // GB/s
	benchMu   sync.Mutex
	benchMods = map[engine.DType]*engine.Model{}
)

func benchRefs() (peak, bw float64) {
	benchOnce.Do(func() {
		benchPeak = kern.PeakFMA(500 * time.Millisecond)
		benchBW = kern.TriadBandwidth(time.Second)
	})
	return benchPeak, benchBW
}

func benchModel(b *testing.B, dt engine.DType) *engine.Model {
	benchMu.Lock()
	defer benchMu.Unlock()
	if m := benchMods[dt]; m != nil {
		return m
	}
	c := engine.Bench122M()
	m, err := engine.NewModel(c, cpu.New(), engine.RandomWeights(c, 1, 0.02), dt)
	if err != nil {
		b.Fatal(err)
	}
	benchMods[dt] = m
	return m
}

// BenchmarkDecode measures decode tokens/s of the ~122M Qwen2-shaped model at batch 1 and 16
// (prompt of 32 tokens, 64 new tokens), and the weight bytes streamed per second as a ratio of
// the machine's triad bandwidth measured in the same run.
func BenchmarkDecode(b *testing.B) {
	_, bw := benchRefs()
	for _, dt := range []engine.DType{engine.F32, engine.BF16} {
		for _, batch := range []int{1, 16} {
			b.Run(fmt.Sprintf("%v/batch=%d", dt, batch), func(b *testing.B) {
				m := benchModel(b, dt)
				gen, err := engine.NewGenerator(m, engine.GeneratorOptions{})
				if err != nil {
					b.Fatal(err)
				}
				defer gen.Close()
				reqs := func(n int) []engine.Request {
					var rs []engine.Request
					for i := 0; i < batch; i++ {
						p := make([]int32, 32)
						for j := range p {
							p[j] = int32((i*131 + j*7) % 32000)
						}
						rs = append(rs, engine.Request{Prompt: p, Params: engine.SamplingParams{MaxNewTokens: n, Temperature: 1, Seed: uint64(i)}})
					}
					return rs
				}
				const steps = 64
				var decode time.Duration
				for b.Loop() {
					t0 := time.Now()
					if _, err := gen.Generate(context.Background(), reqs(1)); err != nil {
						b.Fatal(err)
					}
					t1 := time.Now()
					if _, err := gen.Generate(context.Background(), reqs(steps+1)); err != nil {
						b.Fatal(err)
					}
					decode += time.Since(t1) - t1.Sub(t0)
				}
				sec := decode.Seconds() / float64(b.N)
				b.ReportMetric(float64(batch*steps)/sec, "tok/s")
				gbs := float64(m.LinearBytes()) * steps / sec / 1e9
				b.ReportMetric(gbs, "weightGB/s")
				b.ReportMetric(100*gbs/bw, "%triad")
			})
		}
	}
}

// BenchmarkPrefill measures prefill tokens/s (prompt of 256 tokens) at batch 1 and 16, and
// the FLOP/s of the layers' linear projections (2 x weights x tokens) as a ratio of measured FMA peak.
func BenchmarkPrefill(b *testing.B) {
	peak, _ := benchRefs()
	for _, batch := range []int{1, 16} {
		b.Run(fmt.Sprintf("batch=%d", batch), func(b *testing.B) {
			m := benchModel(b, engine.F32)
			gen, err := engine.NewGenerator(m, engine.GeneratorOptions{MaxBatchTokens: 1 << 16})
			if err != nil {
				b.Fatal(err)
			}
			defer gen.Close()
			var rs []engine.Request
			for i := 0; i < batch; i++ {
				p := make([]int32, 256)
				for j := range p {
					p[j] = int32((i*131 + j*7) % 32000)
				}
				rs = append(rs, engine.Request{Prompt: p, Params: engine.SamplingParams{MaxNewTokens: 1}})
			}
			for b.Loop() {
				if _, err := gen.Generate(context.Background(), rs); err != nil {
					b.Fatal(err)
				}
			}
			sec := b.Elapsed().Seconds() / float64(b.N)
			toks := float64(batch * 256)
			b.ReportMetric(toks/sec, "tok/s")
			flops := 2 * float64(m.Config.LayerMatmulParams()) * toks / sec / 1e9 // linear layers only
			b.ReportMetric(flops, "GFLOP/s")
			b.ReportMetric(100*flops/peak, "%peak")
		})
	}
}

// BenchmarkTrain measures one training step (forward, backward, AdamW) of the ~122M
// Qwen2-shaped model on 4 sequences of 128 tokens: tokens/s and model FLOP utilisation,
// 6 x (layer linear weights + LM head) x tokens / time, as a ratio of the FMA peak measured
// in the same run.
func BenchmarkTrain(b *testing.B) {
	peak, _ := benchRefs()
	for _, recompute := range []bool{false, true} {
		b.Run(fmt.Sprintf("recompute=%v", recompute), func(b *testing.B) {
			c := engine.Bench122M()
			m, err := engine.NewModel(c, cpu.New(), engine.RandomWeights(c, 1, 0.02), engine.F32)
			if err != nil {
				b.Fatal(err)
			}
			tr, err := engine.NewTrainer(m, engine.TrainOptions{Recompute: recompute, Optimizer: engine.AdamWConfig{LR: 1e-5, ClipNorm: 1}})
			if err != nil {
				b.Fatal(err)
			}
			const batch, seqLen = 4, 128
			var seqs []engine.ScoreRequest
			for i := 0; i < batch; i++ {
				toks := make([]int32, seqLen)
				for j := range toks {
					toks[j] = int32((i*131 + j*7919) % c.VocabSize)
				}
				seqs = append(seqs, engine.ScoreRequest{Tokens: toks, Start: 1})
			}
			for b.Loop() {
				if _, err := tr.ForwardBackward(context.Background(), seqs, engine.CrossEntropy(0)); err != nil {
					b.Fatal(err)
				}
				if _, err := tr.Step(); err != nil {
					b.Fatal(err)
				}
			}
			sec := b.Elapsed().Seconds() / float64(b.N)
			toks := float64(batch * seqLen)
			b.ReportMetric(toks/sec, "tok/s")
			flops := 6 * float64(c.LayerMatmulParams()+int64(c.VocabSize*c.HiddenSize)) * toks / sec / 1e9
			b.ReportMetric(flops, "GFLOP/s")
			b.ReportMetric(100*flops/peak, "%MFU")
		})
	}
}
