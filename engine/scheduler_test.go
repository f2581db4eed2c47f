package engine_test

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math"
	"reflect"
	"runtime"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prolong-rl/prolong/engine"
	"github.com/prolong-rl/prolong/engine/cpu"
)

// collect reads a job's events into a Result.
func collect(t *testing.T, j *engine.Job, n int) (engine.Result, error) {
	t.Helper()
	res := engine.Result{Samples: make([]engine.Sample, n)}
	for ev := range j.Events {
		if ev.Done {
			return res, ev.Err
		}
		s := &res.Samples[ev.Sample]
		s.Tokens = append(s.Tokens, ev.Token)
		s.LogProbs = append(s.LogProbs, ev.LogProb)
		if ev.TopIDs != nil {
			s.TopIDs, s.TopLogProbs = append(s.TopIDs, ev.TopIDs), append(s.TopLogProbs, ev.TopLogProbs)
		}
		s.Finish = ev.Finish
	}
	t.Fatal("events closed without a final event")
	return res, nil
}

func schedRequests() []engine.Request {
	return []engine.Request{
		{Prompt: []int32{1, 2, 3}, Params: engine.SamplingParams{N: 3, Temperature: 1.2, TopP: 0.95, TopK: 50, MaxNewTokens: 300, Seed: 7}},
		{Prompt: []int32{9, 8, 7, 6, 5}, Params: engine.SamplingParams{N: 2, Temperature: 0.7, MaxNewTokens: 12, Seed: 1}},
		{Prompt: []int32{4}, Params: engine.SamplingParams{N: 1, MaxNewTokens: 16}},
		{Prompt: []int32{5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5}, Params: engine.SamplingParams{N: 4, Temperature: 1, MaxNewTokens: 8, Seed: 3}},
	}
}

// holdAt makes the scheduler's loop stop after the given steps: each time it reaches one, it
// sends the step on the returned channel and waits for a value on resume. Submissions made
// while it waits join the batch at the next step, whatever the machine's speed.
func holdAt(s *engine.Scheduler, steps ...uint64) (at <-chan uint64, resume chan<- struct{}) {
	atc, res := make(chan uint64), make(chan struct{})
	engine.SetBetweenSteps(s, func(step uint64) {
		if slices.Contains(steps, step) {
			atc <- step
			<-res
		}
	})
	return atc, res
}

// TestSchedulerMatchesGenerate: requests submitted while a long one runs (after its 1st, 4th
// and 9th forward pass) join its batch (the scheduler takes fewer forward passes than the
// requests need one after another) and stream exactly the tokens and log-probs the Generator
// gives each one alone.
func TestSchedulerMatchesGenerate(t *testing.T) {
	g := loadGolden(t, "qwen2")
	m := g.model(t, engine.F32)
	reqs := schedRequests()
	gen := newGen(t, m, engine.GeneratorOptions{})
	want := make([]engine.Result, len(reqs))
	alone := uint64(0) // forward passes one after another: one per token of the longest sample
	for i, r := range reqs {
		res, err := gen.Generate(context.Background(), []engine.Request{r})
		if err != nil {
			t.Fatal(err)
		}
		want[i] = res[0]
		longest := 0
		for _, smp := range res[0].Samples {
			longest = max(longest, len(smp.Tokens))
		}
		alone += uint64(longest)
	}
	if n := len(want[0].Samples[0].Tokens); n != 300 {
		t.Fatalf("the first request stops after %d tokens: it must outlast the others' arrival", n)
	}
	s, err := engine.NewScheduler(m, 1, engine.SchedulerOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	at, resume := holdAt(s, 1, 4, 9)
	var wg sync.WaitGroup
	got := make([]engine.Result, len(reqs))
	submit := func(i int) {
		j, err := s.Submit(context.Background(), reqs[i])
		if err != nil {
			t.Fatal(err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if got[i], err = collect(t, j, max(1, reqs[i].Params.N)); err != nil {
				t.Error(err)
			}
		}()
	}
	submit(0)
	for i := 1; i < len(reqs); i++ { // arrive while the first one decodes
		<-at
		submit(i)
		resume <- struct{}{}
	}
	wg.Wait()
	for i := range reqs {
		for k, w := range want[i].Samples {
			g := got[i].Samples[k]
			if !slices.Equal(g.Tokens, w.Tokens) || !slices.Equal(g.LogProbs, w.LogProbs) || g.Finish != w.Finish {
				t.Errorf("request %d sample %d: scheduler %v %v %s, generator %v %v %s", i, k, g.Tokens, g.LogProbs, g.Finish, w.Tokens, w.LogProbs, w.Finish)
			}
		}
	}
	st := s.Stats()
	if st.KVBlocksUsed != 0 || st.Running != 0 || st.TokensGenerated == 0 {
		t.Errorf("after the requests: %+v", st)
	}
	// The first request alone takes 300 passes; the others, joining it, add none.
	if st.Steps != 300 || st.Steps >= alone {
		t.Errorf("%d forward passes for requests needing %d one after another (want 300: the later ones ride in the first one's batch)", st.Steps, alone)
	}
	t.Logf("%d forward passes (one after another: %d)", st.Steps, alone)
}

// TestSchedulerCancelAndLimits: a request cancelled while it runs ends with its context's
// error and frees its KV blocks, and the request queued behind it then runs; the queue bound
// and bad requests are refused at Submit.
func TestSchedulerCancelAndLimits(t *testing.T) {
	g := loadGolden(t, "qwen2")
	m := g.model(t, engine.F32)
	s, err := engine.NewScheduler(m, 1, engine.SchedulerOptions{MaxQueued: 1, Generator: engine.GeneratorOptions{MaxSeqs: 2}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	at, resume := holdAt(s, 1)
	ctx, cancel := context.WithCancel(context.Background())
	long := engine.Request{Prompt: []int32{1, 2}, Params: engine.SamplingParams{N: 2, Temperature: 1, MaxNewTokens: 60, Seed: 1}}
	j, err := s.Submit(ctx, long)
	if err != nil {
		t.Fatal(err)
	}
	<-at // it has run one step and holds both sequences
	waiting, err := s.Submit(context.Background(), engine.Request{Prompt: []int32{3}, Params: engine.SamplingParams{MaxNewTokens: 2}})
	if err != nil {
		t.Fatal(err)
	}
	if st := s.Stats(); st.Queued != 1 || st.Running != 2 || st.KVBlocksUsed == 0 {
		t.Errorf("with one request running and one queued: %+v", st)
	}
	if _, err = s.Submit(context.Background(), engine.Request{Prompt: []int32{3}, Params: engine.SamplingParams{MaxNewTokens: 2}}); !errors.Is(err, engine.ErrQueueFull) {
		t.Errorf("third request: %v, want ErrQueueFull", err)
	}
	cancel()
	resume <- struct{}{}
	res, err := collect(t, j, 2)
	if !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled request ended with %v", err)
	}
	if n := len(res.Samples[0].Tokens); n != 1 {
		t.Errorf("cancelled after one step, the request streamed %d tokens", n)
	}
	if r, err := collect(t, waiting, 1); err != nil || len(r.Samples[0].Tokens) != 2 {
		t.Errorf("the waiting request: %v, %v", r, err)
	}
	if st := s.Stats(); st.KVBlocksUsed != 0 || st.Queued != 0 || st.Running != 0 {
		t.Errorf("KV blocks or requests left after cancel: %+v", st)
	}
	if _, err := s.Submit(context.Background(), engine.Request{Prompt: []int32{1, 1 << 20}, Params: engine.SamplingParams{MaxNewTokens: 2}}); err == nil {
		t.Error("token id out of range accepted")
	}
}

// TestSchedulerSwap: a request admitted before a weight swap finishes on the old weights; one
// submitted after runs on the new weights, as a Generator over them gives it.
func TestSchedulerSwap(t *testing.T) {
	g := loadGolden(t, "qwen2")
	m := g.model(t, engine.F32)
	m2, err := engine.NewModel(m.Config, m.Backend, engine.RandomWeights(m.Config, 42, 0.2), engine.F32)
	if err != nil {
		t.Fatal(err)
	}
	r := engine.Request{Prompt: []int32{1, 2, 3}, Params: engine.SamplingParams{N: 2, Temperature: 1, MaxNewTokens: 30, Seed: 5}}
	want := func(m *engine.Model) engine.Result {
		res, err := newGen(t, m, engine.GeneratorOptions{}).Generate(context.Background(), []engine.Request{r})
		if err != nil {
			t.Fatal(err)
		}
		return res[0]
	}
	old, neu := want(m), want(m2)
	s, err := engine.NewScheduler(m, 1, engine.SchedulerOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	before, err := s.Submit(context.Background(), r)
	if err != nil {
		t.Fatal(err)
	}
	swapped := make(chan error)
	go func() { swapped <- s.SwapModel(m2, 2) }()
	for s.Model() != m2 {
		time.Sleep(time.Millisecond)
	}
	after, err := s.Submit(context.Background(), r)
	if err != nil {
		t.Fatal(err)
	}
	a, err := collect(t, before, 2)
	if err != nil {
		t.Fatal(err)
	}
	if err := <-swapped; err != nil {
		t.Fatal(err)
	}
	b, err := collect(t, after, 2)
	if err != nil {
		t.Fatal(err)
	}
	if before.Version != 1 || after.Version != 2 || s.Stats().Version != 2 {
		t.Errorf("versions %d, %d, %d", before.Version, after.Version, s.Stats().Version)
	}
	for k := range a.Samples {
		if !slices.Equal(a.Samples[k].Tokens, old.Samples[k].Tokens) || !slices.Equal(b.Samples[k].Tokens, neu.Samples[k].Tokens) {
			t.Fatalf("sample %d: before swap %v (want %v), after %v (want %v)", k, a.Samples[k].Tokens, old.Samples[k].Tokens, b.Samples[k].Tokens, neu.Samples[k].Tokens)
		}
	}
}

// TestSchedulerEventsMemory: Submit allocates the same whatever a request's worst case (n x
// max_new_tokens events are not reserved up front: a request of 64 x 500 would take 1.8 MB),
// and a reader that waits holds up neither the batch nor its own tokens: a request read only
// after another finished still streams all of its 400 tokens, equal to the Generator's.
func TestSchedulerEventsMemory(t *testing.T) {
	g := loadGolden(t, "qwen2")
	m := g.model(t, engine.F32)
	slow := engine.Request{Prompt: []int32{7, 3}, Params: engine.SamplingParams{N: 1, Temperature: 1, MaxNewTokens: 400, Seed: 2}}
	quick := engine.Request{Prompt: []int32{4}, Params: engine.SamplingParams{N: 2, Temperature: 1, MaxNewTokens: 20, Seed: 3}}
	want, err := newGen(t, m, engine.GeneratorOptions{}).Generate(context.Background(), []engine.Request{slow, quick})
	if err != nil {
		t.Fatal(err)
	}
	s, err := engine.NewScheduler(m, 1, engine.SchedulerOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	at, resume := holdAt(s, 1, 30)
	js, err := s.Submit(context.Background(), slow)
	if err != nil {
		t.Fatal(err)
	}
	<-at // the loop waits: nothing else allocates while Submit is measured
	allocated := func(r engine.Request) uint64 {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		var m0, m1 runtime.MemStats
		runtime.ReadMemStats(&m0)
		if _, err := s.Submit(ctx, r); err != nil {
			t.Fatal(err)
		}
		runtime.ReadMemStats(&m1)
		return m1.TotalAlloc - m0.TotalAlloc
	}
	small := allocated(engine.Request{Prompt: []int32{1}, Params: engine.SamplingParams{N: 64, MaxNewTokens: 1}})
	big := allocated(engine.Request{Prompt: []int32{1}, Params: engine.SamplingParams{N: 64, MaxNewTokens: 500}})
	if big > small+1024 || big > 16<<10 {
		t.Errorf("Submit allocates %d bytes for n=64 x 500 tokens, %d for n=64 x 1", big, small)
	}
	jq, err := s.Submit(context.Background(), quick)
	if err != nil {
		t.Fatal(err)
	}
	resume <- struct{}{}
	q, err := collect(t, jq, 2)
	if err != nil {
		t.Fatal(err)
	}
	<-at // step 30: the quick request (steps 2 to 21) is done, the slow one unread
	if st := s.Stats(); st.Running != 1 {
		t.Errorf("after the quick request, %d samples run, want the slow one's", st.Running)
	}
	resume <- struct{}{}
	sl, err := collect(t, js, 1)
	if err != nil {
		t.Fatal(err)
	}
	for i, got := range []engine.Result{sl, q} {
		for k, w := range want[i].Samples {
			if g := got.Samples[k]; !slices.Equal(g.Tokens, w.Tokens) || !slices.Equal(g.LogProbs, w.LogProbs) {
				t.Errorf("request %d sample %d: %d tokens streamed, generator %d (or other values)", i, k, len(g.Tokens), len(w.Tokens))
			}
		}
	}
	t.Logf("Submit: %d bytes (n=64 x 1), %d bytes (n=64 x 500)", small, big)
}

// refTop is the direct reference for top log-probs: the k most likely tokens of a row of
// logits [V] (ties to the lower id) and their log-probs in float64 under the distribution the
// sampler draws from: softmax(logits/T) cut to the TopK most likely, then to the smallest set
// whose mass reaches TopP, renormalised (T = 0: the plain softmax); -Inf for tokens cut.
func refTop(row []float32, r engine.SampleRow, k int) ([]int32, []float64) {
	if r.Temperature <= 0 {
		r = engine.SampleRow{Temperature: 1}
	}
	p, order := make([]float64, len(row)), make([]int32, len(row))
	m := math.Inf(-1)
	for _, l := range row {
		m = max(m, float64(l)/float64(r.Temperature))
	}
	for i, l := range row {
		p[i], order[i] = math.Exp(float64(l)/float64(r.Temperature)-m), int32(i)
	}
	sort.SliceStable(order, func(a, b int) bool { return p[order[a]] > p[order[b]] })
	kept := len(row)
	if r.TopK > 0 {
		kept = min(kept, r.TopK)
	}
	if r.TopP > 0 && r.TopP < 1 {
		var mass, cum float64
		for _, id := range order[:kept] {
			mass += p[id]
		}
		for i, id := range order[:kept] {
			if cum += p[id]; cum >= float64(r.TopP)*mass {
				kept = i + 1
				break
			}
		}
	}
	var z float64
	for _, id := range order[:kept] {
		z += p[id]
	}
	lps := make([]float64, k)
	for i, id := range order[:k] {
		lps[i] = math.Inf(-1)
		if i < kept {
			lps[i] = math.Log(p[id] / z)
		}
	}
	return order[:k], lps
}

// twinModel is the golden qwen2 model with lm_head rows 128..255 copies of rows 0..127: every
// token's logit has an exact twin, so every top list is made of ties.
func twinModel(t *testing.T, g *golden) *engine.Model {
	w := maps.Clone(g.weights)
	head := w["lm_head.weight"]
	data := slices.Clone(head.Data)
	D := head.Shape[1]
	copy(data[128*D:256*D], data[:128*D])
	w["lm_head.weight"] = engine.HostTensor{Shape: head.Shape, Data: data}
	m, err := engine.NewModel(g.cfg, cpu.New(), w, engine.F32)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// TestSamplingTopLogProbs: a request with TopLogProbs k streams, with each token, the k most
// likely tokens of the distribution it was drawn from, bit for bit those Scheduler.TopLogProbs
// computes afterwards on the same tokens, and within 1e-5 of a direct float64 softmax of the
// model's logits (ids equal, -Inf where top-k or top-p cuts), for greedy, plain, top-k, top-p
// and both, on the golden model and on one whose logits all come in exact ties. The same
// request without TopLogProbs, in one batch with it and another prompt (only the asking rows,
// not the batch's first, are read back), samples the same tokens with the same log-probs and
// carries no top lists. More than MaxTopLogProbs is refused.
func TestSamplingTopLogProbs(t *testing.T) {
	g := loadGolden(t, "qwen2")
	models := map[string]*engine.Model{"golden": g.model(t, engine.F32), "twins": twinModel(t, g)}
	prompt := []int32{1, 9, 4, 17, 3}
	bad := engine.Request{Prompt: prompt, Params: engine.SamplingParams{MaxNewTokens: 1, TopLogProbs: engine.MaxTopLogProbs + 1}}
	if _, err := newGen(t, models["golden"], engine.GeneratorOptions{}).Generate(context.Background(), []engine.Request{bad}); err == nil || !strings.Contains(err.Error(), "top_logprobs must be in [0,20], got 21") {
		t.Errorf("top_logprobs 21: %v", err)
	}
	for _, name := range []string{"golden", "twins"} {
		m := models[name]
		V := m.Config.VocabSize
		for _, p := range []engine.SamplingParams{
			{N: 2, MaxNewTokens: 12, TopLogProbs: 5},
			{N: 2, Temperature: 1, MaxNewTokens: 12, Seed: 1, TopLogProbs: 20},
			{N: 3, Temperature: 0.7, TopK: 6, MaxNewTokens: 12, Seed: 2, TopLogProbs: 10},
			{N: 2, Temperature: 1.3, TopP: 0.8, MaxNewTokens: 12, Seed: 3, TopLogProbs: 8},
			{N: 2, Temperature: 0.9, TopK: 9, TopP: 0.9, MaxNewTokens: 12, Seed: 4, TopLogProbs: 20},
		} {
			what := fmt.Sprintf("%s %+v", name, p)
			plain := p
			plain.TopLogProbs = 0
			mixed, err := newGen(t, m, engine.GeneratorOptions{}).Generate(context.Background(), []engine.Request{{Prompt: []int32{2, 8}, Params: plain}, {Prompt: prompt, Params: plain}, {Prompt: prompt, Params: p}})
			if err != nil {
				t.Fatal(err)
			}
			s, err := engine.NewScheduler(m, 1, engine.SchedulerOptions{})
			if err != nil {
				t.Fatal(err)
			}
			j, err := s.Submit(context.Background(), engine.Request{Prompt: prompt, Params: p})
			if err != nil {
				t.Fatal(err)
			}
			got, err := collect(t, j, p.N)
			if err != nil {
				t.Fatal(err)
			}
			row := engine.SampleRow{Temperature: p.Temperature, TopK: p.TopK, TopP: p.TopP}
			for k, smp := range got.Samples {
				if w := mixed[1].Samples[k]; !slices.Equal(smp.Tokens, w.Tokens) || !slices.Equal(smp.LogProbs, w.LogProbs) || w.TopIDs != nil {
					t.Fatalf("%s sample %d: with top log-probs %v %v, without %v %v (top lists %v)", what, k, smp.Tokens, smp.LogProbs, w.Tokens, w.LogProbs, w.TopIDs)
				}
				if w := mixed[2].Samples[k]; !reflect.DeepEqual(smp, w) {
					t.Fatalf("%s sample %d: the scheduler's events %+v, the generator's sample %+v", what, k, smp, w)
				}
				seq := append(slices.Clone(prompt), smp.Tokens...)
				after, _, err := s.TopLogProbs(context.Background(), []engine.TopRequest{{Tokens: seq, Start: len(prompt), Row: row}}, p.TopLogProbs)
				if err != nil {
					t.Fatal(err)
				}
				lg, err := m.Logits(context.Background(), [][]int32{seq})
				if err != nil {
					t.Fatal(err)
				}
				if len(smp.TopIDs) != len(smp.Tokens) || len(smp.TopLogProbs) != len(smp.Tokens) {
					t.Fatalf("%s sample %d: %d top lists for %d tokens", what, k, len(smp.TopIDs), len(smp.Tokens))
				}
				for i := range smp.Tokens {
					at := fmt.Sprintf("%s sample %d token %d", what, k, i)
					if !slices.Equal(smp.TopIDs[i], after[0].IDs[i]) || !slices.Equal(smp.TopLogProbs[i], after[0].LogProbs[i]) {
						t.Fatalf("%s: at sampling %v %v, Scheduler.TopLogProbs %v %v", at, smp.TopIDs[i], smp.TopLogProbs[i], after[0].IDs[i], after[0].LogProbs[i])
					}
					if top := smp.TopIDs[i]; name == "twins" && top[1] != top[0]+128 {
						t.Fatalf("%s: top ids %v do not begin with a tie", at, top)
					}
					pos := len(prompt) + i - 1
					ids, lps := refTop(lg[0][pos*V:(pos+1)*V], row, p.TopLogProbs)
					if !slices.Equal(smp.TopIDs[i], ids) {
						t.Fatalf("%s: top ids %v, softmax %v", at, smp.TopIDs[i], ids)
					}
					for r, lp := range smp.TopLogProbs[i] {
						if d := math.Abs(float64(lp) - lps[r]); !(d <= 1e-5) && !(math.IsInf(lps[r], -1) && math.IsInf(float64(lp), -1)) {
							t.Errorf("%s: rank %d (token %d) log-prob %g, softmax %g", at, r, ids[r], lp, lps[r])
						}
					}
				}
			}
			s.Close()
		}
	}
}

// TestSchedulerPreemption: in a KV pool too small for the requests' samples together, the
// scheduler preempts and recomputes samples and still streams exactly what the Generator gives
// each request alone in a large pool; a request cancelled while some of its samples wait,
// preempted, to be recomputed ends with its context's error and leaves no blocks or samples
// behind.
func TestSchedulerPreemption(t *testing.T) {
	g := loadGolden(t, "qwen2")
	m := g.model(t, engine.F32)
	reqs := schedRequests()
	gen := newGen(t, m, engine.GeneratorOptions{})
	want := make([]engine.Result, len(reqs))
	for i, r := range reqs {
		res, err := gen.Generate(context.Background(), []engine.Request{r})
		if err != nil {
			t.Fatal(err)
		}
		want[i] = res[0]
	}
	block := gen.Cache().BlockBytes()
	const blocks = 24 // request 0: 3 samples of 303 positions, 19 blocks each
	s, err := engine.NewScheduler(m, 1, engine.SchedulerOptions{Generator: engine.GeneratorOptions{KVBudgetBytes: blocks * block}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var wg sync.WaitGroup
	got := make([]engine.Result, len(reqs))
	for i, r := range reqs {
		j, err := s.Submit(context.Background(), r)
		if err != nil {
			t.Fatal(err)
		}
		wg.Go(func() {
			var err error
			if got[i], err = collect(t, j, max(1, r.Params.N)); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	for i := range reqs {
		for k, w := range want[i].Samples {
			g := got[i].Samples[k]
			if !slices.Equal(g.Tokens, w.Tokens) || !sameBits(g.LogProbs, w.LogProbs) || g.Finish != w.Finish {
				t.Errorf("request %d sample %d: preempting scheduler %v %v %s, generator %v %v %s", i, k, g.Tokens, g.LogProbs, g.Finish, w.Tokens, w.LogProbs, w.Finish)
			}
		}
	}
	st := s.Stats()
	if st.Preemptions == 0 || st.KVBlocksUsed != 0 || st.Preempted != 0 || st.KVBlocksTotal != blocks {
		t.Errorf("after the requests in %d blocks: %+v, want preemptions and nothing left", blocks, st)
	}
	t.Logf("%d preemptions, %d steps", st.Preemptions, st.Steps)

	// Cancel request 0 once one of its samples is preempted.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	engine.SetBetweenSteps(s, func(uint64) {
		if s.Stats().Preempted > 0 {
			cancel()
		}
	})
	j, err := s.Submit(ctx, reqs[0])
	if err != nil {
		t.Fatal(err)
	}
	// Once the context is done, Events may close without the final event if the reader falls
	// behind (Job.Events): on a loaded machine this reader does, so both endings are right.
	var final *engine.Event
	for ev := range j.Events {
		if ev.Done {
			final = &ev
			break
		}
	}
	if final != nil && !errors.Is(final.Err, context.Canceled) {
		t.Fatalf("request cancelled while preempted: final event's error %v", final.Err)
	}
	if final == nil && ctx.Err() == nil {
		t.Fatal("events closed without a final event while the request's context was live")
	}
	// The scheduler drops the request at its next step; the final event is posted after it, an
	// early close may come before it.
	deadline := time.Now().Add(30 * time.Second)
	for st := s.Stats(); st.KVBlocksUsed != 0 || st.Preempted != 0 || st.Running != 0; st = s.Stats() {
		if time.Now().After(deadline) {
			t.Fatalf("30 s after cancelling a preempted request: %+v", st)
		}
		time.Sleep(time.Millisecond)
	}
}
