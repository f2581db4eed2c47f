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

	"github.com/prolong-rl/prolong/engine"
	"github.com/prolong-rl/prolong/grpo"
	"github.com/prolong-rl/prolong/grpo/remote/remotetest"
)

// TestRemoteEqualsEngine: rollouts from two rollout servers (both used) equal the in-process
// engine's for the same seed, token for token and log-prob for log-prob; after PushWeights they
// equal the engine's on the new weights and report its version; through 429s the client waits
// the Retry-After asked and gets the same rollouts; errors name the server and the prompt.
func TestRemoteEqualsEngine(t *testing.T) {
	cfg, w1, dir := tinyModel(t)
	c, err := New(remotetest.Start(t, dir, 2, "--max-concurrent", "4"), "k")
	if err != nil {
		t.Fatal(err)
	}
	prompts, p := testPrompts(12), testSampling()
	engineRollouts := func(w map[string]engine.HostTensor) [][]engine.Sample {
		return engineOn(t, newModel(t, cfg, w, engine.F32), prompts, p)
	}
	got, err := c.Rollout(context.Background(), prompts, p)
	if err != nil {
		t.Fatal(err)
	}
	checkRollouts(t, "version 1", got, engineRollouts(w1))
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
	checkRollouts(t, "after the push", got, engineRollouts(w2))
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
	checkRollouts(t, "through 429s", got, engineRollouts(w2)[:3])
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

// TestPushInComputeDType: a --dtype bf16 server gets its linear weights as bf16 (GET
// /v1/weights says which), about half the bytes, and serves exactly what it serves when pushed
// fp32 — tokens and log-probs to the bit, both equal to the in-process engine on bf16 weights —
// since it rounds every linear weight to bf16 as it loads it. An fp32 server, and a server that
// does not answer GET /v1/weights (one from before it, here behind a front that answers 404),
// get every weight as F32.
func TestPushInComputeDType(t *testing.T) {
	cfg, w1, dir := tinyModel(t)
	bf16 := remotetest.Start(t, dir, 2, "--dtype", "bf16")
	f32 := remotetest.Start(t, dir, 1)
	// The server says what it computes each weight in.
	req, _ := http.NewRequest("GET", bf16[0]+"/v1/weights", nil)
	req.Header.Set("Authorization", "Bearer k")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	info, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{`"dtype":"bf16"`, `"model.layers.0.self_attn.q_proj.weight":"BF16"`, `"lm_head.weight":"BF16"`,
		`"model.embed_tokens.weight":"F32"`, `"model.norm.weight":"F32"`, `"model.layers.1.self_attn.q_proj.bias":"F32"`} {
		if !strings.Contains(string(info), want) {
			t.Errorf("GET /v1/weights: %s lacks %s", info, want)
		}
	}
	// The servers of before: GET /v1/weights is not there.
	target, _ := url.Parse(bf16[0])
	proxy := httputil.NewSingleHostReverseProxy(target)
	old := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == "GET" && r.URL.Path == "/v1/weights" {
			http.NotFound(w, r)
			return
		}
		proxy.ServeHTTP(w, r)
	}))
	defer old.Close()

	// Data bytes of the weights in fp32, and with the linear weights in bf16.
	var dataF32, dataBF16 int
	for _, s := range engine.NewWeightTable(cfg).Specs {
		n := len(w1[s.Name].Data)
		dataF32 += 4 * n
		dataBF16 += 4 * n
		if s.Role == engine.RoleLinear {
			dataBF16 -= 2 * n
		}
	}
	w2 := engine.RandomWeights(cfg, 2, 0.3)
	clients := map[string]*Client{"fp32 push": {URLs: []string{old.URL}, APIKey: "k"}, "bf16 push": {URLs: []string{bf16[1]}, APIKey: "k"},
		"fp32 server": {URLs: f32, APIKey: "k"}}
	wantData := map[string]int{"fp32 push": dataF32, "bf16 push": dataBF16, "fp32 server": dataF32}
	prompts, p := testPrompts(6), testSampling()
	got := map[string][][]engine.Sample{}
	for name, c := range clients {
		if err := c.PushWeights(context.Background(), w2, 0); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		header := int(c.PushedBytes()) - wantData[name]
		if header <= 0 || header > 16<<10 {
			t.Errorf("%s: %d bytes pushed, want the %d bytes of data and a header", name, c.PushedBytes(), wantData[name])
		}
		if got[name], err = c.Rollout(context.Background(), prompts, p); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("bytes per push: %d with fp32, %d with bf16 linear weights (%.2f)", clients["fp32 push"].PushedBytes(),
		clients["bf16 push"].PushedBytes(), float64(clients["bf16 push"].PushedBytes())/float64(clients["fp32 push"].PushedBytes()))
	bf, fp := engineOn(t, newModel(t, cfg, w2, engine.BF16), prompts, p), engineOn(t, newModel(t, cfg, w2, engine.F32), prompts, p)
	for _, tc := range []struct {
		a, b string
		want [][]engine.Sample
	}{{"fp32 push", "bf16 push", bf}, {"fp32 server", "fp32 server", fp}} {
		for i := range tc.want {
			for j := range tc.want[i] {
				x, y, w := got[tc.a][i][j], got[tc.b][i][j], tc.want[i][j]
				for _, s := range []engine.Sample{x, y} {
					if !slices.Equal(s.Tokens, w.Tokens) || !slices.Equal(s.LogProbs, w.LogProbs) {
						t.Fatalf("%s / %s: prompt %d sample %d: %v %v, engine %v %v", tc.a, tc.b, i, j, s.Tokens, s.LogProbs, w.Tokens, w.LogProbs)
					}
				}
			}
		}
	}
	// The bf16 server's rollouts are not the fp32 model's (else the check above proves nothing).
	if sameLogProbs(bf, fp) {
		t.Fatal("bf16 and fp32 weights give the same log-probs: the test cannot tell the pushes apart")
	}
}
