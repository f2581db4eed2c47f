package checkpoints

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/prolong-rl/prolong/engine"
	"github.com/prolong-rl/prolong/engine/cpu"
)

const goldenDir = "../engine/testdata/golden"

var goldenModels = []string{"llama2", "llama3", "qwen2", "qwen3"}

// TestRoundTrip writes random tensors (and a scalar and an empty tensor) in each dtype and
// reads them back: F32 bit for bit, BF16 and F16 equal to the rounded values; the output is
// deterministic and laid out as the format says.
func TestRoundTrip(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	in := map[string]engine.HostTensor{
		"scalar": {Shape: []int{}, Data: []float32{-3.25}},
		"empty":  {Shape: []int{0, 4}, Data: nil},
		"b.bias": {Shape: []int{7}},
		"a.w":    {Shape: []int{33, 65}},
	}
	for n, x := range in {
		x.Data = x.Data[:0:0]
		if n == "scalar" {
			x.Data = []float32{-3.25}
		}
		for i := 0; i < engine.NumElements(x.Shape) && n != "scalar"; i++ {
			x.Data = append(x.Data, float32(r.NormFloat64()*math.Pow(10, float64(r.IntN(7)-3))))
		}
		in[n] = x
	}
	dir := t.TempDir()
	for _, dt := range []DType{F32, BF16, F16} {
		path := filepath.Join(dir, string(dt)+".safetensors")
		meta := map[string]string{"format": "pt", "note": `quote " and é`}
		if err := WriteSafetensors(path, in, dt, meta); err != nil {
			t.Fatal(err)
		}
		f, err := ReadSafetensors(path)
		if err != nil {
			t.Fatal(err)
		}
		if fmt.Sprint(f.Metadata) != fmt.Sprint(meta) || len(f.Tensors) != len(in) {
			t.Fatalf("%s: metadata %v, %d tensors", dt, f.Metadata, len(f.Tensors))
		}
		for n, x := range in {
			got := f.Tensors[n]
			if f.DTypes[n] != dt || fmt.Sprint(got.Shape) != fmt.Sprint(x.Shape) || len(got.Data) != len(x.Data) {
				t.Fatalf("%s %q: dtype %s shape %v len %d", dt, n, f.DTypes[n], got.Shape, len(got.Data))
			}
			for i, v := range x.Data {
				want := v
				switch dt {
				case BF16:
					want = BF16ToF32(F32ToBF16(v))
				case F16:
					want = F16ToF32(F32ToF16(v))
				}
				if math.Float32bits(got.Data[i]) != math.Float32bits(want) {
					t.Fatalf("%s %q[%d] = %g, want %g", dt, n, i, got.Data[i], want)
				}
			}
		}
		// Layout: header length, space-padded header, data of exactly the header's size.
		raw, _ := os.ReadFile(path)
		n := binary.LittleEndian.Uint64(raw)
		hdr := raw[8 : 8+n]
		if n%8 != 0 || !bytes.HasPrefix(hdr, []byte(`{"__metadata__":{"format":"pt","note":`)) ||
			!bytes.Contains(hdr, []byte(`"a.w":{"dtype":"`+string(dt)+`","shape":[33,65],"data_offsets":[0,`)) {
			t.Fatalf("%s: header %q", dt, hdr)
		}
		again := filepath.Join(dir, "again.safetensors")
		if err := WriteSafetensors(again, in, dt, meta); err != nil {
			t.Fatal(err)
		}
		if raw2, _ := os.ReadFile(again); !bytes.Equal(raw, raw2) {
			t.Fatalf("%s: two writes of the same tensors differ", dt)
		}
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 4 {
		t.Fatalf("temp files left behind: %v", entries)
	}
}

// goldenLogits reads a golden logits.safetensors (I32 ids, F32 logits, written by PyTorch's
// script) through the package's header parser, decoding the ids here.
func goldenLogits(t *testing.T, path string) (seqs [][]int32, logits [][]float32) {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	h, err := parseHeader(bytes.NewReader(raw), int64(len(raw)))
	if err != nil {
		t.Fatal(err)
	}
	ids := map[string][]int32{}
	fl := map[string][]float32{}
	for _, e := range h.entries {
		b := raw[h.dataStart+e.lo : h.dataStart+e.hi]
		switch e.dtype {
		case "I32":
			for i := 0; i < len(b); i += 4 {
				ids[e.name] = append(ids[e.name], int32(binary.LittleEndian.Uint32(b[i:])))
			}
		case "F32":
			v := make([]float32, e.elems)
			decode(F32, v, b)
			fl[e.name] = v
		}
	}
	for i := 0; ids[fmt.Sprintf("ids.%d", i)] != nil; i++ {
		seqs = append(seqs, ids[fmt.Sprintf("ids.%d", i)])
		logits = append(logits, fl[fmt.Sprintf("logits.%d", i)])
	}
	if len(seqs) == 0 {
		t.Fatalf("%s: no sequences", path)
	}
	return seqs, logits
}

// checkLogits runs the engine on weights and compares with PyTorch's logits.
func checkLogits(t *testing.T, what string, cfg *engine.Config, w map[string]engine.HostTensor, seqs [][]int32, want [][]float32, tol float64) {
	t.Helper()
	m, err := engine.NewModel(cfg, cpu.New(), w, engine.F32)
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	got, err := m.Logits(context.Background(), seqs)
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	worst := 0.0
	for i := range seqs {
		for j, v := range got[i] {
			worst = max(worst, math.Abs(float64(v)-float64(want[i][j])))
		}
	}
	if worst > tol {
		t.Fatalf("%s: logits differ from PyTorch's by %g (tolerance %g)", what, worst, tol)
	}
	t.Logf("%s: max |logit - PyTorch| = %.2e", what, worst)
}

// TestGoldenModels loads the PyTorch-written golden models (an independent writer), checks the
// engine's logits against PyTorch's, saves each in F32 (single file and sharded), BF16 and
// F16, and loads those back: F32 bit for bit with identical logits, BF16/F16 equal to the
// rounded weights with logits close to PyTorch's.
func TestGoldenModels(t *testing.T) {
	for _, name := range goldenModels {
		src := filepath.Join(goldenDir, name)
		cfg, w, err := Load(src)
		if err != nil {
			t.Fatal(err)
		}
		seqs, want := goldenLogits(t, filepath.Join(src, "logits.safetensors"))
		checkLogits(t, name, cfg, w, seqs, want, 1e-4)

		for _, tc := range []struct {
			opts  SaveOptions
			tol   float64
			files int
		}{
			{SaveOptions{DType: F32}, 1e-4, 3},
			{SaveOptions{DType: F32, ShardBytes: 40 << 10}, 1e-4, 0},
			{SaveOptions{DType: BF16}, 1, 3}, // the weights are checked bit for bit; logits only for sanity
			{SaveOptions{DType: F16}, 0.2, 3},
		} {
			what := fmt.Sprintf("%s %s shard=%d", name, tc.opts.DType, tc.opts.ShardBytes)
			out := filepath.Join(t.TempDir(), "model")
			if err := Save(out, cfg, w, tc.opts); err != nil {
				t.Fatal(err)
			}
			entries, _ := os.ReadDir(out)
			if tc.files > 0 && len(entries) != tc.files {
				t.Fatalf("%s: files %v", what, entries)
			}
			if tc.opts.ShardBytes > 0 {
				shards, _ := filepath.Glob(filepath.Join(out, "model-*-of-*.safetensors"))
				if len(shards) < 2 || fileExists(filepath.Join(out, WeightsFile)) || !fileExists(filepath.Join(out, IndexFile)) {
					t.Fatalf("%s: not sharded: %v", what, entries)
				}
				for _, s := range shards {
					st, _ := os.Stat(s)
					// a shard holds at most ShardBytes of data unless one tensor alone is larger
					if st.Size() > tc.opts.ShardBytes+4096 && countTensors(t, s) > 1 {
						t.Fatalf("%s: shard %s has %d bytes", what, s, st.Size())
					}
				}
			}
			cfg2, w2, err := Load(out)
			if err != nil {
				t.Fatal(err)
			}
			if cfg2.ModelType != cfg.ModelType || cfg2.QKNorm != cfg.QKNorm || cfg2.AttentionBias != cfg.AttentionBias ||
				cfg2.TieWordEmbeddings != cfg.TieWordEmbeddings || fmt.Sprint(cfg2.RopeScaling) != fmt.Sprint(cfg.RopeScaling) ||
				cfg2.RopeTheta != cfg.RopeTheta || cfg2.RMSNormEps != cfg.RMSNormEps {
				t.Fatalf("%s: config changed: %+v vs %+v", what, cfg2, cfg)
			}
			if len(w2) != len(w) {
				t.Fatalf("%s: %d weights back, %d saved", what, len(w2), len(w))
			}
			for n, x := range w {
				for i, v := range x.Data {
					want := v
					switch tc.opts.DType {
					case BF16:
						want = BF16ToF32(F32ToBF16(v))
					case F16:
						want = F16ToF32(F32ToF16(v))
					}
					if math.Float32bits(w2[n].Data[i]) != math.Float32bits(want) {
						t.Fatalf("%s: %s[%d] = %g, want %g", what, n, i, w2[n].Data[i], want)
					}
				}
			}
			checkLogits(t, what, cfg2, w2, seqs, want, tc.tol)
		}
	}
}

func countTensors(t *testing.T, path string) int {
	f, err := ReadSafetensors(path)
	if err != nil {
		t.Fatal(err)
	}
	return len(f.Tensors)
}

// TestConfigFiles: config.json names what transformers needs, a tied model stores no
// lm_head.weight, generation_config.json carries the special tokens, extra files are copied.
func TestConfigFiles(t *testing.T) {
	for _, tc := range []struct{ name, arch string }{
		{"llama3", "LlamaForCausalLM"}, {"qwen2", "Qwen2ForCausalLM"}, {"qwen3", "Qwen3ForCausalLM"},
	} {
		cfg, w, err := Load(filepath.Join(goldenDir, tc.name))
		if err != nil {
			t.Fatal(err)
		}
		tok := filepath.Join(t.TempDir(), "tokenizer.json")
		os.WriteFile(tok, []byte(`{"model":{}}`), 0o644)
		out := filepath.Join(t.TempDir(), "out")
		if err := Save(out, cfg, w, SaveOptions{DType: BF16, CopyFiles: []string{tok}}); err != nil {
			t.Fatal(err)
		}
		data, _ := os.ReadFile(filepath.Join(out, ConfigFile))
		for _, want := range []string{`"` + tc.arch + `"`, `"torch_dtype": "bfloat16"`, `"model_type": "` + cfg.ModelType + `"`, `"hidden_act": "silu"`} {
			if !bytes.Contains(data, []byte(want)) {
				t.Errorf("%s config.json lacks %s:\n%s", tc.name, want, data)
			}
		}
		gen, _ := os.ReadFile(filepath.Join(out, GenerationConfigFile))
		if !bytes.Contains(gen, []byte(`"eos_token_id"`)) {
			t.Errorf("%s generation_config.json: %s", tc.name, gen)
		}
		if b, _ := os.ReadFile(filepath.Join(out, "tokenizer.json")); string(b) != `{"model":{}}` {
			t.Errorf("tokenizer.json not copied: %q", b)
		}
		f, err := ReadSafetensors(filepath.Join(out, WeightsFile))
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := f.Tensors["lm_head.weight"]; ok == cfg.TieWordEmbeddings {
			t.Errorf("%s (tied %v): lm_head.weight stored: %v", tc.name, cfg.TieWordEmbeddings, ok)
		}
	}
}

// stImage builds a safetensors image from a header JSON and n data bytes.
func stImage(js string, n int) []byte {
	var b bytes.Buffer
	binary.Write(&b, binary.LittleEndian, uint64(len(js)))
	b.WriteString(js)
	b.Write(make([]byte, n))
	return b.Bytes()
}

// TestBadSafetensors: each malformed file is refused with an error naming the file and what
// is wrong in it (the tensor, where there is one).
func TestBadSafetensors(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.safetensors")
	if err := WriteSafetensors(good, map[string]engine.HostTensor{
		"a": {Shape: []int{2}, Data: []float32{1, 2}}, "b": {Shape: []int{3}, Data: []float32{3, 4, 5}},
	}, F32, nil); err != nil {
		t.Fatal(err)
	}
	goodBytes, _ := os.ReadFile(good)
	huge := make([]byte, 8)
	binary.LittleEndian.PutUint64(huge, MaxHeaderBytes+1)
	f32 := func(name string, shape string, lo, hi int) string {
		return fmt.Sprintf(`%q:{"dtype":"F32","shape":%s,"data_offsets":[%d,%d]}`, name, shape, lo, hi)
	}
	for _, tc := range []struct {
		name string
		data []byte
		want []string
	}{
		{"empty", nil, []string{"too short"}},
		{"truncated data", goodBytes[:len(goodBytes)-3], []string{`tensor "b"`, "outside the data region"}},
		{"truncated header", goodBytes[:20], []string{"header length", "truncated"}},
		{"huge header length", append(huge, goodBytes[8:]...), []string{"exceeds the limit"}},
		{"bad JSON", stImage(`{"a":{"dtype":"F32",`, 0), []string{"not valid JSON"}},
		{"not an object", stImage(`[1,2]   `, 0), []string{"not a JSON object"}},
		{"trailing garbage", stImage(`{}x`, 0), []string{"after its JSON object"}},
		{"duplicate name", stImage(`{`+f32("w", "[1]", 0, 4)+","+f32("w", "[1]", 4, 8)+`}`, 8), []string{`"w" twice`}},
		{"overlapping offsets", stImage(`{`+f32("a", "[2]", 0, 8)+","+f32("b", "[2]", 4, 12)+`}`, 12), []string{`tensor "b"`, `overlaps tensor "a"`}},
		{"gap", stImage(`{`+f32("a", "[1]", 0, 4)+","+f32("b", "[1]", 8, 12)+`}`, 12), []string{`tensor "b"`, "gap"}},
		{"trailing data", stImage(`{`+f32("a", "[1]", 0, 4)+`}`, 8), []string{`"a" ends at data offset 4`, "8 bytes"}},
		{"wrong dtype size", stImage(`{"h":{"dtype":"F16","shape":[2],"data_offsets":[0,8]}}`, 8), []string{`tensor "h"`, "needs 4 bytes", "span 8"}},
		{"unknown dtype", stImage(`{"q":{"dtype":"Q4","shape":[2],"data_offsets":[0,2]}}`, 2), []string{`tensor "q"`, `unknown dtype "Q4"`}},
		{"unsupported dtype", stImage(`{"i":{"dtype":"I64","shape":[1],"data_offsets":[0,8]}}`, 8), []string{`tensor "i"`, "I64 is not supported"}},
		{"negative dim", stImage(`{`+f32("n", "[-1]", 0, 0)+`}`, 0), []string{`tensor "n": shape [-1]: dimension 0 is negative`}},
		{"dims of 2^32", stImage(`{`+f32("n", "[4294967296,4294967296,4294967296]", 0, 4)+`}`, 4), []string{`tensor "n": shape [4294967296 4294967296 4294967296]: dimension 0 is over 2^31-1`}},
		{"zero, then 2^32", stImage(`{`+f32("n", "[0,4294967296]", 0, 0)+`}`, 0), []string{`tensor "n": shape [0 4294967296]: dimension 1 is over 2^31-1`}},
		{"dims past the data", stImage(`{`+f32("n", "[65536,65536]", 0, 4)+`}`, 4), []string{`tensor "n": shape [65536 65536] holds more elements than the data region has bytes (4)`}},
		{"huge shape", stImage(`{`+f32("n", "[1000000,1000000,1000000,1000000]", 0, 4)+`}`, 4), []string{`tensor "n"`, "more elements"}},
		{"offsets backwards", stImage(`{`+f32("o", "[1]", 4, 0)+`}`, 4), []string{`tensor "o"`, "data offsets [4, 0]"}},
		{"missing shape", stImage(`{"m":{"dtype":"F32","data_offsets":[0,4]}}`, 4), []string{`tensor "m"`, `missing field "shape"`}},
		{"three offsets", stImage(`{"m":{"dtype":"F32","shape":[1],"data_offsets":[0,4,4]}}`, 4), []string{`tensor "m"`, "two integers"}},
		{"unknown field", stImage(`{"u":{"dtype":"F32","shape":[1],"data_offsets":[0,4],"x":1}}`, 4), []string{`tensor "u"`, `"x"`}},
		{"metadata not strings", stImage(`{"__metadata__":{"a":1}}`, 0), []string{"__metadata__"}},
	} {
		path := filepath.Join(dir, strings.ReplaceAll(tc.name, " ", "_")+".safetensors")
		os.WriteFile(path, tc.data, 0o644)
		_, err := ReadSafetensors(path)
		if err == nil {
			t.Errorf("%s: no error", tc.name)
			continue
		}
		for _, w := range append(tc.want, path) {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%s: error %q does not mention %q", tc.name, err, w)
			}
		}
	}
}

// TestBadDirectories: a directory whose weights do not match its config, or whose shard index
// lies, is refused with an error naming the file and the tensor.
func TestBadDirectories(t *testing.T) {
	cfg, w, err := Load(filepath.Join(goldenDir, "qwen2"))
	if err != nil {
		t.Fatal(err)
	}
	save := func(t *testing.T, opts SaveOptions) string {
		out := filepath.Join(t.TempDir(), "m")
		if err := Save(out, cfg, w, opts); err != nil {
			t.Fatal(err)
		}
		return out
	}
	rewrite := func(t *testing.T, path string, edit func(map[string]engine.HostTensor)) {
		f, err := ReadSafetensors(path)
		if err != nil {
			t.Fatal(err)
		}
		edit(f.Tensors)
		if err := WriteSafetensors(path, f.Tensors, F32, nil); err != nil {
			t.Fatal(err)
		}
	}
	const q = "model.layers.1.self_attn.q_proj.bias"
	t.Run("missing tensor", func(t *testing.T) {
		out := save(t, SaveOptions{})
		rewrite(t, filepath.Join(out, WeightsFile), func(m map[string]engine.HostTensor) { delete(m, q) })
		_, _, err := Load(out)
		wantErr(t, err, filepath.Join(out, WeightsFile), q, "missing")
	})
	t.Run("wrong shape", func(t *testing.T) {
		out := save(t, SaveOptions{})
		rewrite(t, filepath.Join(out, WeightsFile), func(m map[string]engine.HostTensor) {
			m[q] = engine.HostTensor{Shape: []int{2, 32}, Data: m[q].Data}
		})
		_, _, err := Load(out)
		wantErr(t, err, filepath.Join(out, WeightsFile), q, "[2 32]", "[64]")
	})
	t.Run("unexpected tensor", func(t *testing.T) {
		out := save(t, SaveOptions{})
		rewrite(t, filepath.Join(out, WeightsFile), func(m map[string]engine.HostTensor) {
			m["model.layers.9.mlp.up_proj.weight"] = engine.HostTensor{Shape: []int{1}, Data: []float32{1}}
		})
		_, _, err := Load(out)
		wantErr(t, err, "model.layers.9.mlp.up_proj.weight", "not part of")
	})
	t.Run("config mismatch", func(t *testing.T) {
		out := save(t, SaveOptions{})
		data, _ := os.ReadFile(filepath.Join(out, ConfigFile))
		os.WriteFile(filepath.Join(out, ConfigFile), bytes.Replace(data, []byte(`"intermediate_size": 128`), []byte(`"intermediate_size": 96`), 1), 0o644)
		_, _, err := Load(out)
		wantErr(t, err, WeightsFile, "mlp", "[96", "has shape")
	})
	t.Run("index lists a missing tensor", func(t *testing.T) {
		out := save(t, SaveOptions{ShardBytes: 40 << 10})
		shards, _ := filepath.Glob(filepath.Join(out, "model-00001-of-*.safetensors"))
		if len(shards) != 1 {
			t.Fatalf("shards %v", shards)
		}
		shard := shards[0]
		var gone string
		rewrite(t, shard, func(m map[string]engine.HostTensor) {
			for n := range m {
				gone = n
			}
			delete(m, gone)
		})
		_, _, err := Load(out)
		wantErr(t, err, shard, gone, "missing")
	})
	t.Run("index escapes the directory", func(t *testing.T) {
		out := save(t, SaveOptions{ShardBytes: 40 << 10})
		os.WriteFile(filepath.Join(out, IndexFile), []byte(`{"weight_map":{"x":"../model.safetensors"}}`), 0o644)
		_, _, err := Load(out)
		wantErr(t, err, IndexFile, `"x"`, "not a plain file name")
	})
	t.Run("save checks names and shapes", func(t *testing.T) {
		bad := map[string]engine.HostTensor{}
		for n, x := range w {
			bad[n] = x
		}
		delete(bad, q)
		wantErr(t, Save(filepath.Join(t.TempDir(), "m"), cfg, bad, SaveOptions{}), q, "missing")
		bad[q] = engine.HostTensor{Shape: []int{3}, Data: []float32{1, 2, 3}}
		wantErr(t, Save(filepath.Join(t.TempDir(), "m"), cfg, bad, SaveOptions{}), q, "[3]")
	})
}

func wantErr(t *testing.T, err error, parts ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("no error, want one mentioning %q", parts)
	}
	for _, p := range parts {
		if !strings.Contains(err.Error(), p) {
			t.Fatalf("error %q does not mention %q", err, p)
		}
	}
}

// failingWriter fails once more than n bytes have been written through it.
type failingWriter struct {
	w io.Writer
	n int
}

var errInjected = errors.New("injected write failure")

func (f *failingWriter) Write(p []byte) (int, error) {
	if len(p) > f.n {
		k, _ := f.w.Write(p[:f.n])
		f.n = 0
		return k, errInjected
	}
	f.n -= len(p)
	return f.w.Write(p)
}

// dirSnapshot maps each file under dir to its content.
func dirSnapshot(t *testing.T, dir string) map[string]string {
	t.Helper()
	snap := map[string]string{}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		snap[e.Name()] = string(b)
	}
	return snap
}

// TestCrashSafety: a save that fails midway (in the weights, a later shard, or config.json)
// leaves an existing saved directory exactly as it was and no temporary files; a save that
// succeeds replaces it whole.
func TestCrashSafety(t *testing.T) {
	cfg, w, err := Load(filepath.Join(goldenDir, "qwen3"))
	if err != nil {
		t.Fatal(err)
	}
	parent := t.TempDir()
	out := filepath.Join(parent, "ckpt")
	if err := Save(out, cfg, w, SaveOptions{}); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(out, "model.onnx"), []byte("other"), 0o644)
	before := dirSnapshot(t, out)

	w2 := engine.RandomWeights(cfg, 7, 0.02)
	defer func() { testHookWriter = nil }()
	for _, tc := range []struct {
		file string
		n    int
		opts SaveOptions
	}{
		{WeightsFile, 1000, SaveOptions{}},
		{WeightsFile, 0, SaveOptions{DType: BF16}},
		{"model-00002-of-", 5000, SaveOptions{ShardBytes: 40 << 10}},
		{ConfigFile, 10, SaveOptions{}},
		{GenerationConfigFile, 3, SaveOptions{}},
	} {
		testHookWriter = func(path string, wr io.Writer) io.Writer {
			if strings.HasPrefix(filepath.Base(path), tc.file) {
				return &failingWriter{w: wr, n: tc.n}
			}
			return wr
		}
		err := Save(out, cfg, w2, tc.opts)
		if !errors.Is(err, errInjected) || !strings.Contains(err.Error(), tc.file) {
			t.Fatalf("failing %s: error %v", tc.file, err)
		}
		if after := dirSnapshot(t, out); fmt.Sprint(after) != fmt.Sprint(before) {
			t.Fatalf("failing %s changed the saved directory", tc.file)
		}
		if entries, _ := os.ReadDir(parent); len(entries) != 1 {
			t.Fatalf("failing %s left behind %v", tc.file, entries)
		}
	}
	testHookWriter = nil
	if _, got, err := Load(out); err != nil || got["model.norm.weight"].Data[0] != w["model.norm.weight"].Data[0] {
		t.Fatalf("previous checkpoint no longer loads: %v", err)
	}
	if err := Save(out, cfg, w2, SaveOptions{}); err != nil {
		t.Fatal(err)
	}
	_, got, err := Load(out)
	if err != nil {
		t.Fatal(err)
	}
	for n, x := range w2 {
		if fmt.Sprint(got[n].Data) != fmt.Sprint(x.Data) {
			t.Fatalf("%s: the replacing save did not take", n)
		}
	}
	if entries, _ := os.ReadDir(parent); len(entries) != 1 {
		t.Fatalf("replacing save left behind %v", entries)
	}
	if fileExists(filepath.Join(out, "model.onnx")) {
		t.Fatal("the replaced directory's files survived the swap")
	}
}

// TestPythonReader has scripts/check_checkpoint.py (struct + json + numpy, bf16 widened by
// hand, rounding references from torch and numpy) read directories written here and compare
// them with the golden model as PyTorch wrote it.
func TestPythonReader(t *testing.T) {
	py := "/usr/bin/python3"
	if err := exec.Command(py, "-c", "import numpy").Run(); err != nil {
		if os.Getenv("PROLONG_REQUIRE_PYTHON") == "1" {
			t.Fatalf("PROLONG_REQUIRE_PYTHON=1 but %s with numpy is not usable: %v", py, err)
		}
		t.Skipf("%s with numpy is not available (apt-get install python3-numpy python3-torch): %v", py, err)
	}
	for _, name := range []string{"qwen2", "llama3"} {
		src := filepath.Join(goldenDir, name)
		cfg, w, err := Load(src)
		if err != nil {
			t.Fatal(err)
		}
		for _, opts := range []SaveOptions{{DType: F32}, {DType: BF16}, {DType: F16, ShardBytes: 40 << 10}} {
			out := filepath.Join(t.TempDir(), "m")
			if err := Save(out, cfg, w, opts); err != nil {
				t.Fatal(err)
			}
			cmd := exec.Command(py, "../scripts/check_checkpoint.py", out, src)
			b, err := cmd.CombinedOutput()
			if err != nil {
				t.Fatalf("%s %s: check_checkpoint.py failed: %v\n%s", name, opts.DType, err, b)
			}
			t.Logf("%s %s: %s", name, opts.DType, bytes.TrimSpace(b))
		}
	}
	// The script is not blind: one changed weight makes it fail, naming the tensor.
	src := filepath.Join(goldenDir, "qwen2")
	cfg, w, err := Load(src)
	if err != nil {
		t.Fatal(err)
	}
	const n = "model.layers.0.mlp.up_proj.weight"
	w[n].Data[5] += 1e-3
	out := filepath.Join(t.TempDir(), "m")
	if err := Save(out, cfg, w, SaveOptions{}); err != nil {
		t.Fatal(err)
	}
	b, err := exec.Command(py, "../scripts/check_checkpoint.py", out, src).CombinedOutput()
	if err == nil || !bytes.Contains(b, []byte(n)) {
		t.Fatalf("check_checkpoint.py accepted a changed weight: %v\n%s", err, b)
	}
}

// FuzzReadSafetensors: arbitrary bytes never panic; what parses is a consistent file that
// writes back (as F32) and reads again to the same values.
func FuzzReadSafetensors(f *testing.F) {
	f.Add(stImage(`{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"__metadata__":{"format":"pt"}}`, 8))
	f.Add(stImage(`{"w":{"dtype":"BF16","shape":[1,2],"data_offsets":[0,4]}}`, 4))
	f.Add(stImage(`{"a":{"dtype":"F16","shape":[1],"data_offsets":[0,2]},"b":{"dtype":"F32","shape":[],"data_offsets":[2,6]}}`, 6))
	f.Add(stImage(`{"a":{"dtype":"F32","shape":[0],"data_offsets":[0,0]}}  `, 0))
	f.Add(stImage(`{}`, 0))
	f.Fuzz(func(t *testing.T, data []byte) {
		st, err := ParseSafetensors(bytes.NewReader(data), int64(len(data)))
		if err != nil {
			return
		}
		for n, x := range st.Tensors {
			if engine.NumElements(x.Shape) != len(x.Data) || !st.DTypes[n].convertible() {
				t.Fatalf("%q: shape %v with %d values, dtype %s", n, x.Shape, len(x.Data), st.DTypes[n])
			}
		}
		p := filepath.Join(t.TempDir(), "x.safetensors")
		if err := WriteSafetensors(p, st.Tensors, F32, st.Metadata); err != nil {
			t.Fatal(err)
		}
		back, err := ReadSafetensors(p)
		if err != nil {
			t.Fatal(err)
		}
		for n, x := range st.Tensors {
			for i, v := range x.Data {
				if math.Float32bits(back.Tensors[n].Data[i]) != math.Float32bits(v) {
					t.Fatalf("%s[%d]: %v after a round trip, was %v", n, i, back.Tensors[n].Data[i], v)
				}
			}
		}
	})
}

// FuzzParseIndex: a model.safetensors.index.json of arbitrary bytes never panics, and what
// parses names only plain files inside the directory.
func FuzzParseIndex(f *testing.F) {
	f.Add([]byte(`{"metadata":{"total_size":8},"weight_map":{"a":"model-00001-of-00002.safetensors","b":"model-00002-of-00002.safetensors"}}`))
	f.Add([]byte(`{"weight_map":{"a":"../x"}}`))
	f.Add([]byte(`{"weight_map":{}}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		idx, err := parseIndex(data)
		if err != nil {
			return
		}
		for _, file := range idx.order {
			if file != filepath.Base(file) || strings.ContainsAny(file, `/\`) || file == ".." || file == "." {
				t.Fatalf("index accepted file %q", file)
			}
		}
	})
}

// TestKillDuringSave re-runs the test binary as a child that saves two alternating weight sets
// over one directory in a loop, and SIGKILLs it at varying moments: the directory always loads
// and holds one of the two sets, whole.
func TestKillDuringSave(t *testing.T) {
	if dir := os.Getenv("PROLONG_KILL_CHILD_DIR"); dir != "" {
		killChild(dir)
		return
	}
	cfg := killConfig()
	sets := []map[string]engine.HostTensor{engine.RandomWeights(cfg, 1, 0.02), engine.RandomWeights(cfg, 2, 0.02)}
	out := filepath.Join(t.TempDir(), "ckpt")
	if err := Save(out, cfg, sets[0], SaveOptions{}); err != nil {
		t.Fatal(err)
	}
	midway := 0 // kills that left a temporary directory, i.e. landed inside a save
	for i, delay := range []int{30, 55, 80, 110, 150, 200, 260, 330} {
		cmd := startChild(t, "TestKillDuringSave", "PROLONG_KILL_CHILD_DIR="+out)
		time.Sleep(time.Duration(delay) * time.Millisecond)
		cmd.Process.Kill()
		cmd.Wait()
		_, got, err := Load(out)
		if err != nil {
			t.Fatalf("kill %d after %d ms: the checkpoint no longer loads: %v", i, delay, err)
		}
		which := -1
		for k, set := range sets {
			same := true
			for n, x := range set {
				if fmt.Sprint(got[n].Data) != fmt.Sprint(x.Data) {
					same = false
					break
				}
			}
			if same {
				which = k
			}
		}
		if which < 0 {
			t.Fatalf("kill %d after %d ms: the checkpoint mixes the two weight sets", i, delay)
		}
		entries, _ := os.ReadDir(filepath.Dir(out))
		t.Logf("killed after %d ms: set %d loads; %d leftover temporary entries", delay, which, len(entries)-1)
		if len(entries) > 1 {
			midway++
		}
	}
	if midway == 0 {
		t.Error("no kill landed inside a save; the test proves nothing (retune the delays)")
	}
	// The next save clears what the killed ones left.
	if err := Save(out, cfg, sets[1], SaveOptions{}); err != nil {
		t.Fatal(err)
	}
	if entries, _ := os.ReadDir(filepath.Dir(out)); len(entries) != 1 {
		t.Fatalf("stale temporary directories survive a save: %v", entries)
	}
}

// startChild runs the test named run of this test binary again as a child process, with env
// added to its environment, and returns once the child has printed its first line (the cue
// that its work has begun): the tests' kill delays count from there, not from the process's
// start, which takes hundreds of milliseconds on a busy machine.
func startChild(t *testing.T, run, env string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^"+run+"$")
	cmd.Env = append(os.Environ(), env)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	cue := make(chan error, 1)
	go func() {
		_, err := bufio.NewReader(out).ReadString('\n')
		cue <- err
		io.Copy(io.Discard, out)
	}()
	select {
	case err := <-cue:
		if err != nil {
			cmd.Process.Kill()
			cmd.Wait()
			t.Fatalf("child %s ended before its cue: %v", run, err)
		}
	case <-time.After(2 * time.Minute):
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatalf("child %s gave no cue in 2 minutes", run)
	}
	return cmd
}

// killConfig is a model of a few MB, so that a save takes long enough to be killed midway.
func killConfig() *engine.Config {
	return &engine.Config{ModelType: "qwen2", VocabSize: 1024, HiddenSize: 256, NumHiddenLayers: 4,
		NumAttentionHeads: 4, NumKeyValueHeads: 2, HeadDim: 64, IntermediateSize: 512, RMSNormEps: 1e-6,
		RopeTheta: 10000, MaxPositionEmbeddings: 128, AttentionBias: true}
}

// killChild saves the two weight sets of TestKillDuringSave over dir until it is killed.
func killChild(dir string) {
	cfg := killConfig()
	sets := []map[string]engine.HostTensor{engine.RandomWeights(cfg, 1, 0.02), engine.RandomWeights(cfg, 2, 0.02)}
	fmt.Println("child: saving") // startChild's cue
	for i := 1; ; i++ {
		if err := Save(dir, cfg, sets[i%2], SaveOptions{ShardBytes: 2 << 20}); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(3)
		}
	}
}

// TestReadMemory: reading allocates the fp32 output and little else — the file is mapped (or
// streamed in bounded chunks), never copied whole into memory.
func TestReadMemory(t *testing.T) {
	const n = 4 << 20 // 16 MB of F32
	path := filepath.Join(t.TempDir(), "big.safetensors")
	if err := WriteSafetensors(path, map[string]engine.HostTensor{"w": {Shape: []int{n}, Data: make([]float32, n)}}, F32, nil); err != nil {
		t.Fatal(err)
	}
	allocs := func(read func() error) uint64 {
		runtime.GC()
		var a, b runtime.MemStats
		runtime.ReadMemStats(&a)
		if err := read(); err != nil {
			t.Fatal(err)
		}
		runtime.ReadMemStats(&b)
		return b.TotalAlloc - a.TotalAlloc
	}
	mapped := allocs(func() error { _, err := ReadSafetensors(path); return err })
	streamed := allocs(func() error {
		fh, err := os.Open(path)
		if err != nil {
			return err
		}
		defer fh.Close()
		st, _ := fh.Stat()
		_, err = ParseSafetensors(fh, st.Size()) // an *os.File: read through ReadAt in chunks
		return err
	})
	t.Logf("output %d MB; allocated %.1f MB mapped, %.1f MB streamed", 4*n>>20, float64(mapped)/(1<<20), float64(streamed)/(1<<20))
	if mapped > 4*n+1<<20 {
		t.Errorf("mapped read allocated %d bytes for %d bytes of output", mapped, 4*n)
	}
	if streamed > 4*n+5<<20 {
		t.Errorf("streamed read allocated %d bytes for %d bytes of output (chunks are 4 MB)", streamed, 4*n)
	}
}

// TestByteIdentical: safetensors -> engine -> safetensors is byte for byte the file the
// PyTorch golden script wrote (same layout rules: metadata first, names sorted, compact JSON,
// space padding), and a BF16 file read and written again as BF16 is unchanged.
func TestByteIdentical(t *testing.T) {
	for _, name := range goldenModels {
		src := filepath.Join(goldenDir, name)
		cfg, w, err := Load(src)
		if err != nil {
			t.Fatal(err)
		}
		out := filepath.Join(t.TempDir(), "m")
		if err := Save(out, cfg, w, SaveOptions{}); err != nil {
			t.Fatal(err)
		}
		a, _ := os.ReadFile(filepath.Join(src, WeightsFile))
		b, _ := os.ReadFile(filepath.Join(out, WeightsFile))
		if !bytes.Equal(a, b) {
			t.Errorf("%s: re-saved model.safetensors differs from PyTorch's (%d vs %d bytes)", name, len(b), len(a))
		}
		if err := Save(out, cfg, w, SaveOptions{DType: BF16}); err != nil {
			t.Fatal(err)
		}
		_, w2, err := Load(out)
		if err != nil {
			t.Fatal(err)
		}
		out2 := filepath.Join(t.TempDir(), "m")
		if err := Save(out2, cfg, w2, SaveOptions{DType: BF16}); err != nil {
			t.Fatal(err)
		}
		a, _ = os.ReadFile(filepath.Join(out, WeightsFile))
		b, _ = os.ReadFile(filepath.Join(out2, WeightsFile))
		if !bytes.Equal(a, b) {
			t.Errorf("%s: a BF16 file read and re-written changed", name)
		}
	}
}
