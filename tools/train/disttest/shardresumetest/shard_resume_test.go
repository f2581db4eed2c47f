// Package shardresumetest resumes the trainer's default job run under mpirun -np 2 with the
// optimizer sharded over the ranks (--shard-optimizer, ZeRO-1; issue 32): on as many ranks
// bit-exactly, on another number of ranks (or unsharded) by re-sharding the optimizer state.
package shardresumetest

import (
	"encoding/json"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/prolong-rl/prolong/tools/train/disttest/internal/disthelp"
)

// checksums are the weights checksums the ranks logged at step (the line "dist: weights
// checksum rank=R step=S sha256=..."), by rank.
func checksums(log, step string) map[string]string {
	out := map[string]string{}
	re := regexp.MustCompile(`dist: weights checksum rank=(\d+) step=` + step + ` sha256=([0-9a-f]{64})`)
	for _, m := range re.FindAllStringSubmatch(log, -1) {
		out[m[1]] = m[2]
	}
	return out
}

// timed reports the metrics that measure time (they differ between any two runs).
func timed(key string) bool {
	return strings.HasPrefix(key, "timing_s/") || strings.HasSuffix(key, "_per_s") || key == "train_s"
}

// copyDir copies the run directory src to dst (cp -a).
func copyDir(t *testing.T, src, dst string) {
	t.Helper()
	if out, err := exec.Command("cp", "-a", src, dst).CombinedOutput(); err != nil {
		t.Fatalf("cp -a %s %s: %v\n%s", src, dst, err, out)
	}
}

// TestShardResume runs the default job `--steps 2 --seed 1` under mpirun -np 2 with
// --shard-optimizer, saving every step (every process on GOMAXPROCS=2 threads), then:
//   - a copy of it resumed from step 1 on 2 ranks logs step 2's metrics equal to the
//     uninterrupted run's (every one but the timings) and ends with the same weights checksum:
//     bit-exact;
//   - a copy resumed from step 1 on 3 ranks, or on 2 without --shard-optimizer, re-shards the
//     optimizer state and logs step 2 as the uninterrupted run (to rounding); a 1-process
//     resume is refused (--shard-optimizer is saved with the run and needs several ranks).
func TestShardResume(t *testing.T) {
	launcher := disthelp.Mpirun(t)
	bin := disthelp.Trainer(t)
	tmp := t.TempDir()
	two := filepath.Join(tmp, "two")
	_, stderr := disthelp.Run(t, disthelp.Command(launcher, disthelp.MPIArgs(2, bin, "--quiet", "--steps", "2", "--seed", "1", "--out", two, "--shard-optimizer", "--save-every", "1")...))
	for _, f := range []string{"optimizer-rank-0-of-2.safetensors", "optimizer-rank-1-of-2.safetensors"} {
		if _, err := os.Stat(filepath.Join(two, "state", "optimizer-shards", "step-000001", f)); err != nil {
			t.Fatal(err)
		}
	}
	want := disthelp.Metrics(t, two)
	if want[2]["optimizer_updates"].(float64) < 1 {
		t.Fatalf("step 2 made no optimizer update: the resume would check nothing")
	}
	wantSums := checksums(stderr, "2")

	// Resumed from step 1 on 2 ranks: step 2 as the uninterrupted run.
	resumed := filepath.Join(tmp, "resumed")
	copyDir(t, two, resumed)
	_, rstderr := disthelp.Run(t, disthelp.Command(launcher, disthelp.MPIArgs(2, bin, "--quiet", "--out", resumed, "--resume", "--resume-step", "1")...))
	got := disthelp.Metrics(t, resumed)
	if len(got) != 3 {
		t.Errorf("the resumed run's metrics.jsonl has %d lines, want 3 (steps 0-2)", len(got))
	}
	for k, v := range want[2] {
		if !timed(k) && !reflect.DeepEqual(got[2][k], v) {
			w, _ := json.Marshal(v)
			g, _ := json.Marshal(got[2][k])
			t.Errorf("step 2 %s: resumed %s, uninterrupted %s", k, g, w)
		}
	}
	gotSums := checksums(rstderr, "2")
	if len(wantSums) != 2 || !reflect.DeepEqual(gotSums, wantSums) {
		t.Errorf("weights checksums at step 2: resumed %v, uninterrupted %v", gotSums, wantSums)
	} else {
		t.Logf("resumed from step 1: step 2's metrics and weights (sha256 %s) are the uninterrupted run's", wantSums["0"])
	}

	// Re-sharded: on 3 ranks, and on 2 ranks without sharding. Step 2 starts from step 1's
	// saved weights, so its rollouts and losses are the uninterrupted run's; its gradient sum
	// rounds differently over 3 ranks.
	for _, c := range []struct {
		name, shards string
		cmd          *exec.Cmd
	}{
		{"3 ranks", "optimizer-rank-2-of-3.safetensors", disthelp.Command(launcher, disthelp.MPIArgs(3, bin, "--quiet", "--out", filepath.Join(tmp, "np3"), "--resume", "--resume-step", "1")...)},
		{"unsharded", "", disthelp.Command(launcher, disthelp.MPIArgs(2, bin, "--quiet", "--out", filepath.Join(tmp, "unsharded"), "--resume", "--resume-step", "1", "--shard-optimizer=false")...)},
	} {
		dir := c.cmd.Args[slices.Index(c.cmd.Args, "--out")+1]
		copyDir(t, two, dir)
		out, err := c.cmd.CombinedOutput()
		if err != nil || !strings.Contains(string(out), "re-sharded the optimizer state") {
			t.Errorf("%s: %v, want a run that says it re-sharded:\n%s", c.name, err, out)
			continue
		}
		got := disthelp.Metrics(t, dir)
		for _, k := range []string{"critic/score/mean", "actor/pg_loss", "actor/entropy", "actor/grad_norm", "actor/kl_loss"} {
			x, y := want[2][k].(float64), got[2][k].(float64)
			if math.Abs(x-y) > 1e-5*math.Abs(x)+1e-12 {
				t.Errorf("%s: step 2 %s: re-sharded %.9g, uninterrupted %.9g", c.name, k, y, x)
			}
		}
		saved := filepath.Join(dir, "state", "optimizer-shards", "step-000002", c.shards)
		if c.shards == "" {
			saved = filepath.Join(dir, "state", "step-000002", "optimizer.safetensors")
		}
		if _, err := os.Stat(saved); err != nil {
			t.Errorf("%s: %v", c.name, err)
		}
		t.Logf("%s: re-sharded from 2 shards; step 2's metrics are the uninterrupted run's to 1e-5", c.name)
	}

	// Refused: one process with --shard-optimizer (saved with the run).
	np1 := filepath.Join(tmp, "np1")
	copyDir(t, two, np1)
	out, err := disthelp.Command(bin, "--quiet", "--out", np1, "--resume", "--resume-step", "1").CombinedOutput()
	if want := "--shard-optimizer shards the optimizer over the ranks of a data-parallel run, and this run has one process"; err == nil || !strings.Contains(string(out), want) {
		t.Errorf("1 process: %v, want an error saying %q:\n%s", err, want, out)
	}
}
