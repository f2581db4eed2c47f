package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/prolong-rl/prolong/checkpoints"
)

// convert runs the program's run with args; it returns stdout and the error.
func convert(t *testing.T, args ...string) (string, error) {
	t.Helper()
	var out, errOut bytes.Buffer
	err := run(args, &out, &errOut)
	return out.String() + errOut.String(), err
}

// TestSafetensorsRoundTrip: safetensors -> engine -> ONNX -> engine -> safetensors gives the
// same file contents, tensor for tensor, bit for bit (no ONNX Runtime needed).
func TestSafetensorsRoundTrip(t *testing.T) {
	dir := t.TempDir()
	hf, onnxDir, back := filepath.Join(dir, "hf"), filepath.Join(dir, "onnx"), filepath.Join(dir, "back")
	for _, args := range [][]string{
		{"-i", "../../onnx/testdata/qwen3_past_ext/model.onnx", "-o", hf, "--max-position-embeddings", "512", "--quiet"},
		{"-i", hf, "-o", onnxDir, "--to", "onnx", "--quiet"},
		{"-i", onnxDir, "-o", back, "--quiet"},
	} {
		if out, err := convert(t, args...); err != nil {
			t.Fatalf("convert %v: %v\n%s", args, err, out)
		}
	}
	a, err := checkpoints.ReadSafetensors(filepath.Join(hf, "model.safetensors"))
	if err != nil {
		t.Fatal(err)
	}
	b, err := checkpoints.ReadSafetensors(filepath.Join(back, "model.safetensors"))
	if err != nil {
		t.Fatal(err)
	}
	if len(a.Tensors) != len(b.Tensors) || len(a.Tensors) == 0 {
		t.Fatalf("%d tensors, then %d", len(a.Tensors), len(b.Tensors))
	}
	for name, x := range a.Tensors {
		y := b.Tensors[name]
		if len(x.Data) != len(y.Data) {
			t.Fatalf("%s: %d values, then %d", name, len(x.Data), len(y.Data))
		}
		for i := range x.Data {
			if x.Data[i] != y.Data[i] {
				t.Fatalf("%s[%d]: %v, then %v", name, i, x.Data[i], y.Data[i])
			}
		}
	}
	ca, _ := os.ReadFile(filepath.Join(hf, "config.json"))
	cb, _ := os.ReadFile(filepath.Join(back, "config.json"))
	if !bytes.Equal(ca, cb) {
		t.Errorf("config.json changed in the round trip:\n%s\n%s", ca, cb)
	}
}

// TestBadInput: each mistake is refused with an error naming what is wrong, and an existing
// output directory is left as it was.
func TestBadInput(t *testing.T) {
	dir := t.TempDir()
	hf := filepath.Join(dir, "hf")
	if out, err := convert(t, "-i", "../../onnx/testdata/qwen2_past/model.onnx", "-o", hf, "--quiet"); err != nil {
		t.Fatal(err, out)
	}
	// A corrupt copy: model.safetensors truncated.
	corrupt := filepath.Join(dir, "corrupt")
	os.MkdirAll(corrupt, 0o755)
	st, _ := os.ReadFile(filepath.Join(hf, "model.safetensors"))
	cfg, _ := os.ReadFile(filepath.Join(hf, "config.json"))
	os.WriteFile(filepath.Join(corrupt, "model.safetensors"), st[:len(st)/2], 0o644)
	os.WriteFile(filepath.Join(corrupt, "config.json"), cfg, 0o644)
	// A config that does not match the weights.
	wrong := filepath.Join(dir, "wrong")
	os.MkdirAll(wrong, 0o755)
	os.WriteFile(filepath.Join(wrong, "model.safetensors"), st, 0o644)
	os.WriteFile(filepath.Join(wrong, "config.json"), bytes.Replace(cfg, []byte(`"num_hidden_layers": 2`), []byte(`"num_hidden_layers": 3`), 1), 0o644)
	if bytes.Equal(cfg, bytes.Replace(cfg, []byte(`"num_hidden_layers": 2`), []byte(`"num_hidden_layers": 3`), 1)) {
		t.Fatalf("fixture config changed shape: %s", cfg)
	}
	// An existing output directory with a file in it.
	existing := filepath.Join(dir, "existing")
	os.MkdirAll(existing, 0o755)
	os.WriteFile(filepath.Join(existing, "keep.txt"), []byte("mine"), 0o644)

	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"-o", dir + "/x"}, "-i/--input is required"},
		{[]string{"-i", hf}, "-o/--output is required"},
		{[]string{"-i", dir + "/nope.onnx", "-o", dir + "/x"}, "nope.onnx"},
		{[]string{"-i", corrupt, "-o", dir + "/x", "--to", "onnx"}, "model.safetensors"},
		{[]string{"-i", wrong, "-o", dir + "/x", "--to", "onnx"}, "model.layers.2"},
		{[]string{"-i", hf, "-o", existing, "--to", "onnx"}, "--force"},
		{[]string{"-i", hf, "-o", dir + "/x", "--to", "gguf"}, `--to "gguf"`},
		{[]string{"-i", "../../onnx/testdata/qwen2_past/model.onnx", "-o", dir + "/x", "--dtype", "int4"}, `--dtype "int4"`},
		{[]string{"-i", hf, "-o", dir + "/x"}, "safetensors already"},
	} {
		out, err := convert(t, append(tc.args, "--quiet")...)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("convert %v: error %v, want it to mention %q\n%s", tc.args, err, tc.want, out)
		}
	}
	if b, _ := os.ReadFile(filepath.Join(existing, "keep.txt")); string(b) != "mine" {
		t.Error("the existing output directory was touched")
	}
	if _, err := os.Stat(dir + "/x"); !os.IsNotExist(err) {
		t.Errorf("a failed conversion left %s/x behind", dir)
	}
	// --force replaces it.
	if out, err := convert(t, "-i", hf, "-o", existing, "--to", "onnx", "--force", "--quiet"); err != nil {
		t.Fatal(err, out)
	}
	if _, err := os.Stat(filepath.Join(existing, "keep.txt")); !os.IsNotExist(err) {
		t.Error("--force kept the old directory's files")
	}
}

// TestHelp: --help names every flag and says what it does.
func TestHelp(t *testing.T) {
	out, _ := convert(t, "--help")
	for _, flag := range []string{"--input", "--output", "--to", "--dtype", "--shard-size", "--config", "--max-position-embeddings", "--verify", "--verify-tokens", "--tolerance", "--force", "--quiet", "Examples"} {
		if !strings.Contains(out, flag) {
			t.Errorf("--help does not mention %s:\n%s", flag, out)
		}
	}
}

// TestBinary builds the program and runs it as a user would: exit status 0 on success, 1 with
// the error on stderr on failure.
func TestBinary(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "convert")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	cmd := exec.Command(bin, "-i", "../../onnx/testdata/qwen2_past", "-o", filepath.Join(dir, "hf"), "--quiet")
	if out, err := cmd.CombinedOutput(); err != nil || !strings.Contains(string(out), "converted") {
		t.Fatalf("%v\n%s", err, out)
	}
	cmd = exec.Command(bin, "-i", filepath.Join(dir, "missing"), "-o", filepath.Join(dir, "x"))
	out, err := cmd.CombinedOutput()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 1 || !strings.Contains(string(out), "missing") {
		t.Fatalf("bad input: %v\n%s", err, out)
	}
}
