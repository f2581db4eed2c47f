package cuda

import (
	"context"
	"testing"

	"github.com/prolong-rl/prolong/engine"
)

// TestLogitBudget (fake driver): the backend's logit budget is engine.DefaultLogitBudget unless
// Options.LogitBudget (large-logit-chunks: 1 GiB) says otherwise, and the engine's Score
// follows it: 600 scored rows over a vocabulary of 70,000 are 3 logprobs launches of at most
// 239 rows by default and 1 of 600 with 1 GiB.
func TestLogitBudget(t *testing.T) {
	var _ engine.LogitBudgeter = (*Backend)(nil)
	cfg := &engine.Config{ModelType: "qwen2", VocabSize: 70000, HiddenSize: 16, NumHiddenLayers: 1,
		NumAttentionHeads: 2, NumKeyValueHeads: 1, HeadDim: 8, IntermediateSize: 32, RMSNormEps: 1e-6,
		RopeTheta: 10000, MaxPositionEmbeddings: 1024, TieWordEmbeddings: true}
	tokens := make([]int32, 601)
	for i := range tokens {
		tokens[i] = int32(i * 7 % cfg.VocabSize)
	}
	for _, tc := range []struct {
		opts     Options
		budget   int64
		launches []int // rows of each logprobs launch
	}{
		{Options{}, engine.DefaultLogitBudget, []int{239, 239, 122}},
		{Options{LogitBudget: 1 << 30}, 1 << 30, []int{600}},
	} {
		g := newFakeGPU(t, 90, 8<<30)
		b, err := Open(tc.opts)
		if err != nil {
			t.Fatal(err)
		}
		if got := b.LogitBudget(); got != tc.budget {
			t.Errorf("%+v: LogitBudget %d, want %d", tc.opts, got, tc.budget)
		}
		m, err := engine.NewModel(cfg, b, engine.RandomWeights(cfg, 1, 0.1), engine.F32)
		if err != nil {
			t.Fatal(err)
		}
		l0 := len(g.launches)
		if _, err := m.Score(context.Background(), []engine.ScoreRequest{{Tokens: tokens, Start: 1}}, 1); err != nil {
			t.Fatal(err)
		}
		var rows []int
		for _, l := range g.logprobLaunches(l0) {
			rows = append(rows, l.grid[0])
		}
		if len(rows) != len(tc.launches) {
			t.Fatalf("%+v: logprobs launches of %v rows, want %v", tc.opts, rows, tc.launches)
		}
		for i := range rows {
			if rows[i] != tc.launches[i] {
				t.Errorf("%+v: logprobs launches of %v rows, want %v", tc.opts, rows, tc.launches)
				break
			}
		}
	}
}
