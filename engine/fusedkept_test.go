package engine_test

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/prolong-rl/prolong/engine"
	"github.com/prolong-rl/prolong/engine/cpu"
)

// TestOnePassHeadKeptLogits: the one-pass LM head (ForwardBackwardTokens) on a backend with
// LogProbsInto, where the micro-batch's logits fit the logit budget, keeps every chunk's logits
// and downloads the log-probs once (no LogProbs call, one Download), and gives the loss,
// log-probs, entropies and gradients of the chunk-by-chunk path (a backend without
// LogProbsInto: one LogProbs per chunk) bit for bit, on every golden config with chunks of 1
// and 5 rows and all rows, at two temperatures.
func TestOnePassHeadKeptLogits(t *testing.T) {
	for _, name := range goldenNames(t) {
		g := loadGolden(t, name)
		for _, tc := range []struct {
			rows int
			temp float32
		}{{1, 1}, {5, 0.7}, {0, 1}} {
			t.Run(fmt.Sprintf("%s/rows=%d/temp=%g", name, tc.rows, tc.temp), func(t *testing.T) {
				r := rand.New(rand.NewPCG(9, 10))
				batch := trainBatch(r, g.cfg.VocabSize, 7, 13, 20, 2)
				scored := 0
				for _, s := range batch {
					scored += len(s.Tokens) - s.Start
				}
				chunks := 1
				if tc.rows > 0 {
					chunks = (scored + tc.rows - 1) / tc.rows
				}
				loss := weightedTokens(randomCoefs(r, batch), randomCoefs(r, batch))
				opts := engine.TrainOptions{MaxLogitRows: tc.rows, Temperature: tc.temp}
				kept, chunked := headPaths(t, g, opts, func(tr *engine.Trainer) (*engine.StepStats, error) {
					return tr.ForwardBackwardTokens(context.Background(), batch, loss)
				})
				if kept.logProbs != 0 || kept.into != chunks || kept.downloads != 1 {
					t.Errorf("kept logits: %d LogProbs, %d LogProbsInto, %d Downloads for %d chunks; want 0, %d, 1", kept.logProbs, kept.into, kept.downloads, chunks, chunks)
				}
				if chunked.logProbs != chunks || chunked.downloads != 0 {
					t.Errorf("chunk by chunk: %d LogProbs, %d Downloads for %d chunks; want %d, 0", chunked.logProbs, chunked.downloads, chunks, chunks)
				}
			})
		}
	}
}

// TestOnePassHeadBadTerm: a token loss whose term for one token is not finite fails the
// micro-batch with an error that names the sequence and the token, on both paths of the one-pass
// head (logits kept, and chunk by chunk).
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
	}
}
