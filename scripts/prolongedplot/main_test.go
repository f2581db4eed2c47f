package main

import (
	"image/png"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// TestGridSmoke runs scripts/prolonged.py end to end on a tiny setting (one seed, two steps,
// a 5-step warm start, 2 problems per held-out set, 4 samples each) with freshly built
// tools/train and prolongedplot binaries, and checks what it writes in a temporary directory:
// the four configurations' runs, a document with a table per held-out set (arith/in,
// arith/above, countdown/in, countdown/above) and the entropy table, and every plot it links
// a readable PNG. A second call trains nothing (the runs are complete) and writes the same
// document.
func TestGridSmoke(t *testing.T) {
	if testing.Short() {
		t.Skip("builds tools/train and trains 4 tiny runs")
	}
	py, err := exec.LookPath("python3")
	if err != nil {
		if os.Getenv("PROLONG_REQUIRE_PYTHON") == "1" {
			t.Fatalf("PROLONG_REQUIRE_PYTHON=1 but python3 is missing: %v", err)
		}
		t.Skip("python3 not found")
	}
	dir := t.TempDir()
	root, _ := filepath.Abs("../..")
	bins := map[string]string{"./tools/train": filepath.Join(dir, "train"), "./scripts/prolongedplot": filepath.Join(dir, "plot")}
	for pkg, out := range bins {
		build := exec.Command("go", "build", "-o", out, pkg)
		build.Dir = root
		if b, err := build.CombinedOutput(); err != nil {
			t.Fatalf("go build %s: %v\n%s", pkg, err, b)
		}
	}
	doc := filepath.Join(dir, "docs", "prolonged.md")
	args := []string{filepath.Join(root, "scripts", "prolonged.py"), "--seeds", "1", "--steps", "2", "--prompts", "2", "--n", "4",
		"--eval-every", "2", "--eval-size", "2", "--eval-samples", "4", "--out", filepath.Join(dir, "runs"), "--doc", doc,
		"--bin", bins["./tools/train"], "--plot-bin", bins["./scripts/prolongedplot"],
		"--extra", "--sft-steps 5 --train-problems 40 --save-every 0"}
	run := func() string {
		cmd := exec.Command(py, args...)
		cmd.Dir = root
		if b, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("prolonged.py: %v\n%s", err, b)
		}
		b, err := os.ReadFile(doc)
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	text := run()
	for _, want := range []string{"## arith/in", "## arith/above", "## countdown/in", "## countdown/above", "## Entropy and KL",
		"| plain GRPO |", "| + clip-higher |", "| + KL and reference resets |", "| full recipe (+ dynamic sampling) |", "pass@4 at 2"} {
		if !strings.Contains(text, want) {
			t.Errorf("document lacks %q:\n%s", want, text)
		}
	}
	links := regexp.MustCompile(`!\[[^]]*\]\(([^)]+)\)`).FindAllStringSubmatch(text, -1)
	if len(links) != 4*2+1 { // pass@1 and pass@4 per held-out set, entropy
		t.Errorf("%d plots linked, want 9:\n%s", len(links), text)
	}
	for _, l := range links {
		f, err := os.Open(filepath.Join(filepath.Dir(doc), l[1]))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := png.Decode(f); err != nil {
			t.Errorf("%s: %v", l[1], err)
		}
		f.Close()
	}
	mtime := func() int64 {
		st, err := os.Stat(filepath.Join(dir, "runs", "plain_GRPO", "seed1", "metrics.jsonl"))
		if err != nil {
			t.Fatal(err)
		}
		return st.ModTime().UnixNano()
	}
	before := mtime()
	if again := run(); again != text || mtime() != before {
		t.Errorf("second call retrained or wrote another document")
	}
}
