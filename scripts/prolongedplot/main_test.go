package main

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

	"gonum.org/v1/plot/plotter"
)

// TestGridSmoke runs scripts/prolonged.py end to end on a tiny setting (one seed, two steps,
// a 5-step warm start, 2 problems per held-out set, 4 samples each) with freshly built
// tools/train and prolongedplot binaries, and checks what it writes in a temporary directory:
// the four configurations' runs, a document with a table per held-out set (arith/in,
// arith/above, countdown/in, countdown/above), the entropy table with a column per family, a
// verdict that declines to judge one seed, and the 15 plots it links (pass@1 and pass@4 per
// held-out set, entropy, and entropy, KL and length per family), each a readable PNG. A second
// call trains nothing (the runs are complete) and writes the same document. Then --doc-only on
// a copy without one configuration's run trains nothing (its train binary does not exist) and
// lists the run as missing, with n=0 on that configuration's rows.
func TestGridSmoke(t *testing.T) {
	if testing.Short() {
		t.Skip("builds tools/train and trains 4 tiny runs")
	}
	py := python(t)
	dir := t.TempDir()
	root, _ := filepath.Abs("../..")
	bins := map[string]string{"./tools/train": filepath.Join(dir, "train"), "./scripts/prolongedplot": filepath.Join(dir, "plot")}
	for pkg, out := range bins {
		build(t, root, pkg, out)
	}
	doc := filepath.Join(dir, "docs", "prolonged.md")
	args := []string{"--seeds", "1", "--steps", "2", "--prompts", "2", "--n", "4",
		"--eval-every", "2", "--eval-size", "2", "--eval-samples", "4", "--out", filepath.Join(dir, "runs"), "--doc", doc,
		"--bin", bins["./tools/train"], "--plot-bin", bins["./scripts/prolongedplot"],
		"--extra", "--sft-steps 5 --train-problems 40 --save-every 0"}
	text := prolonged(t, py, root, doc, args...)
	for _, want := range []string{"## arith/in", "## arith/above", "## countdown/in", "## countdown/above", "## Entropy and KL",
		"| plain GRPO | 1 |", "| + clip-higher | 1 |", "| + KL and reference resets | 1 |", "| full recipe (+ dynamic sampling) | 1 |",
		"pass@4 at 2", "| configuration | n | entropy | KL to the reference | entropy arith | entropy countdown |",
		"Not judged yet: the verdict needs at least 2 finished seeds of both plain GRPO (has 1) and full recipe (+ dynamic sampling) (has 1)."} {
		if !strings.Contains(text, want) {
			t.Errorf("document lacks %q:\n%s", want, text)
		}
	}
	if strings.Contains(text, "Not finished") {
		t.Errorf("the full grid's document lists runs as not finished:\n%s", text)
	}
	// pass@1 and pass@4 per held-out set, entropy, and per family entropy, KL and length.
	checkPlots(t, doc, text, []string{"passk_arith_above_at1.png", "passk_arith_above_at4.png", "passk_arith_in_at1.png",
		"passk_arith_in_at4.png", "passk_countdown_above_at1.png", "passk_countdown_above_at4.png", "passk_countdown_in_at1.png",
		"passk_countdown_in_at4.png", "entropy.png", "entropy_arith.png", "kl_arith.png", "length_arith.png",
		"entropy_countdown.png", "kl_countdown.png", "length_countdown.png"})
	mtime := func() int64 {
		st, err := os.Stat(filepath.Join(dir, "runs", "plain_GRPO", "seed1", "metrics.jsonl"))
		if err != nil {
			t.Fatal(err)
		}
		return st.ModTime().UnixNano()
	}
	before := mtime()
	if again := prolonged(t, py, root, doc, args...); again != text || mtime() != before {
		t.Errorf("second call retrained or wrote another document")
	}

	// --doc-only on a partial grid: a copy of the runs without + clip-higher's, and a train
	// binary that does not exist, so that any attempt to train fails.
	partial := filepath.Join(dir, "partial")
	if err := os.CopyFS(partial, os.DirFS(filepath.Join(dir, "runs"))); err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(filepath.Join(partial, "plus_clip_higher", "seed1")); err != nil {
		t.Fatal(err)
	}
	pdoc := filepath.Join(dir, "partial-docs", "prolonged.md")
	pargs := slices.Clone(args)
	pargs[slices.Index(pargs, "--out")+1], pargs[slices.Index(pargs, "--doc")+1] = partial, pdoc
	pargs[slices.Index(pargs, "--bin")+1] = filepath.Join(dir, "no-such-train")
	ptext := prolonged(t, py, root, pdoc, append(pargs, "--doc-only")...)
	for _, want := range []string{"| + clip-higher | `--no-dynamic-sampling --kl-coef 0 --ref-reset-every 0` | 0 of 1 |",
		"| plain GRPO | `--clip-high 0.2 --no-dynamic-sampling --kl-coef 0 --ref-reset-every 0` | 1 of 1 |",
		"Not finished (no evaluation at step 2), so left out of every figure below:\n\n- + clip-higher, seed1: not started\n",
		"| + clip-higher | 0 | - | - | - | - |", "| plain GRPO | 1 |"} {
		if !strings.Contains(ptext, want) {
			t.Errorf("partial document lacks %q:\n%s", want, ptext)
		}
	}
	if _, err := os.Stat(filepath.Join(partial, "plus_clip_higher", "seed1")); !os.IsNotExist(err) {
		t.Errorf("--doc-only touched the missing run: %v", err)
	}
	checkPlots(t, pdoc, ptext, nil)
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

// build builds the package pkg (relative to the module root) into out.
func build(t *testing.T, root, pkg, out string) {
	cmd := exec.Command("go", "build", "-o", out, pkg)
	cmd.Dir = root
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build %s: %v\n%s", pkg, err, b)
	}
}

// prolonged runs scripts/prolonged.py with args and returns the document it wrote at doc.
func prolonged(t *testing.T, py, root, doc string, args ...string) string {
	cmd := exec.Command(py, append([]string{filepath.Join(root, "scripts", "prolonged.py")}, args...)...)
	cmd.Dir = root
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("prolonged.py %s: %v\n%s", strings.Join(args, " "), err, b)
	}
	b, err := os.ReadFile(doc)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// checkPlots checks that every plot the document text links is a readable PNG and, unless want
// is nil, that the linked files are want, in order.
func checkPlots(t *testing.T, doc, text string, want []string) {
	t.Helper()
	var got []string
	for _, l := range regexp.MustCompile(`!\[[^]]*\]\(([^)]+)\)`).FindAllStringSubmatch(text, -1) {
		got = append(got, filepath.Base(l[1]))
		f, err := os.Open(filepath.Join(filepath.Dir(doc), l[1]))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := png.Decode(f); err != nil {
			t.Errorf("%s: %v", l[1], err)
		}
		f.Close()
	}
	if len(got) == 0 || want != nil && !slices.Equal(got, want) {
		t.Errorf("plots linked %v, want %v", got, want)
	}
}

// TestMovingAverage checks the moving average over steps against hand-worked means, on steps
// with a gap (4 is missing).
func TestMovingAverage(t *testing.T) {
	pts := []point{{1, 1}, {2, 2}, {3, 3}, {5, 5}}
	for _, tc := range []struct {
		half int
		want []float64
	}{
		{0, []float64{1, 2, 3, 5}},
		{1, []float64{1.5, 2, 2.5, 5}}, // step 5: steps 4..6 hold only 5
		{2, []float64{2, 2, 2.75, 4}},  // step 3: steps 1..5 hold 1, 2, 3, 5; step 5: 3..7 hold 3, 5
		{10, []float64{2.75, 2.75, 2.75, 2.75}},
	} {
		var got []float64
		for i, p := range movingAverage(pts, tc.half) {
			if p.step != pts[i].step {
				t.Fatalf("half %d: step %d at %d, want %d", tc.half, p.step, i, pts[i].step)
			}
			got = append(got, p.v)
		}
		if !slices.Equal(got, tc.want) {
			t.Errorf("half %d: %v, want %v", tc.half, got, tc.want)
		}
	}
}

// fakeRun is a run's figures for TestVerdict: pass@1 and pass@8 per held-out set at the end,
// and the entropy at the first and the last step (linear between).
type fakeRun struct {
	end          map[string][2]float64
	first, final float64
}

// write writes the run's metrics.jsonl into dir, logged up to step last of steps (10), with an
// evaluation at 0 and at steps.
func (f fakeRun) write(t *testing.T, dir string, last, steps int) {
	passK := func(at int) map[string]map[string]float64 {
		out := map[string]map[string]float64{}
		for set, v := range f.end {
			if at == 0 {
				v = [2]float64{0.1, 0.3}
			}
			out[set] = map[string]float64{"1": v[0], "4": (v[0] + v[1]) / 2, "8": v[1]}
		}
		return out
	}
	var lines []string
	for step := 0; step <= last; step++ {
		r := map[string]any{"step": step}
		if step > 0 {
			e := f.first + (f.final-f.first)*float64(step-1)/float64(steps-1)
			r["actor/entropy"] = e
			r["actor/entropy_by_kind"] = map[string]float64{"arith": e, "countdown": e + 0.1}
			r["response_length/mean_by_kind"] = map[string]float64{"arith": 10 + float64(step), "countdown": 8}
		}
		if step == 0 || step == steps {
			r["eval"] = map[string]any{"pass_at_k_by_kind": passK(step)}
		}
		b, err := json.Marshal(r)
		if err != nil {
			t.Fatal(err)
		}
		lines = append(lines, string(b))
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "metrics.jsonl"), []byte(strings.Join(lines, "\n")+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestVerdict runs scripts/prolonged.py --doc-only on hand-made runs of 10 steps (plain GRPO:
// seeds 1-3; the full recipe: seeds 1-2 finished, seed 3 stopped at step 6; + KL and reference
// resets: seed 1; + clip-higher: none) and checks the verdict's words and figures against the
// hand-worked means and ranges: "above" only where the full recipe's lowest seed is above plain
// GRPO's highest, "below" only where its highest is below plain GRPO's lowest (a tie is within
// the spread), for pass@8 and pass@1 per held-out set and for the entropy over the last step.
func TestVerdict(t *testing.T) {
	py := python(t)
	root, _ := filepath.Abs("../..")
	plotBin := filepath.Join(t.TempDir(), "plot")
	build(t, root, "./scripts/prolongedplot", plotBin)
	plain := []fakeRun{
		{map[string][2]float64{"arith/in": {0.20, 0.50}, "arith/above": {0.01, 0.10}}, 1, 0.50},
		{map[string][2]float64{"arith/in": {0.30, 0.60}, "arith/above": {0.02, 0.20}}, 1, 0.60},
		{map[string][2]float64{"arith/in": {0.25, 0.55}, "arith/above": {0.03, 0.30}}, 1, 0.55},
	}
	plainLines := []string{
		"- arith/above, pass@1 at step 10: full recipe 0.5% [0.0%, 1.0%] (n=2) vs plain GRPO 2.0% [1.0%, 3.0%] (n=3): within the seed spread (the ranges overlap).",
		"- entropy countdown, mean over step 10: full recipe ",
		"- + clip-higher, seed1: not started\n- + clip-higher, seed2: not started\n- + clip-higher, seed3: not started\n" +
			"- + KL and reference resets, seed2: not started\n- + KL and reference resets, seed3: not started\n" +
			"- full recipe (+ dynamic sampling), seed3: logged up to step 6\n",
		"| plain GRPO | 3 | 0.550 (0.500–0.600) | - | 0.550 (0.500–0.600) | 0.650 (0.600–0.700) |",
	}
	for _, tc := range []struct {
		name  string
		full  []fakeRun
		wants []string
	}{
		{"mixed", []fakeRun{
			{map[string][2]float64{"arith/in": {0.28, 0.70}, "arith/above": {0.00, 0.00}}, 1, 0.90},
			{map[string][2]float64{"arith/in": {0.22, 0.65}, "arith/above": {0.01, 0.05}}, 1, 0.80},
		}, []string{
			"**Verdict: mixed.** On 1 of 2 held-out sets (arith/in) the full recipe's final pass@8 is above plain GRPO's beyond the seed spread " +
				"(its lowest seed above plain GRPO's highest); on 1 (arith/above) it is below beyond the spread; its entropy at the end is " +
				"above plain GRPO's beyond the seed spread.\n",
			"- arith/in, pass@8 at step 10: full recipe 67.5% [65.0%, 70.0%] (n=2) vs plain GRPO 55.0% [50.0%, 60.0%] (n=3): **above** plain GRPO's beyond the seed spread.",
			"- arith/in, pass@1 at step 10: full recipe 25.0% [22.0%, 28.0%] (n=2) vs plain GRPO 25.0% [20.0%, 30.0%] (n=3): within the seed spread (the ranges overlap).",
			"- arith/above, pass@8 at step 10: full recipe 2.5% [0.0%, 5.0%] (n=2) vs plain GRPO 20.0% [10.0%, 30.0%] (n=3): **below** plain GRPO's beyond the seed spread.",
			"- entropy, mean over step 10: full recipe 0.850 [0.800, 0.900] (n=2) vs plain GRPO 0.550 [0.500, 0.600] (n=3): **above** plain GRPO's beyond the seed spread " +
				"(over step 1: 1.000 [1.000, 1.000] (n=2) vs 1.000 [1.000, 1.000] (n=3)).",
		}},
		{"yes", []fakeRun{
			{map[string][2]float64{"arith/in": {0.28, 0.70}, "arith/above": {0.00, 0.25}}, 1, 0.90},
			{map[string][2]float64{"arith/in": {0.22, 0.65}, "arith/above": {0.01, 0.35}}, 1, 0.80},
		}, []string{
			"**Verdict: yes.** On 1 of 2 held-out sets (arith/in) the full recipe's final pass@8 is above plain GRPO's beyond the seed spread " +
				"(its lowest seed above plain GRPO's highest); its entropy at the end is above plain GRPO's beyond the seed spread.\n",
			"- arith/above, pass@8 at step 10: full recipe 30.0% [25.0%, 35.0%] (n=2) vs plain GRPO 20.0% [10.0%, 30.0%] (n=3): within the seed spread (the ranges overlap).",
		}},
		{"no", []fakeRun{
			{map[string][2]float64{"arith/in": {0.28, 0.60}, "arith/above": {0.00, 0.25}}, 1, 0.40},
			{map[string][2]float64{"arith/in": {0.22, 0.65}, "arith/above": {0.01, 0.35}}, 1, 0.45},
		}, []string{
			"**Verdict: no (a negative result).** On 0 of 2 held-out sets (none) the full recipe's final pass@8 is above plain GRPO's beyond the seed spread " +
				"(its lowest seed above plain GRPO's highest); its entropy at the end is below plain GRPO's beyond the seed spread. What was tried: " +
				"the 4 configurations in the table above, 3 seeds of plain GRPO and 2 of the full recipe, 10 steps each; the figures and plots below show what happened.\n",
			"- arith/in, pass@8 at step 10: full recipe 62.5% [60.0%, 65.0%] (n=2) vs plain GRPO 55.0% [50.0%, 60.0%] (n=3): within the seed spread (the ranges overlap).",
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			for i, r := range plain {
				r.write(t, filepath.Join(dir, "runs", "plain_GRPO", fmt.Sprintf("seed%d", i+1)), 10, 10)
			}
			for i, r := range tc.full {
				r.write(t, filepath.Join(dir, "runs", "full_recipe__plus_dynamic_sampling", fmt.Sprintf("seed%d", i+1)), 10, 10)
			}
			tc.full[0].write(t, filepath.Join(dir, "runs", "full_recipe__plus_dynamic_sampling", "seed3"), 6, 10)
			plain[0].write(t, filepath.Join(dir, "runs", "plus_KL_and_reference_resets", "seed1"), 10, 10)
			doc := filepath.Join(dir, "docs", "prolonged.md")
			text := prolonged(t, py, root, doc, "--doc-only", "--steps", "10", "--out", filepath.Join(dir, "runs"), "--doc", doc,
				"--plot-bin", plotBin, "--bin", filepath.Join(dir, "no-such-train"))
			for _, want := range append(tc.wants, plainLines...) {
				if !strings.Contains(text, want) {
					t.Errorf("document lacks %q:\n%s", want, text)
				}
			}
			checkPlots(t, doc, text, nil)
		})
	}
}

// TestPlotGroups draws only the groups -plots names: timing and mismatch from two hand-made
// seeds (step times 1, 2, 3 and 3, 4, 5 s; mismatch KL 0 and 0.5 per step), checks the files
// written and that they are readable PNGs, the seed spread of the step time against the
// hand-worked mean, lowest and highest (2, 1, 3 at step 1), and that an unknown group is refused
// with its name.
func TestPlotGroups(t *testing.T) {
	dir := t.TempDir()
	var specs []string
	for seed, base := range []float64{1, 3} {
		var lines []string
		for step := 0; step <= 3; step++ {
			r := map[string]any{"step": step}
			if step == 0 {
				r["eval"] = map[string]any{"pass_at_k_by_kind": map[string]any{"arith": map[string]float64{"1": 0.5}}}
			} else {
				r["timing_s/step"] = base + float64(step-1)
				r["rollout_corr/kl"] = 0.5 * float64(seed)
				r["actor/entropy"] = 0.3
			}
			b, err := json.Marshal(r)
			if err != nil {
				t.Fatal(err)
			}
			lines = append(lines, string(b))
		}
		run := filepath.Join(dir, "runs", fmt.Sprintf("seed%d", seed+1))
		if err := os.MkdirAll(run, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(run, "metrics.jsonl"), []byte(strings.Join(lines, "\n")+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		specs = append(specs, run)
	}
	spec := "overlapped=" + strings.Join(specs, ",")
	out := filepath.Join(dir, "plots")
	if err := run([]string{spec}, out, 0, []string{"timing", "mismatch"}); err != nil {
		t.Fatal(err)
	}
	entries, err := os.ReadDir(out)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range entries {
		got = append(got, e.Name())
		f, err := os.Open(filepath.Join(out, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := png.Decode(f); err != nil {
			t.Errorf("%s: %v", e.Name(), err)
		}
		f.Close()
	}
	if want := []string{"rollout_kl.png", "step_time.png"}; !slices.Equal(got, want) {
		t.Errorf("files %v, want %v (no pass@k or entropy plots)", got, want)
	}
	c, err := load(spec)
	if err != nil {
		t.Fatal(err)
	}
	for _, ps := range plotSpecs([]config{c}, 0) {
		if ps.file != "step_time.png" {
			continue
		}
		s := seedSpread(c, ps.m, 0)
		if len(s.mean) != 3 || s.mean[0] != (plotter.XY{X: 1, Y: 2}) || s.lo[0].Y != 1 || s.hi[0].Y != 3 || s.mean[2].Y != 4 {
			t.Errorf("step time spread: mean %v, lo %v, hi %v; want mean 2, 3, 4 at steps 1-3, 1 and 3 at step 1", s.mean, s.lo, s.hi)
		}
	}
	if err := run([]string{spec}, out, 0, []string{"timing", "speed"}); err == nil || !strings.Contains(err.Error(), `"speed"`) {
		t.Errorf("unknown group: error %v, want one naming \"speed\"", err)
	}
}
