package cpu

import (
	"context"
	"math/rand/v2"
	"runtime"
	"testing"

	"github.com/prolong-rl/prolong/engine"
)

// TestMemoryDefaultJobShapes: the default job's work on the default model (warm-start steps of
// 32 sequences whose token counts change at every step, then rollouts of 16 prompts × 8
// samples of up to 24 tokens and an evaluation of 200 prompts × 4) leaves the live heap within
// a bound worked from the model: the pool keeps about one step's activations, not 1 GiB of
// buffers whose lengths never came back (3.9 GB resident for the default job before).
func TestMemoryDefaultJobShapes(t *testing.T) {
	// The default model (grpo/quickstart.ModelConfig, 2.4M parameters).
	cfg := &engine.Config{ModelType: "qwen2", VocabSize: 32, HiddenSize: 192, NumHiddenLayers: 6, NumAttentionHeads: 6,
		NumKeyValueHeads: 2, HeadDim: 32, IntermediateSize: 512, RMSNormEps: 1e-6, RopeTheta: 10000,
		MaxPositionEmbeddings: 64, AttentionBias: true, TieWordEmbeddings: true}
	c := New()
	m, err := engine.NewModel(cfg, c, engine.RandomWeights(cfg, 1, 0.02), engine.F32)
	if err != nil {
		t.Fatal(err)
	}
	tr, err := engine.NewTrainer(m, engine.TrainOptions{Optimizer: engine.AdamWConfig{LR: 1e-3}})
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(1, 2))
	tokens := func(n int) []int32 {
		s := make([]int32, n)
		for i := range s {
			s[i] = int32(rng.IntN(cfg.VocabSize))
		}
		return s
	}
	const batch, maxLen = 32, 40
	for step := 0; step < 20; step++ {
		seqs := make([]engine.ScoreRequest, batch)
		for i := range seqs {
			seqs[i] = engine.ScoreRequest{Tokens: tokens(12 + rng.IntN(maxLen-11)), Start: 8}
		}
		if _, err := tr.ForwardBackward(context.Background(), seqs, engine.CrossEntropy(0)); err != nil {
			t.Fatal(err)
		}
		if _, err := tr.Step(); err != nil {
			t.Fatal(err)
		}
	}
	gen, err := engine.NewGenerator(m, engine.GeneratorOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer gen.Close()
	for _, round := range []struct{ prompts, n int }{{16, 8}, {16, 8}, {200, 4}} {
		reqs := make([]engine.Request, round.prompts)
		for i := range reqs {
			reqs[i] = engine.Request{Prompt: tokens(6 + rng.IntN(6)),
				Params: engine.SamplingParams{N: round.n, Temperature: 1.2, MaxNewTokens: 24, Seed: uint64(i)}}
		}
		if _, err := gen.Generate(context.Background(), reqs); err != nil {
			t.Fatal(err)
		}
	}
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	// A training step's activations: per token and layer, the buffers of engine.Trainer.newActs
	// (h1, xm, h2, out [D]; q, a [H·Dh]; k, v [KV·Dh]; lse [H]; g, u, mm [I]) = 4·192 + 2·192 +
	// 2·64 + 6 + 3·512 = 2822 floats (4 bytes), over 32·40 tokens and 6 layers: 86.7 MB. The pool
	// may hold them twice (two size classes, each up to 25% over); the KV cache holds at most its
	// default budget, 256 × 5 blocks of 48 KiB (60 MiB); weights, gradients, AdamW moments and packed
	// copies of the 2.4M parameters (about 60 MB) fit in 64 MiB more.
	acts := int64(batch*maxLen) * int64(cfg.NumHiddenLayers) * 2822 * 4
	bound := 2*acts*5/4 + engine.KVBudget(cfg, engine.F32, 256, cfg.MaxPositionEmbeddings) + 64<<20
	t.Logf("live heap %.1f MiB, bound %.1f MiB, pooled %.1f MiB", float64(ms.HeapAlloc)/(1<<20), float64(bound)/(1<<20), float64(c.pooled)/(1<<20))
	if int64(ms.HeapAlloc) > bound {
		t.Fatalf("live heap %d bytes after the default job's shapes, over the bound %d", ms.HeapAlloc, bound)
	}
	runtime.KeepAlive(tr)
}
