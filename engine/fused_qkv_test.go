package engine_test

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/prolong-rl/prolong/engine"
	"github.com/prolong-rl/prolong/engine/cpu"
	"github.com/prolong-rl/prolong/engine/enginetest"
)

// TestQKVRoPEFusedSameBits: a model whose backend fuses QKVRoPE (the biases, RoPE and the KV
// write in one op) generates (prefill and fixed-buffer decode), scores and trains (loss,
// log-probs and every gradient) bit for bit as one that runs AddBias, RoPE and the write inside
// Attention, for Qwen2 (biases), Llama (none), Qwen3 (qk-norm) and qk-norm with biases; and the
// fused model's calls show QKVRoPE once per layer and pass, no RoPE or AddBias (but the biases
// before a qk-norm), and Attention told that the cache is written.
func TestQKVRoPEFusedSameBits(t *testing.T) {
	base := defaultModelConfig()
	variant := func(typ string, bias, qkNorm bool) *engine.Config {
		c := *base
		c.ModelType, c.AttentionBias, c.QKNorm = typ, bias, qkNorm
		return &c
	}
	rng := rand.New(rand.NewPCG(35, 1))
	var reqs []engine.Request
	for i := range 5 {
		reqs = append(reqs, engine.Request{Prompt: randPrompt(rng, 1+rng.IntN(20), base.VocabSize),
			Params: engine.SamplingParams{N: 1 + i%2, Temperature: 1, MaxNewTokens: 5 + 4*i, Seed: uint64(i)}})
	}
	var scores []engine.ScoreRequest
	for _, n := range []int{7, 33, 18} {
		scores = append(scores, engine.ScoreRequest{Tokens: randPrompt(rng, n, base.VocabSize), Start: 2})
	}
	for _, c := range []*engine.Config{variant("qwen2", true, false), variant("llama", false, false),
		variant("qwen3", false, true), variant("qwen3", true, true)} {
		t.Run(fmt.Sprintf("%s/bias=%v", c.ModelType, c.AttentionBias), func(t *testing.T) {
			w := engine.RandomWeights(c, 3, 0.05)
			type run struct {
				samples [][]engine.Sample
				scores  []engine.ScoreResult
				stats   *engine.StepStats
				grads   map[string][]float32
				calls   map[string]int
			}
			do := func(fused bool) run {
				var r run
				rec := enginetest.NewRecorder(cpu.New(cpu.WithFusedQKVRoPE(fused)))
				m, err := engine.NewModel(c, rec, w, engine.F32)
				if err != nil {
					t.Fatal(err)
				}
				res, err := newGen(t, m, engine.GeneratorOptions{}).Generate(context.Background(), reqs)
				if err != nil {
					t.Fatal(err)
				}
				for _, x := range res {
					r.samples = append(r.samples, x.Samples)
				}
				if r.scores, err = m.Score(context.Background(), scores, 1); err != nil {
					t.Fatal(err)
				}
				r.calls = enginetest.Count(rec.Take())
				tr := newTrainer(t, c, w, engine.TrainOptions{})
				tr.Model.Backend.(*cpu.Backend).SetFusedQKVRoPE(fused)
				if r.stats, err = tr.ForwardBackward(context.Background(), scores, engine.CrossEntropy(0)); err != nil {
					t.Fatal(err)
				}
				r.grads = map[string][]float32{}
				for _, name := range tr.TrainableNames() {
					if r.grads[name], err = tr.Grad(name); err != nil {
						t.Fatal(err)
					}
				}
				return r
			}
			got, want := do(true), do(false)
			for i := range want.samples {
				for j := range want.samples[i] {
					if err := sameSample(got.samples[i][j], want.samples[i][j]); err != nil {
						t.Fatalf("request %d sample %d: %v", i, j, err)
					}
				}
			}
			for i := range want.scores {
				if !sameBits(got.scores[i].LogProbs, want.scores[i].LogProbs) || !sameBits(got.scores[i].Entropy, want.scores[i].Entropy) {
					t.Fatalf("score %d: %v %v, want %v %v", i, got.scores[i].LogProbs, got.scores[i].Entropy, want.scores[i].LogProbs, want.scores[i].Entropy)
				}
			}
			if math.Float64bits(got.stats.Loss) != math.Float64bits(want.stats.Loss) {
				t.Fatalf("loss %v, want %v", got.stats.Loss, want.stats.Loss)
			}
			for name, g := range want.grads {
				if !sameBits(got.grads[name], g) {
					t.Fatalf("gradient of %s differs", name)
				}
			}
			// Calls: one QKVRoPE per layer and pass instead of two RoPE and three AddBias.
			passes := want.calls["Attention"] / c.NumHiddenLayers
			biasBefore := 0 // AddBias calls that stay: the biases before a qk-norm
			if c.AttentionBias && c.QKNorm {
				biasBefore = 3 * want.calls["Attention"]
			}
			if passes == 0 || got.calls["Attention"] != want.calls["Attention"] || got.calls["QKVRoPE"] != want.calls["Attention"] ||
				got.calls["RoPE"] != 0 || want.calls["RoPE"] != 2*want.calls["Attention"] || got.calls["AddBias"] != biasBefore {
				t.Fatalf("calls fused %v, unfused %v", got.calls, want.calls)
			}
			t.Logf("%d passes: fused %v", passes, got.calls)
		})
	}
}
