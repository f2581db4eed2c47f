package grpo

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/prolong-rl/prolong/checkpoints"
	"github.com/prolong-rl/prolong/grpo/modeldir"
)

// loraRun is tinyRun training rank-4 adapters (alpha 8) on a base held as dtype.
func loraRun(t *testing.T, dir string, steps int, dtype string) (RunConfig, JobFunc) {
	cfg, job := tinyRun(t, dir, steps)
	cfg.LoRA = LoRAConfig{Rank: 4, Alpha: 8, Targets: []string{"all-linear"}, BaseDType: dtype}
	return cfg, job
}

// TestLoRARunResume: a LoRA run of 6 steps (reference reset at 3, KL to the reference) stopped
// after 4 and resumed from its state of step 4, whose reference adapters are those of the
// reset, ends at the same adapters and merged weights, bit for bit, as the uninterrupted run,
// with an fp32 and with a bf16 base, and with LoRA dropout 0.1 (masks keyed by the run's
// optimizer update, not the trainer's, which the reset restarts). The exports carry adapter/, the run keeps its base in
// base/, the run state holds the base, the adapters and the reference's adapters (not a
// second copy of the weights), and the base never changes.
func TestLoRARunResume(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		dtype   string
		dropout float64
	}{{"fp32", 0}, {"bf16", 0}, {"fp32", 0.1}} {
		dtype := tc.dtype
		loraRun := func(t *testing.T, dir string, steps int, dtype string) (RunConfig, JobFunc) {
			cfg, job := loraRun(t, dir, steps, dtype)
			cfg.LoRA.Dropout = tc.dropout
			return cfg, job
		}
		t.Run(fmt.Sprintf("%s/dropout=%g", dtype, tc.dropout), func(t *testing.T) {
			fullDir, splitDir := t.TempDir(), t.TempDir()
			cfg, job := loraRun(t, fullDir, 6, dtype)
			full, err := Run(ctx, cfg, job)
			if err != nil {
				t.Fatal(err)
			}
			cfg, job = loraRun(t, splitDir, 4, dtype)
			if _, err := Run(ctx, cfg, job); err != nil {
				t.Fatal(err)
			}
			st, err := checkpoints.LoadRunState(filepath.Join(splitDir, StateDir), 4)
			if err != nil {
				t.Fatal(err)
			}
			if st.Adapters == nil || st.ReferenceAdapters == nil || st.Reference != nil {
				t.Fatalf("run state: adapters %v, reference adapters %v, full reference %v", st.Adapters != nil, st.ReferenceAdapters != nil, st.Reference != nil)
			}
			rp, err := LoadResumePoint(splitDir)
			if err != nil {
				t.Fatal(err)
			}
			cfg, job = loraRun(t, splitDir, 6, dtype)
			cfg.Resume = rp
			split, err := Run(ctx, cfg, job)
			if err != nil {
				t.Fatal(err)
			}
			for _, f := range []string{"model.safetensors", filepath.Join(modeldir.AdapterDir, modeldir.AdapterWeightsFile)} {
				a, _ := os.ReadFile(filepath.Join(full.Exports[6], f))
				b, _ := os.ReadFile(filepath.Join(split.Exports[6], f))
				if len(a) == 0 || string(a) != string(b) {
					t.Fatalf("%s: the resumed run ends elsewhere than the uninterrupted one", f)
				}
			}
			// The exports at the reset and at the end merge to the export's model (checked
			// independently by scripts/check_lora_merge.py in TestLoRAExportMergesInPython).
			for _, s := range []int{3, 6} {
				if _, err := os.Stat(filepath.Join(full.Exports[s], modeldir.AdapterDir, modeldir.AdapterConfigFile)); err != nil {
					t.Errorf("export of step %d: %v", s, err)
				}
			}
			base, err := checkpoints.LoadRunState(filepath.Join(fullDir, StateDir), 6)
			if err != nil {
				t.Fatal(err)
			}
			_, w0, err := checkpoints.Load(filepath.Join(fullDir, BaseDir))
			if err != nil {
				t.Fatal(err)
			}
			for n, w := range w0 {
				for i, v := range w.Data {
					if base.Weights[n].Data[i] != v {
						t.Fatalf("base weight %s changed during the run", n)
					}
				}
			}
		})
	}
}

// TestLoRAExportMergesInPython: the adapter a LoRA run exports, merged into the run's base by
// an independent script (scripts/check_lora_merge.py: W + alpha/r·B·A in float64 with numpy),
// equals the merged model.safetensors of the same export (within 1 ulp), at the reset and at
// the end; and --lora-init starts a new run from that adapter, its first evaluation then
// scoring as the export did.
func TestLoRAExportMergesInPython(t *testing.T) {
	py := "/usr/bin/python3"
	if err := exec.Command(py, "-c", "import numpy").Run(); err != nil {
		if os.Getenv("PROLONG_REQUIRE_PYTHON") == "1" {
			t.Fatalf("PROLONG_REQUIRE_PYTHON=1 but %s with numpy is missing: %v", py, err)
		}
		t.Skipf("%s with numpy is missing (apt-get install python3-numpy): %v", py, err)
	}
	ctx := context.Background()
	dir := t.TempDir()
	cfg, job := loraRun(t, dir, 4, "fp32")
	res, err := Run(ctx, cfg, job)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []int{3, 4} {
		out, err := exec.Command(py, "../scripts/check_lora_merge.py", filepath.Join(dir, BaseDir), res.Exports[s]).CombinedOutput()
		t.Logf("step %d: %s", s, strings.TrimSpace(string(out)))
		if err != nil {
			t.Fatalf("step %d: %v", s, err)
		}
		if strings.Contains(string(out), "move the weights by up to 0,") || strings.Contains(string(out), "up to 0\n") {
			t.Fatalf("step %d: the adapters did not train", s)
		}
	}
	// A new run from the exported adapter starts where the export is.
	dir2 := t.TempDir()
	cfg2, job2 := loraRun(t, dir2, 0, "fp32")
	cfg2.LoRA.Init = filepath.Join(res.Exports[4], modeldir.AdapterDir)
	cfg2.EvalOnly = true
	again, err := Run(ctx, cfg2, job2)
	if err != nil {
		t.Fatal(err)
	}
	if again.First.Accuracy != res.Last.Accuracy {
		t.Errorf("--lora-init: first evaluation %g, the exported adapter's %g", again.First.Accuracy, res.Last.Accuracy)
	}
	// A mismatching rank is an error naming the file and field.
	cfg2.LoRA.Rank = 8
	if _, err := Run(ctx, cfg2, job2); err == nil || !strings.Contains(err.Error(), `adapter_config.json: field "r" is 4, --lora-rank 8`) {
		t.Errorf("--lora-init with another rank: %v", err)
	}
}
