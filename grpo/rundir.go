package grpo

import (
	"bytes"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"

	"github.com/prolong-rl/prolong/checkpoints"
)

// startOver checks that a new run may start in dir: a directory with a saved run state is
// ErrRunExists; one whose earlier run stopped before its first save (metrics.jsonl, no run
// state) is started again, its metrics log and event files removed.
func startOver(dir string) error {
	mpath := filepath.Join(dir, MetricsFile)
	if _, err := os.Stat(mpath); err != nil {
		return nil
	}
	if steps, _ := checkpoints.ListSteps(filepath.Join(dir, StateDir)); len(steps) > 0 {
		return fmt.Errorf("%w: %s holds run states up to step %d", ErrRunExists, dir, steps[len(steps)-1])
	}
	slog.Warn("the run directory holds a run that stopped before its first save: starting it again", "dir", dir)
	return removeRunLog(dir)
}

// runTokenizer writes the job's tokenizer into the run directory's tokenizer/ (for tools/export
// of its run states), whole or not at all. A resumed run keeps the one it has: a job whose
// tokenizer differs from it (another --model) is an error, and the run's is left as it was.
func runTokenizer(cfg RunConfig, job *Job) error {
	if job.TokenizerFiles == nil {
		return nil
	}
	dir := filepath.Join(cfg.Dir, "tokenizer")
	if _, err := os.Stat(dir); cfg.Resume == nil || err != nil {
		if err := checkpoints.ReplaceDir(dir, ".tokenizer.tmp-", job.TokenizerFiles); err != nil {
			return fmt.Errorf("run directory %s: tokenizer: %w", cfg.Dir, err)
		}
		return nil
	}
	tmp, err := os.MkdirTemp(cfg.Dir, ".tokenizer.tmp-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	if err := job.TokenizerFiles(tmp); err != nil {
		return fmt.Errorf("run directory %s: tokenizer: %w", cfg.Dir, err)
	}
	if f, ok := sameFiles(dir, tmp); !ok {
		return fmt.Errorf("resume: the model's tokenizer differs from the run's (%s in %s): a run continues with the tokenizer it started with", f, dir)
	}
	return nil
}

// sameFiles reports whether directories a and b hold the same files with the same bytes, and
// otherwise names the first file that differs.
func sameFiles(a, b string) (string, bool) {
	ea, _ := os.ReadDir(a)
	eb, _ := os.ReadDir(b)
	names := map[string]bool{}
	for _, e := range append(ea, eb...) {
		names[e.Name()] = true
	}
	for _, n := range slices.Sorted(maps.Keys(names)) {
		x, errA := os.ReadFile(filepath.Join(a, n))
		y, errB := os.ReadFile(filepath.Join(b, n))
		if errA != nil || errB != nil || !bytes.Equal(x, y) {
			return n, false
		}
	}
	return "", true
}

// plot redraws the run directory's plots from metrics.jsonl. A plot is not worth a run: a
// failure is logged and the run goes on.
func (r *runSession) plot() {
	recs, err := ReadMetrics(filepath.Join(r.cfg.Dir, MetricsFile))
	if err == nil {
		_, err = PlotMetrics(recs, r.cfg.Dir)
	}
	if err != nil {
		slog.Warn("plots not redrawn", "dir", r.cfg.Dir, "err", err)
	}
}
