// Command loadgen drives a rollout server (tools/rollout-server, or any OpenAI-compatible
// completions endpoint that takes token-id prompts) on localhost: first one client at a time
// (single-request serving), then many concurrent clients for a bounded time, and prints
// throughput, the speed-up over single-request serving, latency percentiles, failures, 429s
// and the server's peak resident memory (from its /metrics).
//
//	go run ./tools/loadgen --url http://127.0.0.1:8000 --clients 64 --duration 30s
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/spf13/pflag"

	"github.com/prolong-rl/prolong/tools/internal/clilog"
)

type options struct {
	url, apiKey                  string
	clients, promptTokens, vocab int
	maxTokens, n                 int
	duration, singleDuration     time.Duration
	seed                         uint64
}

// stats of one phase.
type stats struct {
	mu                  sync.Mutex
	latencies           []time.Duration
	tokens, ok, limited int
	failed              int
	firstErr            string
}

func (s *stats) add(d time.Duration, tokens, code int, errText string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case code == 200:
		s.ok++
		s.tokens += tokens
		s.latencies = append(s.latencies, d)
	case code == 429:
		s.limited++
	default:
		s.failed++
		if s.firstErr == "" {
			s.firstErr = errText
		}
	}
}

func (s *stats) percentile(p float64) time.Duration {
	if len(s.latencies) == 0 {
		return 0
	}
	l := slices.Clone(s.latencies)
	slices.Sort(l)
	return l[min(len(l)-1, int(p*float64(len(l))))]
}

func main() {
	clilog.Setup("loadgen")
	var o options
	fs := pflag.NewFlagSet("loadgen", pflag.ContinueOnError)
	fs.StringVar(&o.url, "url", "http://127.0.0.1:8000", "rollout server base URL")
	fs.StringVar(&o.apiKey, "api-key", "", "API key (default: $PROLONG_API_KEY)")
	fs.IntVar(&o.clients, "clients", 64, "concurrent clients of the load phase")
	fs.DurationVar(&o.duration, "duration", 30*time.Second, "length of the load phase")
	fs.DurationVar(&o.singleDuration, "single-duration", 10*time.Second, "length of the single-client phase (0: skip)")
	fs.IntVar(&o.promptTokens, "prompt-tokens", 12, "tokens per prompt (random ids)")
	fs.IntVar(&o.vocab, "vocab", 32, "prompt ids are drawn from [1, vocab)")
	fs.IntVar(&o.maxTokens, "max-tokens", 24, "max_tokens of each request (ignore_eos: every request generates this many per sample)")
	fs.IntVar(&o.n, "n", 1, "samples per request")
	fs.Uint64Var(&o.seed, "seed", 1, "seed of the prompts")
	fs.SetOutput(io.Discard) // --help is printed below, on stdout; errors are logged
	if err := fs.Parse(os.Args[1:]); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			fmt.Print("Usage: go run ./tools/loadgen [--url http://127.0.0.1:8000] [flags]\n\n" +
				"Drives a rollout server on localhost: one client at a time, then many concurrent clients for a\n" +
				"bounded time, and prints throughput, the speed-up over single-request serving, latency\n" +
				"percentiles, failures, 429s and the server's peak resident memory.\n\nFlags:\n" + fs.FlagUsages())
			return
		}
		slog.Error(err.Error() + " (see --help)")
		os.Exit(2)
	}
	if !fs.Changed("api-key") { // read after parsing: the usage never shows the key
		o.apiKey = os.Getenv("PROLONG_API_KEY")
	}
	if err := run(o, os.Stdout); err != nil {
		slog.Error(err.Error())
		os.Exit(1)
	}
}

func run(o options, out io.Writer) error {
	if _, err := http.Get(o.url + "/health"); err != nil {
		return fmt.Errorf("server %s: %w", o.url, err)
	}
	var peakRSS float64
	stopRSS := make(chan struct{})
	rssDone := make(chan struct{})
	go func() { // the server's resident memory, every 250 ms
		defer close(rssDone)
		t := time.NewTicker(250 * time.Millisecond)
		defer t.Stop()
		for {
			if v, err := scrape(o.url, "process_resident_memory_bytes"); err == nil && v > peakRSS {
				peakRSS = v
			}
			select {
			case <-stopRSS:
				return
			case <-t.C:
			}
		}
	}()
	startRSS, _ := scrape(o.url, "process_resident_memory_bytes")
	var single *stats
	var singleTPS float64
	if o.singleDuration > 0 {
		single = phase(o, 1, o.singleDuration)
		singleTPS = float64(single.tokens) / o.singleDuration.Seconds()
	}
	load := phase(o, o.clients, o.duration)
	close(stopRSS)
	<-rssDone
	tps := float64(load.tokens) / o.duration.Seconds()
	fmt.Fprintf(out, "server %s: prompts of %d tokens, max_tokens %d, n %d\n", o.url, o.promptTokens, o.maxTokens, o.n)
	if single != nil {
		fmt.Fprintf(out, "single client   %5.0fs: %6d requests, %8.1f tokens/s, latency p50 %v p99 %v, failed %d\n",
			o.singleDuration.Seconds(), single.ok, singleTPS, single.percentile(0.5).Round(time.Millisecond), single.percentile(0.99).Round(time.Millisecond), single.failed)
	}
	fmt.Fprintf(out, "%3d clients     %5.0fs: %6d requests, %8.1f tokens/s, latency p50 %v p99 %v, 429s %d, failed %d\n",
		o.clients, o.duration.Seconds(), load.ok, tps, load.percentile(0.5).Round(time.Millisecond), load.percentile(0.99).Round(time.Millisecond), load.limited, load.failed)
	if singleTPS > 0 {
		fmt.Fprintf(out, "throughput vs single-request serving: %.1fx\n", tps/singleTPS)
	}
	fmt.Fprintf(out, "server resident memory: %.0f MiB at start, peak %.0f MiB\n", startRSS/(1<<20), peakRSS/(1<<20))
	if load.firstErr != "" {
		fmt.Fprintf(out, "first failure: %s\n", load.firstErr)
	}
	return nil
}

// phase runs clients closed-loop clients for d.
func phase(o options, clients int, d time.Duration) *stats {
	st := &stats{}
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	var wg sync.WaitGroup
	for c := 0; c < clients; c++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(o.seed, uint64(c)))
			for i := 0; ctx.Err() == nil; i++ {
				ids := make([]int, o.promptTokens)
				for k := range ids {
					ids[k] = 1 + r.IntN(o.vocab-1)
				}
				body, _ := json.Marshal(map[string]any{"prompt": ids, "max_tokens": o.maxTokens, "n": o.n, "temperature": 1,
					"seed": c*100000 + i, "ignore_eos": true, "logprobs": 1})
				t0 := time.Now()
				code, tokens, errText := request(ctx, o, body)
				if ctx.Err() != nil {
					return // cut by the end of the phase: not counted
				}
				st.add(time.Since(t0), tokens, code, errText)
				if code == 429 {
					time.Sleep(100 * time.Millisecond)
				}
			}
		}()
	}
	wg.Wait()
	return st
}

func request(ctx context.Context, o options, body []byte) (int, int, string) {
	req, _ := http.NewRequestWithContext(ctx, "POST", o.url+"/v1/completions", bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	if o.apiKey != "" {
		req.Header.Set("Authorization", "Bearer "+o.apiKey)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, 0, err.Error()
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		return resp.StatusCode, 0, fmt.Sprintf("HTTP %d: %s", resp.StatusCode, bytes.TrimSpace(data))
	}
	var r struct {
		Choices []struct {
			TokenIDs []int `json:"token_ids"`
		} `json:"choices"`
	}
	if err := json.Unmarshal(data, &r); err != nil {
		return -1, 0, err.Error()
	}
	n := 0
	for _, c := range r.Choices {
		n += len(c.TokenIDs)
	}
	return 200, n, ""
}

// scrape reads one metric from the server's /metrics.
func scrape(url, name string) (float64, error) {
	resp, err := http.Get(url + "/metrics")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			return strconv.ParseFloat(strings.TrimSpace(v), 64)
		}
	}
	return 0, fmt.Errorf("%s not in /metrics", name)
}
