package main

import (
	"errors"
	"io"
	"os"
	"path/filepath"
	"regexp"
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
	if n != 4 {
		t.Fatalf("ran %d commands, want the page's 4", n)
	}
	recs, err := grpo.ReadMetrics(filepath.Join(tmp, "mine", "metrics.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	if last := recs[len(recs)-1]; len(recs) != 16 || last.Step != 15 || last.Eval == nil || last.Eval.PassAtK[4] < last.Eval.Accuracy {
		t.Errorf("runs/mine: %d records, last %+v", len(recs), last)
	}
	for _, f := range []string{"mine/checkpoints/step-000010/tokenizer.json", "mine/checkpoints/step-000015/model.onnx", "mine/state/latest"} {
		if _, err := os.Stat(filepath.Join(tmp, f)); err != nil {
			t.Error(err)
		}
	}
}
