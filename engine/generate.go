package engine

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"slices"
)

// SamplingParams control generation for one prompt.
type SamplingParams struct {
	// N is the number of samples drawn for the prompt (default 1). They share the prompt's KV
	// cache: the prompt is prefilled once and forked.
	N int
	// Temperature divides the logits; 0 is greedy decoding.
	Temperature float32
	// TopK keeps the K most likely tokens (0: all).
	TopK int
	// TopP keeps the smallest most likely set with mass >= TopP (0 or 1: all).
	TopP float32
	// MaxNewTokens bounds the response length (required, >= 1).
	MaxNewTokens int
	// StopTokens end a sample; the stop token is included in its output, as RL needs its
	// log-prob.
	StopTokens []int32
	// Seed makes sampling reproducible: sample j of a request draws from its own stream
	// seeded by (Seed, j), whatever else runs in the batch.
	Seed uint64
	// TopLogProbs (0 to MaxTopLogProbs) asks for the TopLogProbs most likely tokens of each
	// step's sampling distribution (as Scheduler.TopLogProbs computes them) with every
	// token; 0 costs nothing.
	TopLogProbs int
}

// MaxTopLogProbs bounds SamplingParams.TopLogProbs (OpenAI's and vLLM's default limit).
const MaxTopLogProbs = 20

// Request is one prompt to complete.
type Request struct {
	Prompt []int32
	Params SamplingParams
}

// FinishReason says why a sample ended.
type FinishReason string

// Finish reasons, as in the OpenAI API.
const (
	FinishStop   FinishReason = "stop"   // a stop token was sampled
	FinishLength FinishReason = "length" // MaxNewTokens reached
)

// Sample is one generated response.
type Sample struct {
	Tokens   []int32   // sampled token ids
	LogProbs []float32 // log-prob of each token under the distribution it was drawn from
	// TopIDs and TopLogProbs hold, with SamplingParams.TopLogProbs k > 0, the k most likely
	// tokens of each token's sampling distribution (most likely first, ties to the lower id)
	// and their log-probs there, -Inf for a token top-k or top-p cuts (see TopResult).
	TopIDs      [][]int32   // [len(Tokens)][k]
	TopLogProbs [][]float32 // [len(Tokens)][k]
	Finish      FinishReason
}

// Result holds the N samples of one request.
type Result struct {
	Samples []Sample
}

// GeneratorOptions size the scheduler.
type GeneratorOptions struct {
	// KVBudgetBytes bounds the KV cache; 0: DefaultKVBudget of the model and MaxSeqs (room for
	// MaxSeqs sequences of max_position_embeddings positions, at most a share of the device's
	// free memory or of the machine's RAM). The cache's storage grows on demand up to it.
	KVBudgetBytes int64
	// KVDType is the element type of the cached keys and values (default KVAuto: bf16 where the
	// model's linear weights are bf16 and the backend stores bf16, else fp32).
	KVDType KVDType
	// MaxBatchTokens bounds the prompt tokens prefilled in one step (default 4096); a longer
	// prompt is still admitted alone.
	MaxBatchTokens int
	// MaxSeqs bounds the sequences decoded together (default 256).
	MaxSeqs int
}

// Generator schedules generation with continuous batching: every step is one forward pass over
// a ragged batch mixing the prompts of newly admitted requests (prefill) and one token of each
// running sample (decode). Requests are admitted, in arrival order, when the KV blocks they need
// now fit (their prompt, and a block for each sample's first token); when the running samples'
// next tokens do not fit, the youngest samples are preempted as in vLLM: their blocks are freed,
// and they are recomputed later (prompt and tokens so far, in one prefill) before any new
// request is admitted. Every row of a forward pass is computed as it would be in any other
// batch, so a preempted sample gives exactly the tokens and log-probs it would have given
// without preemption.
type Generator struct {
	model  *Model
	cache  *KVCache
	opts   GeneratorOptions
	choice KVChoice

	waiting     []*genRequest // submitted, not admitted, in arrival order
	preempted   []*genSample  // preempted samples, oldest first; they resume before waiting requests
	running     []*genSample
	arrivals    uint64 // requests numbered so far (genRequest.arrival)
	preemptions uint64

	topBuf []float32 // [rows, V] logits read back for top log-probs

	// decodeBufs holds the buffers of fixed-buffer decode steps by bucket (decode.go), until
	// Generate returns or Close (without padDecode, one batch size's at a time).
	decodeBufs map[int]*decodeBufs
	// padDecode pads decode batches to their bucket (the backend is a DecodePadder that asks).
	padDecode bool
	// slowDecode sends decode steps through Model.forward like prefill steps (tests compare).
	slowDecode bool
	fixedSteps uint64 // decode steps run on the fixed buffers
}

// KVChoice is what a Generator's KV cache was given, for a program to log.
type KVChoice struct {
	DType  DType  // element type of keys and values
	Bytes  int64  // budget
	Blocks int    // budget in blocks of DefaultBlockSize positions
	Why    string // where the budget came from
}

func (k KVChoice) String() string {
	dt := "fp32"
	if k.DType == BF16 {
		dt = "bf16"
	}
	return fmt.Sprintf("KV cache: %s, budget %.1f MiB (%d blocks of %d positions): %s",
		dt, float64(k.Bytes)/(1<<20), k.Blocks, DefaultBlockSize, k.Why)
}

type genRequest struct {
	req     Request
	arrival uint64 // order of submission: the youngest samples are preempted first
	seq     *Seq
	result  Result
	pending int // samples still running
	done    bool
}

type genSample struct {
	r      *genRequest
	idx    int
	seq    *Seq // nil while preempted
	rng    *rand.Rand
	next   int32 // sampled token not yet in the cache
	active bool
}

// younger reports whether sample a is younger than b: submitted later, or a later sample of the
// same request.
func (a *genSample) younger(b *genSample) bool {
	return a.r.arrival > b.r.arrival || (a.r.arrival == b.r.arrival && a.idx > b.idx)
}

// NewGenerator creates a generator with its own KV cache.
func NewGenerator(m *Model, opts GeneratorOptions) (*Generator, error) {
	if opts.MaxBatchTokens == 0 {
		opts.MaxBatchTokens = 4096
	}
	if opts.MaxSeqs == 0 {
		opts.MaxSeqs = 256
	}
	dt, err := opts.KVDType.Resolve(m)
	if err != nil {
		return nil, err
	}
	why := "set by the caller (--kv-memory)"
	if opts.KVBudgetBytes == 0 {
		opts.KVBudgetBytes, why = DefaultKVBudget(m, dt, opts.MaxSeqs)
	}
	cache, err := NewKVCacheOf(m, dt, opts.KVBudgetBytes)
	if err != nil {
		return nil, err
	}
	g := &Generator{model: m, cache: cache, opts: opts}
	if p, ok := m.Backend.(DecodePadder); ok {
		g.padDecode = p.PadDecode()
	}
	g.choice = KVChoice{DType: dt, Bytes: opts.KVBudgetBytes, Blocks: cache.Capacity(), Why: why}
	slog.Debug(g.choice.String())
	return g, nil
}

// KVChoice says what the generator's KV cache was given and why.
func (g *Generator) KVChoice() KVChoice { return g.choice }

// Preemptions is the number of samples preempted so far (their KV blocks freed, to be
// recomputed) because the running samples' next tokens did not fit in the KV budget.
func (g *Generator) Preemptions() uint64 { return g.preemptions }

// idle reports whether nothing waits, runs or waits to be recomputed.
func (g *Generator) idle() bool {
	return len(g.waiting) == 0 && len(g.running) == 0 && len(g.preempted) == 0
}

// enqueue adds r to the requests waiting for admission, numbering its arrival.
func (g *Generator) enqueue(r *genRequest) {
	r.arrival = g.arrivals
	g.arrivals++
	g.waiting = append(g.waiting, r)
}

// Close frees the KV cache and the decode buffers.
func (g *Generator) Close() {
	g.releaseDecodeBufs()
	g.cache.Free()
}

// Cache returns the generator's KV cache (for metrics and tests).
func (g *Generator) Cache() *KVCache { return g.cache }

// validate checks a request and returns the KV blocks one of its samples needs at most.
func (g *Generator) validate(i int, r *Request) (int, error) {
	c := g.model.Config
	p := &r.Params
	switch {
	case len(r.Prompt) == 0:
		return 0, fmt.Errorf("request %d: empty prompt", i)
	case p.N < 0:
		return 0, fmt.Errorf("request %d: n must be >= 1, got %d", i, p.N)
	case p.MaxNewTokens < 1:
		return 0, fmt.Errorf("request %d: max_new_tokens must be >= 1, got %d", i, p.MaxNewTokens)
	case p.Temperature < 0:
		return 0, fmt.Errorf("request %d: temperature must be >= 0, got %g", i, p.Temperature)
	case p.TopK < 0:
		return 0, fmt.Errorf("request %d: top_k must be >= 0, got %d", i, p.TopK)
	case p.TopP < 0 || p.TopP > 1:
		return 0, fmt.Errorf("request %d: top_p must be in [0,1], got %g", i, p.TopP)
	case p.TopLogProbs < 0 || p.TopLogProbs > MaxTopLogProbs:
		return 0, fmt.Errorf("request %d: top_logprobs must be in [0,%d], got %d", i, MaxTopLogProbs, p.TopLogProbs)
	case len(r.Prompt)+p.MaxNewTokens > c.MaxPositionEmbeddings:
		return 0, fmt.Errorf("request %d: prompt (%d) + max_new_tokens (%d) exceed max_position_embeddings (%d)",
			i, len(r.Prompt), p.MaxNewTokens, c.MaxPositionEmbeddings)
	}
	for _, id := range append(slices.Clone(r.Prompt), p.StopTokens...) {
		if id < 0 || int(id) >= c.VocabSize {
			return 0, fmt.Errorf("request %d: token id %d outside vocabulary [0,%d)", i, id, c.VocabSize)
		}
	}
	if p.N == 0 {
		p.N = 1
	}
	if p.N > g.opts.MaxSeqs {
		return 0, fmt.Errorf("request %d: n=%d exceeds the %d sequences decoded together", i, p.N, g.opts.MaxSeqs)
	}
	// A sample alone in the cache (the others preempted) must fit: its prompt and response.
	blocks := g.cache.BlocksFor(len(r.Prompt) + p.MaxNewTokens)
	if blocks > g.cache.Capacity() {
		mib := func(b int) float64 { return float64(int64(b)*g.cache.blockBytes) / (1 << 20) }
		return 0, fmt.Errorf("request %d: one sample needs up to %.1f MiB of KV cache (%d blocks), more than the budget of %.1f MiB: %w",
			i, mib(blocks), blocks, mib(g.cache.Capacity()), ErrKVBudget)
	}
	return blocks, nil
}

// Generate completes every request and returns their results in order. Requests that do not
// fit in the KV budget together wait for earlier ones to finish (or preempt later ones).
func (g *Generator) Generate(ctx context.Context, reqs []Request) ([]Result, error) {
	all := make([]*genRequest, len(reqs))
	for i := range reqs {
		r := reqs[i]
		r.Params.StopTokens = slices.Clone(r.Params.StopTokens)
		if _, err := g.validate(i, &r); err != nil {
			return nil, err
		}
		all[i] = &genRequest{req: r}
	}
	for _, r := range all {
		g.enqueue(r)
	}
	defer g.releaseDecodeBufs()
	defer g.abort()
	for !allDone(all) {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		if err := g.step(); err != nil {
			return nil, err
		}
	}
	out := make([]Result, len(all))
	for i, r := range all {
		out[i] = r.result
	}
	return out, nil
}

func allDone(rs []*genRequest) bool {
	for _, r := range rs {
		if !r.done {
			return false
		}
	}
	return true
}

// abort drops everything queued or running (after an error or cancellation).
func (g *Generator) abort() {
	for _, s := range g.running {
		if s.seq != nil {
			s.seq.Release()
		}
	}
	for _, r := range g.waiting {
		if r.seq != nil {
			r.seq.Release()
		}
	}
	g.running, g.waiting, g.preempted = nil, nil, nil
}

// decodeBlocks is the number of KV blocks the running samples' next tokens take: a fresh block
// where the last is full, a copy where it is shared with a sample or prompt that keeps it.
func (g *Generator) decodeBlocks() int {
	seqs := make([]*Seq, 0, len(g.running))
	for _, s := range g.running {
		if s.active {
			seqs = append(seqs, s.seq)
		}
	}
	return g.cache.appendBlocks(seqs)
}

// preemptYoungest frees the KV blocks of the youngest running sample and queues it to be
// recomputed, oldest first among the preempted.
func (g *Generator) preemptYoungest() {
	y := -1
	for i, s := range g.running {
		if s.active && (y < 0 || s.younger(g.running[y])) {
			y = i
		}
	}
	s := g.running[y]
	g.running = slices.Delete(g.running, y, y+1)
	s.seq.Release()
	s.seq, s.active = nil, false
	i, _ := slices.BinarySearchFunc(g.preempted, s, func(a, b *genSample) int {
		if a.younger(b) {
			return 1
		}
		return -1
	})
	g.preempted = slices.Insert(g.preempted, i, s)
	g.preemptions++
}

// step runs one forward pass: admit what fits, prefill it, decode one token of every running
// sample, sample the next tokens.
func (g *Generator) step() error {
	var steps []step
	var rows []int32
	type target struct {
		r *genRequest // prefill: the request whose N samples draw from this row
		s *genSample  // decode: the sample
	}
	var targets []target
	var prefill int
	// The running samples' next tokens first: preempt the youngest until they fit.
	need := g.decodeBlocks()
	for need > g.cache.Capacity()-g.cache.Used() {
		g.preemptYoungest()
		need = g.decodeBlocks()
	}
	free := g.cache.Capacity() - g.cache.Used() - need
	running := 0
	for _, s := range g.running {
		if s.active {
			running++
		}
	}
	// Then what fits now: preempted samples (prompt and tokens so far recomputed), oldest first,
	// then waiting requests in arrival order (their prompt, and a block for each sample's first
	// token unless nothing else runs).
	var resumed []*genSample
	for len(g.preempted) > 0 {
		s := g.preempted[0]
		out := s.r.result.Samples[s.idx].Tokens
		n := len(s.r.req.Prompt) + len(out)
		blocks := g.cache.BlocksFor(n)
		if blocks > free || running+1 > g.opts.MaxSeqs || (prefill > 0 && prefill+n > g.opts.MaxBatchTokens) {
			break
		}
		g.preempted = g.preempted[1:]
		free -= blocks
		running++
		prefill += n
		s.seq = g.cache.NewSeq()
		steps = append(steps, step{seq: s.seq, tokens: slices.Concat(s.r.req.Prompt, out)})
		targets = append(targets, target{s: s})
		resumed = append(resumed, s)
	}
	for len(g.preempted) == 0 && len(g.waiting) > 0 {
		r := g.waiting[0]
		n := r.req.Params.N
		blocks := g.cache.BlocksFor(len(r.req.Prompt))
		if running > 0 {
			blocks += n
		}
		fits := blocks <= free && running+n <= g.opts.MaxSeqs &&
			(prefill == 0 || prefill+len(r.req.Prompt) <= g.opts.MaxBatchTokens)
		if !fits {
			break
		}
		g.waiting = g.waiting[1:]
		free -= blocks
		running += n
		prefill += len(r.req.Prompt)
		r.seq = g.cache.NewSeq()
		r.pending = n
		steps = append(steps, step{seq: r.seq, tokens: r.req.Prompt})
		targets = append(targets, target{r: r})
	}
	for _, s := range g.running {
		if s.active {
			steps = append(steps, step{seq: s.seq, tokens: []int32{s.next}})
			targets = append(targets, target{s: s})
		}
	}
	for _, s := range resumed { // decoded from the next step on
		s.active = true
		g.running = append(g.running, s)
	}
	if len(steps) == 0 {
		return errors.New("generate: nothing to run (scheduler stalled)")
	}
	// One logits row per sample: a prefill row is repeated N times.
	var samples []*genSample
	off := int32(0)
	for i, st := range steps {
		off += int32(len(st.tokens))
		t := targets[i]
		if t.r != nil {
			for j := 0; j < t.r.req.Params.N; j++ {
				seed := t.r.req.Params.Seed
				samples = append(samples, &genSample{r: t.r, idx: j, rng: rand.New(rand.NewPCG(seed, uint64(j)))})
				rows = append(rows, off-1)
			}
			t.r.result.Samples = make([]Sample, t.r.req.Params.N)
		} else {
			samples = append(samples, t.s)
			rows = append(rows, off-1)
		}
	}
	ids := make([]int32, len(rows))
	lps := make([]float32, len(rows))
	tops := make([]topList, len(rows))
	if prefill == 0 && !g.slowDecode { // every row decodes one running sample's token
		if err := g.decodeStep(samples, ids, lps, tops); err != nil {
			return err
		}
		g.record(samples, ids, lps, tops)
		return nil
	}
	err := g.model.forward(steps, rows, 256, func(first int, logits *Tensor) error {
		sr := make([]SampleRow, logits.Rows())
		for i := range sr {
			p := samples[first+i].r.req.Params
			sr[i] = SampleRow{Temperature: p.Temperature, TopK: p.TopK, TopP: p.TopP}
			if p.Temperature > 0 {
				sr[i].U = samples[first+i].rng.Float64()
			}
		}
		id, lp, err := g.model.Backend.Sample(logits, sr)
		if err != nil {
			return err
		}
		copy(ids[first:], id)
		copy(lps[first:], lp)
		return g.topLists(logits, samples[first:first+len(sr)], sr, tops[first:])
	})
	if err != nil {
		return err
	}
	g.record(samples, ids, lps, tops)
	return nil
}

// record forks the prefilled prompts among samples and appends each sample's new token (ids,
// lps, tops), ending those that sampled a stop token or reached their length.
func (g *Generator) record(samples []*genSample, ids []int32, lps []float32, tops []topList) {
	// Fork the prefilled prompts: sample 0 keeps the prompt's sequence.
	for _, s := range samples {
		if s.seq == nil {
			if s.idx == 0 {
				s.seq = s.r.seq
			} else {
				s.seq = s.r.seq.Fork()
			}
			s.active = true
			g.running = append(g.running, s)
		}
	}
	for i, s := range samples {
		out := &s.r.result.Samples[s.idx]
		out.Tokens = append(out.Tokens, ids[i])
		out.LogProbs = append(out.LogProbs, lps[i])
		if tops[i].ids != nil {
			out.TopIDs, out.TopLogProbs = append(out.TopIDs, tops[i].ids), append(out.TopLogProbs, tops[i].lps)
		}
		s.next = ids[i]
		p := s.r.req.Params
		switch {
		case slices.Contains(p.StopTokens, ids[i]):
			out.Finish = FinishStop
		case len(out.Tokens) >= p.MaxNewTokens:
			out.Finish = FinishLength
		default:
			continue
		}
		s.active = false
		s.seq.Release()
		s.seq = nil
		s.r.pending--
		if s.r.pending == 0 {
			s.r.done = true
		}
	}
	g.running = slices.DeleteFunc(g.running, func(s *genSample) bool { return !s.active })
}

// topList is one step's most likely tokens of a sample's distribution.
type topList struct {
	ids []int32
	lps []float32
}

// topLists computes, for the rows of logits [R, V] whose sample asks for top log-probs, the
// most likely tokens under that row's sampling distribution sr, into tops: on a
// TopLogProbsBackend only the lists come back to the host, elsewhere those rows' logits do.
// When no row asks, nothing is computed. The rows are ranked once with the largest k asked;
// each sample keeps the first k of its row's list, which is the list of its own k (a prefix
// of the same ranking, the same log-probs).
func (g *Generator) topLists(logits *Tensor, samples []*genSample, sr []SampleRow, tops []topList) error {
	var ask []int32
	var askRows []SampleRow
	k := 0
	for i, s := range samples {
		if n := s.r.req.Params.TopLogProbs; n > 0 {
			ask, askRows = append(ask, int32(i)), append(askRows, sr[i])
			k = max(k, n)
		}
	}
	if len(ask) == 0 {
		return nil
	}
	k = min(k, logits.Cols())
	ids, lps, err := topLogProbs(g.model.Backend, logits, ask, askRows, k, &g.topBuf)
	if err != nil {
		return err
	}
	for a, i := range ask {
		n := min(samples[i].r.req.Params.TopLogProbs, k)
		tops[i].ids = ids[a*k : a*k+n : a*k+n]
		tops[i].lps = lps[a*k : a*k+n : a*k+n]
	}
	return nil
}
