package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/prolong-rl/prolong/engine"
	"github.com/prolong-rl/prolong/tools/internal/modelio"
	"github.com/prolong-rl/prolong/tools/internal/tooltest"
)

// engineVsORT is the bound on |logit difference| between ONNX Runtime on an exported
// model.onnx and the engine on the same f32 weights: two implementations summing in different
// orders (measured: under 1e-6 on these models, logits of magnitude ~1).
const engineVsORT = 1e-5

// TestExportForORT: the latest step, an older step and the reference policy of a run state,
// exported to ONNX, give in ONNX Runtime the logits the engine computes on the weights the
// fixture was made from.
func TestExportForORT(t *testing.T) {
	tooltest.NeedORT(t)
	ids := []int32{1, 5, 39, 0, 12, 7, 7, 22, 3, 38, 14, 2}
	out := t.TempDir()
	for _, tc := range []struct {
		name string
		args []string
		want map[string]engine.HostTensor
	}{
		{"latest", nil, fixturePolicy(4)},
		{"step2", []string{"--step", "2"}, fixturePolicy(2)},
		{"reference", []string{"--weights", "reference"}, fixtureReference(4)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dst := filepath.Join(out, tc.name)
			o := mustExport(t, append([]string{"-i", fixtureRun, "-o", dst, "--verify"}, tc.args...)...)
			if !strings.Contains(o, "verify: max |logit difference| ONNX Runtime vs engine") {
				t.Errorf("--verify printed nothing:\n%s", o)
			}
			got, vocab, err := modelio.ORTLogits(filepath.Join(dst, "model.onnx"), ids)
			if err != nil {
				t.Fatal(err)
			}
			if vocab != fixtureConfig().VocabSize {
				t.Fatalf("vocab %d", vocab)
			}
			d, scale := tooltest.MaxDiff(t, got, engineLogits(t, fixtureConfig(), tc.want, ids))
			t.Logf("%s: ONNX Runtime vs engine: max |logit difference| %.3g (max |logit| %.3g)", tc.name, d, scale)
			if d > engineVsORT {
				t.Errorf("logits differ by %.3g > %g", d, engineVsORT)
			}
		})
	}
	// The three exports are different models: the comparison can tell them apart.
	a, _, _ := modelio.ORTLogits(filepath.Join(out, "latest", "model.onnx"), ids)
	b, _, _ := modelio.ORTLogits(filepath.Join(out, "step2", "model.onnx"), ids)
	if d, _ := tooltest.MaxDiff(t, a, b); d < 1e-2 {
		t.Errorf("step 4 and step 2 give logits within %.3g", d)
	}
}

// TestConvertThenExport: an ONNX file from outside (the torch.onnx / optimum-style fixtures)
// -> tools/convert (the real binary) -> safetensors -> tools/export -> ONNX gives, in ONNX
// Runtime, the original file's logits (within roundTripTolerance), and a second round from
// there is bit-exact.
func TestConvertThenExport(t *testing.T) {
	tooltest.NeedORT(t)
	convert := tooltest.Build(t, "../convert", false)
	for _, fx := range []string{"qwen2_past", "llama3_nopast", "qwen3_past_ext", "genai_qwen2"} {
		t.Run(fx, func(t *testing.T) {
			dir := t.TempDir()
			src := filepath.Join("../../onnx/testdata", fx, "model.onnx")
			hf, back := filepath.Join(dir, "hf"), filepath.Join(dir, "onnx")
			if out, err := exec.Command(convert, "-i", src, "-o", hf, "--max-position-embeddings", "512", "--quiet").CombinedOutput(); err != nil {
				t.Fatalf("convert: %v\n%s", err, out)
			}
			mustExport(t, "-i", hf, "-o", back, "--format", "onnx")
			cfg, err := engine.LoadConfig(filepath.Join(back, "config.json"))
			if err != nil {
				t.Fatal(err)
			}
			ids := modelio.SampleTokens(cfg, 12)
			want, got := tooltest.ORTLogits(t, src, ids), tooltest.ORTLogits(t, filepath.Join(back, "model.onnx"), ids)
			d, scale := tooltest.MaxDiff(t, got, want)
			t.Logf("%s: ONNX Runtime on the original vs after convert + export: max |logit difference| %.3g (max |logit| %.3g)", fx, d, scale)
			if d > roundTripTolerance {
				t.Errorf("logits differ by %.3g > %g", d, roundTripTolerance)
			}

			// A file this project wrote goes round exactly: convert + export of our model.onnx
			// gives the same bytes, hence the same logits bit for bit.
			hf2, back2 := filepath.Join(dir, "hf2"), filepath.Join(dir, "onnx2")
			if out, err := exec.Command(convert, "-i", back, "-o", hf2, "--quiet").CombinedOutput(); err != nil {
				t.Fatalf("convert: %v\n%s", err, out)
			}
			sameFile(t, filepath.Join(hf, "model.safetensors"), filepath.Join(hf2, "model.safetensors"))
			mustExport(t, "-i", hf2, "-o", back2, "--format", "onnx")
			sameFile(t, filepath.Join(back, "model.onnx"), filepath.Join(back2, "model.onnx"))
			again, _, err := modelio.ORTLogits(filepath.Join(back2, "model.onnx"), ids)
			if err != nil {
				t.Fatal(err)
			}
			if d, _ := tooltest.MaxDiff(t, again, got); d != 0 {
				t.Errorf("second round trip: logits differ by %.3g", d)
			}
		})
	}
}

// roundTripTolerance bounds |logit difference| in ONNX Runtime between a model file from
// outside and our re-export of its weights: the weights are bit-identical, but the graphs
// differ (fused ops, another summation order), so the logits differ in the last few bits.
// Measured: at most 1.27e-5 on logits of magnitude up to 12, where an f32 ulp is 9.5e-7, so
// about 13 ulp (1e-6 relative): within 2e-5 absolute, not within 1e-5.
const roundTripTolerance = 2e-5

// TestDocs runs the ```sh commands of docs/export.md from the repository root, in order (out/
// pointed at a temporary directory), and checks that they wrote what the page says. Without
// ONNX Runtime the --verify checks are left out (and the test says so); with
// PROLONG_REQUIRE_ORT=1 they are required.
func TestDocs(t *testing.T) {
	tmp := tooltest.RunDocs(t, "export", 5, func(args ...string) (string, error) { return export(t, args...) })
	for _, f := range []string{"release/model.onnx", "release/model.safetensors", "release/config.json", "release/tokenizer.json",
		"step2/model.onnx", "step2/config.json", "ref4/model.safetensors", "release-bf16/model.safetensors", "release-bf16/tokenizer.json"} {
		if _, err := os.Stat(filepath.Join(tmp, f)); err != nil {
			t.Error(err)
		}
	}
	for _, f := range []string{"step2/model.safetensors", "ref4/model.onnx"} {
		if _, err := os.Stat(filepath.Join(tmp, f)); !os.IsNotExist(err) {
			t.Errorf("%s: want no such file (%v)", f, err)
		}
	}
}
