package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math"
	"path/filepath"
	"slices"
	"testing"

	"github.com/prolong-rl/prolong/engine"
	"github.com/prolong-rl/prolong/tools/internal/hffixture"
	"github.com/prolong-rl/prolong/tools/internal/tooltest"
)

// TestServeHFFixtures serves the transformers 5 and 4 fixture directories (tied and untied
// Qwen2, Qwen3 with head_dim != hidden/heads, Llama 3, yarn): greedy completions are PyTorch's,
// and echo with logprobs returns the prompt's real log-probs, equal to engine.Score's and to
// the log-softmax of PyTorch's logits (the first token: null).
func TestServeHFFixtures(t *testing.T) {
	tooltest.EachHFFixture(t, func(t *testing.T, f *hffixture.Fixture, dir string) {
		s, ts := startServer(t, testOptions(dir))
		for i, p := range f.Prompts {
			body := fmt.Sprintf(`{"prompt": %s, "max_tokens": %d, "temperature": 0, "ignore_eos": true}`, ids(p), f.MaxNewTokens)
			got, _ := completion(t, ts.URL, body)
			if !slices.Equal(got[0].TokenIDs, f.Continuations[i]) {
				t.Errorf("greedy %v, PyTorch %v", got[0].TokenIDs, f.Continuations[i])
			}
		}
		seq := f.Seqs[len(f.Seqs)-1]
		body := fmt.Sprintf(`{"prompt": %s, "max_tokens": 1, "temperature": 0, "echo": true, "logprobs": 1}`, ids(seq))
		lps := echoLogprobs(t, ts.URL, body)
		if len(lps) != len(seq)+1 || lps[0] != nil {
			t.Fatalf("echo: %d log-probs for %d prompt tokens + 1, first %v", len(lps), len(seq), lps[0])
		}
		sc, err := s.sched.Model().Score(context.Background(), []engine.ScoreRequest{{Tokens: seq, Start: 1}}, 1)
		if err != nil {
			t.Fatal(err)
		}
		V := s.cfg.VocabSize
		for k := 1; k < len(seq); k++ {
			if *lps[k] != sc[0].LogProbs[k-1] {
				t.Errorf("echo log-prob %d = %g, engine.Score %g", k, *lps[k], sc[0].LogProbs[k-1])
			}
			ref := hffixture.LogSoftmax(f.Logits[len(f.Seqs)-1][(k-1)*V : k*V])[seq[k]]
			if math.Abs(float64(*lps[k])-ref) > 2*hffixture.LogitsTolerance {
				t.Errorf("echo log-prob %d = %g, PyTorch %g", k, *lps[k], ref)
			}
		}
	})
}

func ids(p []int32) string { b, _ := json.Marshal(p); return string(b) }

// echoLogprobs posts a completions request and returns choice 0's token_logprobs.
func echoLogprobs(t *testing.T, url, body string) []*float32 {
	t.Helper()
	resp := send(t, url+"/v1/completions", bytes.NewBufferString(body))
	defer resp.Body.Close()
	var out struct {
		Choices []struct {
			Logprobs struct {
				TokenLogprobs []*float32 `json:"token_logprobs"`
			} `json:"logprobs"`
		} `json:"choices"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil || resp.StatusCode != 200 || len(out.Choices) == 0 {
		t.Fatalf("HTTP %d: %v", resp.StatusCode, err)
	}
	return out.Choices[0].Logprobs.TokenLogprobs
}

// TestModelNameFollowsUpdate: after /v1/weights loads a directory, responses and /v1/models
// name that directory; a --served-model-name stays.
func TestModelNameFollowsUpdate(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "step-000100")
	if err := hffixture.WriteDir(dir, "qwen2", "tf5"); err != nil {
		t.Fatal(err)
	}
	next := filepath.Join(t.TempDir(), "step-000200")
	if err := hffixture.WriteDir(next, "qwen2", "tf4"); err != nil {
		t.Fatal(err)
	}
	_, ts := startServer(t, testOptions(dir))
	model := func() string {
		_, v, _ := post(t, ts.URL+"/v1/completions", `{"prompt": [1, 2], "max_tokens": 1}`)
		return v["model"].(string)
	}
	if m := model(); m != "step-000100" {
		t.Fatalf("model %q", m)
	}
	code, v, _ := post(t, ts.URL+"/v1/weights", fmt.Sprintf(`{"path": %q}`, next))
	if code != 200 || v["model"] != "step-000200" {
		t.Fatalf("update: %d %v", code, v)
	}
	if m := model(); m != "step-000200" {
		t.Errorf("after the update the model is %q", m)
	}
	o := testOptions(dir)
	o.name = "mine"
	_, ts2 := startServer(t, o)
	post(t, ts2.URL+"/v1/weights", fmt.Sprintf(`{"path": %q}`, next))
	_, v, _ = post(t, ts2.URL+"/v1/completions", `{"prompt": [1, 2], "max_tokens": 1}`)
	if v["model"] != "mine" {
		t.Errorf("--served-model-name became %v", v["model"])
	}
}
