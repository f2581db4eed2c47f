package engine_test

import (
	"context"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	"github.com/prolong-rl/prolong/engine"
	"github.com/prolong-rl/prolong/engine/cpu"
)

// hiddenTop is the CPU backend seen only through engine.Backend: no TopLogProbsBackend (nor any
// other optional interface), so the engine ranks top log-probs on the host.
type hiddenTop struct{ engine.Backend }

// TestTopLogProbsPaths: the listed rows' top log-probs are engine.TopLogProbsRow's on each row,
// bit for bit, whichever path computes them: the CPU backend's op (rows ranked in place),
// TopLogProbsOnHost over a subset of the rows (gathered, downloaded) and over all of them in
// order (downloaded as they are).
func TestTopLogProbsPaths(t *testing.T) {
	const R, V, k = 9, 211, 7
	rng := rand.New(rand.NewPCG(3, 4))
	host := make([]float32, R*V)
	for i := range host {
		host[i] = float32(math.Round(rng.NormFloat64()*6) / 2) // ties
	}
	b := cpu.New()
	logits, err := b.Upload(engine.F32, host, false, R, V)
	if err != nil {
		t.Fatal(err)
	}
	kinds := []engine.SampleRow{{}, {Temperature: 0.8}, {Temperature: 1, TopK: 4}, {Temperature: 1.2, TopP: 0.5},
		{Temperature: 0.05, TopK: 30, TopP: 0.9}}
	all := make([]int32, R)
	for i := range all {
		all[i] = int32(i)
	}
	for _, tc := range []struct {
		name string
		rows []int32
		run  func(rows []int32, sr []engine.SampleRow) ([]int32, []float32, error)
	}{
		{"cpu op, subset", []int32{8, 2, 2, 5}, func(rows []int32, sr []engine.SampleRow) ([]int32, []float32, error) {
			return b.TopLogProbs(logits, rows, sr, k)
		}},
		{"on host, subset", []int32{8, 2, 2, 5}, func(rows []int32, sr []engine.SampleRow) ([]int32, []float32, error) {
			return engine.TopLogProbsOnHost(hiddenTop{b}, logits, rows, sr, k, new([]float32))
		}},
		{"on host, all rows", all, func(rows []int32, sr []engine.SampleRow) ([]int32, []float32, error) {
			return engine.TopLogProbsOnHost(hiddenTop{b}, logits, rows, sr, k, new([]float32))
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sr := make([]engine.SampleRow, len(tc.rows))
			for i := range sr {
				sr[i] = kinds[i%len(kinds)]
			}
			ids, lps, err := tc.run(tc.rows, sr)
			if err != nil {
				t.Fatal(err)
			}
			if len(ids) != len(tc.rows)*k || len(lps) != len(ids) {
				t.Fatalf("%d ids and %d log-probs for %d rows of %d", len(ids), len(lps), len(tc.rows), k)
			}
			for i, r := range tc.rows {
				wid, wlp := engine.TopLogProbsRow(host[int(r)*V:(int(r)+1)*V], sr[i], k)
				gid, glp := ids[i*k:(i+1)*k], lps[i*k:(i+1)*k]
				if !slices.Equal(gid, wid) || !slices.EqualFunc(glp, wlp, func(a, b float32) bool { return math.Float32bits(a) == math.Float32bits(b) }) {
					t.Errorf("row %d (%+v): %v %v, want %v %v", r, sr[i], gid, glp, wid, wlp)
				}
			}
		})
	}
}

// TestTopLogProbsWithoutOp: generation with top log-probs (several k's in one batch, one
// request without) gives the same tokens, log-probs and top lists on a backend without
// TopLogProbsBackend (ranked on the host by the engine) as on the CPU backend (its op).
func TestTopLogProbsWithoutOp(t *testing.T) {
	c := defaultModelConfig()
	w := engine.RandomWeights(c, 1, 0.02)
	reqs := []engine.Request{
		{Prompt: []int32{3, 1, 4}, Params: engine.SamplingParams{MaxNewTokens: 6, TopLogProbs: 3}},
		{Prompt: []int32{2, 7}, Params: engine.SamplingParams{N: 2, Temperature: 0.9, TopK: 8, MaxNewTokens: 6, Seed: 1, TopLogProbs: engine.MaxTopLogProbs}},
		{Prompt: []int32{5}, Params: engine.SamplingParams{Temperature: 1.1, TopP: 0.7, MaxNewTokens: 6, Seed: 2}},
	}
	gen := func(b engine.Backend) []engine.Result {
		m, err := engine.NewModel(c, b, w, engine.F32)
		if err != nil {
			t.Fatal(err)
		}
		g, err := engine.NewGenerator(m, engine.GeneratorOptions{})
		if err != nil {
			t.Fatal(err)
		}
		defer g.Close()
		res, err := g.Generate(context.Background(), reqs)
		if err != nil {
			t.Fatal(err)
		}
		return res
	}
	want, got := gen(cpu.New()), gen(hiddenTop{cpu.New()})
	for i := range want {
		for j := range want[i].Samples {
			if err := sameSample(got[i].Samples[j], want[i].Samples[j]); err != nil {
				t.Errorf("request %d sample %d: %v", i, j, err)
			}
		}
	}
	if n := len(want[1].Samples[0].TopIDs[0]); n != engine.MaxTopLogProbs {
		t.Errorf("top list of %d, want %d", n, engine.MaxTopLogProbs)
	}
}

// TestCheckTopLogProbs: the CPU backend's TopLogProbs refuses, naming the argument, what
// engine.CheckTopLogProbs refuses: parameters that do not match the rows, a k outside [1, V]
// (or the backend's own bound), a row outside the logits.
func TestCheckTopLogProbs(t *testing.T) {
	b := cpu.New()
	logits := b.Alloc(4, 9)
	one := []engine.SampleRow{{Temperature: 1}}
	for _, c := range []struct {
		rows    []int32
		sr      []engine.SampleRow
		k, maxK int
		err     string
		viaCPU  bool
	}{
		{[]int32{0, 1}, one, 3, 0, "1 rows of parameters for 2 rows", true},
		{[]int32{0}, one, 0, 0, "k = 0 outside [1, 9]", true},
		{[]int32{0}, one, 10, 0, "k = 10 outside [1, 9]", true},
		{[]int32{4}, one, 3, 0, "row 4 (entry 0) outside the 4 rows of logits", true},
		{[]int32{-1}, one, 3, 0, "row -1 (entry 0) outside the 4 rows of logits", true},
		{[]int32{0}, one, 5, 4, "k = 5 outside [1, 4]", false},
		{[]int32{3, 0}, append(one, one...), 9, 0, "", true},
	} {
		err := engine.CheckTopLogProbs(4, 9, c.rows, c.sr, c.k, c.maxK)
		if c.viaCPU {
			_, _, err = b.TopLogProbs(logits, c.rows, c.sr, c.k)
		}
		if c.err == "" && err != nil || c.err != "" && (err == nil || !strings.Contains(err.Error(), c.err)) {
			t.Errorf("rows %v, k %d (bound %d): error %v, want %q", c.rows, c.k, c.maxK, err, c.err)
		}
	}
}
