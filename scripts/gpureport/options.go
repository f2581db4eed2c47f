package main

import (
	"fmt"
	"regexp"
	"strings"
)

// optionEvidence says, for one of the CUDA backend's paths that are off by default
// (PROLONG_CUDA_OPTIONS names), which parts of the GPU check show whether it passes (conformance
// runs that switch it on, GPU tests) and whether it wins (a bench figure as a ratio over the
// default path's; higher is better).
type optionEvidence struct {
	name  string
	runs  []string                                   // conformance settings (cuda's TestConformance runs)
	tests []string                                   // GPU tests (conformance.log)
	ratio func(bench map[string]any) (float64, bool) // the option's speed over the default's
	note  string                                     // what the ratio is
}

// benchRatio is bench[num] / bench[den] (rates), or den/num with inverse (times).
func benchRatio(num, den string, inverse bool) func(map[string]any) (float64, bool) {
	return func(b map[string]any) (float64, bool) {
		n, ok1 := b[num].(float64)
		d, ok2 := b[den].(float64)
		if !ok1 || !ok2 || n <= 0 || d <= 0 {
			return 0, false
		}
		if inverse {
			return d / n, true
		}
		return n / d, true
	}
}

// topLogProbsRatio is the rollout's time with the rows ranked on the host over its time with
// them ranked on the device (bench rollout_top_logprobs).
func topLogProbsRatio(b map[string]any) (float64, bool) {
	rows, _ := b["rollout_top_logprobs"].([]any)
	sec := map[string]float64{}
	for _, r := range rows {
		m, _ := r.(map[string]any)
		name, _ := m["ranked"].(string)
		s, _ := m["seconds"].(float64)
		sec[name] = s
	}
	if sec["host"] <= 0 || sec["device"] <= 0 {
		return 0, false
	}
	return sec["host"] / sec["device"], true
}

// fusedRuns: the fused layer ops are on together in the "bf16-matmul-fused" run.
var fusedRuns = []string{"bf16-matmul-fused"}

var optionTable = []optionEvidence{
	{"tiled-attention", []string{"tiled-attention"}, nil, benchRatio("train_tiled_attention_tok_s", "train_tok_s", false), "training step tok/s"},
	{"bf16-kv", []string{"decode-attn"}, nil, nil, "see bench decode_b1_long"},
	{"split-kv", []string{"decode-attn"}, nil, nil, "see bench decode_b1_long"},
	{"fused-add-rmsnorm", fusedRuns, nil, nil, ""},
	{"matmuls", fusedRuns, nil, nil, ""},
	{"fused-mlp", fusedRuns, nil, nil, ""},
	{"fused-qkv-rope", fusedRuns, nil, nil, ""},
	{"multi-tensor-adamw", fusedRuns, nil, nil, ""},
	{"decode-graphs", nil, []string{"TestGPUDecodeGraphs"}, benchRatio("decode_b1_graphs_tok_s", "decode_b1_tok_s", false), "batch-1 decode tok/s"},
	{"cublaslt", []string{"cublaslt"}, []string{"TestGPUCublasLtMatchesGemmEx"}, benchRatio("train_cublaslt_tok_s", "train_tok_s", false), "training step tok/s"},
	{"uninit-alloc", []string{"uninit-poison"}, nil, nil, ""},
	{"fold-bf16", fusedRuns, []string{"TestGPUFoldBF16"}, nil, ""},
	{"device-top-logprobs", []string{"top-logprobs"}, []string{"TestGPUTopLogProbs"}, topLogProbsRatio, "rollout with 20 top log-probs a token, time on the host / on the device"},
	{"split-sample", []string{"split-sample"}, nil, benchRatio("decode_b1_split_sample_tok_s", "decode_b1_tok_s", false), "batch-1 decode tok/s"},
	{"large-logit-chunks", nil, nil, benchRatio("score_8x1024_large_chunks_s", "score_8x1024_s", true), "scoring 8 x 1024 tokens, time with 64 MiB / with 1 GiB"},
}

// winMargin is the speed-up below which an option that passes is not called a win (timing noise).
const winMargin = 1.02

// optionsSection gives each option's evidence and a verdict: "not verified" (a run or test
// failed, or did not run; an option that only changes how much work an op call gets, with no
// run of its own, needs its bench figure), "passes and wins" (ratio above winMargin: switch it on by default),
// "passes, does not win", or "passes; no speed figure". conf is conformance.json (results by
// run), logText conformance.log, bench bench.json.
func optionsSection(conf map[string][]map[string]any, logText string, bench map[string]any) map[string]any {
	sec := map[string]any{}
	for _, o := range optionTable {
		ev := map[string]any{}
		var missing, failed []string
		for _, run := range o.runs {
			results, ok := conf[run]
			if !ok || len(results) == 0 {
				missing = append(missing, "conformance run "+run)
				continue
			}
			bad := 0
			for _, r := range results {
				if p, _ := r["pass"].(bool); !p {
					bad++
				}
			}
			ev["conformance_"+run] = fmt.Sprintf("%d of %d cases pass", len(results)-bad, len(results))
			if bad > 0 {
				failed = append(failed, fmt.Sprintf("conformance run %s (%d failed)", run, bad))
			}
		}
		for _, test := range o.tests {
			st := testStatus(logText, test)
			ev[test] = st
			switch st {
			case "PASS":
			case "absent":
				missing = append(missing, test)
			default:
				failed = append(failed, test+" "+st)
			}
		}
		ratio, haveRatio := 0.0, false
		if o.ratio != nil && bench != nil {
			ratio, haveRatio = o.ratio(bench)
		}
		if haveRatio {
			ev["speedup"] = fmt.Sprintf("%.3fx (%s)", ratio, o.note)
		} else if o.note != "" {
			ev["speedup"] = "no figure (" + o.note + ")"
		}
		if o.ratio != nil && !haveRatio && len(o.runs)+len(o.tests) == 0 {
			missing = append(missing, "its bench figure") // nothing else checks it
		}
		switch {
		case len(failed) > 0:
			ev["verdict"] = "not verified: " + strings.Join(failed, ", ") + " failed"
		case len(missing) > 0:
			ev["verdict"] = "not verified: " + strings.Join(missing, ", ") + " did not run"
		case !haveRatio:
			ev["verdict"] = "passes; no speed figure"
		case ratio > winMargin:
			ev["verdict"] = "passes and wins: switch it on by default"
		default:
			ev["verdict"] = "passes, does not win"
		}
		sec[o.name] = ev
	}
	return sec
}

// testStatus is PASS, FAIL or SKIP as go test -v printed it for the top-level test name in
// logText, or "absent".
func testStatus(logText, name string) string {
	m := regexp.MustCompile(`(?m)^--- (PASS|FAIL|SKIP): ` + regexp.QuoteMeta(name) + ` `).FindStringSubmatch(logText)
	if m == nil {
		return "absent"
	}
	return m[1]
}
