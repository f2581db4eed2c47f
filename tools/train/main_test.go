package main

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/prolong-rl/prolong/grpo"
)

// TestShortRun runs the default job for a few steps and checks what the run directory holds:
// a metrics line per step (plus the step-0 evaluation), held-out evaluations, a reference
// reset, and the PNG plots.
func TestShortRun(t *testing.T) {
	dir := t.TempDir()
	o := options{out: dir, seed: 1, steps: 4, sftSteps: 20, sftLR: 3e-3, evalEvery: 2, evalSize: 20, resetEvery: 3,
		lr: 1e-4, prompts: 4, samples: 4, klCoef: grpo.DefaultKLCoef, clipHigh: grpo.DefaultClipHigh,
		trainProblems: 200, maxResponseLen: 8, quiet: true, evalTemp: 0.6, evalTopP: 0.95, evalSamples: 2}
	if err := run(context.Background(), o); err != nil {
		t.Fatal(err)
	}
	recs, err := grpo.ReadMetrics(filepath.Join(dir, "metrics.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 5 || recs[0].Eval == nil || recs[2].Eval == nil || recs[4].Eval == nil || !recs[3].RefReset {
		t.Fatalf("%d records: %+v", len(recs), recs)
	}
	if err := run(context.Background(), o); err == nil {
		t.Error("a second run into the same directory was accepted")
	}
	for _, f := range []string{"reward.png", "heldout_accuracy.png", "response_length.png",
		"checkpoints/step-000003/model.onnx", "checkpoints/step-000004/model.onnx", "checkpoints/step-000004/config.json",
		"checkpoints/step-000004/model.safetensors"} {
		if st, err := os.Stat(filepath.Join(dir, f)); err != nil || st.Size() == 0 {
			t.Errorf("%s: %v", f, err)
		}
	}
}
