package engine

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
)

// Scheduler serves generation requests that arrive at any time: a goroutine runs the
// Generator's steps, and each step admits what was submitted since the last one, so new
// requests join the running batch between decode steps (continuous batching). Tokens are
// streamed to each request as they are sampled. Results are the Generator's: sample j of a
// request draws from its own stream seeded by (Seed, j), whatever else runs with it.
//
// Weights change with SwapModel: requests already admitted finish on the model they started
// with; requests submitted meanwhile wait and run on the new one.
type Scheduler struct {
	mu      sync.Mutex
	wake    *sync.Cond
	g       *Generator
	opts    SchedulerOptions
	version uint64
	queued  []*Job // submitted, not yet handed to the generator
	jobs    map[*genRequest]*Job
	swap    *pendingSwap
	scores  []*scoreTask // Score calls waiting for the loop
	closed  bool
	done    chan struct{}
	stats   SchedulerStats
	// preemptions counts the preemptions of generators replaced by a weight swap.
	preemptions uint64

	// betweenSteps, when set (by tests), runs after each step with the step count, while the
	// lock is released: a test holds the loop there to submit or cancel at a known step.
	betweenSteps func(step uint64)
}

// SchedulerOptions size a Scheduler.
type SchedulerOptions struct {
	Generator GeneratorOptions
	// MaxQueued bounds the requests waiting for admission (submitted or in the generator's
	// queue); Submit returns ErrQueueFull beyond it. Default 256.
	MaxQueued int
}

// ErrQueueFull is returned by Submit when MaxQueued requests already wait.
var ErrQueueFull = errors.New("engine: request queue full")

// ErrClosed is returned by Submit after Close.
var ErrClosed = errors.New("engine: scheduler closed")

// Event is one step of a request's progress: a token of one sample, or the end of the request.
type Event struct {
	Sample  int     // which of the request's N samples
	Token   int32   // the sampled token
	LogProb float32 // its log-prob under the distribution it was drawn from
	// TopIDs and TopLogProbs are, with SamplingParams.TopLogProbs k > 0, the k most likely
	// tokens of that distribution and their log-probs (as in Sample).
	TopIDs      []int32
	TopLogProbs []float32
	Finish      FinishReason // set on the sample's last token
	// Done is set on the request's last event, with Err when it failed (cancelled, model error).
	Done bool
	Err  error
}

// Job is a submitted request.
type Job struct {
	// Events delivers the request's tokens in order, then a final event with Done, and is
	// then closed. A slow reader never holds up the batch: the scheduler queues events for
	// it as they come (memory grows with the tokens sampled, not with the request's worst
	// case). A reader must read until Done or cancel the request's context: once the context
	// is done and the reader falls behind, Events may close without the final event.
	Events <-chan Event
	// Version is the weight version the request runs on.
	Version uint64

	events  chan Event
	req     Request
	ctx     context.Context
	gr      *genRequest
	emitted []int // tokens sent per sample

	mu     sync.Mutex
	outbox []Event       // events posted by the scheduler, not yet forwarded to Events
	ready  chan struct{} // signals a non-empty outbox
}

// eventBuffer is the capacity of a Job's Events channel.
const eventBuffer = 64

// post queues an event for the job's reader; it never blocks.
func (j *Job) post(ev Event) {
	j.mu.Lock()
	j.outbox = append(j.outbox, ev)
	j.mu.Unlock()
	select {
	case j.ready <- struct{}{}:
	default:
	}
}

// forward moves posted events to Events until the final one, or until the context is done
// while the reader does not take them.
func (j *Job) forward() {
	defer close(j.events)
	var batch []Event
	for {
		<-j.ready
		j.mu.Lock()
		batch, j.outbox = j.outbox, batch[:0]
		j.mu.Unlock()
		for _, ev := range batch {
			select {
			case j.events <- ev:
			default: // the buffer is full: wait for the reader, unless it has cancelled
				select {
				case j.events <- ev:
				case <-j.ctx.Done():
					return
				}
			}
			if ev.Done {
				return
			}
		}
	}
}

// SchedulerStats are a Scheduler's counters and levels, for metrics.
type SchedulerStats struct {
	Queued          int    // requests waiting for admission
	Running         int    // samples being decoded
	KVBlocksUsed    int    // KV-cache blocks in use
	KVBlocksTotal   int    // KV-cache capacity in blocks
	TokensGenerated uint64 // sampled tokens so far
	Preempted       int    // samples preempted (KV blocks freed), waiting to be recomputed
	Preemptions     uint64 // samples preempted so far
	Steps           uint64 // forward passes so far
	Version         uint64 // weight version
}

type pendingSwap struct {
	m       *Model
	version uint64
	done    chan error
}

// NewScheduler starts a scheduler generating with m; version numbers its weights.
func NewScheduler(m *Model, version uint64, opts SchedulerOptions) (*Scheduler, error) {
	if opts.MaxQueued == 0 {
		opts.MaxQueued = 256
	}
	g, err := NewGenerator(m, opts.Generator)
	if err != nil {
		return nil, err
	}
	s := &Scheduler{g: g, opts: opts, version: version, jobs: map[*genRequest]*Job{}, done: make(chan struct{})}
	s.wake = sync.NewCond(&s.mu)
	go s.loop()
	return s, nil
}

// Model is the model new requests run on.
func (s *Scheduler) Model() *Model {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.swap != nil {
		return s.swap.m
	}
	return s.g.model
}

// KVChoice says what the KV cache of the generator was given and why.
func (s *Scheduler) KVChoice() KVChoice {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.g.choice
}

// Stats returns the current counters and levels.
func (s *Scheduler) Stats() SchedulerStats {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.stats
	st.Queued = len(s.queued) + len(s.g.waiting)
	st.Running = len(s.g.running)
	st.Preempted = len(s.g.preempted)
	st.Preemptions = s.preemptions + s.g.preemptions
	st.KVBlocksUsed = s.g.cache.Used()
	st.KVBlocksTotal = s.g.cache.Capacity()
	st.Version = s.version
	return st
}

// Submit validates r and queues it. The request is cancelled when ctx is done (its KV blocks
// are freed at the next step). A request that can never run (bad parameters, larger than the
// KV budget) is refused here with an error saying why.
func (s *Scheduler) Submit(ctx context.Context, r Request) (*Job, error) {
	r.Params.StopTokens = slices.Clone(r.Params.StopTokens)
	r.Prompt = slices.Clone(r.Prompt)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, ErrClosed
	}
	g := s.g
	if s.swap != nil { // validate against the model the request will run on
		g = &Generator{model: s.swap.m, cache: s.g.cache, opts: s.g.opts}
	}
	if _, err := g.validate(0, &r); err != nil {
		return nil, err
	}
	if len(s.queued)+len(s.g.waiting) >= s.opts.MaxQueued {
		return nil, ErrQueueFull
	}
	ev := make(chan Event, eventBuffer)
	j := &Job{Events: ev, events: ev, req: r, ctx: ctx, emitted: make([]int, r.Params.N), ready: make(chan struct{}, 1)}
	j.gr = &genRequest{req: r}
	go j.forward()
	s.queued = append(s.queued, j)
	s.wake.Signal()
	return j, nil
}

// SwapModel makes m (same config) the model of new requests, as weight version version. It
// returns once the requests admitted before it have finished and m is in use.
func (s *Scheduler) SwapModel(m *Model, version uint64) error {
	done := make(chan error, 1)
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return ErrClosed
	}
	if s.swap != nil {
		s.mu.Unlock()
		return errors.New("engine: a weight swap is already in progress")
	}
	s.handOver() // what was submitted before the swap runs on the old weights
	s.swap = &pendingSwap{m: m, version: version, done: done}
	s.wake.Signal()
	s.mu.Unlock()
	return <-done
}

// Close fails what is queued or running and stops the scheduler.
func (s *Scheduler) Close() {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	s.closed = true
	s.wake.Signal()
	s.mu.Unlock()
	<-s.done
}

// loop runs steps while there is work.
func (s *Scheduler) loop() {
	defer close(s.done)
	s.mu.Lock()
	defer s.mu.Unlock()
	for {
		for !s.closed && len(s.queued) == 0 && s.g.idle() && s.swap == nil && len(s.scores) == 0 {
			s.wake.Wait()
		}
		if s.closed {
			s.failAll(ErrClosed)
			s.g.Close()
			if s.swap != nil {
				s.swap.done <- ErrClosed
			}
			for _, t := range s.scores {
				t.done <- scoreAnswer{err: ErrClosed}
			}
			return
		}
		s.runScores()
		s.dropCancelled()
		if s.swap != nil && s.g.idle() {
			s.applySwap()
			continue
		}
		if s.swap == nil { // during a swap, new requests wait for the new model
			s.handOver()
		}
		if s.g.idle() {
			continue
		}
		err := s.g.step()
		s.stats.Steps++
		if err != nil {
			s.failAll(fmt.Errorf("engine: generation step: %w", err))
			s.g.abort()
			continue
		}
		s.emit()
		// Let submitters and readers in between steps.
		hook, step := s.betweenSteps, s.stats.Steps
		s.mu.Unlock()
		if hook != nil {
			hook(step)
		}
		s.mu.Lock()
	}
}

type scoreTask struct {
	ctx         context.Context
	reqs        []ScoreRequest
	temperature float32
	run         func(m *Model) error // instead of Score (TopLogProbs)
	done        chan scoreAnswer     // buffered
}

type scoreAnswer struct {
	res     []ScoreResult
	version uint64
	err     error
}

// Score is Model.Score run by the scheduler between two generation steps, on the weights that
// new requests get now, so that it never races the generation (a GPU backend is driven from
// the scheduler's goroutine only). It also returns the weight version that computed it.
func (s *Scheduler) Score(ctx context.Context, reqs []ScoreRequest, temperature float32) ([]ScoreResult, uint64, error) {
	return s.queueScore(ctx, &scoreTask{ctx: ctx, reqs: reqs, temperature: temperature, done: make(chan scoreAnswer, 1)})
}

// queueScore hands t to the loop and waits for its answer.
func (s *Scheduler) queueScore(ctx context.Context, t *scoreTask) ([]ScoreResult, uint64, error) {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil, 0, ErrClosed
	}
	s.scores = append(s.scores, t)
	s.wake.Signal()
	s.mu.Unlock()
	select {
	case a := <-t.done:
		return a.res, a.version, a.err
	case <-ctx.Done():
		return nil, 0, ctx.Err()
	}
}

// TopRequest asks for the most likely tokens at positions Start.. of Tokens: position t's row
// is the distribution of the token there given Tokens[:t], under Row's temperature, top-k and
// top-p, the distribution SampleLogits draws from (Temperature 0: the plain softmax, as
// greedy tokens report). Row.U is ignored.
type TopRequest struct {
	Tokens []int32
	Start  int
	Row    SampleRow
}

// TopResult holds, for each scored position, the K most likely token ids (most likely first,
// ties to the lower id) and their log-probs; a token that Row's top-k or top-p excludes has
// -Inf, as the sampler never draws it.
type TopResult struct {
	IDs      [][]int32   // [len(Tokens)-Start][K]
	LogProbs [][]float32 // [len(Tokens)-Start][K]
}

// TopLogProbs computes the k (1 to MaxTopLogProbs) most likely tokens at each requested
// position (OpenAI's top_logprobs) in one batched forward pass over a scratch KV cache, run
// like Score between two generation steps on the weights new requests get now; it also
// returns their version. Only the requested rows' logits are computed, a bounded chunk at a
// time. (Generation gives the same lists as it samples: SamplingParams.TopLogProbs.)
func (s *Scheduler) TopLogProbs(ctx context.Context, reqs []TopRequest, k int) ([]TopResult, uint64, error) {
	var out []TopResult
	run := func(m *Model) (err error) { out, err = m.topLogProbs(ctx, reqs, k); return err }
	_, v, err := s.queueScore(ctx, &scoreTask{ctx: ctx, run: run, done: make(chan scoreAnswer, 1)})
	return out, v, err
}

func (m *Model) topLogProbs(ctx context.Context, reqs []TopRequest, k int) ([]TopResult, error) {
	c := m.Config
	V := c.VocabSize
	if k < 1 || k > MaxTopLogProbs {
		return nil, fmt.Errorf("top log-probs: k must be in [1,%d], got %d", MaxTopLogProbs, k)
	}
	k = min(k, V)
	blocks := 1
	for i, r := range reqs {
		if r.Start < 1 || r.Start > len(r.Tokens) {
			return nil, fmt.Errorf("top log-probs request %d: start %d outside [1,%d]", i, r.Start, len(r.Tokens))
		}
		blocks += (len(r.Tokens) + DefaultBlockSize - 1) / DefaultBlockSize
	}
	cache, err := NewKVCache(m, int64(blocks)*kvBlockBytes(c, F32))
	if err != nil {
		return nil, err
	}
	defer cache.Free()
	steps, out := make([]step, len(reqs)), make([]TopResult, len(reqs))
	var rows, owner []int32
	off := int32(0)
	for i, r := range reqs {
		steps[i] = step{seq: cache.NewSeq(), tokens: r.Tokens}
		for t := r.Start; t < len(r.Tokens); t++ {
			rows, owner = append(rows, off+int32(t-1)), append(owner, int32(i))
		}
		off += int32(len(r.Tokens))
	}
	chunk := max(1, min(256, (64<<20)/(4*V))) // <= 64 MiB of logits at a time (on the host where the backend does not rank them)
	var buf []float32
	err = m.forward(steps, rows, chunk, func(first int, logits *Tensor) error {
		R := logits.Rows()
		sr := make([]SampleRow, R)
		for i := range sr {
			sr[i] = reqs[owner[first+i]].Row
		}
		ids, lps, err := topLogProbs(m.Backend, logits, seqRange(0, R), sr, k, &buf)
		if err != nil {
			return err
		}
		for i := range R {
			o := &out[owner[first+i]]
			o.IDs, o.LogProbs = append(o.IDs, ids[i*k:(i+1)*k:(i+1)*k]), append(o.LogProbs, lps[i*k:(i+1)*k:(i+1)*k])
		}
		return ctx.Err()
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// runScores answers the waiting Score calls (the lock is held). While a swap is pending the
// new weights are not in use yet, so scores wait for it.
func (s *Scheduler) runScores() {
	if s.swap != nil {
		return
	}
	for _, t := range s.scores {
		if t.ctx.Err() != nil {
			t.done <- scoreAnswer{err: t.ctx.Err()}
			continue
		}
		if t.run != nil {
			t.done <- scoreAnswer{version: s.version, err: t.run(s.g.model)}
			continue
		}
		res, err := s.g.model.Score(t.ctx, t.reqs, t.temperature)
		t.done <- scoreAnswer{res: res, version: s.version, err: err}
	}
	s.scores = s.scores[:0]
}

// handOver gives the submitted requests to the generator, on the current weights.
func (s *Scheduler) handOver() {
	for _, j := range s.queued {
		s.g.enqueue(j.gr)
		s.jobs[j.gr] = j
		j.Version = s.version
	}
	s.queued = s.queued[:0]
}

// applySwap replaces the generator once nothing runs on the old model.
func (s *Scheduler) applySwap() {
	sw := s.swap
	g, err := NewGenerator(sw.m, s.opts.Generator)
	if err == nil {
		s.preemptions += s.g.preemptions
		s.g.Close()
		s.g, s.version = g, sw.version
	}
	s.swap = nil
	sw.done <- err
}

// emit sends each request the tokens sampled since the last step.
func (s *Scheduler) emit() {
	for gr, j := range s.jobs {
		for i := range gr.result.Samples {
			smp := &gr.result.Samples[i]
			for j.emitted[i] < len(smp.Tokens) {
				k := j.emitted[i]
				ev := Event{Sample: i, Token: smp.Tokens[k], LogProb: smp.LogProbs[k]}
				if smp.TopIDs != nil {
					ev.TopIDs, ev.TopLogProbs = smp.TopIDs[k], smp.TopLogProbs[k]
				}
				if k == len(smp.Tokens)-1 {
					ev.Finish = smp.Finish
				}
				j.post(ev)
				j.emitted[i]++
				s.stats.TokensGenerated++
			}
		}
		if gr.done {
			j.post(Event{Done: true})
			delete(s.jobs, gr)
		}
	}
}

// dropCancelled removes requests whose context is done, freeing their KV blocks.
func (s *Scheduler) dropCancelled() {
	s.queued = slices.DeleteFunc(s.queued, func(j *Job) bool {
		if err := j.ctx.Err(); err != nil {
			j.post(Event{Done: true, Err: err})
			return true
		}
		return false
	})
	for gr, j := range s.jobs {
		err := j.ctx.Err()
		if err == nil {
			continue
		}
		if i := slices.Index(s.g.waiting, gr); i >= 0 {
			s.g.waiting = slices.Delete(s.g.waiting, i, i+1)
		} else {
			s.g.running = slices.DeleteFunc(s.g.running, func(smp *genSample) bool {
				if smp.r != gr {
					return false
				}
				if smp.seq != nil {
					smp.seq.Release()
				}
				return true
			})
			s.g.preempted = slices.DeleteFunc(s.g.preempted, func(smp *genSample) bool { return smp.r == gr })
		}
		j.post(Event{Done: true, Err: err})
		delete(s.jobs, gr)
	}
}

// failAll ends every request with err.
func (s *Scheduler) failAll(err error) {
	for _, j := range s.queued {
		j.post(Event{Done: true, Err: err})
	}
	s.queued = nil
	for gr, j := range s.jobs {
		j.post(Event{Done: true, Err: err})
		delete(s.jobs, gr)
	}
}
