package main

import (
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/prolong-rl/prolong/checkpoints"
	"github.com/prolong-rl/prolong/engine"
	"github.com/prolong-rl/prolong/grpo"
	"github.com/prolong-rl/prolong/grpo/quickstart"
	"github.com/prolong-rl/prolong/grpo/remote/remotetest"
)

// TestOverlapFlags: --overlap auto is on with --rollout-servers and off without; on brings
// --tis-cap 2 unless it is given (as a flag value, so a resumed run keeps it); bad values and
// --overlap on with --max-staleness 0 are errors naming the flag.
func TestOverlapFlags(t *testing.T) {
	for _, c := range []struct {
		args    []string
		overlap bool
		tis     float64
		err     string
	}{
		{args: nil},
		{args: []string{"--rollout-servers", "http://a:1"}, overlap: true, tis: 2},
		{args: []string{"--rollout-servers", "http://a:1", "--tis-cap", "1.5"}, overlap: true, tis: 1.5},
		{args: []string{"--rollout-servers", "http://a:1", "--max-staleness", "0"}},
		{args: []string{"--rollout-servers", "http://a:1", "--overlap", "off"}},
		{args: []string{"--overlap", "on"}, overlap: true, tis: 2},
		{args: []string{"--overlap", "on", "--max-staleness", "0"}, err: "--overlap on needs --max-staleness 1"},
		{args: []string{"--max-staleness", "2"}, err: "--max-staleness 2: want 0 or 1"},
		{args: []string{"--overlap", "yes"}, err: `--overlap "yes": want auto, on or off`},
	} {
		o, fs, err := parseOptions(append([]string{"--model", "m", "--data", "d", "--device", "cpu"}, c.args...))
		if err != nil {
			t.Fatal(err)
		}
		cfg, err := runConfig(*o, fs)
		switch {
		case c.err != "":
			if err == nil || !strings.Contains(err.Error(), c.err) {
				t.Errorf("%v: %v, want %q", c.args, err, c.err)
			}
		case err != nil:
			t.Errorf("%v: %v", c.args, err)
		case cfg.Trainer.Overlap != c.overlap || cfg.Trainer.Loss.TISCap != c.tis || cfg.Settings.(map[string]any)["tis-cap"] != fs.Lookup("tis-cap").Value.String():
			t.Errorf("%v: overlap %v, TIS cap %v (saved %v); want %v, %v", c.args, cfg.Trainer.Overlap, cfg.Trainer.Loss.TISCap, cfg.Settings.(map[string]any)["tis-cap"], c.overlap, c.tis)
		}
	}
}

// startRolloutServers starts count rollout servers with a random model of the default job's
// shape (the trainer pushes its weights).
func startRolloutServers(t *testing.T, count int) []string {
	t.Helper()
	modelDir := t.TempDir()
	if err := checkpoints.Save(modelDir, quickstart.ModelConfig(), engine.RandomWeights(quickstart.ModelConfig(), 1, 0.02), checkpoints.SaveOptions{}); err != nil {
		t.Fatal(err)
	}
	return remotetest.Start(t, modelDir, count)
}

// TestOverlappedRolloutServers: the default job on two real rollout servers, overlapped by
// default: step 1 trains on fresh rollouts, steps 2-3 on rollouts one step stale, each logging
// its staleness, the mismatch KL (above 0 when stale) and the TIS weights; two runs end at the
// same weights, bit for bit, and not at those of the synchronous run.
func TestOverlappedRolloutServers(t *testing.T) {
	servers := startRolloutServers(t, 2)
	urls := strings.Join(servers, ",")
	t.Setenv("PROLONG_API_KEY", "k")
	args := []string{"--quiet", "--seed", "4", "--steps", "3", "--sft-steps", "40", "--sft-lr", "3e-3", "--cot", "--eval-every", "3",
		"--eval-size", "10", "--prompts", "4", "--n", "8", "--train-problems", "100", "--eval-samples", "2", "--lr", "1e-3", "--rollout-servers", urls}
	dirs := []string{t.TempDir(), t.TempDir(), t.TempDir()}
	for i, d := range dirs {
		a := append(args, "--out", d)
		if i == 2 {
			a = append(a, "--overlap", "off")
		}
		if err := runArgs(t, a...); err != nil {
			t.Fatal(err)
		}
	}
	recs, err := grpo.ReadMetrics(filepath.Join(dirs[0], "metrics.jsonl"))
	if err != nil || len(recs) != 4 {
		t.Fatalf("%d records (%v)", len(recs), err)
	}
	for s, r := range recs[1:] {
		stale := min(s, 1)
		if r.Staleness != stale || (r.RolloutK3KL > 0) != (stale == 1) || r.TISWeightMean <= 0 || r.StepSeconds <= 0 {
			t.Errorf("step %d: staleness %d, rollout k3 KL %g, TIS weight mean %g, step time %v s; want staleness %d, the KL above 0 when stale only",
				s+1, r.Staleness, r.RolloutK3KL, r.TISWeightMean, r.StepSeconds, stale)
		}
		t.Logf("step %d: staleness %d rollout_corr/kl %.3g k3 %.3g TIS mean %.3g step %.2fs", s+1, r.Staleness, r.RolloutKL, r.RolloutK3KL, r.TISWeightMean, r.StepSeconds)
	}
	weights := func(d string) string {
		b, err := os.ReadFile(filepath.Join(d, "checkpoints", checkpoints.StepDirName(3), "model.safetensors"))
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	for _, u := range servers { // both served
		resp, err := http.Get(u + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		m, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if !strings.Contains(string(m), `prolong_requests_total{code="200",endpoint="completions"}`) {
			t.Errorf("%s served no completions", u)
		}
	}
	checkLegacyResume(t, dirs[0])
	if weights(dirs[0]) != weights(dirs[1]) {
		t.Error("two overlapped runs with one seed end at different weights")
	}
	if weights(dirs[0]) == weights(dirs[2]) {
		t.Error("the overlapped run ends at the synchronous run's weights: its rollouts were not stale")
	}
}

// checkLegacyResume: resuming the run in dir (saved with --overlap auto) keeps auto; the same
// run state saved without the overlap setting (a run from before --overlap, which ran
// synchronously) resumes with --overlap off.
func checkLegacyResume(t *testing.T, dir string) {
	t.Helper()
	overlapOnResume := func(dir string) string {
		_, fs, err := parseOptions([]string{"--out", dir, "--resume"})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := resumeFlags(dir, -1, fs); err != nil {
			t.Fatal(err)
		}
		return fs.Lookup("overlap").Value.String()
	}
	if got := overlapOnResume(dir); got != "auto" {
		t.Errorf("resumed with --overlap %s, saved auto", got)
	}
	st, err := checkpoints.LoadRunState(filepath.Join(dir, grpo.StateDir), checkpoints.Latest)
	if err != nil {
		t.Fatal(err)
	}
	var flags map[string]any
	if err := json.Unmarshal(st.Extra["flags"], &flags); err != nil || flags["overlap"] != "auto" {
		t.Fatalf("saved flags %s (%v)", st.Extra["flags"], err)
	}
	delete(flags, "overlap")
	st.Extra["flags"], _ = json.Marshal(flags)
	old := t.TempDir()
	if err := checkpoints.SaveRunState(filepath.Join(old, grpo.StateDir), st, checkpoints.SaveRunOptions{}); err != nil {
		t.Fatal(err)
	}
	if got := overlapOnResume(old); got != "off" {
		t.Errorf("a run saved before --overlap resumed with --overlap %s, want off", got)
	}
}
