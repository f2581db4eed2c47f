package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/prolong-rl/prolong/checkpoints/tokenizer"
	"github.com/prolong-rl/prolong/engine"
)

// server is the HTTP front of an engine.Scheduler.
type server struct {
	sched     *engine.Scheduler
	dev       *engine.Device // what sched runs on; closed at shutdown
	cfg       *engine.Config
	tok       *tokenizer.Tokenizer   // nil: prompts must be token ids
	name      atomic.Pointer[string] // the served model name; follows weight updates
	fixedName bool                   // --served-model-name was given: updates keep it
	namesMu   sync.Mutex
	names     map[string]bool // every name served so far (requests may name any of them)
	lim       limits
	apiKey    string
	maxBody   int64
	maxWeight int64
	// bodyTimeout, writeTimeout and weightsRate: --body-timeout, --write-timeout and
	// --weights-min-mibps (in bytes/s); see guard.
	bodyTimeout, writeTimeout time.Duration
	weightsRate               float64
	slots                     chan struct{} // bounds the requests being served at once
	metrics                   *metrics
	draining                  atomic.Bool

	// swapMu: requests hold it shared while they submit their prompts, a weight update
	// exclusively, so that all prompts of one request run on one weight version.
	swapMu  sync.RWMutex
	version atomic.Uint64

	// loras are the LoRA adapters served by name (lora.go); schedOpts are the options of
	// their schedulers, the base's.
	loraMu    sync.Mutex
	loras     map[string]*loraAdapter
	schedOpts engine.SchedulerOptions
	// retired holds the counters (tokens, preemptions, steps) of adapters unloaded, so that
	// the totals of /metrics never go down.
	retired engine.SchedulerStats
}

// routes is the server's HTTP handler.
func (s *server) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /health", s.health)
	mux.HandleFunc("GET /v1/models", s.auth(s.models))
	mux.HandleFunc("POST /v1/completions", s.auth(s.observe("completions", s.completions)))
	mux.HandleFunc("POST /v1/chat/completions", s.auth(s.observe("chat", s.chat)))
	mux.HandleFunc("POST /v1/weights", s.weights)
	mux.HandleFunc("GET /v1/weights", s.auth(s.weightInfo))
	mux.HandleFunc("POST /v1/load_lora_adapter", s.loadAdapter)
	mux.HandleFunc("POST /v1/unload_lora_adapter", s.unloadAdapter)
	mux.Handle("GET /metrics", s.metrics.handler())
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		refuse(w, r, &apiError{Status: 404, Type: "invalid_request_error", Message: fmt.Sprintf("no route %s %s", r.Method, r.URL.Path)})
	})
	return s.guard(mux)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false) // "<answer>" as is
	enc.Encode(v)
}

func writeError(w http.ResponseWriter, e *apiError) {
	if e.Status == 429 || e.Status == 503 {
		w.Header().Set("Retry-After", "1")
	}
	writeJSON(w, e.Status, map[string]any{"error": e})
}

// refuse answers a request without reading its body: the connection closes after the answer
// rather than wait for a body that may never come.
func refuse(w http.ResponseWriter, r *http.Request, e *apiError) {
	if r.Body != nil && r.Body != http.NoBody {
		w.Header().Set("Connection", "close")
	}
	writeError(w, e)
}

// bearer checks the Authorization header against key.
func bearer(r *http.Request, key string) bool {
	got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	return ok && subtle.ConstantTimeCompare([]byte(got), []byte(key)) == 1
}

// auth requires the API key, when the server has one.
func (s *server) auth(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if s.apiKey != "" && !bearer(r, s.apiKey) {
			refuse(w, r, &apiError{Status: 401, Type: "authentication_error", Code: "invalid_api_key", Message: "missing or wrong API key (Authorization: Bearer KEY)"})
			return
		}
		h(w, r)
	}
}

// statusWriter remembers the status code for metrics.
type statusWriter struct {
	http.ResponseWriter
	code int
}

func (w *statusWriter) WriteHeader(code int) { w.code = code; w.ResponseWriter.WriteHeader(code) }
func (w *statusWriter) Flush() {
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// observe counts requests by code and times them.
func (s *server) observe(endpoint string, h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		t0 := time.Now()
		sw := &statusWriter{ResponseWriter: w, code: 200}
		h(sw, r)
		s.metrics.requests.WithLabelValues(endpoint, strconv.Itoa(sw.code)).Inc()
		s.metrics.latency.WithLabelValues(endpoint).Observe(time.Since(t0).Seconds())
	}
}

func (s *server) health(w http.ResponseWriter, r *http.Request) {
	if s.draining.Load() {
		writeError(w, &apiError{Status: 503, Type: "server_error", Message: "shutting down"})
		return
	}
	writeJSON(w, 200, map[string]any{"status": "ok", "weight_version": s.version.Load()})
}

// models lists the base model and, as vLLM does, each LoRA adapter with the base as its
// parent and its directory as its root.
func (s *server) models(w http.ResponseWriter, r *http.Request) {
	base := s.modelName()
	data := []any{map[string]any{
		"id": base, "object": "model", "created": 0, "owned_by": "prolong", "root": base, "parent": nil,
		"max_model_len": s.cfg.MaxPositionEmbeddings, "weight_version": s.version.Load(),
	}}
	for _, a := range s.adapterList() {
		data = append(data, map[string]any{"id": a.name, "object": "model", "created": 0, "owned_by": "prolong",
			"root": a.dir, "parent": base, "max_model_len": s.cfg.MaxPositionEmbeddings, "weight_version": s.version.Load()})
	}
	writeJSON(w, 200, map[string]any{"object": "list", "data": data})
}

// readBody reads a request body within the size limit.
func (s *server) readBody(w http.ResponseWriter, r *http.Request, limit int64) ([]byte, *apiError) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, limit))
	if err != nil {
		return nil, bodyError(w, err, fmt.Sprintf("--body-timeout (%v)", s.bodyTimeout))
	}
	return body, nil
}

// acquire takes a serving slot, or refuses with 429 (at capacity) or 503 (shutting down).
// The slot is given back by release, which may be called more than once: a request gives it
// back when its generation is done, before the client has taken its response.
func (s *server) acquire() (release func(), e *apiError) {
	if s.draining.Load() {
		return nil, &apiError{Status: 503, Type: "server_error", Message: "shutting down"}
	}
	select {
	case s.slots <- struct{}{}:
		var once sync.Once
		return func() { once.Do(func() { <-s.slots }) }, nil
	default:
		return nil, &apiError{Status: 429, Type: "rate_limit_error", Code: "too_many_requests", Message: "server at capacity; retry after a second"}
	}
}

// prompt is one prompt to complete, tokenized.
type prompt struct {
	ids  []int32
	text string // for echo
}

// generation is a request's submitted prompts.
type generation struct {
	jobs    []*engine.Job
	stops   []context.CancelFunc // per job: ends one prompt's samples (stop strings)
	prompts []prompt
	smp     sampling
	version uint64
	name    string // the served model name of that version
	cancel  context.CancelFunc
}

// hold keeps the weights as they are until release is called: a weight update waits for it,
// so that what a request scores and generates in between runs on one weight version. Release
// may be called more than once.
func (s *server) hold() (release func()) {
	s.swapMu.RLock()
	var once sync.Once
	return func() { once.Do(s.swapMu.RUnlock) }
}

// submit queues every prompt of a request; the caller holds the weights (hold).
func (s *server) submit(ctx context.Context, prompts []prompt, smp sampling) (*generation, *apiError) {
	ctx, cancel := context.WithCancel(ctx)
	g := &generation{prompts: prompts, smp: smp, cancel: cancel}
	seed := uint64(0)
	if smp.seed != nil {
		seed = uint64(*smp.seed)
	} else {
		var b [8]byte
		rand.Read(b[:])
		seed = binary.LittleEndian.Uint64(b[:])
	}
	stop := append([]int32(nil), smp.stopIDs...)
	if !smp.ignoreEOS {
		stop = append(stop, s.eosIDs()...)
	}
	for i, p := range prompts { // every prompt fits, or none is submitted
		if e := s.checkContext(i, len(prompts), len(p.ids), smp.maxTokens); e != nil {
			cancel()
			return nil, e
		}
	}
	for i, p := range prompts {
		jctx, end := context.WithCancel(ctx)
		j, err := s.schedOf(smp.adapter).Submit(jctx, engine.Request{Prompt: p.ids, Params: engine.SamplingParams{
			N: smp.n, Temperature: float32(smp.temperature), TopK: smp.topK, TopP: float32(smp.topP),
			MaxNewTokens: smp.maxTokens, StopTokens: stop, Seed: seed + uint64(i), TopLogProbs: smp.topLogprobs}})
		if err != nil {
			end()
			cancel()
			switch {
			case errors.Is(err, engine.ErrQueueFull):
				return nil, &apiError{Status: 429, Type: "rate_limit_error", Code: "queue_full", Message: "request queue full; retry after a second"}
			case errors.Is(err, engine.ErrClosed) && smp.adapter != nil && !s.draining.Load():
				return nil, &apiError{Status: 503, Type: "server_error", Message: fmt.Sprintf("the lora adapter '%s' was unloaded", smp.adapter.name)}
			case errors.Is(err, engine.ErrClosed):
				return nil, &apiError{Status: 503, Type: "server_error", Message: "shutting down"}
			}
			return nil, badRequest("", "prompt %d: %s", i, strings.TrimPrefix(err.Error(), "request 0: "))
		}
		g.jobs = append(g.jobs, j)
		g.stops = append(g.stops, end)
	}
	g.version, g.name = s.version.Load(), s.modelName()
	if smp.adapter != nil {
		g.name = smp.adapter.name
	}
	return g, nil
}

// modelName is the name the server reports for its current weights.
func (s *server) modelName() string { return *s.name.Load() }

// setModelName makes name the served name; the names served before stay accepted in requests,
// so that a client started before a weight update keeps working.
func (s *server) setModelName(name string) {
	s.namesMu.Lock()
	defer s.namesMu.Unlock()
	if s.names == nil {
		s.names = map[string]bool{}
	}
	s.names[name] = true
	s.name.Store(&name)
}

// checkModel answers a request's "model" field as vLLM does: empty (the base model) or a name
// this server serves or has served is fine, a LoRA adapter's name gives that adapter; any
// other is 404 model_not_found.
func (s *server) checkModel(model string) (*loraAdapter, *apiError) {
	if model == "" {
		return nil, nil
	}
	if a := s.adapter(model); a != nil {
		return a, nil
	}
	s.namesMu.Lock()
	known := s.names[model]
	s.namesMu.Unlock()
	if known {
		return nil, nil
	}
	return nil, &apiError{Status: 404, Type: "invalid_request_error", Param: "model", Code: "model_not_found",
		Message: fmt.Sprintf("the model %q does not exist: this server serves %q (GET /v1/models)", model, s.modelName())}
}

// checkContext refuses prompt i of n when its tokens plus max_tokens exceed the model's
// context, in the request's own terms (the engine says max_new_tokens).
func (s *server) checkContext(i, n, promptLen, maxTokens int) *apiError {
	ctxLen := s.cfg.MaxPositionEmbeddings
	if promptLen+maxTokens <= ctxLen {
		return nil
	}
	which := "the prompt"
	if n > 1 {
		which = fmt.Sprintf("prompt %d", i)
	}
	return &apiError{Status: 400, Type: "invalid_request_error", Param: "max_tokens", Code: "context_length_exceeded",
		Message: fmt.Sprintf("this model's maximum context length is %d tokens, but %s has %d tokens and max_tokens is %d (%d > %d): shorten the prompt or lower max_tokens",
			ctxLen, which, promptLen, maxTokens, promptLen+maxTokens, ctxLen)}
}

// eosIDs are the model's end-of-sequence tokens.
func (s *server) eosIDs() []int32 {
	var ids []int32
	for _, id := range s.cfg.EOSTokenIDs {
		ids = append(ids, int32(id))
	}
	if s.tok != nil {
		if id, ok := s.tok.EOS(); ok {
			ids = append(ids, id)
		}
	}
	return ids
}

// choiceState follows one sample: its tokens and text so far.
type choiceState struct {
	index    int
	ids      []int32
	lps      []float32
	tops     [][]alt // with top log-probs: each token's most likely tokens
	text     string  // decoded text up to the last complete character
	sent     int     // bytes of text already streamed
	finish   string
	promptID int
}

// alt is one of a position's most likely tokens and its log-prob.
type alt struct {
	id int32
	lp float32
}

// alts are the most likely tokens an event carries (nil without top log-probs).
func alts(ev engine.Event) []alt {
	var out []alt
	for i, id := range ev.TopIDs {
		out = append(out, alt{id, ev.TopLogProbs[i]})
	}
	return out
}

// topAlts computes the k most likely tokens at each position of reqs (engine TopLogProbs,
// through the scheduler) and checks they come from weight version want.
func (s *server) topAlts(ctx context.Context, sched *engine.Scheduler, reqs []engine.TopRequest, k int, want uint64) ([][][]alt, *apiError) {
	res, version, err := sched.TopLogProbs(ctx, reqs, k)
	switch {
	case errors.Is(err, engine.ErrClosed):
		return nil, &apiError{Status: 503, Type: "server_error", Message: "shutting down"}
	case err != nil:
		return nil, &apiError{Status: 500, Type: "server_error", Message: fmt.Sprintf("computing the top log-probs: %v", err)}
	case version != want:
		return nil, &apiError{Status: 503, Type: "server_error", Code: "weights_updated", Message: "the weights were updated while the top log-probs were computed; retry"}
	}
	out := make([][][]alt, len(res))
	for i, r := range res {
		out[i] = make([][]alt, len(r.IDs))
		for t, ids := range r.IDs {
			for j, id := range ids {
				out[i][t] = append(out[i][t], alt{id, r.LogProbs[t][j]})
			}
		}
	}
	return out, nil
}

// decode renders tokens as text: the tokenizer's (special tokens dropped), or token_id:N
// without one (vLLM's return_tokens_as_token_ids).
func (s *server) decode(ids []int32) string {
	if s.tok == nil {
		var b strings.Builder
		for _, id := range ids {
			fmt.Fprintf(&b, "token_id:%d", id)
		}
		return b.String()
	}
	t, err := s.tok.DecodeSkipSpecial(ids)
	if err != nil {
		return ""
	}
	return t
}

// tokenString is one token as text (for logprobs).
func (s *server) tokenString(id int32) string {
	if s.tok == nil {
		return fmt.Sprintf("token_id:%d", id)
	}
	t, _ := s.tok.Decode([]int32{id})
	return t
}

// run drains the jobs, calling onToken for each sampled token's event with the text it adds
// (after stop strings are applied); it returns the choices, in order (prompt i, sample j ->
// index i*n+j).
func (s *server) run(g *generation, onToken func(c *choiceState, delta string, ev engine.Event) error) ([]*choiceState, *apiError) {
	defer g.cancel()
	n := g.smp.n
	choices := make([]*choiceState, len(g.jobs)*n)
	for i := range choices {
		choices[i] = &choiceState{index: i, promptID: i / n}
	}
	first := true
	t0 := time.Now()
	for pi, j := range g.jobs {
		open, ended := n, false
		for ev := range j.Events {
			if ev.Done {
				ended = true
				if ev.Err != nil && open > 0 {
					if errors.Is(ev.Err, context.Canceled) {
						return choices, &apiError{Status: 499, Type: "server_error", Message: "request cancelled"}
					}
					return choices, &apiError{Status: 500, Type: "server_error", Message: ev.Err.Error()}
				}
				break
			}
			if first {
				s.metrics.ttft.Observe(time.Since(t0).Seconds())
				first = false
			}
			c := choices[pi*n+ev.Sample]
			if c.finish != "" {
				continue // ended by a stop string; the engine runs it out
			}
			c.ids = append(c.ids, ev.Token)
			c.lps = append(c.lps, ev.LogProb)
			if ev.TopIDs != nil {
				c.tops = append(c.tops, alts(ev))
			}
			delta := ""
			full := s.decode(c.ids)
			// Hold back an incomplete UTF-8 character until its last byte arrives.
			for len(full) > 0 {
				r, size := utf8.DecodeLastRuneInString(full)
				if r != utf8.RuneError || size != 1 {
					break
				}
				full = full[:len(full)-1]
			}
			if cut, ok := applyStop(full, g.smp.stopStrings); ok {
				full, c.finish = cut, "stop"
			}
			if c.finish == "" && ev.Finish != "" {
				c.finish = string(ev.Finish)
			}
			c.text = full
			// While the sample runs, hold back an ending that may grow into a stop string, so
			// that streamed text never shows what the whole answer cuts.
			if ready := len(full) - stopPrefix(full, g.smp.stopStrings, c.finish != ""); ready > c.sent {
				delta = full[c.sent:ready]
				c.sent = ready
			}
			if c.finish != "" {
				open--
			}
			if err := onToken(c, delta, ev); err != nil {
				var ae *apiError
				if errors.As(err, &ae) {
					return choices, ae
				}
				return choices, &apiError{Status: 499, Type: "server_error", Message: "client went away"}
			}
			if open == 0 {
				g.stops[pi]() // every sample of this prompt ended (stop strings): free its cache now
			}
		}
		if !ended && open > 0 { // closed early: the request was cancelled (client gone)
			return choices, &apiError{Status: 499, Type: "server_error", Message: "request cancelled"}
		}
	}
	return choices, nil
}

// stopPrefix is the length of the longest ending of text that begins a stop string (0 once
// the sample has finished).
func stopPrefix(text string, stops []string, finished bool) int {
	if finished {
		return 0
	}
	n := 0
	for _, st := range stops {
		for k := min(len(st)-1, len(text)); k > n; k-- {
			if strings.HasSuffix(text, st[:k]) {
				n = k
				break
			}
		}
	}
	return n
}

// applyStop cuts text at the first stop string.
func applyStop(text string, stops []string) (string, bool) {
	cut := -1
	for _, st := range stops {
		if i := strings.Index(text, st); i >= 0 && (cut < 0 || i < cut) {
			cut = i
		}
	}
	if cut < 0 {
		return text, false
	}
	return text[:cut], true
}

// sse writes server-sent events.
type sse struct {
	w http.ResponseWriter
	f http.Flusher
}

func newSSE(w http.ResponseWriter) *sse {
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-cache")
	w.WriteHeader(200)
	f, _ := w.(http.Flusher)
	return &sse{w, f}
}

func (e *sse) send(v any) error {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return err
	}
	if _, err := fmt.Fprintf(e.w, "data: %s\n\n", bytes.TrimSpace(b.Bytes())); err != nil {
		return err
	}
	if e.f != nil {
		e.f.Flush()
	}
	return nil
}

func (e *sse) done() {
	fmt.Fprint(e.w, "data: [DONE]\n\n")
	if e.f != nil {
		e.f.Flush()
	}
}

func newID(prefix string) string {
	var b [12]byte
	rand.Read(b[:])
	return fmt.Sprintf("%s-%x", prefix, b)
}

func strp(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}

// finiteLogprob is lp, or -9999 for a token the sampler excludes (-Inf), as OpenAI and vLLM
// write it: JSON has no infinity.
func finiteLogprob(lp float32) float32 {
	return max(lp, -9999)
}

// encodeText tokenizes a text prompt, refusing a character the tokenizer cannot represent
// (one its vocabulary lacks, without an unknown token): dropping it would change the prompt
// silently. label names the field (prompt, or prompt[i] of a list).
func (s *server) encodeText(label, text string) ([]int32, *apiError) {
	if err := s.tok.Check(text); err != nil {
		return nil, badRequest("prompt", "%s: %v", label, err)
	}
	ids := s.tok.Encode(text)
	if len(ids) == 0 {
		return nil, badRequest("prompt", "%s encodes to no tokens", label)
	}
	return ids, nil
}

// promptLogprobs scores each prompt's tokens after the first (engine.Score at temperature 1,
// between two generation steps) and, with k > 0, finds each position's k most likely tokens;
// the caller holds the weights (hold) until it has submitted the generation.
func (s *server) promptLogprobs(ctx context.Context, sched *engine.Scheduler, prompts []prompt, k int) ([][]float32, [][][]alt, *apiError) {
	reqs := make([]engine.ScoreRequest, len(prompts))
	for i, p := range prompts {
		reqs[i] = engine.ScoreRequest{Tokens: p.ids, Start: 1}
	}
	res, version, err := sched.Score(ctx, reqs, 1)
	if err != nil {
		if errors.Is(err, engine.ErrClosed) {
			return nil, nil, &apiError{Status: 503, Type: "server_error", Message: "shutting down"}
		}
		return nil, nil, &apiError{Status: 500, Type: "server_error", Message: fmt.Sprintf("scoring the prompt for echo: %v", err)}
	}
	out := make([][]float32, len(res))
	for i, r := range res {
		out[i] = r.LogProbs
	}
	if k == 0 {
		return out, nil, nil
	}
	treqs := make([]engine.TopRequest, len(prompts))
	for i, p := range prompts {
		treqs[i] = engine.TopRequest{Tokens: p.ids, Start: 1, Row: engine.SampleRow{Temperature: 1}}
	}
	tops, e := s.topAlts(ctx, sched, treqs, k, version)
	return out, tops, e
}

// usageOf counts a request's tokens.
func usageOf(prompts []prompt, choices []*choiceState) *usage {
	u := &usage{}
	for _, p := range prompts {
		u.PromptTokens += len(p.ids)
	}
	for _, c := range choices {
		u.CompletionTokens += len(c.ids)
	}
	u.TotalTokens = u.PromptTokens + u.CompletionTokens
	return u
}
