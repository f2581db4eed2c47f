package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/prolong-rl/prolong/checkpoints"
	"github.com/prolong-rl/prolong/checkpoints/tokenizer"
	"github.com/prolong-rl/prolong/engine"
	"github.com/prolong-rl/prolong/grpo/modeldir"
	"github.com/prolong-rl/prolong/grpo/quickstart"
	"github.com/prolong-rl/prolong/tools/internal/tooltest"
)

// TestLoRAExport: the run state of a LoRA run (tools/train --lora-rank 4 on a --model
// directory) exports, with --lora-form both (the default), to the directory the trainer
// exported at that step, byte for byte, adapter/ included; --lora-form adapter writes the PEFT
// adapter directory alone (the same two files), naming the --model as its base; merged writes
// no adapter/; and --lora-form adapter of a model without adapters is an error.
func TestLoRAExport(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: trains a short run")
	}
	train := tooltest.Build(t, "../train", false)
	work := t.TempDir()
	src := filepath.Join(work, "src")
	c := &engine.Config{ModelType: "qwen2", VocabSize: 32, HiddenSize: 32, NumHiddenLayers: 2, NumAttentionHeads: 2,
		NumKeyValueHeads: 1, HeadDim: 16, IntermediateSize: 64, RMSNormEps: 1e-6, RopeTheta: 10000,
		MaxPositionEmbeddings: 64, TieWordEmbeddings: true, AttentionBias: true}
	if err := checkpoints.Save(src, c, engine.RandomWeights(c, 5, 0.05), checkpoints.SaveOptions{}); err != nil {
		t.Fatal(err)
	}
	// The default job's character tokenizer (its vocabulary fits the model's 32 ids).
	q := quickstart.NewTokenizer()
	tok, err := tokenizer.NewCharLevel(q.Tokens, []string{quickstart.Pad, quickstart.BOS, quickstart.EOS}, quickstart.EOS)
	if err == nil {
		tok, err = tok.WithConfig(quickstart.TokenizerConfig())
	}
	if err == nil {
		err = tok.Save(src)
	}
	if err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{
		{"--write-task-data", "data", "--train-problems", "40", "--eval-size", "8"},
		{"--quiet", "--model", "src", "--data", filepath.Join("data", "train.jsonl"), "--steps", "2", "--save-every", "1", "--ref-reset-every", "1",
			"--prompts", "2", "--n", "2", "--max-response", "8", "--eval-every", "1", "--eval-samples", "1", "--out", "run",
			"--lora-rank", "4", "--lora-alpha", "8", "--lora-targets", "q_proj,v_proj,down_proj", "--lr", "1e-2"},
	} {
		cmd := exec.Command(train, args...)
		cmd.Dir = work
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("train %q: %v\n%s", args, err, out)
		}
	}
	run := filepath.Join(work, "run")
	trainer := filepath.Join(run, "checkpoints", checkpoints.StepDirName(2))
	both := filepath.Join(t.TempDir(), "both")
	mustExport(t, "-i", run, "-o", both)
	sameDir(t, trainer, both)
	sameDir(t, filepath.Join(trainer, modeldir.AdapterDir), filepath.Join(both, modeldir.AdapterDir))
	adapter := filepath.Join(t.TempDir(), "adapter")
	mustExport(t, "-i", run, "-o", adapter, "--lora-form", "adapter")
	sameDir(t, filepath.Join(trainer, modeldir.AdapterDir), adapter)
	lc, w, ac, err := modeldir.ReadAdapter(adapter, c)
	if err != nil {
		t.Fatal(err)
	}
	if ac.BaseModel != "src" || lc.Rank != 4 || lc.Alpha != 8 || strings.Join(lc.Targets, ",") != "q_proj,v_proj,down_proj" || len(w) != 12 {
		t.Errorf("adapter: base %q, %+v, %d tensors", ac.BaseModel, lc, len(w))
	}
	merged := filepath.Join(t.TempDir(), "merged")
	mustExport(t, "-i", run, "-o", merged, "--lora-form", "merged", "--format", "safetensors")
	if _, err := os.Stat(filepath.Join(merged, modeldir.AdapterDir)); err == nil {
		t.Error("--lora-form merged wrote adapter/")
	}
	sameFile(t, filepath.Join(trainer, checkpoints.WeightsFile), filepath.Join(merged, checkpoints.WeightsFile))
	if _, err := export(t, "-i", src, "-o", filepath.Join(t.TempDir(), "x"), "--lora-form", "adapter"); err == nil || !strings.Contains(err.Error(), "holds no LoRA adapters") {
		t.Errorf("--lora-form adapter of a plain model: %v", err)
	}
}
