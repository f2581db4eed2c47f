// Package remote generates GRPO rollouts on rollout servers (tools/rollout-server, or any
// OpenAI-compatible server that returns token ids and log-probs the way vLLM does) instead of
// the in-process engine, and pushes new weights to them after each update.
package remote

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prolong-rl/prolong/checkpoints"
	"github.com/prolong-rl/prolong/engine"
	"github.com/prolong-rl/prolong/grpo"
	"github.com/prolong-rl/prolong/grpo/modeldir"
)

// Client sends rollout requests to one or more servers, each to the server with the fewest of
// its requests in flight (least-loaded, ties round-robin), retrying on 429 and 503 after the
// server's Retry-After. It implements grpo.RolloutSource:
// prompt i of a call is one request with n samples and seed p.Seed + i, as grpo.EngineRollouts
// seeds them, so a server running the same weights returns the same tokens as the engine.
type Client struct {
	// URLs are the servers' base addresses (http://host:port). Prompts are spread over them.
	URLs []string
	// APIKey is sent as a Bearer token (required by servers for weight updates).
	APIKey string
	// HTTP is the client used (default: one without a timeout; cancel through the context).
	HTTP *http.Client
	// Concurrency bounds the requests in flight per server (default 16).
	Concurrency int
	// MaxRetries bounds the retries of a request refused with 429 or 503 (default 20); the
	// server's Retry-After is honoured.
	MaxRetries int
	// Model is the model name sent in requests (servers of one model ignore it).
	Model string
	// User, when set, is sent as each request's OpenAI "user" field: who asks (the trainer
	// sends "rank R" in a data-parallel run), for the servers' operators.
	User string

	next        atomic.Uint64
	version     atomic.Uint64
	pushedBytes atomic.Uint64
	retries     atomic.Uint64
	once        sync.Once
	load        []atomic.Int64 // requests in flight per server
}

// New returns a client for the servers.
func New(urls []string, apiKey string) (*Client, error) {
	if len(urls) == 0 {
		return nil, errors.New("remote: no rollout server URLs")
	}
	for _, u := range urls {
		if !strings.HasPrefix(u, "http://") && !strings.HasPrefix(u, "https://") {
			return nil, fmt.Errorf("remote: rollout server %q: want an http:// or https:// URL", u)
		}
	}
	return &Client{URLs: urls, APIKey: apiKey}, nil
}

func (c *Client) http() *http.Client {
	if c.HTTP != nil {
		return c.HTTP
	}
	return http.DefaultClient
}

// completionRequest is the body sent: token-id prompts, vLLM's extensions.
type completionRequest struct {
	Model        string  `json:"model"`
	Prompt       []int32 `json:"prompt"`
	N            int     `json:"n"`
	Temperature  float32 `json:"temperature"`
	TopP         float32 `json:"top_p"`
	TopK         int     `json:"top_k"`
	MaxTokens    int     `json:"max_tokens"`
	Seed         uint64  `json:"seed"`
	StopTokenIDs []int32 `json:"stop_token_ids"`
	Logprobs     int     `json:"logprobs"`
	IgnoreEOS    bool    `json:"ignore_eos"`
	User         string  `json:"user,omitempty"`
}

type completionResponse struct {
	Choices []struct {
		Index        int     `json:"index"`
		TokenIDs     []int32 `json:"token_ids"`
		FinishReason string  `json:"finish_reason"`
		Logprobs     *struct {
			TokenLogprobs []float32 `json:"token_logprobs"`
		} `json:"logprobs"`
	} `json:"choices"`
	WeightVersion uint64 `json:"weight_version"`
}

// Rollout implements grpo.RolloutSource. Stop tokens are exactly p.StopTokens (ignore_eos is
// sent, so the server adds none of its own), as in the engine.
func (c *Client) Rollout(ctx context.Context, prompts []grpo.Prompt, p engine.SamplingParams) ([][]engine.Sample, error) {
	n := max(1, p.N)
	conc := c.Concurrency
	if conc <= 0 {
		conc = 16
	}
	out := make([][]engine.Sample, len(prompts))
	sem := make(chan struct{}, conc*len(c.URLs))
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	var once sync.Once
	var firstErr error
	for i, pr := range prompts {
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
		}
		if ctx.Err() != nil {
			break
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			k := c.pick()
			c.load[k].Add(1)
			defer c.load[k].Add(-1)
			url := c.URLs[k]
			req := completionRequest{Model: c.Model, Prompt: pr.Tokens, N: n, Temperature: p.Temperature, TopP: p.TopP,
				TopK: p.TopK, MaxTokens: p.MaxNewTokens, Seed: p.Seed + uint64(i), StopTokenIDs: p.StopTokens, Logprobs: 1, IgnoreEOS: true, User: c.User}
			if req.TopP == 0 {
				req.TopP = 1
			}
			samples, err := c.complete(ctx, url, req)
			if err != nil {
				once.Do(func() { firstErr = fmt.Errorf("remote: prompt %d on %s: %w", i, url, err); cancel() })
				return
			}
			out[i] = samples
		}()
	}
	wg.Wait()
	if firstErr != nil {
		return nil, firstErr
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	return out, nil
}

// pick chooses the server with the fewest of this client's requests in flight, ties going
// round-robin.
func (c *Client) pick() int {
	c.once.Do(func() { c.load = make([]atomic.Int64, len(c.URLs)) })
	n := len(c.URLs)
	start := int(c.next.Add(1) % uint64(n))
	best := start
	for k := 1; k < n; k++ {
		if i := (start + k) % n; c.load[i].Load() < c.load[best].Load() {
			best = i
		}
	}
	return best
}

// Retries is the number of requests retried so far because a server answered 429 or 503.
func (c *Client) Retries() uint64 { return c.retries.Load() }

// complete sends one request, retrying while the server is at capacity.
func (c *Client) complete(ctx context.Context, url string, req completionRequest) ([]engine.Sample, error) {
	body, err := json.Marshal(req)
	if err != nil {
		return nil, err
	}
	retries := c.MaxRetries
	if retries == 0 {
		retries = 20
	}
	for attempt := 0; ; attempt++ {
		hreq, err := http.NewRequestWithContext(ctx, "POST", url+"/v1/completions", bytes.NewReader(body))
		if err != nil {
			return nil, err
		}
		hreq.Header.Set("Content-Type", "application/json")
		if c.APIKey != "" {
			hreq.Header.Set("Authorization", "Bearer "+c.APIKey)
		}
		resp, err := c.http().Do(hreq)
		if err != nil {
			return nil, err
		}
		data, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			return nil, err
		}
		if (resp.StatusCode == 429 || resp.StatusCode == 503) && attempt < retries {
			wait := time.Second
			if s, err := strconv.Atoi(resp.Header.Get("Retry-After")); err == nil && s >= 0 {
				wait = time.Duration(s) * time.Second
			}
			c.retries.Add(1)
			select {
			case <-time.After(wait):
				continue
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}
		if resp.StatusCode != 200 {
			return nil, fmt.Errorf("HTTP %d: %s", resp.StatusCode, bytes.TrimSpace(data))
		}
		var cr completionResponse
		if err := json.Unmarshal(data, &cr); err != nil {
			return nil, fmt.Errorf("response: %w", err)
		}
		if len(cr.Choices) != req.N {
			return nil, fmt.Errorf("response has %d choices, want n = %d", len(cr.Choices), req.N)
		}
		out := make([]engine.Sample, req.N)
		for _, ch := range cr.Choices {
			if ch.Index < 0 || ch.Index >= req.N || ch.Logprobs == nil || len(ch.Logprobs.TokenLogprobs) != len(ch.TokenIDs) {
				return nil, fmt.Errorf("choice %d: no token ids with one log-prob each (does the server return token_ids and logprobs?)", ch.Index)
			}
			fin := engine.FinishLength
			if ch.FinishReason == "stop" {
				fin = engine.FinishStop
			}
			out[ch.Index] = engine.Sample{Tokens: ch.TokenIDs, LogProbs: ch.Logprobs.TokenLogprobs, Finish: fin}
		}
		c.version.Store(cr.WeightVersion)
		return out, nil
	}
}

// WeightVersion is the version the last response reported.
func (c *Client) WeightVersion() uint64 { return c.version.Load() }

// PushWeights sends weights to every server and waits until each serves them: as weight
// version version, or, when version is 0, as each server's next one. Each weight goes as a
// safetensors tensor in the dtype the server computes it in, which it says at GET /v1/weights:
// a --dtype bf16 server gets its linear weights as bf16 (half the bytes; it rounds them to
// bf16, nearest even, when it loads them anyway, so it serves the same model), every other
// weight and server (one that does not say, too) gets F32, bit-exact.
func (c *Client) PushWeights(ctx context.Context, weights map[string]engine.HostTensor, version uint64) error {
	t0 := time.Now()
	n := len(c.URLs)
	dtypes := make([]map[string]string, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i, url := range c.URLs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			dtypes[i], errs[i] = c.weightDTypes(ctx, url)
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return err
	}
	// One body per distinct set of bf16 weights (servers of one kind share it).
	bodies := map[string][]byte{}
	keys := make([]string, n)
	for i := range c.URLs {
		var bf []string
		for name, dt := range dtypes[i] {
			if dt == string(checkpoints.BF16) {
				bf = append(bf, name)
			}
		}
		slices.Sort(bf)
		keys[i] = strings.Join(bf, "\x00")
		if _, ok := bodies[keys[i]]; ok {
			continue
		}
		dt := dtypes[i]
		dtypeOf := func(name string) checkpoints.DType {
			if dt[name] == string(checkpoints.BF16) {
				return checkpoints.BF16
			}
			return checkpoints.F32
		}
		size := 1 << 16 // the header
		for name, w := range weights {
			size += len(w.Data) * map[checkpoints.DType]int{checkpoints.F32: 4, checkpoints.BF16: 2}[dtypeOf(name)]
		}
		buf := bytes.NewBuffer(make([]byte, 0, size))
		err := checkpoints.EncodeSafetensors(buf, weights, dtypeOf, nil)
		if err != nil {
			return fmt.Errorf("remote: encoding the weights for %s: %w", c.URLs[i], err)
		}
		bodies[keys[i]] = buf.Bytes()
	}
	var sent atomic.Int64
	for i, url := range c.URLs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			body := bodies[keys[i]]
			errs[i] = c.push(ctx, url, body, version)
			sent.Add(int64(len(body)))
		}()
	}
	wg.Wait()
	c.pushedBytes.Add(uint64(sent.Load()))
	slog.Debug("weights pushed", "servers", n, "bytes", sent.Load(), "seconds", time.Since(t0).Seconds())
	return errors.Join(errs...)
}

// PushAdapters sends a LoRA policy's adapters (engine.LoRASpecs names; adapterConfig its
// adapter_config.json) to every server, which runs them over the base model it was started
// with from then on; version as PushWeights'. The body is one safetensors file, F32, with
// PEFT's keys and the config in its metadata (modeldir.AdapterMetadataKey): megabytes where
// PushWeights sends the model.
func (c *Client) PushAdapters(ctx context.Context, adapterConfig []byte, adapters map[string]engine.HostTensor, version uint64) error {
	t0 := time.Now()
	keyed := make(map[string]engine.HostTensor, len(adapters))
	size := 1 << 16
	for n, t := range adapters {
		keyed[engine.LoRAPrefix+n] = t
		size += 4 * len(t.Data)
	}
	buf := bytes.NewBuffer(make([]byte, 0, size))
	f32 := func(string) checkpoints.DType { return checkpoints.F32 }
	if err := checkpoints.EncodeSafetensors(buf, keyed, f32, map[string]string{modeldir.AdapterMetadataKey: string(adapterConfig)}); err != nil {
		return fmt.Errorf("remote: encoding the adapters: %w", err)
	}
	body := buf.Bytes()
	errs := make([]error, len(c.URLs))
	var wg sync.WaitGroup
	for i, url := range c.URLs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = c.push(ctx, url, body, version)
		}()
	}
	wg.Wait()
	c.pushedBytes.Add(uint64(len(body) * len(c.URLs)))
	slog.Debug("adapters pushed", "servers", len(c.URLs), "bytes", len(body)*len(c.URLs), "seconds", time.Since(t0).Seconds())
	return errors.Join(errs...)
}

// PushedBytes is how many bytes of weights PushWeights has sent, all servers together.
func (c *Client) PushedBytes() uint64 { return c.pushedBytes.Load() }

// weightDTypes asks a server the dtype it computes each weight in (GET /v1/weights). A server
// without that endpoint (404, 405: one from before it) gets every weight as F32.
func (c *Client) weightDTypes(ctx context.Context, url string) (map[string]string, error) {
	req, err := http.NewRequestWithContext(ctx, "GET", url+"/v1/weights", nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+c.APIKey)
	resp, err := c.http().Do(req)
	if err != nil {
		return nil, fmt.Errorf("remote: asking %s for its weight dtypes: %w", url, err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	switch {
	case resp.StatusCode == http.StatusNotFound || resp.StatusCode == http.StatusMethodNotAllowed:
		return nil, nil
	case resp.StatusCode != 200:
		return nil, fmt.Errorf("remote: asking %s for its weight dtypes: HTTP %d: %s", url, resp.StatusCode, bytes.TrimSpace(data))
	}
	var r struct {
		DTypes map[string]string `json:"dtypes"`
	}
	if err := json.Unmarshal(data, &r); err != nil {
		return nil, fmt.Errorf("remote: GET %s/v1/weights: %w (%.200s)", url, err, data)
	}
	return r.DTypes, nil
}

func (c *Client) push(ctx context.Context, url string, body []byte, version uint64) error {
	req, err := http.NewRequestWithContext(ctx, "POST", url+"/v1/weights", bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/octet-stream")
	if version != 0 {
		req.Header.Set("X-Weight-Version", strconv.FormatUint(version, 10))
	}
	req.Header.Set("Authorization", "Bearer "+c.APIKey)
	resp, err := c.http().Do(req)
	if err != nil {
		return fmt.Errorf("remote: push weights to %s: %w", url, err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		return fmt.Errorf("remote: push weights to %s: HTTP %d: %s", url, resp.StatusCode, bytes.TrimSpace(data))
	}
	var r struct {
		Version uint64 `json:"weight_version"`
	}
	if err := json.Unmarshal(data, &r); err != nil || (version != 0 && r.Version != version) {
		return fmt.Errorf("remote: push weights to %s: server reports version %d, want %d (%s)", url, r.Version, version, data)
	}
	return nil
}
