package remote

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prolong-rl/prolong/checkpoints"
	"github.com/prolong-rl/prolong/engine"
	"github.com/prolong-rl/prolong/engine/cpu"
	"github.com/prolong-rl/prolong/grpo"
	"github.com/prolong-rl/prolong/grpo/remote/remotetest"
)

// TestRemoteEqualsEngine: rollouts from two rollout servers (both used) equal the in-process
// engine's for the same seed, token for token and log-prob for log-prob; after PushWeights they
// equal the engine's on the new weights and report its version; through 429s the client waits
// the Retry-After asked and gets the same rollouts; errors name the server and the prompt.
func TestRemoteEqualsEngine(t *testing.T) {
	cfg := &engine.Config{ModelType: "qwen2", VocabSize: 24, HiddenSize: 32, NumHiddenLayers: 2, NumAttentionHeads: 4,
		NumKeyValueHeads: 2, HeadDim: 8, IntermediateSize: 64, RMSNormEps: 1e-6, RopeTheta: 10000,
		MaxPositionEmbeddings: 128, AttentionBias: true}
	w1 := engine.RandomWeights(cfg, 1, 0.3)
	dir := t.TempDir()
	if err := checkpoints.Save(dir, cfg, w1, checkpoints.SaveOptions{}); err != nil {
		t.Fatal(err)
	}
	c, err := New(remotetest.Start(t, dir, 2, "--max-concurrent", "4"), "k")
	if err != nil {
		t.Fatal(err)
	}
	var prompts []grpo.Prompt
	for i := 0; i < 12; i++ {
		prompts = append(prompts, grpo.Prompt{Tokens: []int32{1, int32(2 + i%20), int32(3 + (7*i)%20)}})
	}
	p := engine.SamplingParams{N: 4, Temperature: 1.2, TopP: 1, MaxNewTokens: 12, StopTokens: []int32{5}, Seed: 99}
	engineRollouts := func(w map[string]engine.HostTensor) [][]engine.Sample {
		m, err := engine.NewModel(cfg, cpu.New(), w, engine.F32)
		if err != nil {
			t.Fatal(err)
		}
		g, err := engine.NewGenerator(m, engine.GeneratorOptions{})
		if err != nil {
			t.Fatal(err)
		}
		defer g.Close()
		out, err := grpo.EngineRollouts{Gen: g}.Rollout(context.Background(), prompts, p)
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	check := func(what string, got, want [][]engine.Sample) {
		for i := range want {
			for j := range want[i] {
				a, b := got[i][j], want[i][j]
				if !slices.Equal(a.Tokens, b.Tokens) || !slices.Equal(a.LogProbs, b.LogProbs) || a.Finish != b.Finish {
					t.Fatalf("%s: prompt %d sample %d: remote %v %v %s, engine %v %v %s", what, i, j, a.Tokens, a.LogProbs, a.Finish, b.Tokens, b.LogProbs, b.Finish)
				}
			}
		}
	}
	got, err := c.Rollout(context.Background(), prompts, p)
	if err != nil {
		t.Fatal(err)
	}
	check("version 1", got, engineRollouts(w1))
	// Both servers served (least-loaded spreads the prompts).
	for _, u := range c.URLs {
		resp, err := http.Get(u + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		m, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if !strings.Contains(string(m), `prolong_requests_total{code="200",endpoint="completions"}`) {
			t.Errorf("%s served no completions", u)
		}
	}

	w2 := engine.RandomWeights(cfg, 2, 0.3)
	if err := c.PushWeights(context.Background(), w2, 7); err != nil {
		t.Fatal(err)
	}
	got, err = c.Rollout(context.Background(), prompts, p)
	if err != nil {
		t.Fatal(err)
	}
	check("after the push", got, engineRollouts(w2))
	if c.WeightVersion() != 7 {
		t.Errorf("weight version %d, want 7", c.WeightVersion())
	}
	// Retries: a front that answers the first two completions with 429 and Retry-After: 1, as
	// a server at capacity does, and passes the rest to the real server. The client waits the
	// second the server asks and then gets the same rollouts.
	target, _ := url.Parse(c.URLs[0])
	proxy := httputil.NewSingleHostReverseProxy(target)
	var refused atomic.Int32
	front := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/v1/completions" && refused.Add(1) <= 2 {
			w.Header().Set("Retry-After", "1")
			w.WriteHeader(429)
			io.WriteString(w, `{"error": {"message": "server at capacity; retry after a second", "type": "rate_limit_error", "code": "too_many_requests"}}`)
			return
		}
		proxy.ServeHTTP(w, r)
	}))
	defer front.Close()
	rc := &Client{URLs: []string{front.URL}, APIKey: "k", Concurrency: 1}
	t0 := time.Now()
	got, err = rc.Rollout(context.Background(), prompts[:3], p)
	if err != nil {
		t.Fatal(err)
	}
	if waited := time.Since(t0); rc.Retries() != 2 || waited < 2*time.Second {
		t.Errorf("%d retries after %v, want 2 after at least the 2 s asked", rc.Retries(), waited)
	}
	check("through 429s", got, engineRollouts(w2)[:3])
	// Errors name the server and the prompt.
	bad := &Client{URLs: []string{c.URLs[0]}, APIKey: "k"}
	_, err = bad.Rollout(context.Background(), []grpo.Prompt{{Tokens: []int32{1, 500}}}, p)
	if err == nil || !strings.Contains(err.Error(), "prompt 0 on http://") || !strings.Contains(err.Error(), "HTTP 400") {
		t.Errorf("bad prompt: %v", err)
	}
	if err := (&Client{URLs: c.URLs, APIKey: "wrong"}).PushWeights(context.Background(), w1, 8); err == nil || !strings.Contains(err.Error(), "401") {
		t.Errorf("push with a wrong key: %v", err)
	}
	if _, err := New([]string{"localhost:8000"}, ""); err == nil {
		t.Error("a URL without a scheme was accepted")
	}
}
