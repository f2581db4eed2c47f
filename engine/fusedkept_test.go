package engine_test

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
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
				kept := &countingCPU{Backend: cpu.New()}
				chunked := &chunkedCPU{countingCPU: &countingCPU{Backend: cpu.New()}}
				var stats []*engine.StepStats
				var trainers []*engine.Trainer
				for _, b := range []engine.TrainBackend{kept, chunked} {
					counts := map[engine.TrainBackend]*countingCPU{kept: kept, chunked: chunked.countingCPU}[b]
					m, err := engine.NewModel(g.cfg, b, g.weights, engine.F32)
					if err != nil {
						t.Fatal(err)
					}
					tr, err := engine.NewTrainer(m, opts)
					if err != nil {
						t.Fatal(err)
					}
					var st *engine.StepStats
					for range 2 { // the second micro-batch is counted (the first reads the RoPE table back once)
						counts.reset()
						if st, err = tr.ForwardBackwardTokens(context.Background(), batch, loss); err != nil {
							t.Fatal(err)
						}
					}
					stats, trainers = append(stats, st), append(trainers, tr)
				}
				if kept.logProbs != 0 || kept.into != chunks || kept.downloads != 1 {
					t.Errorf("kept logits: %d LogProbs, %d LogProbsInto, %d Downloads for %d chunks; want 0, %d, 1", kept.logProbs, kept.into, kept.downloads, chunks, chunks)
				}
				if chunked.logProbs != chunks || chunked.downloads != 0 {
					t.Errorf("chunk by chunk: %d LogProbs, %d Downloads for %d chunks; want %d, 0", chunked.logProbs, chunked.downloads, chunks, chunks)
				}
				if stats[0].Loss != stats[1].Loss || !equalRows(stats[0].LogProb, stats[1].LogProb) || !equalRows(stats[0].Entropy, stats[1].Entropy) {
					t.Fatalf("loss %v, log-probs or entropies differ from the chunk-by-chunk path's (loss %v)", stats[0].Loss, stats[1].Loss)
				}
				for _, wn := range trainers[1].TrainableNames() {
					want, _ := trainers[1].Grad(wn)
					got, err := trainers[0].Grad(wn)
					if err != nil {
						t.Fatal(err)
					}
					if !slices.Equal(got, want) {
						t.Errorf("grad %s differs from the chunk-by-chunk path's (relative %.3g)", wn, relErr(got, f64s(want)))
					}
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
