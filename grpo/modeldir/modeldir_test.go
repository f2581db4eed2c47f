package modeldir

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"testing"

	"github.com/prolong-rl/prolong/checkpoints"
	"github.com/prolong-rl/prolong/checkpoints/tokenizer"
	"github.com/prolong-rl/prolong/engine"
)

// tinyConfig is a tiny Qwen2 over a 12-token vocabulary that names no special tokens, as the
// default job's model does.
func tinyConfig() *engine.Config {
	return &engine.Config{ModelType: "qwen2", VocabSize: 12, HiddenSize: 8, NumHiddenLayers: 1, NumAttentionHeads: 2,
		NumKeyValueHeads: 1, HeadDim: 4, IntermediateSize: 16, RMSNormEps: 1e-6, RopeTheta: 10000,
		MaxPositionEmbeddings: 32, TieWordEmbeddings: true, AttentionBias: true}
}

// tokenizerDir writes a character tokenizer whose eos token <eos> is id 1 (and <pad> id 0,
// <bos> id 2, named by no tokenizer_config.json field) into a new directory, with gen as its
// generation_config.json when not "".
func tokenizerDir(t *testing.T, gen string) string {
	t.Helper()
	dir := t.TempDir()
	tok, err := tokenizer.NewCharLevel([]string{"<pad>", "<eos>", "<bos>", "a", "b", "c", "1", "2", "3", "+", "=", " "}, []string{"<pad>", "<eos>", "<bos>"}, "<eos>")
	if err != nil {
		t.Fatal(err)
	}
	if err := tok.Save(dir); err != nil {
		t.Fatal(err)
	}
	if gen != "" {
		if err := os.WriteFile(filepath.Join(dir, checkpoints.GenerationConfigFile), []byte(gen), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func readJSON(t *testing.T, path string) map[string]any {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return m
}

// TestWrite: the files written for each choice of formats, the special token ids taken from
// the tokenizer or generation_config.json beside the model (config.json and
// generation_config.json agree), the sampling defaults kept, and the caller's config left as
// it was.
func TestWrite(t *testing.T) {
	w := engine.RandomWeights(tinyConfig(), 1, 0.1)
	for _, tc := range []struct {
		name        string
		gen         string // the FilesDir's generation_config.json ("" none; "-" no FilesDir)
		safetensors bool
		onnx        bool
		files       []string
		wantConfig  map[string]any // config.json fields
		wantGen     map[string]any // generation_config.json, whole
	}{
		{"tokenizer eos", "", true, true,
			[]string{"config.json", "generation_config.json", "model.onnx", "model.safetensors", "tokenizer.json", "tokenizer_config.json"},
			map[string]any{"eos_token_id": 1.0, "torch_dtype": "float32"}, map[string]any{"eos_token_id": 1.0}},
		{"generation_config ids and defaults", `{"eos_token_id": [1, 3], "bos_token_id": 2, "pad_token_id": 0, "temperature": 0.6}`, true, false,
			[]string{"config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"},
			map[string]any{"eos_token_id": []any{1.0, 3.0}, "bos_token_id": 2.0, "pad_token_id": 0.0},
			map[string]any{"eos_token_id": []any{1.0, 3.0}, "bos_token_id": 2.0, "pad_token_id": 0.0, "temperature": 0.6}},
		{"onnx only", "", false, true,
			[]string{"config.json", "generation_config.json", "model.onnx", "tokenizer.json", "tokenizer_config.json"},
			map[string]any{"eos_token_id": 1.0, "torch_dtype": "float32"}, map[string]any{"eos_token_id": 1.0}},
		{"no files", "-", true, false,
			[]string{"config.json", "generation_config.json", "model.safetensors"},
			map[string]any{"eos_token_id": nil}, map[string]any{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			files := ""
			if tc.gen != "-" {
				files = tokenizerDir(t, tc.gen)
			}
			cfg := tinyConfig()
			dir := filepath.Join(t.TempDir(), "out")
			var parts []string
			copied, err := Write(dir, cfg, w, Options{FilesDir: files, Safetensors: tc.safetensors, ONNX: tc.onnx,
				Stage: func(p string) { parts = append(parts, p) }})
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(cfg, tinyConfig()) {
				t.Errorf("Write changed the caller's config: %+v", cfg)
			}
			entries, _ := os.ReadDir(dir)
			var got []string
			for _, e := range entries {
				got = append(got, e.Name())
			}
			if !slices.Equal(got, tc.files) {
				t.Errorf("files %q, want %q", got, tc.files)
			}
			if wantCopied := slices.DeleteFunc(slices.Clone(tc.files), func(n string) bool { return !slices.Contains(TokenizerFiles, n) }); !slices.Equal(copied, wantCopied) {
				t.Errorf("copied %q, want %q", copied, wantCopied)
			}
			c := readJSON(t, filepath.Join(dir, checkpoints.ConfigFile))
			for k, v := range tc.wantConfig {
				if !reflect.DeepEqual(c[k], v) {
					t.Errorf("config.json %s = %v, want %v", k, c[k], v)
				}
			}
			if g := readJSON(t, filepath.Join(dir, checkpoints.GenerationConfigFile)); !reflect.DeepEqual(g, tc.wantGen) {
				t.Errorf("generation_config.json = %v, want %v", g, tc.wantGen)
			}
			var wantParts []string
			if tc.safetensors {
				wantParts = append(wantParts, checkpoints.WeightsFile)
			}
			if tc.onnx {
				wantParts = append(wantParts, ONNXFile)
			}
			if wantParts = append(wantParts, "tokenizer"); !slices.Equal(parts, wantParts) {
				t.Errorf("stages %q, want %q", parts, wantParts)
			}
		})
	}
}

// TestWriteSameBytes: a config held in memory (no "architectures", as a job builds it) and the
// same config read back from a checkpoint's config.json (with them) give the same directory,
// model.onnx included (it carries the config of config.json), byte for byte.
func TestWriteSameBytes(t *testing.T) {
	files := tokenizerDir(t, "")
	w := engine.RandomWeights(tinyConfig(), 2, 0.1)
	saved := filepath.Join(t.TempDir(), "saved")
	if err := checkpoints.Save(saved, tinyConfig(), w, checkpoints.SaveOptions{}); err != nil {
		t.Fatal(err)
	}
	loaded, lw, err := checkpoints.Load(saved)
	if err != nil {
		t.Fatal(err)
	}
	if len(loaded.Architectures) == 0 {
		t.Fatal("the loaded config has no architectures: the test compares nothing")
	}
	a, b := filepath.Join(t.TempDir(), "a"), filepath.Join(t.TempDir(), "b")
	if _, err := Write(a, tinyConfig(), w, Options{FilesDir: files, Safetensors: true, ONNX: true}); err != nil {
		t.Fatal(err)
	}
	if _, err := Write(b, loaded, lw, Options{FilesDir: files, Safetensors: true, ONNX: true}); err != nil {
		t.Fatal(err)
	}
	entries, _ := os.ReadDir(a)
	for _, e := range entries {
		x, _ := os.ReadFile(filepath.Join(a, e.Name()))
		y, err := os.ReadFile(filepath.Join(b, e.Name()))
		if err != nil || !bytes.Equal(x, y) {
			t.Errorf("%s differs (%d and %d bytes, %v)", e.Name(), len(x), len(y), err)
		}
	}
}

// TestCompleteTokenIDsErrors: a generation_config.json id outside the vocabulary, or not a
// token id, is an error naming the file and the field.
func TestCompleteTokenIDsErrors(t *testing.T) {
	for _, tc := range []struct{ gen, want string }{
		{`{"eos_token_id": 12}`, "eos_token_id 12 is outside the vocabulary [0, 12)"},
		{`{"bos_token_id": "x"}`, "bos_token_id: x is not a token id"},
		{`[1]`, "not a JSON object"},
	} {
		dir := tokenizerDir(t, tc.gen)
		_, err := CompleteTokenIDs(tinyConfig(), dir)
		if err == nil || !bytes.Contains([]byte(err.Error()), []byte(tc.want)) || !bytes.Contains([]byte(err.Error()), []byte(filepath.Join(dir, checkpoints.GenerationConfigFile))) {
			t.Errorf("%s: error %v, want it to name the file and say %q", tc.gen, err, tc.want)
		}
	}
}
