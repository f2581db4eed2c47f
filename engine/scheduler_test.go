package engine

import (
	"context"
	"errors"
	"slices"
	"sync"
	"testing"
	"time"
)

// collect reads a job's events into a Result.
func collect(t *testing.T, j *Job, n int) (Result, error) {
	t.Helper()
	res := Result{Samples: make([]Sample, n)}
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

func schedRequests() []Request {
	return []Request{
		{Prompt: []int32{1, 2, 3}, Params: SamplingParams{N: 3, Temperature: 1.2, TopP: 0.95, TopK: 50, MaxNewTokens: 300, Seed: 7}},
		{Prompt: []int32{9, 8, 7, 6, 5}, Params: SamplingParams{N: 2, Temperature: 0.7, MaxNewTokens: 12, Seed: 1}},
		{Prompt: []int32{4}, Params: SamplingParams{N: 1, MaxNewTokens: 16}},
		{Prompt: []int32{5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5}, Params: SamplingParams{N: 4, Temperature: 1, MaxNewTokens: 8, Seed: 3}},
	}
}

// TestSchedulerMatchesGenerate: requests submitted while a long one runs join its batch (the
// scheduler takes fewer forward passes than the requests need one after another) and stream
// exactly the tokens and log-probs the Generator gives each one alone.
func TestSchedulerMatchesGenerate(t *testing.T) {
	g := loadGolden(t, "qwen2")
	m := g.model(t, F32)
	reqs := schedRequests()
	gen := newGen(t, m, GeneratorOptions{})
	want := make([]Result, len(reqs))
	alone := uint64(0) // forward passes one after another: one per token of the longest sample
	for i, r := range reqs {
		res, err := gen.Generate(context.Background(), []Request{r})
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
	s, err := NewScheduler(m, 1, SchedulerOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var wg sync.WaitGroup
	got := make([]Result, len(reqs))
	for i, r := range reqs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if i > 0 { // arrive while the first one decodes
				for s.Stats().Running == 0 {
					time.Sleep(100 * time.Microsecond)
				}
				time.Sleep(time.Duration(i) * time.Millisecond)
			}
			j, err := s.Submit(context.Background(), r)
			if err != nil {
				t.Error(err)
				return
			}
			if got[i], err = collect(t, j, max(1, r.Params.N)); err != nil {
				t.Error(err)
			}
		}()
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
	if st.Steps >= alone {
		t.Errorf("%d forward passes for requests needing %d one after another: no batching", st.Steps, alone)
	}
	t.Logf("%d forward passes (one after another: %d)", st.Steps, alone)
}

// TestSchedulerCancelAndLimits: a cancelled request ends with its context's error and frees
// its KV blocks; the queue bound and bad requests are refused at Submit.
func TestSchedulerCancelAndLimits(t *testing.T) {
	g := loadGolden(t, "qwen2")
	m := g.model(t, F32)
	s, err := NewScheduler(m, 1, SchedulerOptions{MaxQueued: 1, Generator: GeneratorOptions{MaxSeqs: 2}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx, cancel := context.WithCancel(context.Background())
	long := Request{Prompt: []int32{1, 2}, Params: SamplingParams{N: 2, Temperature: 1, MaxNewTokens: 60, Seed: 1}}
	j, err := s.Submit(ctx, long)
	if err != nil {
		t.Fatal(err)
	}
	<-j.Events // it runs
	// It holds both sequences: the next request waits in the generator's queue, and the one
	// after that finds the queue full.
	waiting, err := s.Submit(context.Background(), Request{Prompt: []int32{3}, Params: SamplingParams{MaxNewTokens: 2}})
	if err != nil {
		t.Fatal(err)
	}
	for s.Stats().Queued == 0 {
		time.Sleep(time.Millisecond)
	}
	deadline := time.Now().Add(time.Second)
	for {
		_, err = s.Submit(context.Background(), Request{Prompt: []int32{3}, Params: SamplingParams{MaxNewTokens: 2}})
		if errors.Is(err, ErrQueueFull) || time.Now().After(deadline) {
			break
		}
	}
	if !errors.Is(err, ErrQueueFull) {
		t.Errorf("third request: %v, want ErrQueueFull", err)
	}
	cancel()
	if _, err := collect(t, j, 2); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled request ended with %v", err)
	}
	if _, err := collect(t, waiting, 1); err != nil {
		t.Errorf("the waiting request: %v", err)
	}
	if st := s.Stats(); st.KVBlocksUsed != 0 {
		t.Errorf("KV blocks still used after cancel: %+v", st)
	}
	if _, err := s.Submit(context.Background(), Request{Prompt: []int32{1, 1 << 20}, Params: SamplingParams{MaxNewTokens: 2}}); err == nil {
		t.Error("token id out of range accepted")
	}
}

// TestSchedulerSwap: a request admitted before a weight swap finishes on the old weights; one
// submitted after runs on the new weights, as a Generator over them gives it.
func TestSchedulerSwap(t *testing.T) {
	g := loadGolden(t, "qwen2")
	m := g.model(t, F32)
	m2, err := NewModel(m.Config, m.Backend, RandomWeights(m.Config, 42, 0.2), F32)
	if err != nil {
		t.Fatal(err)
	}
	r := Request{Prompt: []int32{1, 2, 3}, Params: SamplingParams{N: 2, Temperature: 1, MaxNewTokens: 30, Seed: 5}}
	want := func(m *Model) Result {
		res, err := newGen(t, m, GeneratorOptions{}).Generate(context.Background(), []Request{r})
		if err != nil {
			t.Fatal(err)
		}
		return res[0]
	}
	old, neu := want(m), want(m2)
	s, err := NewScheduler(m, 1, SchedulerOptions{})
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
