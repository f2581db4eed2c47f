//go:build cgo

package main

import (
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/prolong-rl/prolong/checkpoints"
	"github.com/prolong-rl/prolong/onnx"
	"github.com/prolong-rl/prolong/onnx/ortrun"
	"github.com/prolong-rl/prolong/tools/internal/modelio"
)

func needORT(t *testing.T) {
	t.Helper()
	if err := ortrun.Init(); err != nil {
		if os.Getenv("PROLONG_REQUIRE_ORT") == "1" {
			t.Fatal(err)
		}
		t.Skip(err)
	}
}

// TestExportForORT: a run state exported to ONNX runs in ONNX Runtime with the engine's logits
// (--verify), and ONNX -> safetensors (as tools/convert writes) -> export -> ONNX gives, in
// ONNX Runtime, the original file's logits.
func TestExportForORT(t *testing.T) {
	needORT(t)
	run, _, _ := makeRun(t)
	out := filepath.Join(t.TempDir(), "rel")
	o, err := export(t, "-i", run, "-o", out, "--verify")
	if err != nil || !strings.Contains(o, "verify: max |logit difference|") {
		t.Fatalf("%v\n%s", err, o)
	}
	t.Log(strings.TrimSpace(o))

	src := "../../onnx/testdata/llama3_nopast/model.onnx"
	cfg, w, err := onnx.Import(src, onnx.ImportOptions{})
	if err != nil {
		t.Fatal(err)
	}
	hf := filepath.Join(t.TempDir(), "hf")
	if err := checkpoints.Save(hf, cfg, w, checkpoints.SaveOptions{}); err != nil {
		t.Fatal(err)
	}
	back := filepath.Join(t.TempDir(), "onnx")
	if o, err := export(t, "-i", hf, "-o", back, "--format", "onnx"); err != nil {
		t.Fatal(err, o)
	}
	ids := modelio.SampleTokens(cfg, 10)
	want, _, err := ortrun.Logits(src, ids)
	if err != nil {
		t.Fatal(err)
	}
	got, _, err := ortrun.Logits(filepath.Join(back, "model.onnx"), ids)
	if err != nil {
		t.Fatal(err)
	}
	var d float64
	for i := range want {
		d = math.Max(d, math.Abs(float64(got[i]-want[i])))
	}
	t.Logf("ONNX -> safetensors -> export -> ONNX: ONNX Runtime logits differ from the original's by %.3g", d)
	if d > 1e-4 {
		t.Fatalf("logits differ by %.3g", d)
	}
}

// TestDocs runs docs/export.md from the repository root: tools/train makes the run (with the
// go command, as the page says), then the export commands.
func TestDocs(t *testing.T) {
	needORT(t)
	page, err := os.ReadFile("../../docs/export.md")
	if err != nil {
		t.Fatal(err)
	}
	tmp := t.TempDir()
	cmds, others := modelio.DocCommands(string(page), "export", tmp)
	if len(cmds) != 4 || len(others) != 1 || !strings.HasPrefix(others[0], "go run ./tools/train ") {
		t.Fatalf("docs/export.md: %d export commands, others %q", len(cmds), others)
	}
	t.Chdir("../..")
	train := strings.Fields(strings.ReplaceAll(others[0], "out/", tmp+"/"))
	if out, err := exec.Command(train[0], train[1:]...).CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", others[0], err, out)
	}
	for _, args := range cmds {
		if o, err := export(t, args...); err != nil {
			t.Fatalf("docs/export.md: go run ./tools/export %s: %v\n%s", strings.Join(args, " "), err, o)
		}
	}
	for _, f := range []string{"release/model.onnx", "release/model.safetensors", "release/tokenizer.json", "step2/model.onnx", "ref4/model.safetensors", "release-bf16/model.safetensors"} {
		if _, err := os.Stat(filepath.Join(tmp, f)); err != nil {
			t.Error(err)
		}
	}
}
