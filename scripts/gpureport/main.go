// Command gpureport merges the pieces of a GPU check (scripts/gpu-check.sh) in DIR —
// nvidia-smi.csv, conformance.json and .log, nccl.json and .log (nccl-ranks.* where the machine has
// several GPUs), bench.json, train.log, transformers.jsonl — into one JSON report on stdout, with
// a summary: conformance cases passed and failed (and the failures themselves), and for each
// CUDA path that is off by default whether the check shows it passes and wins ("options").
package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: gpureport DIR")
		os.Exit(2)
	}
	dir := os.Args[1]
	rep := map[string]any{}
	read := func(name string) []byte {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			rep["missing_"+strings.ReplaceAll(name, ".", "_")] = err.Error()
		}
		return b
	}
	if b := read("nvidia-smi.csv"); b != nil {
		rep["nvidia_smi"] = strings.TrimSpace(string(b))
	}
	var conf map[string][]map[string]any
	if b := read("conformance.json"); b != nil {
		if err := json.Unmarshal(b, &conf); err != nil {
			rep["conformance_error"] = err.Error()
		} else {
			summary := map[string]any{}
			for setting, results := range conf {
				var failed []map[string]any
				for _, r := range results {
					if p, _ := r["pass"].(bool); !p {
						failed = append(failed, r)
					}
				}
				summary[setting] = map[string]any{"cases": len(results), "failed": len(failed), "failures": failed}
			}
			rep["conformance"] = summary
		}
	}
	var logText string
	if b := read("conformance.log"); b != nil {
		logText = string(b)
		var fails []string
		for _, l := range strings.Split(string(b), "\n") {
			if strings.Contains(l, "--- FAIL") || strings.Contains(l, "panic") {
				fails = append(fails, strings.TrimSpace(l))
			}
		}
		if len(fails) > 40 {
			fails = append(fails[:40], fmt.Sprintf("... %d more", len(fails)-40))
		}
		rep["conformance_log_failures"] = fails
	}
	rep["nccl"] = ncclSection(dir)
	var bench map[string]any
	if b := read("bench.json"); b != nil {
		if json.Unmarshal(b, &bench) == nil {
			rep["bench"] = bench
		}
	}
	rep["options"] = optionsSection(conf, logText, bench)
	if b := read("train.log"); b != nil {
		lines := strings.Split(strings.TrimSpace(string(b)), "\n")
		rep["train_log_tail"] = lines[max(0, len(lines)-15):]
	}
	if b := read("transformers.jsonl"); b != nil { // scripts/check_transformers.py, a line per export
		var checks []any
		for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n") {
			var v any
			if json.Unmarshal([]byte(l), &v) == nil {
				checks = append(checks, v)
			}
		}
		rep["transformers"] = checks
	}
	if b, err := os.ReadFile(filepath.Join(dir, "transformers.err")); err == nil && len(b) > 0 {
		lines := strings.Split(strings.TrimSpace(string(b)), "\n")
		rep["transformers_stderr_tail"] = lines[max(0, len(lines)-10):]
	}
	out, _ := json.MarshalIndent(rep, "", " ")
	fmt.Println(string(out))
}

// ncclSection is the NCCL check (cuda's TestGPUNCCL): per run, one rank ("one_rank") and N ranks
// where the machine has several GPUs ("ranks"), what rank 0 wrote (checks, all-reduce bus
// bandwidth) and the log's lines from the test (its log, failures, verdict, the launcher).
func ncclSection(dir string) map[string]any {
	sec := map[string]any{}
	for key, base := range map[string]string{"one_rank": "nccl", "ranks": "nccl-ranks"} {
		logText, err := os.ReadFile(filepath.Join(dir, base+".log"))
		if err != nil {
			if key == "one_rank" {
				sec[key] = map[string]any{"missing": err.Error()}
			}
			continue // one GPU: no N-rank run
		}
		run := map[string]any{}
		if b, err := os.ReadFile(filepath.Join(dir, base+".json")); err == nil {
			var v any
			if json.Unmarshal(b, &v) == nil {
				run["result"] = v
			}
		}
		var lines []string
		for _, l := range strings.Split(string(logText), "\n") {
			t := strings.TrimSpace(l)
			if strings.HasPrefix(t, "--- ") || strings.HasPrefix(t, "launcher:") || strings.HasPrefix(t, "FAIL") ||
				strings.HasPrefix(t, "PASS") || strings.Contains(t, "_test.go:") || strings.Contains(t, "panic") {
				lines = append(lines, t)
			}
		}
		if len(lines) > 40 {
			lines = append(lines[:40], fmt.Sprintf("... %d more", len(lines)-40))
		}
		run["log"] = lines
		sec[key] = run
	}
	return sec
}
