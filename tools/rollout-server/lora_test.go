package main

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/prolong-rl/prolong/checkpoints"
	"github.com/prolong-rl/prolong/engine"
	"github.com/prolong-rl/prolong/grpo/modeldir"
)

// loraFixture writes a random PEFT adapter (rank 4, alpha 8, every linear layer, B nonzero) for
// the tiny model of modelDir(seed), and the base with it merged (engine.MergeLoRA) as a model
// directory. It returns the base, adapter and merged directories.
func loraFixture(t *testing.T, seed uint64) (base, adapter, merged string) {
	t.Helper()
	base, cfg, w := modelDir(t, seed, false)
	lc := engine.LoRAConfig{Rank: 4, Alpha: 8, Seed: seed}
	ad, err := engine.InitLoRA(cfg, lc)
	if err != nil {
		t.Fatal(err)
	}
	r := rand.New(rand.NewPCG(seed, 7))
	for name, h := range ad {
		if strings.HasSuffix(name, ".lora_B.weight") {
			for i := range h.Data {
				h.Data[i] = float32(r.NormFloat64() * 0.3)
			}
		}
	}
	adapter = filepath.Join(t.TempDir(), "adapter")
	if err := modeldir.WriteAdapter(adapter, cfg, lc, ad, base); err != nil {
		t.Fatal(err)
	}
	mw, err := engine.MergeLoRA(cfg, lc, w, ad)
	if err != nil {
		t.Fatal(err)
	}
	merged = t.TempDir()
	if err := checkpoints.Save(merged, cfg, mw, checkpoints.SaveOptions{}); err != nil {
		t.Fatal(err)
	}
	return base, adapter, merged
}

func loraServer(t *testing.T, dir string, loras ...string) string {
	t.Helper()
	o := testOptions(dir)
	o.loras = loras
	s, ts := startServer(t, o)
	t.Cleanup(s.closeAdapters)
	return ts.URL
}

// closeLogprobs reports whether two log-prob lists agree to 1e-4 (the adapter adds s·(x·Aᵀ)·Bᵀ
// in fp32 where the merged model multiplies by W + s·B·A rounded once).
func closeLogprobs(a, b []float32) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if math.Abs(float64(a[i]-b[i])) > 1e-4*max(1, math.Abs(float64(b[i]))) {
			return false
		}
	}
	return true
}

// TestLoRAServedEqualsMerged is issue 34's check: a server answering with model NAME (--lora
// NAME=DIR) gives the tokens and log-probs of a server loaded with the merged weights, sampled
// and greedy, generated and echoed; the base name keeps serving the base.
func TestLoRAServedEqualsMerged(t *testing.T) {
	base, adapter, merged := loraFixture(t, 31)
	url := loraServer(t, base, "tuned="+adapter)
	mergedURL := loraServer(t, merged)
	prompts := []string{`[5, 9, 14, 3]`, `[[7, 7, 8], [20, 21, 22, 23, 24]]`}
	for _, p := range prompts {
		for _, smp := range []string{`"temperature": 0`, `"temperature": 1, "seed": 4, "n": 3`} {
			body := func(model string) string {
				return fmt.Sprintf(`{"model": %q, "prompt": %s, "max_tokens": 12, "logprobs": 0, "ignore_eos": true, %s}`, model, p, smp)
			}
			got, _ := completion(t, url, body("tuned"))
			want, _ := completion(t, mergedURL, body(""))
			baseOut, _ := completion(t, url, body(filepath.Base(base)))
			if len(got) != len(want) {
				t.Fatalf("%s %s: %d choices, merged %d", p, smp, len(got), len(want))
			}
			differs := false
			for i := range got {
				if !slices.Equal(got[i].TokenIDs, want[i].TokenIDs) || !closeLogprobs(got[i].Logprobs.TokenLogprobs, want[i].Logprobs.TokenLogprobs) {
					t.Errorf("%s %s choice %d: adapter %v %v, merged %v %v", p, smp, i, got[i].TokenIDs, got[i].Logprobs.TokenLogprobs, want[i].TokenIDs, want[i].Logprobs.TokenLogprobs)
				}
				if !slices.Equal(baseOut[i].TokenIDs, want[i].TokenIDs) || !closeLogprobs(baseOut[i].Logprobs.TokenLogprobs, want[i].Logprobs.TokenLogprobs) {
					differs = true
				}
			}
			if !differs {
				t.Errorf("%s %s: the base model answers as the merged one: the adapter changes nothing", p, smp)
			}
		}
	}
	seq := `[4, 8, 15, 16, 23, 12]`
	echo := func(u, model string) []float32 {
		lps := echoLogprobs(t, u, fmt.Sprintf(`{"model": %q, "prompt": %s, "max_tokens": 1, "temperature": 0, "echo": true, "logprobs": 2}`, model, seq))
		var out []float32
		for _, p := range lps[1:] {
			out = append(out, *p)
		}
		return out
	}
	if g, w := echo(url, "tuned"), echo(mergedURL, ""); !closeLogprobs(g, w) {
		t.Errorf("echo log-probs: adapter %v, merged %v", g, w)
	}
}

// TestLoRAModelsAndFlagErrors: /v1/models lists each adapter with the base as its parent, and
// a --lora value that is not NAME=DIR, a directory without an adapter, an adapter of another
// shape or a name taken fail at startup naming the flag value, file and tensor.
func TestLoRAModelsAndFlagErrors(t *testing.T) {
	base, adapter, _ := loraFixture(t, 32)
	url := loraServer(t, base, "tuned="+adapter)
	req, _ := http.NewRequest("GET", url+"/v1/models", nil)
	req.Header.Set("Authorization", "Bearer sekret")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var list struct {
		Data []struct {
			ID     string  `json:"id"`
			Parent *string `json:"parent"`
			Root   string  `json:"root"`
		} `json:"data"`
	}
	json.NewDecoder(resp.Body).Decode(&list)
	resp.Body.Close()
	bname := filepath.Base(base)
	if len(list.Data) != 2 || list.Data[0].ID != bname || list.Data[0].Parent != nil ||
		list.Data[1].ID != "tuned" || list.Data[1].Parent == nil || *list.Data[1].Parent != bname || list.Data[1].Root != adapter {
		t.Errorf("/v1/models: %+v", list.Data)
	}

	// An adapter of rank 4 whose q_proj A has a wrong shape.
	bad := filepath.Join(t.TempDir(), "bad")
	cfg := tinyConfig(len(charTokens))
	lc := engine.LoRAConfig{Rank: 4, Alpha: 8}
	ad, _ := engine.InitLoRA(cfg, lc)
	keyed := map[string]engine.HostTensor{}
	for n, h := range ad {
		keyed[engine.LoRAPrefix+n] = h
	}
	q := engine.LoRAPrefix + "model.layers.1.self_attn.q_proj.lora_A.weight"
	keyed[q] = engine.HostTensor{Shape: []int{4, 31}, Data: make([]float32, 4*31)}
	if err := os.MkdirAll(bad, 0o755); err != nil {
		t.Fatal(err)
	}
	cj, _ := json.Marshal(modeldir.NewAdapterConfig(lc, base))
	os.WriteFile(filepath.Join(bad, modeldir.AdapterConfigFile), cj, 0o644)
	if err := checkpoints.WriteSafetensors(filepath.Join(bad, modeldir.AdapterWeightsFile), keyed, checkpoints.F32, nil); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		loras []string
		want  []string
	}{
		{[]string{"tuned"}, []string{`--lora "tuned"`, "NAME=DIR"}},
		{[]string{"=" + adapter}, []string{"NAME=DIR"}},
		{[]string{"x=" + base}, []string{"--lora x=" + base, modeldir.AdapterConfigFile}},
		{[]string{"x=" + bad}, []string{"--lora x=" + bad, "model.layers.1.self_attn.q_proj.lora_A.weight", "[4 31]"}},
		{[]string{"x=" + adapter, "x=" + adapter}, []string{"--lora x=" + adapter, "already been loaded"}},
		{[]string{bname + "=" + adapter}, []string{"base model"}},
	} {
		o := testOptions(base)
		o.loras = tc.loras
		s, err := newServer(o)
		if err == nil {
			s.closeAdapters()
			s.sched.Close()
			t.Errorf("--lora %v: no error", tc.loras)
			continue
		}
		for _, w := range tc.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("--lora %v: %v, want it to say %q", tc.loras, err, w)
			}
		}
	}
}

// TestLoadUnloadLoRA: POST /v1/load_lora_adapter serves an adapter as vLLM's does (then
// equal to the merged model), /v1/unload_lora_adapter stops it; each refuses what vLLM
// refuses, with its status, and both need the API key.
func TestLoadUnloadLoRA(t *testing.T) {
	base, adapter, merged := loraFixture(t, 33)
	url := loraServer(t, base)
	mergedURL := loraServer(t, merged)
	call := func(path, key, body string) (int, string) {
		t.Helper()
		req, _ := http.NewRequest("POST", url+path, strings.NewReader(body))
		if key != "" {
			req.Header.Set("Authorization", "Bearer "+key)
		}
		req.Header.Set("Content-Type", "application/json")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	gen := `{"model": "tuned", "prompt": [3, 1, 4, 1, 5], "max_tokens": 8, "temperature": 0, "logprobs": 0, "ignore_eos": true}`
	m0 := scrapeMetrics(t, url)
	for _, tc := range []struct {
		what, path, key, body string
		code                  int
		says                  string
	}{
		{"no key", "/v1/load_lora_adapter", "", fmt.Sprintf(`{"lora_name": "tuned", "lora_path": %q}`, adapter), 401, "API key"},
		{"wrong key", "/v1/unload_lora_adapter", "nope", `{"lora_name": "tuned"}`, 401, "API key"},
		{"no path", "/v1/load_lora_adapter", "sekret", `{"lora_name": "tuned"}`, 400, "Both 'lora_name' and 'lora_path' must be provided."},
		{"not JSON", "/v1/load_lora_adapter", "sekret", `{"lora_name": `, 400, "/v1/load_lora_adapter body"},
		{"no adapter there", "/v1/load_lora_adapter", "sekret", fmt.Sprintf(`{"lora_name": "tuned", "lora_path": %q}`, base), 404, modeldir.AdapterConfigFile},
		{"missing dir", "/v1/load_lora_adapter", "sekret", `{"lora_name": "tuned", "lora_path": "/nonexistent/adapter"}`, 404, "/nonexistent/adapter"},
		{"unknown name", "/v1/unload_lora_adapter", "sekret", `{"lora_name": "tuned"}`, 404, "The lora adapter 'tuned' cannot be found."},
		{"base name", "/v1/load_lora_adapter", "sekret", fmt.Sprintf(`{"lora_name": %q, "lora_path": %q}`, filepath.Base(base), adapter), 400, "base model"},
		{"load", "/v1/load_lora_adapter", "sekret", fmt.Sprintf(`{"lora_name": "tuned", "lora_path": %q}`, adapter), 200, "Success: LoRA adapter 'tuned' added successfully."},
		{"load again", "/v1/load_lora_adapter", "sekret", fmt.Sprintf(`{"lora_name": "tuned", "lora_path": %q}`, adapter), 400, "the lora adapter 'tuned' has already been loaded"},
	} {
		code, body := call(tc.path, tc.key, tc.body)
		if code != tc.code || !strings.Contains(body, tc.says) {
			t.Errorf("%s: HTTP %d %s, want %d saying %q", tc.what, code, body, tc.code, tc.says)
		}
	}
	got, _ := completion(t, url, gen)
	want, _ := completion(t, mergedURL, strings.Replace(gen, `"tuned"`, `""`, 1))
	if !slices.Equal(got[0].TokenIDs, want[0].TokenIDs) || !closeLogprobs(got[0].Logprobs.TokenLogprobs, want[0].Logprobs.TokenLogprobs) {
		t.Errorf("loaded adapter: %v %v, merged %v %v", got[0].TokenIDs, got[0].Logprobs.TokenLogprobs, want[0].TokenIDs, want[0].Logprobs.TokenLogprobs)
	}
	// /metrics counts the adapter's scheduler in the totals, and on its own by name.
	const tokens = "prolong_generated_tokens_total"
	m1 := scrapeMetrics(t, url)
	for series, want := range map[string]float64{
		"prolong_lora_adapters_loaded": 1, `prolong_lora_generated_tokens_total{adapter="tuned"}`: 8,
		`prolong_lora_running_sequences{adapter="tuned"}`: 0, tokens: m0[tokens] + 8,
	} {
		if got, ok := m1[series]; !ok || got != want {
			t.Errorf("/metrics after 8 tokens on the adapter: %s = %v (present %v), want %v", series, got, ok, want)
		}
	}
	if code, body := call("/v1/unload_lora_adapter", "sekret", `{"lora_name": "tuned"}`); code != 200 || body != "Success: LoRA adapter 'tuned' removed successfully." {
		t.Errorf("unload: HTTP %d %s", code, body)
	}
	m2 := scrapeMetrics(t, url)
	if m2["prolong_lora_adapters_loaded"] != 0 || m2[tokens] != m1[tokens] {
		t.Errorf("/metrics after the unload: %v adapters, %v tokens in all; want 0 and still %v (a counter never goes down)",
			m2["prolong_lora_adapters_loaded"], m2[tokens], m1[tokens])
	}
	if _, ok := m2[`prolong_lora_generated_tokens_total{adapter="tuned"}`]; ok {
		t.Error("/metrics after the unload still lists the adapter's series")
	}
	if code, v, _ := post(t, url+"/v1/completions", gen); code != 404 || !strings.Contains(fmt.Sprint(v), "model_not_found") {
		t.Errorf("after unload: HTTP %d %v, want 404 model_not_found", code, v)
	}
	if code, _ := call("/v1/unload_lora_adapter", "sekret", `{"lora_name": "tuned"}`); code != 404 {
		t.Errorf("unload twice: HTTP %d, want 404", code)
	}
}

// TestLoRAFollowsWeightUpdate: after POST /v1/weights loads a new base, an adapter runs over
// it: model NAME answers as the new base with the adapter merged, at the new weight version.
func TestLoRAFollowsWeightUpdate(t *testing.T) {
	base, adapter, _ := loraFixture(t, 34)
	next, cfg, w := modelDir(t, 35, false)
	lc, ad, _, err := modeldir.ReadAdapter(adapter, cfg)
	if err != nil {
		t.Fatal(err)
	}
	mw, err := engine.MergeLoRA(cfg, lc, w, ad)
	if err != nil {
		t.Fatal(err)
	}
	merged := t.TempDir()
	if err := checkpoints.Save(merged, cfg, mw, checkpoints.SaveOptions{}); err != nil {
		t.Fatal(err)
	}
	url := loraServer(t, base, "tuned="+adapter)
	mergedURL := loraServer(t, merged)
	if code, v, _ := post(t, url+"/v1/weights", fmt.Sprintf(`{"path": %q}`, next)); code != 200 {
		t.Fatalf("update: HTTP %d %v", code, v)
	}
	gen := `{"model": %q, "prompt": [9, 2, 6, 5], "max_tokens": 8, "temperature": 0, "logprobs": 0, "ignore_eos": true}`
	got, version := completion(t, url, fmt.Sprintf(gen, "tuned"))
	want, _ := completion(t, mergedURL, fmt.Sprintf(gen, ""))
	if version != 2 || !slices.Equal(got[0].TokenIDs, want[0].TokenIDs) || !closeLogprobs(got[0].Logprobs.TokenLogprobs, want[0].Logprobs.TokenLogprobs) {
		t.Errorf("after the update: version %d, adapter %v %v, new base merged %v %v", version, got[0].TokenIDs, got[0].Logprobs.TokenLogprobs, want[0].TokenIDs, want[0].Logprobs.TokenLogprobs)
	}
}

// TestWeightsFromAdapterDir: POST /v1/weights {"path": DIR} with a PEFT adapter directory runs
// the adapter over the base from then on, under the base's name: the answers are the merged
// model's.
func TestWeightsFromAdapterDir(t *testing.T) {
	base, adapter, merged := loraFixture(t, 36)
	url := loraServer(t, base)
	mergedURL := loraServer(t, merged)
	if code, v, _ := post(t, url+"/v1/weights", fmt.Sprintf(`{"path": %q}`, adapter)); code != 200 || v["model"] != filepath.Base(base) {
		t.Fatalf("update: HTTP %d %v", code, v)
	}
	gen := `{"prompt": [9, 2, 6, 5], "max_tokens": 8, "temperature": 0, "logprobs": 0, "ignore_eos": true}`
	got, version := completion(t, url, gen)
	want, _ := completion(t, mergedURL, gen)
	if version != 2 || !slices.Equal(got[0].TokenIDs, want[0].TokenIDs) || !closeLogprobs(got[0].Logprobs.TokenLogprobs, want[0].Logprobs.TokenLogprobs) {
		t.Errorf("version %d: %v %v, merged %v %v", version, got[0].TokenIDs, got[0].Logprobs.TokenLogprobs, want[0].TokenIDs, want[0].Logprobs.TokenLogprobs)
	}
}
