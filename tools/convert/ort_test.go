package main

import (
	"context"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/prolong-rl/prolong/checkpoints"
	"github.com/prolong-rl/prolong/engine"
	"github.com/prolong-rl/prolong/engine/cpu"
	"github.com/prolong-rl/prolong/tools/internal/modelio"
)

// maxDiff is max_i |a_i - b_i| and max_i |b_i|.
func maxDiff(t *testing.T, a, b []float32) (d, scale float64) {
	t.Helper()
	if len(a) != len(b) || len(a) == 0 {
		t.Fatalf("%d and %d logits", len(a), len(b))
	}
	for i := range a {
		d = math.Max(d, math.Abs(float64(a[i])-float64(b[i])))
		scale = math.Max(scale, math.Abs(float64(b[i])))
	}
	return d, scale
}

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
	needORT(t)
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
			want, _, err := modelio.ORTLogits(src, ids)
			if err != nil {
				t.Fatal(err)
			}
			got, _, err := modelio.ORTLogits(filepath.Join(back, "model.onnx"), ids)
			if err != nil {
				t.Fatal(err)
			}
			d, scale := maxDiff(t, got, want)
			m, err := engine.NewModel(cfg, cpu.New(), w, engine.F32)
			if err != nil {
				t.Fatal(err)
			}
			eng, err := m.Logits(context.Background(), [][]int32{ids})
			if err != nil {
				t.Fatal(err)
			}
			de, _ := maxDiff(t, eng[0], want)
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
	needORT(t)
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
	ort := haveORT(t)
	page, err := os.ReadFile("../../docs/convert.md")
	if err != nil {
		t.Fatal(err)
	}
	tmp := t.TempDir()
	cmds, others := modelio.DocCommands(string(page), "convert", tmp)
	if len(others) > 0 || len(cmds) != 4 {
		t.Fatalf("docs/convert.md: %d convert commands (want 4), and commands the test cannot run: %q", len(cmds), others)
	}
	t.Chdir("../..")
	for _, args := range cmds {
		if !ort && slices.Contains(args, "--verify") {
			args = slices.DeleteFunc(slices.Clone(args), func(a string) bool { return a == "--verify" })
			t.Logf("no ONNX Runtime: running without --verify: %s", strings.Join(args, " "))
		}
		o, err := convert(t, args...)
		if err != nil {
			t.Fatalf("docs/convert.md: go run ./tools/convert %s: %v\n%s", strings.Join(args, " "), err, o)
		}
		if ort && slices.Contains(args, "--verify") && !strings.Contains(o, "verify: max |logit difference|") {
			t.Errorf("--verify printed nothing:\n%s", o)
		}
	}
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
