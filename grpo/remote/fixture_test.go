package remote

import (
	"context"
	"slices"
	"testing"

	"github.com/prolong-rl/prolong/checkpoints"
	"github.com/prolong-rl/prolong/engine"
	"github.com/prolong-rl/prolong/engine/cpu"
	"github.com/prolong-rl/prolong/grpo"
)

// tinyModel saves a tiny Qwen2 model (random weights, seed 1, scale 0.3) in a temporary folder
// for rollout servers to serve; it returns its config, its weights and the folder.
func tinyModel(t *testing.T) (*engine.Config, map[string]engine.HostTensor, string) {
	t.Helper()
	cfg := &engine.Config{ModelType: "qwen2", VocabSize: 24, HiddenSize: 32, NumHiddenLayers: 2, NumAttentionHeads: 4,
		NumKeyValueHeads: 2, HeadDim: 8, IntermediateSize: 64, RMSNormEps: 1e-6, RopeTheta: 10000,
		MaxPositionEmbeddings: 128, AttentionBias: true}
	w := engine.RandomWeights(cfg, 1, 0.3)
	dir := t.TempDir()
	if err := checkpoints.Save(dir, cfg, w, checkpoints.SaveOptions{}); err != nil {
		t.Fatal(err)
	}
	return cfg, w, dir
}

// testPrompts is n three-token prompts of tinyModel's vocabulary.
func testPrompts(n int) []grpo.Prompt {
	var prompts []grpo.Prompt
	for i := 0; i < n; i++ {
		prompts = append(prompts, grpo.Prompt{Tokens: []int32{1, int32(2 + i%20), int32(3 + (7*i)%20)}})
	}
	return prompts
}

// testSampling is the tests' sampling: 4 samples a prompt, up to 12 tokens, stop token 5, seed 99.
func testSampling() engine.SamplingParams {
	return engine.SamplingParams{N: 4, Temperature: 1.2, TopP: 1, MaxNewTokens: 12, StopTokens: []int32{5}, Seed: 99}
}

// newModel is the CPU model of cfg and w computing in dt.
func newModel(t *testing.T, cfg *engine.Config, w map[string]engine.HostTensor, dt engine.DType) *engine.Model {
	t.Helper()
	m, err := engine.NewModel(cfg, cpu.New(), w, dt)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// engineOn is the in-process engine's rollouts of prompts with p on m.
func engineOn(t *testing.T, m *engine.Model, prompts []grpo.Prompt, p engine.SamplingParams) [][]engine.Sample {
	t.Helper()
	g, err := engine.NewGenerator(m, engine.GeneratorOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	out, err := grpo.EngineRollouts{Gen: g}.Rollout(context.Background(), prompts, p)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// checkRollouts fails t unless got's samples are want's, token for token and log-prob for
// log-prob, with the same finish reasons.
func checkRollouts(t *testing.T, what string, got, want [][]engine.Sample) {
	t.Helper()
	for i := range want {
		for j := range want[i] {
			a, b := got[i][j], want[i][j]
			if !slices.Equal(a.Tokens, b.Tokens) || !slices.Equal(a.LogProbs, b.LogProbs) || a.Finish != b.Finish {
				t.Fatalf("%s: prompt %d sample %d: remote %v %v %s, engine %v %v %s", what, i, j, a.Tokens, a.LogProbs, a.Finish, b.Tokens, b.LogProbs, b.Finish)
			}
		}
	}
}

// sameLogProbs reports whether every sample of a has b's log-probs.
func sameLogProbs(a, b [][]engine.Sample) bool {
	for i := range b {
		for j := range b[i] {
			if !slices.Equal(a[i][j].LogProbs, b[i][j].LogProbs) {
				return false
			}
		}
	}
	return true
}
