package engine_test

import (
	"math/rand/v2"
	"testing"

	"github.com/prolong-rl/prolong/engine"
	"github.com/prolong-rl/prolong/engine/cpu"
)

// defaultModelConfig is the default job's model (grpo/quickstart.ModelConfig, 2.4M parameters):
// 6 layers, 2 KV heads of 32, 64 positions.
func defaultModelConfig() *engine.Config {
	return &engine.Config{ModelType: "qwen2", VocabSize: 32, HiddenSize: 192, NumHiddenLayers: 6, NumAttentionHeads: 6,
		NumKeyValueHeads: 2, HeadDim: 32, IntermediateSize: 512, RMSNormEps: 1e-6, RopeTheta: 10000,
		MaxPositionEmbeddings: 64, AttentionBias: true, TieWordEmbeddings: true}
}

// TestKVBudgetFollowsModel: the KV budget is sized from the model's config (worked by hand), not a
// fixed 1 GiB: a block is layers × 2 (K, V) × KV heads × head_dim × 16 positions × 4 bytes, and
// a sequence of L positions gets ceil(L/16) + 2 blocks.
func TestKVBudgetFollowsModel(t *testing.T) {
	golden := loadGolden(t, "qwen2").cfg // 2 layers, 2 KV heads of 16, 512 positions
	tests := []struct {
		name         string
		c            *engine.Config
		seqs, seqLen int
		want         int64
	}{
		// block 6·2·64·16·4 = 49152 bytes; 64 positions: 4 + 2 blocks.
		{"default model, 256 seqs of max_position_embeddings", defaultModelConfig(), 256, 64, 256 * 6 * 49152}, // 72 MiB
		// the default job's rollouts: 16 prompts × 8 samples of up to 10 + 24 tokens: 3 + 2 blocks.
		{"default job's rollouts", defaultModelConfig(), 128, 34, 128 * 5 * 49152}, // 30 MiB
		// block 2·2·32·16·4 = 8192 bytes; 512 positions: 32 + 2 blocks.
		{"golden qwen2, 256 seqs", golden, 256, 512, 256 * 34 * 8192},
		{"one position", golden, 1, 1, 3 * 8192},
	}
	for _, tc := range tests {
		if got := engine.KVBudget(tc.c, tc.seqs, tc.seqLen); got != tc.want {
			t.Errorf("%s: KVBudget = %d, want %d", tc.name, got, tc.want)
		}
	}
	// A generator with the default options gets DefaultKVBudget: 256 sequences of the model's
	// max_position_embeddings (this machine has far more than 4 × 72 MiB).
	m, err := engine.NewModel(defaultModelConfig(), cpu.New(), engine.RandomWeights(defaultModelConfig(), 1, 0.02), engine.F32)
	if err != nil {
		t.Fatal(err)
	}
	gen := newGen(t, m, engine.GeneratorOptions{})
	if got := gen.Cache().Capacity(); got != 256*6 {
		t.Errorf("default generator of the default model: %d KV blocks (%.0f MiB), want %d (72 MiB)",
			got, float64(got)*49152/(1<<20), 256*6)
	}
	if got := engine.DefaultKVBudget(defaultModelConfig(), 256); got != 256*6*49152 {
		t.Errorf("DefaultKVBudget(default model, 256) = %d, want %d", got, 256*6*49152)
	}
	// The user's budget still wins.
	if got := newGen(t, m, engine.GeneratorOptions{KVBudgetBytes: 10 * 49152}).Cache().Capacity(); got != 10 {
		t.Errorf("KVBudgetBytes of 10 blocks: capacity %d", got)
	}
}

// TestDefaultKVBudgetNeverHoldsBack: with the default budget, the scheduler's reservations
// never exceed it and never keep a waiting request out (MaxSeqs does first), whatever the mix of
// prompt lengths, samples per prompt and early stops: a finished sample gives its share of its
// request's reservation back at once (it used to be held until the request's last sample ended,
// so reservations grew past MaxSeqs × a sequence's blocks). The default job's schedule, and so
// its tokens, are the same as under the old 1 GiB budget, which never bound either.
func TestDefaultKVBudgetNeverHoldsBack(t *testing.T) {
	c := defaultModelConfig()
	m, err := engine.NewModel(c, cpu.New(), engine.RandomWeights(c, 1, 0.02), engine.F32)
	if err != nil {
		t.Fatal(err)
	}
	gen := newGen(t, m, engine.GeneratorOptions{})
	capacity := gen.Cache().Capacity()
	rng := rand.New(rand.NewPCG(5, 6))
	stops := make([]int32, 3) // a tenth of the vocabulary: samples end at random lengths
	for i := range stops {
		stops[i] = int32(i)
	}
	var reqs []engine.Request
	for i := 0; i < 300; i++ {
		prompt := make([]int32, 1+rng.IntN(24))
		for j := range prompt {
			prompt[j] = int32(rng.IntN(c.VocabSize))
		}
		reqs = append(reqs, engine.Request{Prompt: prompt, Params: engine.SamplingParams{N: 1 + rng.IntN(16),
			Temperature: 1, MaxNewTokens: 1 + rng.IntN(c.MaxPositionEmbeddings-len(prompt)), StopTokens: stops, Seed: uint64(i)}})
	}
	steps, peak := 0, 0
	err = engine.GenerateChecked(gen, reqs, func(reserved, waiting int) {
		steps++
		peak = max(peak, reserved)
		if reserved > capacity || (waiting > 0 && reserved+waiting > capacity) {
			t.Fatalf("step %d: %d blocks reserved, %d more for the request waiting: over the %d of the default budget",
				steps, reserved, waiting, capacity)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%d steps, at most %d of %d blocks reserved", steps, peak, capacity)
}
