package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/spf13/pflag"

	"github.com/prolong-rl/prolong/grpo"
)

// TestDocsCommands parses every `go run ./tools/train ...` command in docs/train.md and the
// README with the program's own flag set, so the docs cannot name a flag that does not exist.
func TestDocsCommands(t *testing.T) {
	re := regexp.MustCompile("go run ./tools/train([^\n`#]*)")
	n := 0
	for _, path := range []string{"../../docs/train.md", "../../docs/recipe.md", "../../README.md"} {
		data, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range re.FindAllStringSubmatch(string(data), -1) {
			var o options
			fs := newFlags(&o)
			fs.SetOutput(io.Discard)
			if err := fs.Parse(strings.Fields(m[1])); err != nil && !errors.Is(err, pflag.ErrHelp) || fs.NArg() > 0 {
				t.Errorf("%s: `go run ./tools/train%s`: %v", path, m[1], err)
			}
			n++
		}
	}
	if n < 5 {
		t.Fatalf("found only %d commands in the docs", n)
	}
}

// TestRecipeDoc runs the commands of docs/recipe.md in order, as a user would from the
// repository root (runs/ redirected to a temporary directory, progress bars off), and checks
// that the walk-through ends where the page says.
func TestRecipeDoc(t *testing.T) {
	page, err := os.ReadFile("../../docs/recipe.md")
	if err != nil {
		t.Fatal(err)
	}
	tmp := t.TempDir()
	t.Chdir("../..")
	blocks := regexp.MustCompile("(?s)```sh\n(.*?)```").FindAllStringSubmatch(string(page), -1)
	n := 0
	for _, b := range blocks {
		for _, line := range strings.Split(strings.TrimSpace(b[1]), "\n") {
			args, ok := strings.CutPrefix(strings.TrimSpace(line), "go run ./tools/train ")
			if !ok {
				t.Fatalf("docs/recipe.md: a command the test cannot run: %q", line)
			}
			fields := strings.Fields(strings.ReplaceAll(args, "runs/", tmp+"/"))
			t.Logf("go run ./tools/train %s", strings.Join(fields, " "))
			if err := runArgs(t, append(fields, "--quiet")...); err != nil {
				t.Fatalf("docs/recipe.md: `%s`: %v", line, err)
			}
			n++
		}
	}
	if n != 5 {
		t.Fatalf("ran %d commands, want the page's 5", n)
	}
	recs, err := grpo.ReadMetrics(filepath.Join(tmp, "mine", "metrics.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	if last := recs[len(recs)-1]; len(recs) != 16 || last.Step != 15 || last.Eval == nil || last.Eval.PassAtK[4] < last.Eval.Accuracy {
		t.Errorf("runs/mine: %d records, last %+v", len(recs), last)
	}
	for _, f := range []string{"mine/checkpoints/step-000010/tokenizer.json", "mine/checkpoints/step-000015/model.onnx", "mine/state/latest",
		"mine-lora/checkpoints/step-000004/model.onnx", "mine-lora/checkpoints/step-000004/adapter/adapter_model.safetensors"} {
		if _, err := os.Stat(filepath.Join(tmp, f)); err != nil {
			t.Error(err)
		}
	}
	// The LoRA run's adapter names the --model it was trained on as its base.
	var ac struct {
		Base string `json:"base_model_name_or_path"`
		R    int    `json:"r"`
	}
	b, err := os.ReadFile(filepath.Join(tmp, "mine-lora/checkpoints/step-000004/adapter/adapter_config.json"))
	if err == nil {
		err = json.Unmarshal(b, &ac)
	}
	if err != nil || ac.R != 8 || ac.Base != filepath.Join(tmp, "base/checkpoints/step-000004") {
		t.Errorf("runs/mine-lora adapter_config.json: %+v (%v)", ac, err)
	}
}

// TestTrainDoc runs every command of docs/train.md's ```sh blocks, in order, from the
// repository root, made small: flags that shrink the run are appended (the last value of a
// flag wins), runs/ goes to a temporary directory, and the placeholders DIR and prompts.jsonl
// name a model and a prompt file made here (the default model's export and the default task).
func TestTrainDoc(t *testing.T) {
	page, err := os.ReadFile("../../docs/train.md")
	if err != nil {
		t.Fatal(err)
	}
	tmp := t.TempDir()
	small := []string{"--quiet", "--sft-steps", "10", "--eval-size", "8", "--eval-samples", "2", "--train-problems", "50",
		"--eval-every", "2", "--prompts", "4", "--n", "4", "--max-response", "8", "--save-every", "1"}
	base := filepath.Join(tmp, "base")
	if err := runArgs(t, append(small, "--out", base, "--steps", "1")...); err != nil {
		t.Fatal(err)
	}
	if err := runArgs(t, "--write-task-data", filepath.Join(tmp, "data"), "--train-problems", "60", "--eval-size", "10"); err != nil {
		t.Fatal(err)
	}
	t.Chdir("../..")
	n := 0
	for _, b := range regexp.MustCompile("(?s)```sh\n(.*?)```").FindAllStringSubmatch(string(page), -1) {
		for _, line := range strings.Split(strings.TrimSpace(b[1]), "\n") {
			if i := strings.Index(line, "#"); i >= 0 {
				line = line[:i]
			}
			args, ok := strings.CutPrefix(strings.TrimSpace(line), "go run ./tools/train")
			if !ok {
				t.Fatalf("docs/train.md: a command the test cannot run: %q", line)
			}
			args = strings.ReplaceAll(args, "runs/", tmp+"/")
			args = strings.ReplaceAll(args, "DIR", filepath.Join(base, "checkpoints", "step-000001"))
			args = strings.ReplaceAll(args, "prompts.jsonl", filepath.Join(tmp, "data", "train.jsonl"))
			fields := strings.Fields(args)
			switch {
			case slices.Contains(fields, "--resume"):
				fields = append(fields, "--quiet", "--steps", "4")
			default:
				fields = append(fields, small...)
				fields = append(fields, "--steps", "2")
				if !slices.Contains(fields, "--out") {
					fields = append(fields, "--out", filepath.Join(tmp, fmt.Sprintf("auto%d", n)))
				}
			}
			t.Logf("go run ./tools/train %s", strings.Join(fields, " "))
			if err := runArgs(t, fields...); err != nil {
				t.Fatalf("docs/train.md: `%s`: %v", strings.TrimSpace(line), err)
			}
			n++
		}
	}
	if n != 13 {
		t.Fatalf("ran %d commands, want the page's 13", n)
	}
	recs, err := grpo.ReadMetrics(filepath.Join(tmp, "mine", "metrics.jsonl"))
	if err != nil || len(recs) != 5 {
		t.Fatalf("runs/mine after the resumes: %d records, %v", len(recs), err)
	}
}
