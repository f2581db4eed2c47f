package engine_test

import (
	"context"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/prolong-rl/prolong/engine"
	"github.com/prolong-rl/prolong/engine/cpu"
)

// budgetCPU is the counting CPU backend with its own logit budget (engine.LogitBudgeter).
type budgetCPU struct {
	*countingCPU
	budget int64
}

func (b budgetCPU) LogitBudget() int64 { return b.budget }

// TestLogitBudgetChunks: the LM head's chunk follows the backend's logit budget: a budget of 5
// rows of logits makes Score and the training head (both heads) score 5 rows a chunk, as
// MaxLogitRows 5 does, with the same log-probs, loss and gradients bit for bit; without a budget
// (engine.DefaultLogitBudget: 64 MiB) the same batch is one chunk; MaxLogitRows still overrides.
func TestLogitBudgetChunks(t *testing.T) {
	cfg := &engine.Config{ModelType: "qwen2", VocabSize: 300, HiddenSize: 16, NumHiddenLayers: 1,
		NumAttentionHeads: 2, NumKeyValueHeads: 1, HeadDim: 8, IntermediateSize: 32, RMSNormEps: 1e-6,
		RopeTheta: 10000, MaxPositionEmbeddings: 128, TieWordEmbeddings: true}
	w := engine.RandomWeights(cfg, 3, 0.5)
	r := rand.New(rand.NewPCG(1, 2))
	batch := trainBatch(r, cfg.VocabSize, 7, 13, 20, 2)
	scored := 0
	for _, s := range batch {
		scored += len(s.Tokens) - s.Start
	}
	five := int64(4 * cfg.VocabSize * 5)
	loss := weightedTokens(randomCoefs(r, batch), randomCoefs(r, batch))
	type run struct {
		st    *engine.StepStats
		grads [][]float32
		score []engine.ScoreResult
		into  [3]int // log-prob calls (chunks) of Score, the two-pass head and the one-pass head
	}
	do := func(budget int64, rows int) run {
		b := budgetCPU{&countingCPU{Backend: cpu.New()}, budget}
		var be engine.TrainBackend = b
		if budget == 0 {
			be = b.countingCPU // no LogitBudget method: the default budget
		}
		m, err := engine.NewModel(cfg, be, w, engine.F32)
		if err != nil {
			t.Fatal(err)
		}
		var out run
		b.reset()
		if out.score, err = m.Score(context.Background(), batch, 1); err != nil {
			t.Fatal(err)
		}
		out.into[0] = b.into
		tr, err := engine.NewTrainer(m, engine.TrainOptions{MaxLogitRows: rows})
		if err != nil {
			t.Fatal(err)
		}
		b.reset()
		if out.st, err = tr.ForwardBackward(context.Background(), batch, loss.LossFunc()); err != nil {
			t.Fatal(err)
		}
		out.into[1] = b.into
		b.reset()
		if _, err = tr.ForwardBackwardTokens(context.Background(), batch, loss); err != nil {
			t.Fatal(err)
		}
		out.into[2] = b.logProbs + b.into // LogProbs a chunk, or LogProbsInto where the logits are kept
		for _, n := range tr.TrainableNames() {
			g, err := tr.Grad(n)
			if err != nil {
				t.Fatal(err)
			}
			out.grads = append(out.grads, g)
		}
		return out
	}
	chunks := (scored + 4) / 5
	for _, tc := range []struct {
		name   string
		budget int64
		rows   int
		want   int // chunks
	}{{"default budget", 0, 0, 1}, {"budget of 5 rows", five, 0, chunks}, {"MaxLogitRows 5", 0, 5, chunks},
		{"MaxLogitRows overrides the budget", five, 1 << 20, 1}} {
		got := do(tc.budget, tc.rows)
		want := [3]int{tc.want, tc.want, tc.want}
		if tc.rows > 0 && tc.budget == 0 {
			want[0] = 1 // Score has no MaxLogitRows: the default budget
		}
		if tc.rows > 0 && tc.budget > 0 {
			want[0] = chunks
		}
		if got.into != want {
			t.Errorf("%s: chunks of Score, the two-pass head and the one-pass head %v, want %v", tc.name, got.into, want)
		}
	}
	// Bit for bit: the budget's chunks are MaxLogitRows' chunks.
	a, b := do(five, 0), do(0, 5)
	if a.st.Loss != b.st.Loss || !slices.EqualFunc(a.grads, b.grads, slices.Equal) {
		t.Errorf("a budget of 5 rows and MaxLogitRows 5 give different losses (%v, %v) or gradients", a.st.Loss, b.st.Loss)
	}
	c := do(0, 0)
	for i := range a.score {
		if !slices.Equal(a.score[i].LogProbs, c.score[i].LogProbs) {
			t.Errorf("request %d: Score's log-probs depend on the chunk", i)
		}
	}
	t.Logf("%d scored rows: %d chunks of 5", scored, chunks)
}
