package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/prolong-rl/prolong/checkpoints/tokenizer"
	"github.com/prolong-rl/prolong/grpo/quickstart"
)

// TestResumeOtherModel: a run resumed with another --model, or with a model whose tokenizer
// changed, is refused, and the run's own tokenizer (what tools/export exports with) is left as
// it was.
func TestResumeOtherModel(t *testing.T) {
	model, out := byoModel(t), t.TempDir()
	args := []string{"--quiet", "--device", "cpu", "--model", model, "--data", byoData(t, fiveRows...), "--steps", "1",
		"--prompts", "2", "--n", "2", "--max-response", "8", "--out", out}
	if err := runArgs(t, args...); err != nil {
		t.Fatal(err)
	}
	err := runArgs(t, "--quiet", "--out", out, "--resume", "--steps", "2", "--model", byoModel(t))
	if err == nil || !strings.Contains(err.Error(), "a run continues its own model") {
		t.Errorf("resume with another --model: %v", err)
	}
	runTok := filepath.Join(out, "tokenizer", "tokenizer.json")
	before, err := os.ReadFile(runTok)
	if err != nil {
		t.Fatal(err)
	}
	q := quickstart.NewTokenizer()
	swapped := append([]string{}, q.Tokens...)
	swapped[len(swapped)-1], swapped[len(swapped)-2] = swapped[len(swapped)-2], swapped[len(swapped)-1]
	tok, err := tokenizer.NewCharLevel(swapped, []string{quickstart.Pad, quickstart.BOS, quickstart.EOS}, quickstart.EOS)
	if err != nil {
		t.Fatal(err)
	}
	if err := tok.Save(model); err != nil {
		t.Fatal(err)
	}
	err = runArgs(t, "--quiet", "--out", out, "--resume", "--steps", "2")
	if err == nil || !strings.Contains(err.Error(), "tokenizer differs") {
		t.Errorf("resume with a changed tokenizer: %v", err)
	}
	if after, _ := os.ReadFile(runTok); !bytes.Equal(before, after) {
		t.Error("the run's tokenizer was overwritten by a refused resume")
	}
}

// TestResumeRedoesFinalExport: a run whose final export was cut short (config and weights
// only, as a kill during the export left it before exports were atomic) gets it written whole
// by --resume, which has no step left to train.
func TestResumeRedoesFinalExport(t *testing.T) {
	out := t.TempDir()
	if err := runArgs(t, append(append([]string{}, shortRun...), "--out", out, "--ref-reset-every", "0")...); err != nil {
		t.Fatal(err)
	}
	final := filepath.Join(out, "checkpoints", "step-000004")
	for _, f := range []string{"model.onnx", "tokenizer.json"} {
		if err := os.Remove(filepath.Join(final, f)); err != nil {
			t.Fatal(err)
		}
	}
	os.MkdirAll(filepath.Join(out, "checkpoints", ".step-000004.tmp-123"), 0o755) // a killed export's temporary folder
	if err := runArgs(t, "--quiet", "--out", out, "--resume"); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"model.onnx", "tokenizer.json", "model.safetensors"} {
		if _, err := os.Stat(filepath.Join(final, f)); err != nil {
			t.Errorf("after --resume: %v", err)
		}
	}
	if left, _ := filepath.Glob(filepath.Join(out, "checkpoints", ".*")); len(left) > 0 {
		t.Errorf("temporary export folders left: %v", left)
	}
}
