package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/prolong-rl/prolong/checkpoints"
	"github.com/prolong-rl/prolong/engine"
	"github.com/prolong-rl/prolong/engine/cpu"
	"github.com/prolong-rl/prolong/tools/internal/tooltest"
)

// export runs the program in process with args (progress bar off) and returns its output and
// error.
func export(t *testing.T, args ...string) (string, error) { return tooltest.Main(run).Run(args...) }

func mustExport(t *testing.T, args ...string) string {
	t.Helper()
	return tooltest.Main(run).Must(t, "export", args...)
}

// sameWeights fails unless got holds want's tensors with the same shapes and the same bits.
func sameWeights(t *testing.T, what string, got, want map[string]engine.HostTensor) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: %d tensors, want %d", what, len(got), len(want))
	}
	for name, w := range want {
		g, ok := got[name]
		if !ok || len(g.Data) != len(w.Data) || len(g.Shape) != len(w.Shape) {
			t.Fatalf("%s: %s missing or reshaped", what, name)
		}
		for i := range w.Data {
			if g.Data[i] != w.Data[i] {
				t.Fatalf("%s: %s[%d] = %v, want %v", what, name, i, g.Data[i], w.Data[i])
			}
		}
	}
}

// sameFile fails t unless a and b hold the same bytes.
func sameFile(t *testing.T, a, b string) { t.Helper(); tooltest.SameFile(t, a, b) }

// TestExportRunState: each way of naming a run state exports exactly the weights stored for
// it (compared with the seeded weights the fixture was made from), with the run's tokenizer.
func TestExportRunState(t *testing.T) {
	out := t.TempDir()
	stepDir := filepath.Join(fixtureRun, "state", checkpoints.StepDirName(2))
	for _, tc := range []struct {
		name string
		args []string
		want map[string]engine.HostTensor
	}{
		{"latest", []string{"-i", fixtureRun}, fixturePolicy(4)},
		{"step2", []string{"-i", fixtureRun, "--step", "2"}, fixturePolicy(2)},
		{"reference", []string{"-i", fixtureRun, "--weights", "reference"}, fixtureReference(4)},
		{"reference2", []string{"-i", fixtureRun, "--step", "2", "--weights", "reference"}, fixtureReference(2)},
		{"statedir", []string{"-i", filepath.Join(fixtureRun, "state")}, fixturePolicy(4)},
		{"stepdir", []string{"-i", stepDir}, fixturePolicy(2)},
		{"stepdir-step", []string{"-i", stepDir, "--step", "2"}, fixturePolicy(2)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dst := filepath.Join(out, tc.name)
			o := mustExport(t, append(tc.args, "-o", dst, "--format", "safetensors")...)
			if !strings.Contains(o, filepath.Join(dst, "model.safetensors")) {
				t.Errorf("the summary does not list model.safetensors:\n%s", o)
			}
			cfg, w, err := checkpoints.Load(dst)
			if err != nil {
				t.Fatal(err)
			}
			sameWeights(t, tc.name, w, tc.want)
			if cfg.NumHiddenLayers != fixtureConfig().NumHiddenLayers || cfg.VocabSize != fixtureConfig().VocabSize {
				t.Errorf("config %+v", cfg)
			}
			for _, f := range []string{"tokenizer.json", "tokenizer_config.json"} {
				sameFile(t, filepath.Join(fixtureRun, "tokenizer", f), filepath.Join(dst, f))
			}
		})
	}
}

// TestSafetensorsBitExact: safetensors -> export -> safetensors and safetensors -> engine ->
// safetensors give byte-identical files, in f32 and in bf16; bf16 holds each weight rounded to
// nearest even.
func TestSafetensorsBitExact(t *testing.T) {
	dir := t.TempDir()
	a, b := filepath.Join(dir, "a"), filepath.Join(dir, "b")
	mustExport(t, "-i", fixtureRun, "-o", a, "--format", "safetensors")
	mustExport(t, "-i", a, "-o", b, "--format", "safetensors")
	for _, f := range []string{"model.safetensors", "config.json", "generation_config.json", "tokenizer.json"} {
		sameFile(t, filepath.Join(a, f), filepath.Join(b, f))
	}

	// Through the engine: the model built on the CPU backend gives back the same weights.
	c := tooltest.ThroughEngine(t, a, dir)
	sameFile(t, filepath.Join(a, "model.safetensors"), filepath.Join(c, "model.safetensors"))
	sameFile(t, filepath.Join(a, "config.json"), filepath.Join(c, "config.json"))

	// bf16: written once from the run, once more from the bf16 directory.
	b1, b2 := filepath.Join(dir, "bf16"), filepath.Join(dir, "bf16-again")
	mustExport(t, "-i", fixtureRun, "-o", b1, "--format", "safetensors", "--dtype", "bf16")
	mustExport(t, "-i", b1, "-o", b2, "--format", "safetensors", "--dtype", "bf16")
	sameFile(t, filepath.Join(b1, "model.safetensors"), filepath.Join(b2, "model.safetensors"))
	f, err := checkpoints.ReadSafetensors(filepath.Join(b1, "model.safetensors"))
	if err != nil {
		t.Fatal(err)
	}
	want := fixturePolicy(4)
	for name, x := range want {
		if f.DTypes[name] != checkpoints.BF16 {
			t.Fatalf("%s stored as %s", name, f.DTypes[name])
		}
		for i, v := range x.Data {
			if r := checkpoints.BF16ToF32(checkpoints.F32ToBF16(v)); f.Tensors[name].Data[i] != r {
				t.Fatalf("%s[%d] = %v, want %v rounded to bf16 = %v", name, i, f.Tensors[name].Data[i], v, r)
			}
		}
	}
}

// TestONNXOnly: --format onnx writes model.onnx with the config files (byte-identical to what
// a safetensors export writes) and the tokenizer, and no weights file.
func TestONNXOnly(t *testing.T) {
	dir := t.TempDir()
	mustExport(t, "-i", fixtureRun, "-o", dir+"/onnx", "--format", "onnx")
	mustExport(t, "-i", fixtureRun, "-o", dir+"/hf", "--format", "safetensors")
	entries, _ := os.ReadDir(dir + "/onnx")
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	if got := strings.Join(names, " "); got != "config.json generation_config.json model.onnx tokenizer.json tokenizer_config.json" {
		t.Errorf("--format onnx wrote %s", got)
	}
	for _, f := range []string{"config.json", "generation_config.json"} {
		sameFile(t, filepath.Join(dir, "onnx", f), filepath.Join(dir, "hf", f))
	}
}

// TestBadInput: each mistake exits with an error naming the file or flag at fault, and writes
// nothing: an existing output directory keeps its contents, and no temporary directory stays.
func TestBadInput(t *testing.T) {
	dir := t.TempDir()
	outs := filepath.Join(dir, "outs")
	os.MkdirAll(outs, 0o755)
	existing := filepath.Join(outs, "existing")
	os.MkdirAll(existing, 0o755)
	os.WriteFile(filepath.Join(existing, "model.safetensors"), []byte("mine"), 0o644)

	// A model directory to damage.
	hf := filepath.Join(dir, "hf")
	mustExport(t, "-i", fixtureRun, "-o", hf, "--format", "safetensors")
	st, _ := os.ReadFile(filepath.Join(hf, "model.safetensors"))
	cfg, _ := os.ReadFile(filepath.Join(hf, "config.json"))
	model := func(name string, st, cfg []byte) string {
		d := filepath.Join(dir, name)
		os.MkdirAll(d, 0o755)
		os.WriteFile(filepath.Join(d, "model.safetensors"), st, 0o644)
		os.WriteFile(filepath.Join(d, "config.json"), cfg, 0o644)
		return d
	}
	truncated := model("truncated", st[:len(st)-100], cfg)
	garbage := model("garbage", append([]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f}, st[8:]...), cfg)
	moreLayers := bytes.Replace(cfg, []byte(`"num_hidden_layers": 2`), []byte(`"num_hidden_layers": 3`), 1)
	wider := bytes.Replace(cfg, []byte(`"intermediate_size": 32`), []byte(`"intermediate_size": 48`), 1)
	if bytes.Equal(moreLayers, cfg) || bytes.Equal(wider, cfg) {
		t.Fatalf("the fixture's config.json changed shape:\n%s", cfg)
	}
	layers := model("layers", st, moreLayers)
	shape := model("shape", st, wider)
	// A run state whose weights were altered after the save.
	damaged := filepath.Join(dir, "damaged")
	if err := os.CopyFS(damaged, os.DirFS(fixtureRun)); err != nil {
		t.Fatal(err)
	}
	wpath := filepath.Join(damaged, "state", checkpoints.StepDirName(4), "model.safetensors")
	b, _ := os.ReadFile(wpath)
	b[len(b)-1] ^= 1
	os.WriteFile(wpath, b, 0o644)

	x := filepath.Join(outs, "x")
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"no -i", []string{"-o", x}, "-i/--input is required"},
		{"no -o", []string{"-i", fixtureRun}, "-o/--output is required"},
		{"stray argument", []string{"-i", fixtureRun, "-o", x, "extra"}, `unexpected arguments ["extra"]`},
		{"missing input", []string{"-i", filepath.Join(dir, "nope"), "-o", x}, filepath.Join(dir, "nope")},
		{"not a model", []string{"-i", filepath.Join(fixtureRun, "tokenizer", "tokenizer.json"), "-o", x}, "tokenizer.json: not an .onnx file"},
		{"empty dir", []string{"-i", outs, "-o", x}, "no model here"},
		{"truncated safetensors", []string{"-i", truncated, "-o", x}, filepath.Join(truncated, "model.safetensors")},
		{"corrupt header", []string{"-i", garbage, "-o", x}, filepath.Join(garbage, "model.safetensors")},
		{"config: more layers", []string{"-i", layers, "-o", x}, "model.layers.2"},
		{"config: other shape", []string{"-i", shape, "-o", x}, "mlp"},
		{"damaged run state", []string{"-i", damaged, "-o", x}, "sha256"},
		{"existing output", []string{"-i", fixtureRun, "-o", existing}, existing + " exists and is not empty"},
		{"unknown format", []string{"-i", fixtureRun, "-o", x, "--format", "gguf"}, `--format "gguf"`},
		{"unknown format in list", []string{"-i", fixtureRun, "-o", x, "--format", "onnx,gguf"}, `--format "gguf"`},
		{"bad dtype", []string{"-i", fixtureRun, "-o", x, "--dtype", "q8"}, `--dtype "q8"`},
		{"bad weights", []string{"-i", fixtureRun, "-o", x, "--weights", "old"}, `--weights "old"`},
		{"missing step", []string{"-i", fixtureRun, "-o", x, "--step", "3"}, "no step 3 (run states in state/: 2, 4; exported checkpoints in checkpoints/: none)"},
		{"negative step", []string{"-i", fixtureRun, "-o", x, "--step", "-5"}, "--step -5"},
		{"step of another dir", []string{"-i", filepath.Join(fixtureRun, "state", checkpoints.StepDirName(2)), "-o", x, "--step", "4"}, "--step 4"},
		{"step of a model dir", []string{"-i", hf, "-o", x, "--step", "2"}, "is a model directory"},
		{"reference of a model dir", []string{"-i", hf, "-o", x, "--weights", "reference"}, "is a model directory"},
		{"step of an ONNX file", []string{"-i", "../../onnx/testdata/qwen2_past/model.onnx", "-o", x, "--step", "2"}, "is an ONNX model: --step"},
		{"reference of an ONNX dir", []string{"-i", "../../onnx/testdata/qwen2_past", "-o", x, "--weights", "reference"}, "is an ONNX model: --step and --weights reference"},
		{"verify without onnx", []string{"-i", fixtureRun, "-o", x, "--format", "safetensors", "--verify"}, "add onnx to --format"},
		{"output is a file", []string{"-i", fixtureRun, "-o", filepath.Join(existing, "model.safetensors")}, "-o " + filepath.Join(existing, "model.safetensors") + " exists and is not a directory"},
		{"--force onto the input", []string{"-i", hf, "-o", hf, "--dtype", "bf16", "--force"}, "-o " + hf + " holds the input " + hf},
	} {
		o, err := export(t, tc.args...)
		t.Logf("%s: %v", tc.name, err)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: export %v: error %v, want it to mention %q\n%s", tc.name, tc.args, err, tc.want, o)
		}
	}
	if b, _ := os.ReadFile(filepath.Join(existing, "model.safetensors")); string(b) != "mine" {
		t.Error("the existing output directory was overwritten")
	}
	if b, _ := os.ReadFile(filepath.Join(hf, "model.safetensors")); !bytes.Equal(b, st) {
		t.Error("a refused --force onto the input changed the input")
	}
	entries, _ := os.ReadDir(outs)
	if len(entries) != 1 {
		t.Errorf("failed exports left %d entries in %s, want only existing/", len(entries), outs)
	}
	// --force replaces the directory.
	mustExport(t, "-i", fixtureRun, "-o", existing, "--format", "safetensors", "--force")
	_, w, err := checkpoints.Load(existing)
	if err != nil {
		t.Fatal(err)
	}
	sameWeights(t, "--force", w, fixturePolicy(4))
}

// TestModes: the output directory and its files get the modes new ones get under the umask,
// not the owner-only modes of the temporary directory (nor model.onnx's as onnx.Export makes it).
func TestModes(t *testing.T) {
	dir := t.TempDir()
	wantDir, wantFile := tooltest.UmaskModes(t, dir)
	for _, format := range []string{"onnx", "safetensors", "onnx,safetensors"} {
		out := filepath.Join(dir, strings.ReplaceAll(format, ",", "+"))
		mustExport(t, "-i", fixtureRun, "-o", out, "--format", format)
		tooltest.CheckModes(t, "--format "+format, out, wantDir, wantFile)
	}
}

// TestHelp: --help shows the usage line, examples and every flag with its explanation.
func TestHelp(t *testing.T) {
	var out bytes.Buffer
	var o options
	fs := newFlags(&o, &out)
	fs.Usage()
	tooltest.CheckHelp(t, fs, out.String(), []string{"Usage: go run ./tools/export -i CHECKPOINT -o OUTDIR", "Examples:"}, 10)
	if _, err := export(t, "--help"); err == nil || !strings.Contains(err.Error(), "help requested") {
		t.Errorf("--help: %v", err)
	}
}

// TestBinary runs the real program as a user would: exit status 0 with the summary on stdout,
// 1 with the error on stderr.
func TestBinary(t *testing.T) {
	bin := tooltest.Build(t, ".", false)
	out := filepath.Join(t.TempDir(), "release")
	var stdout, stderr bytes.Buffer
	cmd := exec.Command(bin, "-i", fixtureRun, "-o", out, "--format", "safetensors", "--step", "2")
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil || !strings.Contains(stdout.String(), "exported "+fixtureRun+" (run state step 2 (policy), qwen2, ") {
		t.Fatalf("%v\nstdout:\n%s\nstderr:\n%s", err, stdout.String(), stderr.String())
	}
	_, w, err := checkpoints.Load(out)
	if err != nil {
		t.Fatal(err)
	}
	sameWeights(t, "binary", w, fixturePolicy(2))

	stdout.Reset()
	stderr.Reset()
	cmd = exec.Command(bin, "-i", fixtureRun, "-o", out)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err = cmd.Run()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 1 || !strings.Contains(stderr.String(), "export: output directory "+out+" exists") {
		t.Fatalf("existing output: %v\nstderr:\n%s", err, stderr.String())
	}
}

// engineLogits runs the engine's CPU backend on ids.
func engineLogits(t *testing.T, cfg *engine.Config, w map[string]engine.HostTensor, ids []int32) []float32 {
	t.Helper()
	m, err := engine.NewModel(cfg, cpu.New(), w, engine.F32)
	if err != nil {
		t.Fatal(err)
	}
	out, err := m.Logits(context.Background(), [][]int32{ids})
	if err != nil {
		t.Fatal(err)
	}
	return out[0]
}

// TestPythonReader: an independent reader (scripts/check_checkpoint.py: struct + json + numpy,
// rounding references from torch and numpy) reads the exports in bf16, f16 and shards and finds
// every tensor equal to the f32 export's, rounded as PyTorch rounds.
func TestPythonReader(t *testing.T) {
	py := "/usr/bin/python3"
	if err := exec.Command(py, "-c", "import numpy").Run(); err != nil {
		if os.Getenv("PROLONG_REQUIRE_PYTHON") == "1" {
			t.Fatalf("PROLONG_REQUIRE_PYTHON=1 but %s with numpy is not usable: %v", py, err)
		}
		t.Skipf("%s with numpy is not available (apt-get install python3-numpy python3-torch): %v", py, err)
	}
	dir := t.TempDir()
	ref := filepath.Join(dir, "f32")
	mustExport(t, "-i", fixtureRun, "-o", ref, "--format", "safetensors")
	for _, args := range [][]string{
		{"--dtype", "f32"},
		{"--dtype", "bf16"},
		{"--dtype", "f16", "--shard-size", "8000"},
	} {
		out := filepath.Join(dir, strings.Join(args, ""))
		mustExport(t, append([]string{"-i", fixtureRun, "-o", out, "--format", "safetensors"}, args...)...)
		b, err := exec.Command(py, "../../scripts/check_checkpoint.py", out, ref).CombinedOutput()
		if err != nil {
			t.Fatalf("%v: check_checkpoint.py: %v\n%s", args, err, b)
		}
		t.Logf("%v: %s", args, bytes.TrimSpace(b))
	}
}

// TestExportStepOfExportedCheckpoint: --step N of a run finds the exported checkpoint
// RUN/checkpoints/step-NNNNNN when no run state has that step, prefers the run state when both
// have it, and, when neither has it, says which steps each kind holds.
func TestExportStepOfExportedCheckpoint(t *testing.T) {
	run := filepath.Join(t.TempDir(), "run")
	if err := os.CopyFS(run, os.DirFS(fixtureRun)); err != nil {
		t.Fatal(err)
	}
	for _, e := range []struct {
		step int64
		w    map[string]engine.HostTensor
	}{{3, fixturePolicy(3)}, {2, fixturePolicy(102)}} { // step 2 also has a run state
		dir := filepath.Join(run, "checkpoints", fmt.Sprintf("step-%06d", e.step))
		if err := checkpoints.SaveHF(dir, fixtureConfig(), e.w, checkpoints.F32); err != nil {
			t.Fatal(err)
		}
	}
	out := t.TempDir()
	for _, tc := range []struct {
		step string
		want map[string]engine.HostTensor
	}{{"3", fixturePolicy(3)}, {"2", fixturePolicy(2)}} {
		dst := filepath.Join(out, tc.step)
		mustExport(t, "-i", run, "-o", dst, "--format", "safetensors", "--step", tc.step)
		_, w, err := checkpoints.Load(dst)
		if err != nil {
			t.Fatal(err)
		}
		sameWeights(t, "--step "+tc.step, w, tc.want)
	}
	for _, tc := range []struct{ args, want []string }{
		{[]string{"--step", "5"}, []string{"no step 5", "run states", "2, 4", "exported checkpoints", "2, 3"}},
		{[]string{"--step", "3", "--weights", "reference"}, []string{"step-000003", "reference"}},
	} {
		_, err := export(t, append([]string{"-i", run, "-o", filepath.Join(out, "x")}, tc.args...)...)
		for _, w := range tc.want {
			if err == nil || !strings.Contains(err.Error(), w) {
				t.Errorf("export %v: error %v, want it to mention %q", tc.args, err, w)
			}
		}
	}
}
