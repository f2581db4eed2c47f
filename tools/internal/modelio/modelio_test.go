package modelio

import (
	"errors"
	"math"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/prolong-rl/prolong/checkpoints"
	"github.com/prolong-rl/prolong/engine"
)

func tiny(modelType string) *engine.Config {
	return &engine.Config{ModelType: modelType, VocabSize: 24, HiddenSize: 16, NumHiddenLayers: 1, NumAttentionHeads: 2,
		NumKeyValueHeads: 1, HeadDim: 8, IntermediateSize: 32, RMSNormEps: 1e-6, RopeTheta: 10000,
		MaxPositionEmbeddings: 64, AttentionBias: modelType == "qwen2", QKNorm: modelType == "qwen3"}
}

// TestCheckWeights: damaged values and values a narrower dtype cannot hold are refused, naming
// the tensor and the element; everything else passes, with one progress call per tensor.
func TestCheckWeights(t *testing.T) {
	w := func(v float32) map[string]engine.HostTensor {
		return map[string]engine.HostTensor{
			"a.weight": {Shape: []int{2, 3}, Data: []float32{1, 2, 3, 4, 5, 6}},
			"b.weight": {Shape: []int{2, 2}, Data: []float32{0, 0, 0, v}},
		}
	}
	nan := float32(math.NaN())
	for _, tc := range []struct {
		v     float32
		dtype checkpoints.DType
		want  string // "" when accepted
	}{
		{0.5, checkpoints.F32, ""},
		{0.5, checkpoints.F16, ""},
		{65504, checkpoints.F16, ""}, // the largest half
		{65520, checkpoints.F16, "b.weight[1,1] = 65520 does not fit in f16 (it would become infinite): use --dtype f32 or bf16"}, // rounds up to infinity
		{65520, checkpoints.BF16, ""},
		{3e38, checkpoints.BF16, ""},
		{math.MaxFloat32, checkpoints.BF16, "b.weight[1,1] = 3.4028235e+38 does not fit in bf16 (it would become infinite): use --dtype f32"},
		{math.MaxFloat32, checkpoints.F32, ""},
		{nan, checkpoints.F32, "tensor b.weight[1,1] is NaN"},
		{float32(math.Inf(-1)), checkpoints.BF16, "tensor b.weight[1,1] is -Inf"},
	} {
		var seen []string
		err := CheckWeights(w(tc.v), tc.dtype, func(name string) { seen = append(seen, name) })
		if tc.want == "" {
			if err != nil || len(seen) != 2 || seen[0] != "a.weight" || seen[1] != "b.weight" {
				t.Errorf("%g as %s: %v, progress %v", tc.v, tc.dtype, err, seen)
			}
		} else if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%g as %s: error %v, want %q", tc.v, tc.dtype, err, tc.want)
		}
	}
}

// TestCopySideFiles: generation_config.json and the tokenizer files present are copied (and
// replace what is there); other files are not.
func TestCopySideFiles(t *testing.T) {
	from, to := t.TempDir(), t.TempDir()
	for name, body := range map[string]string{"tokenizer.json": "tok", "generation_config.json": `{"temperature": 0.6}`, "notes.txt": "no"} {
		os.WriteFile(filepath.Join(from, name), []byte(body), 0o644)
	}
	os.WriteFile(filepath.Join(to, "generation_config.json"), []byte("{}"), 0o644)
	got, err := CopySideFiles(from, to)
	if err != nil || strings.Join(got, " ") != "generation_config.json tokenizer.json" {
		t.Fatalf("copied %v, %v", got, err)
	}
	for name, want := range map[string]string{"tokenizer.json": "tok", "generation_config.json": `{"temperature": 0.6}`} {
		if b, _ := os.ReadFile(filepath.Join(to, name)); string(b) != want {
			t.Errorf("%s = %q, want %q", name, b, want)
		}
	}
	if _, err := os.Stat(filepath.Join(to, "notes.txt")); !os.IsNotExist(err) {
		t.Error("notes.txt was copied")
	}
	if got, err := CopySideFiles("", to); got != nil || err != nil {
		t.Errorf("from \"\": %v %v", got, err)
	}
}

func TestHuman(t *testing.T) {
	for _, tc := range []struct {
		got, want string
	}{
		{HumanBytes(512), "512 B"}, {HumanBytes(1536), "1.5 KiB"}, {HumanBytes(3 << 30), "3.0 GiB"},
		{HumanCount(999), "999"}, {HumanCount(6144), "6.1K"}, {HumanCount(494_032_768), "494.0M"}, {HumanCount(7_615_616_512), "7.6B"},
	} {
		if tc.got != tc.want {
			t.Errorf("got %q, want %q", tc.got, tc.want)
		}
	}
}

// FuzzLoad: whatever a model directory holds, Load returns a model whose weights match its
// config, or an error that names the directory, and never panics nor blocks. The weights file
// is a regular file, a relative symlink to one inside the directory (which loads as the file
// would), a symlink to one outside (refused: checkpoints.ErrOutsideModel), or a named pipe
// (refused: checkpoints.ErrNotRegular), as place picks.
func FuzzLoad(f *testing.F) {
	dir := filepath.Join(f.TempDir(), "seed")
	cfg := tiny("qwen2")
	if err := checkpoints.Save(dir, cfg, engine.RandomWeights(cfg, 3, 0.1), checkpoints.SaveOptions{DType: checkpoints.BF16}); err != nil {
		f.Fatal(err)
	}
	st, _ := os.ReadFile(filepath.Join(dir, checkpoints.WeightsFile))
	cj, _ := os.ReadFile(filepath.Join(dir, checkpoints.ConfigFile))
	for place := range byte(4) {
		f.Add(cj, st, place)
	}
	f.Add(cj, st[:len(st)/3], byte(0))
	f.Add([]byte(`{}`), st, byte(1))
	f.Add(cj, []byte{8, 0, 0, 0, 0, 0, 0, 0, '{', '}', ' ', ' ', ' ', ' ', ' ', ' '}, byte(0))
	f.Fuzz(func(t *testing.T, config, weights []byte, place byte) {
		d := filepath.Join(t.TempDir(), "model")
		os.Mkdir(d, 0o755)
		os.WriteFile(filepath.Join(d, checkpoints.ConfigFile), config, 0o644)
		wf := filepath.Join(d, checkpoints.WeightsFile)
		var want error
		switch place % 4 {
		case 0:
			os.WriteFile(wf, weights, 0o644)
		case 1:
			os.WriteFile(filepath.Join(d, "w.bin"), weights, 0o644)
			os.Symlink("w.bin", wf)
		case 2:
			os.WriteFile(filepath.Join(d, "..", "w.bin"), weights, 0o644)
			os.Symlink("../w.bin", wf)
			want = checkpoints.ErrOutsideModel
		case 3:
			if err := syscall.Mkfifo(wf, 0o644); err != nil {
				t.Skip(err)
			}
			want = checkpoints.ErrNotRegular
		}
		m, err := Load(d, Options{Step: checkpoints.Latest})
		if err != nil {
			if !strings.Contains(err.Error(), d) {
				t.Fatalf("error does not name %s: %v", d, err)
			}
			if want != nil && !errors.Is(err, want) && !strings.Contains(err.Error(), checkpoints.ConfigFile) {
				t.Fatalf("weights placed %d: %v, want %v", place%4, err, want)
			}
			return
		}
		if want != nil {
			t.Fatalf("weights placed %d: loaded, want %v", place%4, want)
		}
		if err := m.Config.Validate(); err != nil {
			t.Fatalf("loaded an invalid config: %v", err)
		}
		if m.Kind != "safetensors" || len(m.Weights) == 0 {
			t.Fatalf("kind %q, %d weights", m.Kind, len(m.Weights))
		}
		for name, w := range m.Weights {
			n := 1
			for _, s := range w.Shape {
				n *= s
			}
			if n != len(w.Data) {
				t.Fatalf("%s: shape %v but %d values", name, w.Shape, len(w.Data))
			}
		}
	})
}
