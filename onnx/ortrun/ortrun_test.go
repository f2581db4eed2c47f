//go:build cgo

package ortrun

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/prolong-rl/prolong/engine"
	"github.com/prolong-rl/prolong/engine/cpu"
	"github.com/prolong-rl/prolong/onnx"
)

// TestGreedyBatch: a batch decoded together in ONNX Runtime gives each sequence the tokens it
// gets alone (Greedy) and the engine's greedy tokens on the same weights.
func TestGreedyBatch(t *testing.T) {
	if err := Init(); err != nil {
		if os.Getenv("PROLONG_REQUIRE_ORT") == "1" {
			t.Fatalf("PROLONG_REQUIRE_ORT=1: %v", err)
		}
		t.Skipf("skipping: %v", err)
	}
	c := &engine.Config{ModelType: "qwen2", VocabSize: 64, HiddenSize: 32, NumHiddenLayers: 2, NumAttentionHeads: 4,
		NumKeyValueHeads: 2, HeadDim: 8, IntermediateSize: 64, RMSNormEps: 1e-6, RopeTheta: 10000,
		MaxPositionEmbeddings: 64, AttentionBias: true, TieWordEmbeddings: true}
	w := engine.RandomWeights(c, 7, 0.3)
	path := filepath.Join(t.TempDir(), "model.onnx")
	if err := onnx.Export(path, c, w, onnx.ExportOptions{}); err != nil {
		t.Fatal(err)
	}
	s, err := Open(path, c)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	prompts := [][]int32{{1, 2, 3, 4}, {9, 8, 7, 6}, {5, 5, 5, 5}}
	got, err := s.GreedyBatch(prompts, 10)
	if err != nil {
		t.Fatal(err)
	}
	m, err := engine.NewModel(c, cpu.New(), w, engine.F32)
	if err != nil {
		t.Fatal(err)
	}
	gen, err := engine.NewGenerator(m, engine.GeneratorOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer gen.Close()
	for i, p := range prompts {
		alone, err := s.Greedy(p, 10, nil)
		if err != nil {
			t.Fatal(err)
		}
		res, err := gen.Generate(context.Background(), []engine.Request{{Prompt: p, Params: engine.SamplingParams{MaxNewTokens: 10}}})
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(got[i], alone) || !slices.Equal(got[i], res[0].Samples[0].Tokens) {
			t.Errorf("prompt %d: batch %v, alone %v, engine %v", i, got[i], alone, res[0].Samples[0].Tokens)
		}
	}
	if _, err := s.GreedyBatch([][]int32{{1, 2}, {3}}, 2); err == nil {
		t.Error("prompts of two lengths accepted")
	}
}
