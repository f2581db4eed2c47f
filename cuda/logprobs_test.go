package cuda

import (
	"context"
	"strings"
	"testing"

	"github.com/prolong-rl/prolong/engine"
)

// hostWaits counts the calls since index from of g.calls that make the host wait for the
// stream: stream synchronisations and device-to-host copies (into pageable memory, a copy
// returns only when it is done).
func (g *fakeGPU) hostWaits(from int) (syncs, copies int) {
	for _, c := range g.calls[from:] {
		switch c {
		case "streamSynchronize":
			syncs++
		case "memcpyDtoHAsync":
			copies++
		}
	}
	return syncs, copies
}

// logprobLaunches returns the logprobs launches since index from of g.launches.
func (g *fakeGPU) logprobLaunches(from int) []fakeLaunch {
	var ls []fakeLaunch
	for _, l := range g.launches[from:] {
		if l.name == "logprobs" {
			ls = append(ls, l)
		}
	}
	return ls
}

// TestLogProbsHostWaits (fake GPU): the host waits for the GPU once per pass, not twice per
// logits chunk. A training micro-batch of 23 scored tokens with 5 logits rows at a time (5
// chunks): ForwardBackward (every log-prob at once) keeps the chunks' log-probs on the device
// and downloads them in one copy, one synchronisation (before: 2 per chunk, 10); so does
// ForwardBackwardTokens where the micro-batch's logits fit the logit budget (it keeps them and
// runs the chunks' backward after one download); where they do not, it needs each chunk's
// log-probs on the host before that chunk's backward, one copy and synchronisation per chunk
// (before: 2 per chunk). Score over four chunks (a
// vocabulary of 70000 makes its chunk 239 rows) downloads once (before: 6). Each logprobs
// launch of the one-download paths writes row r0 of the chunk at column r0 of the pass's [2, R]
// buffer, log-probs in its first row and entropies in its second.
func TestLogProbsHostWaits(t *testing.T) {
	g := newFakeGPU(t, 90, 4<<30)
	b, err := Open(Options{})
	if err != nil {
		t.Fatal(err)
	}
	cfg := *graphTestConfig
	m, err := engine.NewModel(&cfg, b, engine.RandomWeights(&cfg, 1, 0.25), engine.F32)
	if err != nil {
		t.Fatal(err)
	}
	tr, err := engine.NewTrainer(m, engine.TrainOptions{MaxLogitRows: 5})
	if err != nil {
		t.Fatal(err)
	}
	batch := []engine.ScoreRequest{
		{Tokens: []int32{3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8, 9, 7}, Start: 4},
		{Tokens: []int32{2, 7, 1, 8, 2, 8, 1, 8, 2, 8, 4, 5, 9, 0, 4}, Start: 2},
	}
	const R, chunk = 23, 5
	loss := engine.TokenLoss{Entropy: true, Term: func(_, _ int, logp, ent float64) (float64, float64, float64) {
		return -logp + 0.01*ent, -1, 0.01
	}}
	// checkChunks checks that the logprobs launches since l0 write the chunks of a pass of n
	// rows into one [2, n] buffer.
	checkChunks := func(what string, l0, n, chunk int) {
		t.Helper()
		ls := g.logprobLaunches(l0)
		if want := (n + chunk - 1) / chunk; len(ls) != want {
			t.Fatalf("%s: %d logprobs launches, want %d", what, len(ls), want)
		}
		base := ls[0].args[0]
		for i, l := range ls {
			rows := min(chunk, n-i*chunk)
			lp, ent := base+uint64(4*i*chunk), base+uint64(4*(n+i*chunk))
			if l.grid[0] != rows || l.args[0] != lp || l.args[1] != ent {
				t.Errorf("%s: chunk %d: grid %d, lp %#x, ent %#x; want %d rows at %#x, %#x", what, i, l.grid[0], l.args[0], l.args[1], rows, lp, ent)
			}
		}
	}
	// The same trainer on a backend whose logit budget holds 5 rows of logits: the chunks are
	// 5 rows as before, but the micro-batch's logits no longer fit it, so the one-pass head
	// cannot keep them and waits for each chunk's log-probs.
	bs, err := Open(Options{LogitBudget: 4 * int64(cfg.VocabSize) * chunk})
	if err != nil {
		t.Fatal(err)
	}
	ms, err := engine.NewModel(&cfg, bs, engine.RandomWeights(&cfg, 1, 0.25), engine.F32)
	if err != nil {
		t.Fatal(err)
	}
	trs, err := engine.NewTrainer(ms, engine.TrainOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, pass := range []string{"ForwardBackward", "ForwardBackwardTokens", "ForwardBackwardTokens, logits over the budget"} {
		// The first call also reads the RoPE table back once (the backward's negated sines).
		for call := range 2 {
			c0, l0 := len(g.calls), len(g.launches)
			var err error
			switch pass {
			case "ForwardBackward":
				_, err = tr.ForwardBackward(context.Background(), batch, loss.LossFunc())
			case "ForwardBackwardTokens":
				_, err = tr.ForwardBackwardTokens(context.Background(), batch, loss)
			default:
				_, err = trs.ForwardBackwardTokens(context.Background(), batch, loss)
			}
			if err != nil {
				t.Fatal(err)
			}
			if call == 0 {
				continue
			}
			syncs, copies := g.hostWaits(c0)
			want := 1
			if pass == "ForwardBackwardTokens, logits over the budget" {
				want = (R + chunk - 1) / chunk
			} else {
				checkChunks(pass, l0, R, chunk)
			}
			t.Logf("%s of %d scored tokens in chunks of %d: %d synchronisations, %d device-to-host copies", pass, R, chunk, syncs, copies)
			if syncs != want || copies != want {
				t.Errorf("%s: %d stream synchronisations and %d device-to-host copies; want %d of each", pass, syncs, copies, want)
			}
		}
	}

	big := cfg
	big.VocabSize = 70000
	sm, err := engine.NewModel(&big, b, engine.RandomWeights(&big, 2, 0.25), engine.F32)
	if err != nil {
		t.Fatal(err)
	}
	var reqs []engine.ScoreRequest
	n := 0
	for i := range 3 {
		toks := make([]int32, 250)
		for j := range toks {
			toks[j] = int32((i*7919 + j*104729) % big.VocabSize)
		}
		reqs = append(reqs, engine.ScoreRequest{Tokens: toks, Start: 1})
		n += 249
	}
	c0, l0 := len(g.calls), len(g.launches)
	out, err := sm.Score(context.Background(), reqs, 1)
	if err != nil {
		t.Fatal(err)
	}
	if len(out) != 3 || len(out[2].LogProbs) != 249 {
		t.Fatalf("Score returned %d results", len(out))
	}
	scoreChunk := (64 << 20) / (4 * big.VocabSize)
	checkChunks("Score", l0, n, scoreChunk)
	syncs, copies := g.hostWaits(c0)
	t.Logf("Score of %d tokens in chunks of %d: %d synchronisations, %d device-to-host copies", n, scoreChunk, syncs, copies)
	if syncs != 1 || copies != 1 {
		t.Errorf("Score: %d stream synchronisations and %d device-to-host copies; want 1 of each", syncs, copies)
	}
}

// TestLogProbsIntoErrors (fake GPU): LogProbsInto checks its arguments like LogProbs and reports
// a wrong one as the error of the next Download, naming the op; the backend stays usable.
func TestLogProbsIntoErrors(t *testing.T) {
	newFakeGPU(t, 90, 1<<30)
	b, err := Open(Options{})
	if err != nil {
		t.Fatal(err)
	}
	logits, out := b.Alloc(3, 7), b.Alloc(2, 5)
	for _, tc := range []struct {
		row0    int
		targets []int32
		temp    float32
		want    string
	}{
		{0, []int32{0, 7, 1}, 1, "target 7 of row 1 outside the vocabulary of 7"},
		{0, []int32{0, 1}, 1, "2 targets for 3 rows"},
		{3, []int32{0, 1, 2}, 1, "rows 3..6 do not fit out [2 5]"},
		{0, []int32{0, 1, 2}, 0, "temperature must be positive"},
	} {
		b.LogProbsInto(out, tc.row0, logits, tc.targets, tc.temp)
		err := b.Download(out, make([]float32, 10))
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "LogProbsInto") {
			t.Errorf("row0 %d, targets %v, temperature %g: error %v; want one naming LogProbsInto and %q", tc.row0, tc.targets, tc.temp, err, tc.want)
		}
	}
	b.LogProbsInto(out, 2, logits, []int32{0, 1, 6}, 1)
	if err := b.Download(out, make([]float32, 10)); err != nil {
		t.Errorf("after the errors: %v", err)
	}
}
