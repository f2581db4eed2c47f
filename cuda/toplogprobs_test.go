package cuda

import (
	"context"
	"strings"
	"testing"

	"github.com/prolong-rl/prolong/engine"
)

// topLogProbsRequests are 5 samples of which 3 ask for top log-probs (k 5, and 20 twice), none
// stopping early: every one of their 9 steps ranks 3 rows (20 at a time), on a vocabulary of
// 131.
func topLogProbsRequests() []engine.Request {
	return []engine.Request{
		{Prompt: []int32{3, 1, 4, 1, 5}, Params: engine.SamplingParams{MaxNewTokens: 9, TopLogProbs: 5}},
		{Prompt: []int32{2, 7, 1, 8}, Params: engine.SamplingParams{N: 2, Temperature: 1, MaxNewTokens: 9, Seed: 7, TopLogProbs: 20}},
		{Prompt: []int32{5, 5, 5}, Params: engine.SamplingParams{N: 2, Temperature: 0.7, TopK: 20, MaxNewTokens: 9, Seed: 3}},
	}
}

// TestTopLogProbsDownloads: generation with top log-probs on the fake driver. Without
// Options.DeviceTopLogProbs each step downloads the asking rows' logits (3 × 131 fp32) and no
// top_logprobs kernel runs; with it, each step launches top_logprobs once over the 3 asking
// rows with k = 20 (the largest asked) and downloads 3 × 20 ids and log-probs in one copy, and
// nothing else changes: the same calls but for that. The samples get their own k's lists.
func TestTopLogProbsDownloads(t *testing.T) {
	const steps, asking, V, k = 9, 3, 131, 20
	type run struct {
		dtoh, copies, launches int
		tops                   []int // each sample's top-list length at its last token
	}
	gen := func(o Options) run {
		g := newFakeGPU(t, 90, 1<<30)
		b, err := Open(o)
		if err != nil {
			t.Fatal(err)
		}
		m, err := engine.NewModel(graphTestConfig, b, engine.RandomWeights(graphTestConfig, 1, 0.25), engine.F32)
		if err != nil {
			t.Fatal(err)
		}
		gn, err := engine.NewGenerator(m, engine.GeneratorOptions{MaxSeqs: 8})
		if err != nil {
			t.Fatal(err)
		}
		defer gn.Close()
		d0, c0, l0 := g.dtoh, g.count("memcpyDtoHAsync"), len(g.launches)
		res, err := gn.Generate(context.Background(), topLogProbsRequests())
		if err != nil {
			t.Fatal(err)
		}
		r := run{dtoh: int(g.dtoh - d0), copies: g.count("memcpyDtoHAsync") - c0}
		for _, l := range g.launches[l0:] {
			if l.name != "top_logprobs" {
				continue
			}
			r.launches++
			if l.grid[0] != asking || l.block != 1024 || l.args[7] != k || l.args[8] != V {
				t.Errorf("top_logprobs launch: grid %d, block %d, k %d, V %d; want %d rows, 1024 threads, k %d, V %d",
					l.grid[0], l.block, l.args[7], l.args[8], asking, k, V)
			}
		}
		for _, rr := range res {
			for _, s := range rr.Samples {
				if len(s.Tokens) != steps {
					t.Fatalf("a sample has %d tokens, want %d", len(s.Tokens), steps)
				}
				n := 0
				if len(s.TopIDs) > 0 {
					n = len(s.TopIDs[steps-1])
				}
				r.tops = append(r.tops, n)
			}
		}
		return r
	}
	host, dev := gen(Options{}), gen(Options{DeviceTopLogProbs: true})
	if host.launches != 0 || dev.launches != steps {
		t.Errorf("top_logprobs launches: %d without the option, %d with it; want 0 and %d", host.launches, dev.launches, steps)
	}
	if host.copies != dev.copies {
		t.Errorf("%d device-to-host copies without the option, %d with it; want the same", host.copies, dev.copies)
	}
	if d, want := host.dtoh-dev.dtoh, steps*asking*(4*V-8*k); d != want {
		t.Errorf("the option downloads %d bytes less (%d without, %d with), want %d: %d steps × %d rows × (%d logits - %d ids and log-probs)",
			d, host.dtoh, dev.dtoh, want, steps, asking, V, k)
	}
	for i, w := range []int{5, 20, 20, 0, 0} {
		if host.tops[i] != w || dev.tops[i] != w {
			t.Errorf("sample %d: top lists of %d (host) and %d (device) entries, want %d", i, host.tops[i], dev.tops[i], w)
		}
	}
	t.Logf("downloaded %d bytes with the rows ranked on the host, %d on the device", host.dtoh, dev.dtoh)
}

// TestTopLogProbsArgs: TopLogProbs refuses, naming the argument, a k outside [1, min(V, 32)], a
// row outside the logits and parameters that do not match the rows.
func TestTopLogProbsArgs(t *testing.T) {
	newFakeGPU(t, 90, 1<<30)
	b, err := Open(Options{DeviceTopLogProbs: true})
	if err != nil {
		t.Fatal(err)
	}
	logits := b.Alloc(4, 131)
	defer b.Free(logits)
	one := []engine.SampleRow{{Temperature: 1}}
	for _, c := range []struct {
		rows []int32
		sr   []engine.SampleRow
		k    int
		err  string
	}{
		{[]int32{0}, one, 0, "k = 0 outside [1, 32]"},
		{[]int32{0}, one, 33, "k = 33 outside [1, 32]"},
		{[]int32{4}, one, 5, "row 4 (entry 0) outside the 4 rows of logits"},
		{[]int32{0, 1}, one, 5, "1 rows of parameters for 2 rows"},
		{[]int32{3, 0}, append(one, one...), 20, ""},
	} {
		_, _, err := b.TopLogProbs(logits, c.rows, c.sr, c.k)
		if c.err == "" && err != nil || c.err != "" && (err == nil || !strings.Contains(err.Error(), c.err)) {
			t.Errorf("rows %v, k %d: error %v, want %q", c.rows, c.k, err, c.err)
		}
	}
	small := b.Alloc(2, 7)
	defer b.Free(small)
	if _, _, err := b.TopLogProbs(small, []int32{1}, one, 8); err == nil || !strings.Contains(err.Error(), "k = 8 outside [1, 7]") {
		t.Errorf("k above the vocabulary: %v", err)
	}
}
