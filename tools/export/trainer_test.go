package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"

	"github.com/prolong-rl/prolong/checkpoints"
	"github.com/prolong-rl/prolong/checkpoints/tokenizer"
	"github.com/prolong-rl/prolong/engine"
	"github.com/prolong-rl/prolong/tools/internal/tooltest"
)

// dirFiles returns the names of the files in dir, sorted.
func dirFiles(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}

// sameDir fails unless the directories a and b hold the same files with the same bytes.
func sameDir(t *testing.T, a, b string) {
	t.Helper()
	fa, fb := dirFiles(t, a), dirFiles(t, b)
	if !slices.Equal(fa, fb) {
		t.Errorf("%s holds %q, %s holds %q", a, fa, b, fb)
	}
	for _, name := range fa {
		if !slices.Contains(fb, name) {
			continue
		}
		x, _ := os.ReadFile(filepath.Join(a, name))
		y, _ := os.ReadFile(filepath.Join(b, name))
		if !bytes.Equal(x, y) {
			if len(x) < 4096 && len(y) < 4096 {
				t.Errorf("%s differs:\n%s:\n%s\n%s:\n%s", name, a, x, b, y)
			} else {
				t.Errorf("%s differs: %d bytes in %s, %d in %s", name, len(x), a, len(y), b)
			}
		}
	}
}

// TestTrainerExportIsToolsExport: the checkpoint tools/train exports at a step
// (RUN/checkpoints/step-N) and `tools/export -i RUN --step N` of the run state saved at that
// step are the same directory: the same files, byte for byte (config.json,
// generation_config.json, the tokenizer files, model.safetensors and model.onnx). Both carry
// every file of the run's tokenizer/, and name the tokenizer's end-of-sequence token as
// eos_token_id in config.json and generation_config.json, so that transformers' generate stops
// there. Two runs: the default job (a tokenizer that knows its eos token, a model config
// that does not) and a --model run from a model directory with sampling defaults in its
// generation_config.json.
func TestTrainerExportIsToolsExport(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: trains two short runs")
	}
	train := tooltest.Build(t, "../train", false)
	work := t.TempDir()
	trainRun := func(args ...string) {
		t.Helper()
		cmd := exec.Command(train, args...)
		cmd.Dir = work
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("train %q: %v\n%s", args, err, out)
		}
	}
	// A source model for --model: a fresh model of the default shape with the default job's
	// tokenizer (a copy of the default run's) and a published model's sampling defaults.
	src := filepath.Join(work, "src")
	c := &engine.Config{ModelType: "qwen2", VocabSize: 32, HiddenSize: 32, NumHiddenLayers: 2, NumAttentionHeads: 2,
		NumKeyValueHeads: 1, HeadDim: 16, IntermediateSize: 64, RMSNormEps: 1e-6, RopeTheta: 10000,
		MaxPositionEmbeddings: 64, TieWordEmbeddings: true, AttentionBias: true}
	if err := checkpoints.Save(src, c, engine.RandomWeights(c, 5, 0.05), checkpoints.SaveOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(src, checkpoints.GenerationConfigFile), []byte(`{"do_sample": true, "temperature": 0.6, "top_p": 0.95}`), 0o644); err != nil {
		t.Fatal(err)
	}

	defaultArgs := []string{"--quiet", "--seed", "1", "--steps", "4", "--sft-steps", "20", "--sft-lr", "3e-3", "--eval-every", "2",
		"--eval-size", "20", "--ref-reset-every", "3", "--lr", "1e-4", "--prompts", "4", "--n", "4", "--train-problems", "200",
		"--max-response", "8", "--eval-samples", "2", "--save-every", "3"}
	trainRun(append(defaultArgs, "--out", "default")...)
	if err := os.CopyFS(src, os.DirFS(filepath.Join(work, "default", "tokenizer"))); err != nil {
		t.Fatal(err)
	}
	trainRun("--write-task-data", "data", "--train-problems", "40", "--eval-size", "8")
	trainRun("--quiet", "--model", "src", "--data", filepath.Join("data", "train.jsonl"), "--steps", "2", "--save-every", "1", "--ref-reset-every", "1",
		"--prompts", "2", "--n", "2", "--max-response", "8", "--eval-every", "1", "--eval-samples", "1", "--out", "model")

	for _, tc := range []struct {
		run   string
		steps []int64
	}{{"default", []int64{3, 4}}, {"model", []int64{1, 2}}} {
		run := filepath.Join(work, tc.run)
		tokDir := filepath.Join(run, "tokenizer")
		tok, err := tokenizer.Load(tokDir)
		if err != nil {
			t.Fatal(err)
		}
		eos, ok := tok.EOS()
		if !ok {
			t.Fatalf("%s: the run's tokenizer names no eos token", tokDir)
		}
		for _, step := range tc.steps {
			t.Run(fmt.Sprintf("%s/step-%d", tc.run, step), func(t *testing.T) {
				trainer := filepath.Join(run, "checkpoints", checkpoints.StepDirName(step))
				if _, err := os.Stat(filepath.Join(run, "state", checkpoints.StepDirName(step))); err != nil {
					t.Fatalf("no run state of step %d to export: %v", step, err)
				}
				out := filepath.Join(t.TempDir(), "out")
				mustExport(t, "-i", run, "-o", out, "--step", fmt.Sprint(step))
				sameDir(t, trainer, out)
				for _, name := range dirFiles(t, tokDir) {
					sameFile(t, filepath.Join(tokDir, name), filepath.Join(trainer, name))
				}
				for _, name := range []string{checkpoints.ConfigFile, checkpoints.GenerationConfigFile} {
					var m map[string]any
					tooltest.ReadJSON(t, filepath.Join(trainer, name), &m)
					if m["eos_token_id"] != float64(eos) {
						t.Errorf("%s: eos_token_id %v, want the tokenizer's eos token %d", filepath.Join(trainer, name), m["eos_token_id"], eos)
					}
				}
			})
		}
	}
	var gen map[string]any
	tooltest.ReadJSON(t, filepath.Join(work, "model", "checkpoints", checkpoints.StepDirName(2), checkpoints.GenerationConfigFile), &gen)
	if gen["temperature"] != 0.6 || gen["top_p"] != 0.95 || gen["do_sample"] != true {
		b, _ := json.Marshal(gen)
		t.Errorf("the --model run's export lost the source's sampling defaults: %s", b)
	}
}
