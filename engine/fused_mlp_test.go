package engine_test

import (
	"fmt"
	"math"
	"math/rand/v2"
	"reflect"
	"testing"
	"time"

	"github.com/prolong-rl/prolong/engine"
	"github.com/prolong-rl/prolong/engine/cpu"
	"github.com/prolong-rl/prolong/engine/enginetest"
)

// TestFusedMLPGeneration: with a backend that fuses gate/up and SwiGLU (the CPU with
// WithFusedMLP, behind the recorder), every layer of a decode step issues one GateUpSwiGLU in
// place of MatMuls and SwiGLU, decode steps still run on fixed buffers (the same calls on the
// same tensors step after step), and the samples (ids and log-probs) are the unfused backend's
// bit for bit; the default backend records MatMuls and SwiGLU and no GateUpSwiGLU.
func TestFusedMLPGeneration(t *testing.T) {
	reqs := []engine.Request{
		{Prompt: randPrompt(rand.New(rand.NewPCG(3, 4)), 15, 32), Params: engine.SamplingParams{N: 2, Temperature: 1, MaxNewTokens: 20, Seed: 1}},
		{Prompt: []int32{5, 6, 7}, Params: engine.SamplingParams{Temperature: 1, MaxNewTokens: 9, Seed: 2}},
	}
	c := defaultModelConfig()
	run := func(fused bool) ([]engine.Result, [][]enginetest.Call) {
		rec := enginetest.NewRecorder(cpu.New(cpu.WithFusedMLP(fused)))
		m, err := engine.NewModel(c, rec, engine.RandomWeights(c, 1, 0.02), engine.F32)
		if err != nil {
			t.Fatal(err)
		}
		g := newGen(t, m, engine.GeneratorOptions{MaxSeqs: 8})
		rec.Take()
		var steps [][]enginetest.Call
		res, err := engine.GenerateChecked(g, reqs, func(int, uint64) { steps = append(steps, rec.Take()) })
		if err != nil {
			t.Fatal(err)
		}
		return res, steps
	}
	plain, plainSteps := run(false)
	fused, steps := run(true)
	if !reflect.DeepEqual(sampleBits(plain), sampleBits(fused)) {
		t.Fatalf("fused MLP samples differ from the unfused ones:\n%v\n%v", sampleBits(fused), sampleBits(plain))
	}
	L := c.NumHiddenLayers
	for i, s := range steps {
		n, p := enginetest.Count(s), enginetest.Count(plainSteps[i])
		if n["GateUpSwiGLU"] != L || n["SwiGLU"] != 0 || n["MatMuls"] != L {
			t.Fatalf("fused step %d: %d GateUpSwiGLU, %d SwiGLU, %d MatMuls; want %d, 0, %d (Q/K/V only)", i, n["GateUpSwiGLU"], n["SwiGLU"], n["MatMuls"], L, L)
		}
		if p["GateUpSwiGLU"] != 0 || p["SwiGLU"] != L || p["MatMuls"] != 2*L {
			t.Fatalf("unfused step %d: %d GateUpSwiGLU, %d SwiGLU, %d MatMuls; want 0, %d, %d", i, p["GateUpSwiGLU"], p["SwiGLU"], p["MatMuls"], L, 2*L)
		}
	}
	compared := 0
	for i := 3; i < len(steps); i++ {
		if P := sampleRows(steps[i]); P != sampleRows(steps[i-1]) || P != sampleRows(steps[i-2]) {
			continue
		}
		compared++
		if err := enginetest.SameBuffers(steps[i-1], steps[i]); err != nil {
			t.Fatalf("fused decode steps %d and %d: %v", i-1, i, err)
		}
	}
	if compared == 0 {
		t.Fatal("no two decode steps of one batch size compared")
	}
}

// sampleBits is every sample's tokens and log-probs (as bits).
func sampleBits(rs []engine.Result) [][]uint64 {
	var out [][]uint64
	for _, r := range rs {
		for _, s := range r.Samples {
			var v []uint64
			for i, tok := range s.Tokens {
				v = append(v, uint64(tok), uint64(math.Float32bits(s.LogProbs[i])))
			}
			out = append(out, v)
		}
	}
	return out
}

// BenchmarkFusedMLPDecode: decode steps of the ~122M bench model (bf16 weights) on the CPU with
// the MLP's gate/up and SwiGLU fused (cpu.WithFusedMLP(true)) against unfused, at batch 1 and
// 16, the two generations alternating so that other load falls on both alike; reports each
// one's mean decode rate over the steps after the first two, and fused/unfused.
func BenchmarkFusedMLPDecode(b *testing.B) {
	c := engine.Bench122M()
	w := engine.RandomWeights(c, 1, 0.02)
	var gens [2]*engine.Generator
	for i, fused := range []bool{false, true} {
		m, err := engine.NewModel(c, cpu.New(cpu.WithFusedMLP(fused)), w, engine.BF16)
		if err != nil {
			b.Fatal(err)
		}
		g, err := engine.NewGenerator(m, engine.GeneratorOptions{})
		if err != nil {
			b.Fatal(err)
		}
		defer g.Close()
		gens[i] = g
	}
	for _, batch := range []int{1, 16} {
		b.Run(fmt.Sprintf("batch=%d", batch), func(b *testing.B) {
			var reqs []engine.Request
			for i := range batch {
				p := make([]int32, 32)
				for j := range p {
					p[j] = int32((i*131 + j*7) % 32000)
				}
				reqs = append(reqs, engine.Request{Prompt: p, Params: engine.SamplingParams{MaxNewTokens: 24, Temperature: 1, Seed: uint64(i)}})
			}
			var sum [2]time.Duration
			var n [2]int
			turn := 0
			for b.Loop() {
				for k := range 2 {
					i := (turn + k) % 2
					step, last := 0, time.Now()
					if _, err := engine.GenerateChecked(gens[i], reqs, func(int, uint64) {
						now := time.Now()
						if step >= 2 {
							sum[i], n[i] = sum[i]+now.Sub(last), n[i]+1
						}
						step, last = step+1, now
					}); err != nil {
						b.Fatal(err)
					}
				}
				turn++
			}
			rate := func(i int) float64 { return float64(batch*n[i]) / sum[i].Seconds() }
			b.ReportMetric(rate(0), "unfused-tok/s")
			b.ReportMetric(rate(1), "fused-tok/s")
			b.ReportMetric(rate(1)/rate(0), "fused/unfused")
		})
	}
}
