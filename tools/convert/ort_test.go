//go:build cgo

package main

import (
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/prolong-rl/prolong/engine"
	"github.com/prolong-rl/prolong/onnx/ortrun"
	"github.com/prolong-rl/prolong/tools/internal/modelio"
)

// needORT loads ONNX Runtime or skips (fails under PROLONG_REQUIRE_ORT=1, as in CI).
func needORT(t *testing.T) {
	t.Helper()
	if err := ortrun.Init(); err != nil {
		if os.Getenv("PROLONG_REQUIRE_ORT") == "1" {
			t.Fatal(err)
		}
		t.Skip(err)
	}
}

// TestONNXRoundTrip: each kind of ONNX file users have (optimum with and without past,
// external data, onnxruntime-genai) -> convert -> safetensors -> convert --to onnx gives a
// model on which ONNX Runtime computes the same logits as on the original file.
func TestONNXRoundTrip(t *testing.T) {
	needORT(t)
	for _, fx := range []string{"qwen2_past", "llama3_nopast", "qwen3_past_ext", "genai_qwen2"} {
		t.Run(fx, func(t *testing.T) {
			dir := t.TempDir()
			src := filepath.Join("../../onnx/testdata", fx, "model.onnx")
			hf, back := filepath.Join(dir, "hf"), filepath.Join(dir, "onnx")
			if out, err := convert(t, "-i", src, "-o", hf, "--verify", "--max-position-embeddings", "512", "--quiet"); err != nil {
				t.Fatal(err, out)
			} else if !strings.Contains(out, "verify: max |logit difference|") {
				t.Fatalf("no verification printed:\n%s", out)
			}
			if out, err := convert(t, "-i", hf, "-o", back, "--to", "onnx", "--verify", "--quiet"); err != nil {
				t.Fatal(err, out)
			}
			cfg, err := engine.LoadConfig(filepath.Join(hf, "config.json"))
			if err != nil {
				t.Fatal(err)
			}
			ids := modelio.SampleTokens(cfg, 12)
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
			t.Logf("%s: ONNX Runtime on the original vs on the round trip: max |logit difference| %.3g", fx, d)
			if d > 1e-4 {
				t.Fatalf("logits differ by %.3g", d)
			}
		})
	}
}

// TestDocs runs the commands of docs/convert.md from the repository root.
func TestDocs(t *testing.T) {
	needORT(t)
	page, err := os.ReadFile("../../docs/convert.md")
	if err != nil {
		t.Fatal(err)
	}
	tmp := t.TempDir()
	cmds, others := modelio.DocCommands(string(page), "convert", tmp)
	if len(others) > 0 || len(cmds) != 3 {
		t.Fatalf("docs/convert.md: %d convert commands, others %q", len(cmds), others)
	}
	t.Chdir("../..")
	for _, args := range cmds {
		if out, err := convert(t, append(args, "--quiet")...); err != nil {
			t.Fatalf("docs/convert.md: go run ./tools/convert %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	for _, f := range []string{"qwen2-hf/model.safetensors", "llama3-hf/model.safetensors", "qwen2-onnx/model.onnx"} {
		if _, err := os.Stat(filepath.Join(tmp, f)); err != nil {
			t.Error(err)
		}
	}
}
