package main

import (
	"context"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/prolong-rl/prolong/checkpoints"
	"github.com/prolong-rl/prolong/engine"
	"github.com/prolong-rl/prolong/engine/cpu"
	"github.com/prolong-rl/prolong/tools/internal/modelio"
	"github.com/prolong-rl/prolong/tools/internal/tooltest"
)

// Bounds on |logit difference|, from measurements on these fixtures (logits up to ~12 in
// magnitude, where an f32 ulp is 9.5e-7):
const (
	// roundTripTolerance: ONNX Runtime on a file from outside vs on our re-export of its
	// weights. The weights are bit-identical, the graphs are not (fused ops, other summation
	// orders): measured at most 1.27e-5, about 13 ulp, so the bound is 2e-5 rather than 1e-5.
	roundTripTolerance = 2e-5
	// engineTolerance: ONNX Runtime on the original file vs the engine on the converted
	// weights (measured at most 9.8e-6).
	engineTolerance = 2e-5
)

var verifyLine = regexp.MustCompile(`verify: max \|logit difference\| ONNX Runtime vs engine over (\d+) positions x (\d+) vocab: (\S+) \(tolerance`)

// verified returns the difference a --verify run printed.
func verified(t *testing.T, out string, positions int) float64 {
	t.Helper()
	m := verifyLine.FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("--verify printed no result:\n%s", out)
	}
	if m[1] != strconv.Itoa(positions) {
		t.Errorf("--verify ran %s positions, want %d", m[1], positions)
	}
	d, err := strconv.ParseFloat(m[3], 64)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// TestONNXRoundTrip: each kind of ONNX file users have -> convert -> safetensors -> convert
// --to onnx gives a model on which ONNX Runtime computes the original file's logits, and the
// engine on the converted weights computes them too; a second round is bit-exact.
func TestONNXRoundTrip(t *testing.T) {
	tooltest.NeedORT(t)
	for _, fx := range fixtures {
		t.Run(fx, func(t *testing.T) {
			dir := t.TempDir()
			src := fixture(fx)
			hf, back, hf2, back2 := filepath.Join(dir, "hf"), filepath.Join(dir, "onnx"), filepath.Join(dir, "hf2"), filepath.Join(dir, "onnx2")
			d1 := verified(t, mustConvert(t, "-i", src, "-o", hf, "--verify", "--verify-tokens", "9", "--max-position-embeddings", "512"), 9)
			d2 := verified(t, mustConvert(t, "-i", hf, "-o", back, "--to", "onnx", "--verify"), 16)

			cfg, w, err := checkpoints.Load(hf)
			if err != nil {
				t.Fatal(err)
			}
			ids := modelio.SampleTokens(cfg, 12)
			want, got := tooltest.ORTLogits(t, src, ids), tooltest.ORTLogits(t, filepath.Join(back, "model.onnx"), ids)
			d, scale := tooltest.MaxDiff(t, got, want)
			m, err := engine.NewModel(cfg, cpu.New(), w, engine.F32)
			if err != nil {
				t.Fatal(err)
			}
			eng, err := m.Logits(context.Background(), [][]int32{ids})
			if err != nil {
				t.Fatal(err)
			}
			de, _ := tooltest.MaxDiff(t, eng[0], want)
			t.Logf("%s: ONNX Runtime, original vs round trip: %.3g; engine vs original: %.3g (max |logit| %.3g); --verify printed %.3g and %.3g", fx, d, de, scale, d1, d2)
			if d > roundTripTolerance || de > engineTolerance {
				t.Errorf("logits differ: round trip by %.3g (bound %g), engine by %.3g (bound %g)", d, roundTripTolerance, de, engineTolerance)
			}
			if d1 > 1e-3 || d2 > 1e-3 {
				t.Errorf("--verify passed with %.3g and %.3g", d1, d2)
			}

			mustConvert(t, "-i", back, "-o", hf2)
			mustConvert(t, "-i", hf2, "-o", back2, "--to", "onnx")
			sameFile(t, filepath.Join(hf, "model.safetensors"), filepath.Join(hf2, "model.safetensors"))
			sameFile(t, filepath.Join(back, "model.onnx"), filepath.Join(back2, "model.onnx"))
		})
	}
}

// TestVerifyFails: --verify fails above --tolerance, and then nothing is written; bf16 output
// is checked as written, so its rounding shows.
func TestVerifyFails(t *testing.T) {
	tooltest.NeedORT(t)
	dir := t.TempDir()
	src := fixture("llama3_nopast")
	_, err := convert(t, "-i", src, "-o", dir+"/strict", "--verify", "--tolerance", "1e-9")
	if err == nil || !strings.Contains(err.Error(), "more than --tolerance 1e-09 (nothing was written)") {
		t.Errorf("--tolerance 1e-9: %v", err)
	}
	if _, err := os.Stat(dir + "/strict"); !os.IsNotExist(err) {
		t.Error("a failed --verify left its output behind")
	}
	out, err := convert(t, "-i", src, "-o", dir+"/bf16", "--dtype", "bf16", "--verify", "--tolerance", "1")
	if err != nil {
		t.Fatal(err, out)
	}
	d := verified(t, out, 16)
	t.Logf("bf16: ONNX Runtime (f32 original) vs engine on the bf16 weights: %.3g", d)
	if d < 1e-5 || d > 0.5 {
		t.Errorf("bf16 difference %.3g: want the visible rounding of bf16, not 0 nor garbage", d)
	}
}

// TestDocs runs the ```sh commands of docs/convert.md from the repository root, in order (out/
// pointed at a temporary directory), and checks that they wrote what the page says. Without
// ONNX Runtime the --verify checks are left out (and the test says so); with
// PROLONG_REQUIRE_ORT=1 they are required.
func TestDocs(t *testing.T) {
	tmp := tooltest.RunDocs(t, "convert", 4, func(args ...string) (string, error) { return convert(t, args...) })
	for _, f := range []string{"qwen2-hf/model.safetensors", "qwen2-hf/config.json", "qwen2-hf/generation_config.json",
		"llama3-hf/model.safetensors", "qwen2-onnx/model.onnx", "qwen2-onnx/config.json", "qwen3-hf/model.safetensors"} {
		if _, err := os.Stat(filepath.Join(tmp, f)); err != nil {
			t.Error(err)
		}
	}
	f, err := checkpoints.ReadSafetensors(filepath.Join(tmp, "llama3-hf", "model.safetensors"))
	if err != nil {
		t.Fatal(err)
	}
	if f.DTypes["model.embed_tokens.weight"] != checkpoints.BF16 {
		t.Errorf("llama3-hf stored as %s, the page says bf16", f.DTypes["model.embed_tokens.weight"])
	}
}
