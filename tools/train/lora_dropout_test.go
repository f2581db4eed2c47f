package main

import (
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/prolong-rl/prolong/checkpoints"
	"github.com/prolong-rl/prolong/grpo"
	"github.com/prolong-rl/prolong/grpo/modeldir"
)

// TestLoRADropoutRun: two runs of 2 steps with --lora-rank 4 --lora-dropout 0.1 end at the
// same adapters, bit for bit (the masks come from the seed, the step and the micro-batch), and
// at other adapters than the same run with --lora-dropout 0; the exported adapter_config.json
// says lora_dropout 0.1.
func TestLoRADropoutRun(t *testing.T) {
	args := []string{"--quiet", "--seed", "4", "--steps", "2", "--sft-steps", "40", "--sft-lr", "3e-3", "--cot", "--eval-every", "2",
		"--eval-size", "10", "--prompts", "4", "--n", "8", "--train-problems", "100", "--eval-samples", "2",
		"--lora-rank", "4", "--lora-alpha", "8", "--lr", "5e-3", "--lora-base-dtype", "fp32"}
	hash := func(dropout string) (string, string) {
		dir := t.TempDir()
		if err := runArgs(t, append(args, "--out", dir, "--lora-dropout", dropout)...); err != nil {
			t.Fatal(err)
		}
		st, err := checkpoints.LoadRunState(filepath.Join(dir, grpo.StateDir), checkpoints.Latest)
		if err != nil {
			t.Fatal(err)
		}
		if st.Step != 2 || st.Adapters == nil {
			t.Fatalf("run state of step %d, adapters %v", st.Step, st.Adapters != nil)
		}
		h := sha256.New()
		for _, n := range slices.Sorted(maps.Keys(st.Adapters)) {
			h.Write([]byte(n))
			h.Write(f32bytes(st.Adapters[n].Data))
		}
		recs, err := grpo.ReadMetrics(filepath.Join(dir, "metrics.jsonl"))
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range recs[1:] {
			if r.OptimizerUpdates == 0 {
				t.Fatalf("step %d made no update: the comparison would prove nothing", r.Step)
			}
		}
		return fmt.Sprintf("%x", h.Sum(nil)), dir
	}
	a, dir := hash("0.1")
	b, _ := hash("0.1")
	c, _ := hash("0")
	t.Logf("adapter hashes: dropout 0.1 %s and %s, dropout 0 %s", a[:16], b[:16], c[:16])
	if a != b {
		t.Error("two runs with --lora-dropout 0.1 end at different adapters")
	}
	if a == c {
		t.Error("--lora-dropout 0.1 ends at the adapters of --lora-dropout 0: no dropout applied")
	}
	matches, _ := filepath.Glob(filepath.Join(dir, "checkpoints", "step-*", modeldir.AdapterDir, modeldir.AdapterConfigFile))
	if len(matches) == 0 {
		t.Fatal("no exported adapter_config.json")
	}
	raw, err := os.ReadFile(matches[len(matches)-1])
	if err != nil {
		t.Fatal(err)
	}
	var ac struct {
		LoRADropout float64 `json:"lora_dropout"`
	}
	if err := json.Unmarshal(raw, &ac); err != nil || ac.LoRADropout != 0.1 {
		t.Errorf("%s: lora_dropout %v (%v), want 0.1", matches[len(matches)-1], ac.LoRADropout, err)
	}
}
