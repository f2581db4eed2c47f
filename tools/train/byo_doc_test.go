package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/prolong-rl/prolong/grpo"
)

// TestBYODoc runs the ```sh commands of docs/byo.md in order, with bash, from the repository
// root, as a user would: `go run ./tools/train` and `go run ./tools/export` are the programs
// built here, runs/, data and exported are put in a temporary directory, and the training
// commands are made small by flags appended to them (the last value of a flag wins). It checks
// what the page says they print and leave behind.
func TestBYODoc(t *testing.T) {
	page, err := os.ReadFile("../../docs/byo.md")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := exec.LookPath("python3"); err != nil && os.Getenv("PROLONG_REQUIRE_PYTHON") == "" {
		t.Skip("python3 runs the page's reward program")
	}
	tmp := t.TempDir()
	bin := map[string]string{"train": filepath.Join(tmp, "bin", "train"), "export": filepath.Join(tmp, "bin", "export")}
	for name, path := range bin {
		if out, err := exec.Command("go", "build", "-o", path, "../"+name).CombinedOutput(); err != nil {
			t.Fatalf("build %s: %v\n%s", name, err, out)
		}
	}
	small := " --quiet --sft-steps 10 --eval-size 8 --eval-samples 2 --train-problems 60 --eval-every 2 --prompts 4 --n 4 --save-every 1"
	paths := regexp.MustCompile(`(\s)((?:runs|data|exported)[/\s])`) // the page's relative paths
	t.Chdir("../..")
	var outputs []string
	for _, b := range regexp.MustCompile("(?s)```sh\n(.*?)```").FindAllStringSubmatch(string(page), -1) {
		for _, line := range strings.Split(strings.TrimSpace(b[1]), "\n") {
			cmd := paths.ReplaceAllString(line+" ", "${1}"+tmp+"/$2")
			cmd = strings.ReplaceAll(cmd, "go run ./tools/train", bin["train"])
			cmd = strings.ReplaceAll(cmd, "go run ./tools/export", bin["export"])
			switch {
			case strings.Contains(cmd, "--resume"):
				cmd += " --quiet --steps 3"
			case strings.Contains(cmd, "--write-task-data"):
				cmd += " --train-problems 60 --eval-size 10"
			case strings.Contains(cmd, "--out "+tmp+"/runs/base"):
				cmd += small
			case strings.HasPrefix(cmd, bin["train"]):
				cmd += small + " --steps 2"
			}
			t.Logf("%s\n  as: %s", line, cmd)
			out, err := exec.Command("bash", "-c", cmd).CombinedOutput()
			if err != nil {
				t.Fatalf("docs/byo.md: `%s`: %v\n%s", line, err, out)
			}
			outputs = append(outputs, string(out))
		}
	}
	if len(outputs) != 7 {
		t.Fatalf("ran %d commands, want the page's 7", len(outputs))
	}
	answer := regexp.MustCompile("It answers `([^`]*)`").FindStringSubmatch(string(page))
	if answer == nil || !strings.Contains(outputs[3], answer[1]) {
		t.Errorf("the reward program answered %q; the page says %q", outputs[3], answer)
	}
	for _, want := range []string{"-> --reward-cmd", "--max-response 8192 does not fit", "reward.py: ready"} {
		if !strings.Contains(outputs[4], want) {
			t.Errorf("the training command's output lacks %q:\n%s", want, outputs[4])
		}
	}
	recs, err := grpo.ReadMetrics(filepath.Join(tmp, "runs", "mine", "metrics.jsonl"))
	if err != nil || len(recs) != 4 {
		t.Fatalf("runs/mine after the resume: %d records, %v", len(recs), err)
	}
	for _, f := range []string{"model.onnx", "model.safetensors", "config.json", "tokenizer.json", "generation_config.json"} {
		if _, err := os.Stat(filepath.Join(tmp, "exported", f)); err != nil {
			t.Error(err)
		}
	}
}
