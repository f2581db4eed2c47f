// Package ablationtest runs scripts/ablation.py end to end.
package ablationtest

import (
	"encoding/json"
	"fmt"
	"image/png"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// TestServersSmoke runs the servers section of scripts/ablation.py on a tiny setting (three
// steps, a 40-step warm start, 4 prompts x 8 samples, 10 held-out problems) with freshly built
// tools/train and tools/rollout-server binaries: the script starts two real rollout servers for
// each run and stops them. It checks that both runs finished, that the synchronous run's
// rollouts were never stale and logged no rollout/trainer mismatch while the overlapped run's
// steps 2 and 3 were one step stale with a positive mismatch, that the table carries every
// figure but the step-1 accuracy (not evaluated), that the text names the CPU and links the
// plots (pass@1 and pass@2 held out, step time, mismatch) as readable PNGs, and that no server
// outlives the script.
func TestServersSmoke(t *testing.T) {
	if testing.Short() {
		t.Skip("builds tools/train and tools/rollout-server and trains 2 tiny runs")
	}
	py := python(t)
	dir := t.TempDir()
	root, _ := filepath.Abs("../..")
	bins := map[string]string{"./tools/train": filepath.Join(dir, "train"), "./tools/rollout-server": filepath.Join(dir, "rollout-server"),
		"./scripts/prolongedplot": filepath.Join(dir, "plot")}
	for pkg, out := range bins {
		cmd := exec.Command("go", "build", "-o", out, pkg)
		cmd.Dir = root
		if b, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("go build %s: %v\n%s", pkg, err, b)
		}
	}
	doc, runs := filepath.Join(dir, "ablation.md"), filepath.Join(dir, "runs")
	cmd := exec.Command(py, filepath.Join(root, "scripts", "ablation.py"), "--sections", "servers", "--seeds", "1", "--steps", "3",
		"--extra", "--sft-steps 40 --sft-lr 3e-3 --cot --prompts 4 --n 8 --train-problems 100 --lr 1e-3 --eval-size 10 --eval-samples 2 --eval-every 3", "--out", runs, "--doc", doc,
		"--bin", bins["./tools/train"], "--server-bin", bins["./tools/rollout-server"],
		"--plot-bin", bins["./scripts/prolongedplot"])
	cmd.Dir = root
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("ablation.py: %v\n%s", err, b)
	}
	for _, c := range []struct {
		name  string
		stale int // staleness of steps 2 and 3
	}{{"synchronous", 0}, {"overlapped", 1}} {
		b, err := os.ReadFile(filepath.Join(runs, "servers", c.name, "seed1", "metrics.jsonl"))
		if err != nil {
			t.Fatal(err)
		}
		var kl float64 // the largest mismatch logged
		lines := strings.Split(strings.TrimSpace(string(b)), "\n")
		for _, line := range lines {
			var r struct {
				Step      int     `json:"step"`
				Staleness int     `json:"rollout/staleness"`
				KL        float64 `json:"rollout_corr/k3_kl"`
				StepS     float64 `json:"timing_s/step"`
			}
			if err := json.Unmarshal([]byte(line), &r); err != nil {
				t.Fatal(err)
			}
			if r.Step >= 2 && (r.Staleness != c.stale || r.StepS <= 0) {
				t.Errorf("%s step %d: staleness %d, step time %g s; want staleness %d", c.name, r.Step, r.Staleness, r.StepS, c.stale)
			}
			kl = max(kl, r.KL)
		}
		if len(lines) != 4 || (kl > 0) != (c.stale == 1) {
			t.Errorf("%s: %d records, largest rollout k3 KL %g; want 4 records and a KL above 0 only when stale", c.name, len(lines), kl)
		}
	}
	text, err := os.ReadFile(doc)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(text), "Run on a CPU with ") {
		t.Errorf("the table's text does not name the CPU it ran on:\n%s", text)
	}
	var plots []string
	for _, l := range regexp.MustCompile(`!\[[^]]*\]\(([^)]+)\)`).FindAllStringSubmatch(string(text), -1) {
		plots = append(plots, l[1])
		f, err := os.Open(filepath.Join(dir, l[1]))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := png.Decode(f); err != nil {
			t.Errorf("%s: %v", l[1], err)
		}
		f.Close()
	}
	if want := []string{"ablation/passk_arith_at1.png", "ablation/passk_arith_at2.png", "ablation/step_time.png", "ablation/rollout_kl.png"}; !slices.Equal(plots, want) {
		t.Errorf("plots linked %v, want %v", plots, want)
	}
	for _, row := range []string{"| synchronous | `--overlap off` |", "| overlapped | `--overlap on` |"} {
		i := strings.Index(string(text), row)
		if i < 0 {
			t.Fatalf("no row %q in:\n%s", row, text)
		}
		line, _, _ := strings.Cut(string(text[i:]), "\n")
		// The accuracy at step 1 (half of the steps, rounded down) is not evaluated: its cell is the one "-".
		if strings.Count(line, " - ") != 1 || strings.Count(line, "|") != 11 {
			t.Errorf("row %q: want every figure but the step-1 accuracy", line)
		}
	}
	if out, _ := exec.Command("pgrep", "-f", bins["./tools/rollout-server"]).Output(); len(out) > 0 {
		t.Errorf("rollout servers still running after the script: pids %s", out)
	}
}

// TestOptionsVerdict tabulates hand-made runs of the options section (--reuse, 10 steps, seeds
// 1-2: the default job ends at 60% and 64%; GSPO at 50% and 55%, below its range; Clip-Cov at
// 62% and 70%, overlapping; KL-Cov at 66% and 70%, above; entropy bonus with one seed only, left
// out) and checks the verdict line and the rows' means against the hand-worked values.
func TestOptionsVerdict(t *testing.T) {
	py := python(t)
	dir := t.TempDir()
	runs := map[string][]float64{"default_job": {0.60, 0.64}, "GSPO": {0.50, 0.55}, "Clip-Cov": {0.62, 0.70}, "KL-Cov": {0.66, 0.70},
		"entropy_bonus_0.001": {0.61}}
	for name, finals := range runs {
		for i, final := range finals {
			var lines []string
			for step := 0; step <= 10; step++ {
				r := map[string]any{"step": step}
				if step > 0 {
					r["actor/entropy"], r["actor/kl_loss"] = 0.2, 0.01
				}
				if step%5 == 0 {
					r["eval"] = map[string]any{"accuracy": 0.3 + (final-0.3)*float64(step)/10}
				}
				b, err := json.Marshal(r)
				if err != nil {
					t.Fatal(err)
				}
				lines = append(lines, string(b))
			}
			run := filepath.Join(dir, "runs", "options", name, fmt.Sprintf("seed%d", i+1))
			if err := os.MkdirAll(run, 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(run, "metrics.jsonl"), []byte(strings.Join(lines, "\n")+"\n"), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	root, _ := filepath.Abs("../..")
	doc := filepath.Join(dir, "ablation.md")
	cmd := exec.Command(py, filepath.Join(root, "scripts", "ablation.py"), "--reuse", "--sections", "options", "--seeds", "1,2", "--steps", "10",
		"--out", filepath.Join(dir, "runs"), "--doc", doc, "--machine", "AVX-512")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("ablation.py: %v\n%s", err, b)
	}
	text, err := os.ReadFile(doc)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"At step 10, against the default job's seeds [60.0%, 64.0%]: within the seed spread (the ranges overlap): Clip-Cov; above it: KL-Cov; below it: GSPO.\n",
		"| GSPO | `--policy-loss gspo` | 30.0% [30.0%, 30.0%] | 41.2% [40.0%, 42.5%] | 52.5% [50.0%, 55.0%] |",
		"| entropy bonus 0.001 | `--entropy-coef 0.001` | 30.0% | 45.5% | 61.0% |",
		"| mask truncated | `--mask-truncated` | - | - | - | - | - |",
		"Run on a CPU with AVX-512:",
	} {
		if !strings.Contains(string(text), want) {
			t.Errorf("document lacks %q:\n%s", want, text)
		}
	}
}

// python finds python3, skipping the test without it unless PROLONG_REQUIRE_PYTHON=1.
func python(t *testing.T) string {
	py, err := exec.LookPath("python3")
	if err != nil {
		if os.Getenv("PROLONG_REQUIRE_PYTHON") == "1" {
			t.Fatalf("PROLONG_REQUIRE_PYTHON=1 but python3 is missing: %v", err)
		}
		t.Skip("python3 not found")
	}
	return py
}
