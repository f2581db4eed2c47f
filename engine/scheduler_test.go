package engine_test

import (
	"context"
	"errors"
	"runtime"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/prolong-rl/prolong/engine"
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
