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
				// As written: the page shows what the training command prints about this data.
			case strings.Contains(cmd, "--out "+tmp+"/runs/base"):
				cmd += small
			case strings.HasPrefix(cmd, bin["train"]):
				// All 200 held-out prompts, as the page's output shows them.
				cmd += strings.Replace(small, " --eval-size 8", "", 1) + " --steps 2"
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
	row := regexp.MustCompile("(?s)holds rows like\n\n```json\n(.*?)\n```").FindStringSubmatch(string(page))
	if row == nil || !strings.Contains(outputs[2], row[1]) {
		t.Errorf("head -n 2 data/train.jsonl printed:\n%s\nthe page shows %q", outputs[2], row)
	}
	answer := regexp.MustCompile("It answers `([^`]*)`").FindStringSubmatch(string(page))
	if answer == nil || !strings.Contains(outputs[3], answer[1]) {
		t.Errorf("the reward program answered %q; the page says %q", outputs[3], answer)
	}
	if !strings.Contains(outputs[4], "reward.py: ready") {
		t.Errorf("the training command's output lacks the reward program's ready line:\n%s", outputs[4])
	}
	// The page shows what the training command prints before its first step: every line of
	// its text block must be in the output, word for word (the paths as the page writes them).
	shown := regexp.MustCompile("(?s)Before the first step the trainer says[^`]*```text\n(.*?)```").FindStringSubmatch(string(page))
	if shown == nil {
		t.Fatal("docs/byo.md: no text block of what the training command prints")
	}
	printed := regexp.MustCompile(`(?m)^\d\d:\d\d:\d\d `).ReplaceAllString(strings.ReplaceAll(outputs[4], tmp+"/", ""), "")
	for _, line := range strings.Split(strings.TrimSpace(shown[1]), "\n") {
		if !strings.Contains(printed, line) {
			t.Errorf("docs/byo.md shows %q; the training command printed:\n%s", line, printed)
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
