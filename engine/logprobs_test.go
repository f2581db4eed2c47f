package engine_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/prolong-rl/prolong/engine"
	"github.com/prolong-rl/prolong/engine/cpu"
)

// countingCPU is the CPU backend, counting the calls that bring log-probs to the host.
type countingCPU struct {
	*cpu.Backend
	logProbs, into, downloads int
}

func (c *countingCPU) LogProbs(logits *engine.Tensor, targets []int32, temp float32) ([]float32, []float32, error) {
	c.logProbs++
	return c.Backend.LogProbs(logits, targets, temp)
}

func (c *countingCPU) LogProbsInto(out *engine.Tensor, row0 int, logits *engine.Tensor, targets []int32, temp float32) {
	c.into++
	c.Backend.LogProbsInto(out, row0, logits, targets, temp)
}

func (c *countingCPU) Download(t *engine.Tensor, dst []float32) error {
	c.downloads++
	return c.Backend.Download(t, dst)
}

func (c *countingCPU) reset() { c.logProbs, c.into, c.downloads = 0, 0, 0 }

// noLogProbsInto has a LogProbsInto method at the depth of countingCPU's, so a struct that
// embeds both has none (an ambiguous selector is not promoted): the engine takes its fallback,
// LogProbs chunk by chunk.
type noLogProbsInto struct{}

func (noLogProbsInto) LogProbsInto(*engine.Tensor, int, *engine.Tensor, []int32, float32) {}

// chunkedCPU is countingCPU without LogProbsInto.
type chunkedCPU struct {
	*countingCPU
	noLogProbsInto
}

// TestLogProbsIntoTrainHead: both LM heads on a backend with LogProbsInto — the two-pass head
// (ForwardBackward), and the one-pass head (ForwardBackwardTokens), which keeps the logits where
// they fit the logit budget (they do here) — give the same loss, log-probs, entropies and
// gradients, bit for bit, as on the same backend without it (LogProbs chunk by chunk), on every
// golden config with chunks of 1 and 5 rows and all rows, kept logits or recomputed, two
// temperatures; and they bring the log-probs to the host in one Download per micro-batch, with
// no LogProbs call (the fallback: one LogProbs per chunk).
func TestLogProbsIntoTrainHead(t *testing.T) {
	if _, ok := engine.Backend(cpu.New()).(engine.LogProbsIntoBackend); !ok {
		t.Fatal("the CPU backend has no LogProbsInto")
	}
	if _, ok := engine.Backend(&chunkedCPU{countingCPU: &countingCPU{Backend: cpu.New()}}).(engine.LogProbsIntoBackend); ok {
		t.Fatal("chunkedCPU has LogProbsInto")
	}
	for _, name := range goldenNames(t) {
		g := loadGolden(t, name)
		for _, tc := range []struct {
			rows int
			temp float32
		}{{1, 1}, {5, 0.7}, {0, 1}} {
			for _, head := range []string{"two-pass", "one-pass"} {
				t.Run(fmt.Sprintf("%s/%s/rows=%d/temp=%g", name, head, tc.rows, tc.temp), func(t *testing.T) {
					r := rand.New(rand.NewPCG(7, 8))
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
					newB, oldB := headPaths(t, g, opts, func(tr *engine.Trainer) (*engine.StepStats, error) {
						if head == "one-pass" {
							return tr.ForwardBackwardTokens(context.Background(), batch, loss)
						}
						return tr.ForwardBackward(context.Background(), batch, loss.LossFunc())
					})
					if newB.logProbs != 0 || newB.into != chunks || newB.downloads != 1 {
						t.Errorf("with LogProbsInto: %d LogProbs, %d LogProbsInto, %d Downloads for %d chunks; want 0, %d, 1",
							newB.logProbs, newB.into, newB.downloads, chunks, chunks)
					}
					if oldB.logProbs != chunks || oldB.downloads != 0 {
						t.Errorf("without LogProbsInto: %d LogProbs, %d Downloads for %d chunks; want %d, 0", oldB.logProbs, oldB.downloads, chunks, chunks)
					}
				})
			}
		}
	}
}

// headPaths runs pass (a training forward-backward) twice on a trainer with opts over g's
// model on the CPU backend with LogProbsInto and on one without it (LogProbs chunk by chunk),
// checks that the second call's loss, log-probs, entropies and every gradient agree bit for bit,
// and returns the two backends' counts of that call.
func headPaths(t *testing.T, g *golden, opts engine.TrainOptions, pass func(*engine.Trainer) (*engine.StepStats, error)) (into, chunked countingCPU) {
	t.Helper()
	intoB, chunkedB := &countingCPU{Backend: cpu.New()}, &chunkedCPU{countingCPU: &countingCPU{Backend: cpu.New()}}
	var stats []*engine.StepStats
	var trainers []*engine.Trainer
	for _, b := range []engine.TrainBackend{intoB, chunkedB} {
		counts := map[engine.TrainBackend]*countingCPU{intoB: intoB, chunkedB: chunkedB.countingCPU}[b]
		m, err := engine.NewModel(g.cfg, b, g.weights, engine.F32)
		if err != nil {
			t.Fatal(err)
		}
		tr, err := engine.NewTrainer(m, opts)
		if err != nil {
			t.Fatal(err)
		}
		// The second micro-batch is counted (the first also reads the RoPE table back once,
		// for the backward's negated sines).
		var st *engine.StepStats
		for range 2 {
			counts.reset()
			if st, err = pass(tr); err != nil {
				t.Fatal(err)
			}
		}
		stats, trainers = append(stats, st), append(trainers, tr)
	}
	into, chunked = *intoB, *chunkedB.countingCPU // the counts of the second call, before Grad downloads
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
	return into, chunked
}

// equalRows says whether a and b hold the same values, bit for bit (NaN never equals).
func equalRows(a, b [][]float64) bool {
	return slices.EqualFunc(a, b, func(x, y []float64) bool { return slices.Equal(x, y) })
}

// TestLogProbsIntoScore: Score on a backend with LogProbsInto gives the same log-probs and
// entropies, bit for bit, as without it, over three logits chunks (a vocabulary of 70000 makes
// Score's chunk 239 rows) and with a request that scores nothing; it downloads once and calls
// LogProbs never (the fallback: once per chunk).
func TestLogProbsIntoScore(t *testing.T) {
	cfg := &engine.Config{ModelType: "qwen2", VocabSize: 70000, HiddenSize: 16, NumHiddenLayers: 1,
		NumAttentionHeads: 2, NumKeyValueHeads: 1, HeadDim: 8, IntermediateSize: 32, RMSNormEps: 1e-6,
		RopeTheta: 10000, MaxPositionEmbeddings: 512, TieWordEmbeddings: true}
	w := engine.RandomWeights(cfg, 3, 0.5)
	r := rand.New(rand.NewPCG(1, 2))
	reqs := trainBatch(r, cfg.VocabSize, 300, 250, 40, 2)
	reqs[0].Start, reqs[1].Start, reqs[3].Start = 10, 1, 2 // the last scores nothing
	scored := 0
	for _, q := range reqs {
		scored += len(q.Tokens) - q.Start
	}
	chunk := (64 << 20) / (4 * cfg.VocabSize)
	chunks := (scored + chunk - 1) / chunk
	if chunks < 3 {
		t.Fatalf("%d scored rows make %d chunks of %d; want several", scored, chunks, chunk)
	}
	const temp = 0.8
	newB := &countingCPU{Backend: cpu.New()}
	oldB := &chunkedCPU{countingCPU: &countingCPU{Backend: cpu.New()}}
	var res [][]engine.ScoreResult
	newB.reset()
	oldB.reset()
	for _, b := range []engine.Backend{newB, oldB} {
		m, err := engine.NewModel(cfg, b, w, engine.F32)
		if err != nil {
			t.Fatal(err)
		}
		out, err := m.Score(context.Background(), reqs, temp)
		if err != nil {
			t.Fatal(err)
		}
		res = append(res, out)
		if b == newB {
			if newB.logProbs != 0 || newB.into != chunks || newB.downloads != 1 {
				t.Errorf("with LogProbsInto: %d LogProbs, %d LogProbsInto, %d Downloads for %d chunks; want 0, %d, 1",
					newB.logProbs, newB.into, newB.downloads, chunks, chunks)
			}
		} else if oldB.logProbs != chunks || oldB.downloads != 0 {
			t.Errorf("without LogProbsInto: %d LogProbs, %d Downloads for %d chunks; want %d, 0", oldB.logProbs, oldB.downloads, chunks, chunks)
		}
	}
	for i, q := range reqs {
		got, want := res[0][i], res[1][i]
		if n := len(q.Tokens) - q.Start; len(got.LogProbs) != n || len(got.Entropy) != n {
			t.Fatalf("request %d: %d log-probs, %d entropies; want %d", i, len(got.LogProbs), len(got.Entropy), n)
		}
		if !slices.Equal(got.LogProbs, want.LogProbs) || !slices.Equal(got.Entropy, want.Entropy) {
			t.Errorf("request %d: log-probs or entropies differ from the chunk-by-chunk path's", i)
		}
	}
}
