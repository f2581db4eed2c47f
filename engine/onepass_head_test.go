package engine_test

import (
	"context"
	"math"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/prolong-rl/prolong/engine"
	"github.com/prolong-rl/prolong/engine/cpu"
)

// TestOnePassHeadBadTerm: a token loss whose term for one token is not finite fails the
// micro-batch with an error that names the sequence and the token, on both paths of the one-pass
// head (logits kept, and chunk by chunk) and through TokenLoss.LossFunc on the two-pass head.
func TestOnePassHeadBadTerm(t *testing.T) {
	g := loadGolden(t, goldenNames(t)[0])
	batch := trainBatch(rand.New(rand.NewPCG(1, 2)), g.cfg.VocabSize, 7, 9)
	loss := engine.TokenLoss{Term: func(s, j int, logp, _ float64) (float64, float64, float64) {
		if s == 1 && j == 3 {
			return math.NaN(), -1, 0
		}
		return -logp, -1, 0
	}}
	for _, b := range []engine.TrainBackend{cpu.New(), &chunkedCPU{countingCPU: &countingCPU{Backend: cpu.New()}}} {
		m, err := engine.NewModel(g.cfg, b, g.weights, engine.F32)
		if err != nil {
			t.Fatal(err)
		}
		tr, err := engine.NewTrainer(m, engine.TrainOptions{MaxLogitRows: 4})
		if err != nil {
			t.Fatal(err)
		}
		_, err = tr.ForwardBackwardTokens(context.Background(), batch, loss)
		if err == nil || !strings.Contains(err.Error(), "token loss of sequence 1, token 3 is NaN") {
			t.Errorf("%T: error %v, want the NaN term of sequence 1, token 3", b, err)
		}
		_, err = tr.ForwardBackward(context.Background(), batch, loss.LossFunc()) // the two-pass head
		if err == nil || !strings.Contains(err.Error(), "token loss of sequence 1, token 3 is NaN") {
			t.Errorf("%T, two-pass head: error %v, want the NaN term of sequence 1, token 3", b, err)
		}
	}
}
