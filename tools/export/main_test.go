package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/prolong-rl/prolong/checkpoints"
	"github.com/prolong-rl/prolong/engine"
)

func export(t *testing.T, args ...string) (string, error) {
	t.Helper()
	var out, errOut bytes.Buffer
	err := run(args, &out, &errOut)
	return out.String() + errOut.String(), err
}

func tinyConfig() *engine.Config {
	return &engine.Config{ModelType: "qwen2", VocabSize: 40, HiddenSize: 32, NumHiddenLayers: 2, NumAttentionHeads: 4,
		NumKeyValueHeads: 2, HeadDim: 8, IntermediateSize: 64, RMSNormEps: 1e-6, RopeTheta: 10000,
		MaxPositionEmbeddings: 64, AttentionBias: true}
}

// makeRun writes a training run as tools/train lays it out: run states of steps 2 and 4 (each
// with its own policy and reference weights) and the run's tokenizer.
func makeRun(t *testing.T) (dir string, policy, reference map[int64]map[string]engine.HostTensor) {
	t.Helper()
	dir = t.TempDir()
	cfg := tinyConfig()
	policy, reference = map[int64]map[string]engine.HostTensor{}, map[int64]map[string]engine.HostTensor{}
	for _, step := range []int64{2, 4} {
		policy[step] = engine.RandomWeights(cfg, uint64(step), 0.1)
		reference[step] = engine.RandomWeights(cfg, uint64(step)+100, 0.1)
		st := &checkpoints.RunState{Step: step, Config: cfg, Weights: policy[step], Reference: reference[step],
			DataPosition: json.RawMessage(`{}`), Metrics: json.RawMessage(`{}`)}
		if err := checkpoints.SaveRunState(filepath.Join(dir, "state"), st, checkpoints.SaveRunOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	os.MkdirAll(filepath.Join(dir, "tokenizer"), 0o755)
	os.WriteFile(filepath.Join(dir, "tokenizer", "tokenizer.json"), []byte(`{"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}}`), 0o644)
	return dir, policy, reference
}

func sameWeights(t *testing.T, what string, got, want map[string]engine.HostTensor) {
	t.Helper()
	for name, w := range want {
		g, ok := got[name]
		if !ok || len(g.Data) != len(w.Data) {
			t.Fatalf("%s: %s missing or resized", what, name)
		}
		for i := range w.Data {
			if g.Data[i] != w.Data[i] {
				t.Fatalf("%s: %s[%d] = %v, want %v", what, name, i, g.Data[i], w.Data[i])
			}
		}
	}
}

// TestExportRunState: the latest step, an older one, and the reference are exported with
// exactly their weights, and the tokenizer comes along.
func TestExportRunState(t *testing.T) {
	run, policy, reference := makeRun(t)
	out := t.TempDir()
	for _, tc := range []struct {
		name string
		args []string
		want map[string]engine.HostTensor
	}{
		{"latest", nil, policy[4]},
		{"step2", []string{"--step", "2"}, policy[2]},
		{"ref4", []string{"--weights", "reference"}, reference[4]},
		{"stepdir", []string{"-i", filepath.Join(run, "state", checkpoints.StepDirName(2))}, policy[2]},
	} {
		dst := filepath.Join(out, tc.name)
		args := append([]string{"-i", run, "-o", dst, "--format", "safetensors"}, tc.args...)
		if o, err := export(t, args...); err != nil {
			t.Fatalf("%s: %v\n%s", tc.name, err, o)
		}
		_, w, err := checkpoints.Load(dst)
		if err != nil {
			t.Fatal(err)
		}
		sameWeights(t, tc.name, w, tc.want)
		if tc.name != "stepdir" {
			if _, err := os.Stat(filepath.Join(dst, "tokenizer.json")); err != nil {
				t.Errorf("%s: %v", tc.name, err)
			}
		}
	}
}

// TestBadInput: mistakes are named; an existing output is not touched without --force.
func TestBadInput(t *testing.T) {
	run, _, _ := makeRun(t)
	dir := t.TempDir()
	existing := filepath.Join(dir, "existing")
	os.MkdirAll(existing, 0o755)
	os.WriteFile(filepath.Join(existing, "keep.txt"), []byte("mine"), 0o644)
	// A damaged run state: its weights file altered after the save.
	damaged := t.TempDir()
	os.CopyFS(damaged, os.DirFS(run))
	wpath := filepath.Join(damaged, "state", checkpoints.StepDirName(4), "model.safetensors")
	b, _ := os.ReadFile(wpath)
	b[len(b)-1] ^= 1
	os.WriteFile(wpath, b, 0o644)
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"-o", dir + "/x"}, "-i/--input is required"},
		{[]string{"-i", run}, "-o/--output is required"},
		{[]string{"-i", run, "-o", existing}, "--force"},
		{[]string{"-i", run, "-o", dir + "/x", "--format", "gguf"}, `--format "gguf"`},
		{[]string{"-i", run, "-o", dir + "/x", "--weights", "old"}, `--weights "old"`},
		{[]string{"-i", run, "-o", dir + "/x", "--step", "3"}, "step-00000003"},
		{[]string{"-i", run, "-o", dir + "/x", "--dtype", "q8"}, `--dtype "q8"`},
		{[]string{"-i", damaged, "-o", dir + "/x"}, "sha256"},
		{[]string{"-i", dir, "-o", dir + "/x"}, "no model here"},
	} {
		o, err := export(t, tc.args...)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("export %v: error %v, want it to mention %q\n%s", tc.args, err, tc.want, o)
		}
	}
	if b, _ := os.ReadFile(filepath.Join(existing, "keep.txt")); string(b) != "mine" {
		t.Error("the existing output directory was touched")
	}
	if _, err := os.Stat(dir + "/x"); !os.IsNotExist(err) {
		t.Error("a failed export left its output behind")
	}
}

// TestHelp: --help names every flag.
func TestHelp(t *testing.T) {
	o, _ := export(t, "--help")
	for _, f := range []string{"--input", "--output", "--format", "--step", "--weights", "--dtype", "--verify", "--tolerance", "--force", "Examples"} {
		if !strings.Contains(o, f) {
			t.Errorf("--help does not mention %s", f)
		}
	}
}
