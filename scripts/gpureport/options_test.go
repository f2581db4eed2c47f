package main

import (
	"os"
	"regexp"
	"strings"
	"testing"
)

// TestOptionsSection: each option's verdict from made-up pieces of a check: a run that failed,
// a GPU test that did not run, a win, a loss, a pass without a speed figure.
func TestOptionsSection(t *testing.T) {
	pass := map[string]any{"pass": true}
	fail := map[string]any{"pass": false}
	conf := map[string][]map[string]any{
		"tiled-attention":   {pass, pass},
		"decode-attn":       {pass, fail},
		"bf16-matmul-fused": {pass, pass, pass},
		"cublaslt":          {pass},
		"uninit-poison":     {pass},
		"top-logprobs":      {pass, pass},
		"split-sample":      {pass},
	}
	log := "=== RUN   TestGPUDecodeGraphs\n--- PASS: TestGPUDecodeGraphs (1.20s)\n" +
		"--- FAIL: TestGPUCublasLtMatchesGemmEx (3.00s)\n--- PASS: TestGPUTopLogProbs (2.00s)\n"
	bench := map[string]any{
		"decode_b1_tok_s": 244.0, "decode_b1_graphs_tok_s": 400.0, "decode_b1_split_sample_tok_s": 243.0,
		"train_tok_s": 24000.0, "train_tiled_attention_tok_s": 30000.0, "train_cublaslt_tok_s": 25000.0,
		"rollout_top_logprobs": []any{map[string]any{"ranked": "none", "seconds": 2.0},
			map[string]any{"ranked": "host", "seconds": 6.0}, map[string]any{"ranked": "device", "seconds": 2.4}},
		"score_8x1024_s": 0.05, "score_8x1024_large_chunks_s": 0.04,
	}
	sec := optionsSection(conf, log, bench)
	for name, want := range map[string]string{
		"tiled-attention":     "passes and wins",
		"bf16-kv":             "not verified: conformance run decode-attn (1 failed) failed",
		"fused-mlp":           "passes; no speed figure",
		"decode-graphs":       "passes and wins",
		"cublaslt":            "not verified: TestGPUCublasLtMatchesGemmEx FAIL failed",
		"fold-bf16":           "not verified: TestGPUFoldBF16 did not run",
		"device-top-logprobs": "passes and wins",
		"split-sample":        "passes, does not win",
		"large-logit-chunks":  "passes and wins",
		"uninit-alloc":        "passes; no speed figure",
	} {
		ev, _ := sec[name].(map[string]any)
		if got, _ := ev["verdict"].(string); !strings.HasPrefix(got, want) {
			t.Errorf("%s: verdict %q, want %q (%v)", name, got, want, ev)
		}
	}
	if got := sec["device-top-logprobs"].(map[string]any)["speedup"]; !strings.HasPrefix(got.(string), "2.500x") {
		t.Errorf("device-top-logprobs speed-up %v, want 2.500x", got)
	}
	if len(sec) != len(optionTable) {
		t.Errorf("%d options, want %d", len(sec), len(optionTable))
	}
	// Nothing ran: no option passes.
	for name, ev := range optionsSection(nil, "", nil) {
		if v := ev.(map[string]any)["verdict"].(string); !strings.HasPrefix(v, "not verified") {
			t.Errorf("%s with nothing run: %q", name, v)
		}
	}
}

// TestOptionTableCoversEnvOptions: every name PROLONG_CUDA_OPTIONS takes (cuda/register.go's
// envOptions, read from the source) has its row in optionTable, and every row is such a name.
func TestOptionTableCoversEnvOptions(t *testing.T) {
	src, err := os.ReadFile("../../cuda/register.go")
	if err != nil {
		t.Fatal(err)
	}
	body := string(src)
	i := strings.Index(body, "var envOptions = []envOption{")
	j := strings.Index(body[i:], "\n}\n")
	if i < 0 || j < 0 {
		t.Fatal("cuda/register.go has no envOptions list")
	}
	names := map[string]bool{}
	for _, m := range regexp.MustCompile(`\{"([a-z0-9-]+)", func`).FindAllStringSubmatch(body[i:i+j], -1) {
		names[m[1]] = true
	}
	if len(names) < 10 {
		t.Fatalf("read %d names from envOptions: %v", len(names), names)
	}
	for _, o := range optionTable {
		if !names[o.name] {
			t.Errorf("optionTable has %q, which PROLONG_CUDA_OPTIONS does not take", o.name)
		}
		delete(names, o.name)
	}
	for n := range names {
		t.Errorf("PROLONG_CUDA_OPTIONS takes %q, which optionTable lacks", n)
	}
}
