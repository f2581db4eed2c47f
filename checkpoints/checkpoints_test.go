package checkpoints

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/prolong-rl/prolong/engine"
)

const golden = "../engine/testdata/golden"

// TestReadPythonWrittenGolden reads model and logits files written by the PyTorch golden script
// (an independent writer), runs the engine on the weights and compares with PyTorch's logits.
func TestReadPythonWrittenGolden(t *testing.T) {
	for _, name := range []string{"qwen2", "llama3", "qwen3"} {
		cfg, w, err := LoadHF(filepath.Join(golden, name))
		if err != nil {
			t.Fatal(err)
		}
		m, err := engine.NewModel(cfg, engine.NewCPU(), w, engine.F32)
		if err != nil {
			t.Fatal(err)
		}
		_, _, err = ReadSafetensors(filepath.Join(golden, name, "logits.safetensors"))
		if err == nil {
			t.Fatalf("%s: logits.safetensors holds I32 ids; an unsupported dtype must be an error", name)
		}
		if !strings.Contains(err.Error(), "ids.") || !strings.Contains(err.Error(), "I32") {
			t.Fatalf("error does not name the tensor and dtype: %v", err)
		}
		seq := []int32{1, 5, 9, 2, 7}
		got, err := m.Logits(context.Background(), [][]int32{seq})
		if err != nil {
			t.Fatal(err)
		}
		ref, err := engine.NewRefModel(cfg, w)
		if err != nil {
			t.Fatal(err)
		}
		want := ref.Logits(seq)
		for i, v := range got[0] {
			if math.Abs(float64(v)-want[i]) > 1e-4 {
				t.Fatalf("%s logit %d: %g, reference %g", name, i, v, want[i])
			}
		}
	}
}

// TestRoundTrip: F32 is exact; BF16 and F16 round to nearest even as hand-worked values say.
func TestRoundTrip(t *testing.T) {
	tiny := float32(1.5 * math.Pow(2, -30)) // exact in bf16 (1.1b x 2^-30); below half the smallest f16 subnormal (2^-25)
	vals := []float32{0, 1, -2.5, 1.00390625, 1.01171875, 65504, tiny, 3.1415927, float32(math.Inf(-1))}
	// bf16: 1.00390625 = 1+2^-8 is halfway between 1 and 1+2^-7 -> even (1);
	// 1.01171875 = 1+3*2^-8 is halfway between 1+2^-7 and 1+2^-6 -> even (1+2^-6 = 1.015625).
	// 65504 = 1.1111111111b x 2^15 rounds up to 2^16; pi = 1.1001001b... -> 1.1001001b = 3.140625.
	wantBF := []float32{0, 1, -2.5, 1, 1.015625, 65536, tiny, 3.140625, float32(math.Inf(-1))}
	// f16: 1+2^-8 and 1+3*2^-8 are exact (10 fraction bits), 65504 is the largest half, tiny
	// underflows to 0, pi -> 3.140625 (1.1001001000b x 2^1).
	wantF16 := []float32{0, 1, -2.5, 1.00390625, 1.01171875, 65504, 0, 3.140625, float32(math.Inf(-1))}
	dir := t.TempDir()
	for _, tc := range []struct {
		dt   DType
		want []float32
	}{{F32, vals}, {BF16, wantBF}, {F16, wantF16}} {
		p := filepath.Join(dir, string(tc.dt)+".safetensors")
		in := map[string]engine.HostTensor{"a.weight": {Shape: []int{3, 3}, Data: vals}, "b": {Shape: []int{0}, Data: nil}}
		if err := WriteSafetensors(p, in, tc.dt, map[string]string{"format": "pt"}); err != nil {
			t.Fatal(err)
		}
		out, meta, err := ReadSafetensors(p)
		if err != nil {
			t.Fatal(err)
		}
		if meta["format"] != "pt" || out["a.weight"].DType != tc.dt || len(out["b"].Data) != 0 {
			t.Fatalf("%s: meta %v, %+v", tc.dt, meta, out)
		}
		for i, v := range out["a.weight"].Data {
			if v != tc.want[i] {
				t.Errorf("%s: value %d = %v, want %v", tc.dt, i, v, tc.want[i])
			}
		}
	}
}

// TestSaveLoadHF: a saved directory loads back bit for bit (F32) and names what transformers
// needs; a tied model stores no lm_head.
func TestSaveLoadHF(t *testing.T) {
	cfg, w, err := LoadHF(filepath.Join(golden, "llama3"))
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "out")
	if err := SaveHF(dir, cfg, w, F32); err != nil {
		t.Fatal(err)
	}
	cfg2, w2, err := LoadHF(dir)
	if err != nil {
		t.Fatal(err)
	}
	if cfg2.HiddenSize != cfg.HiddenSize || cfg2.RopeScaling == nil || !cfg2.TieWordEmbeddings {
		t.Fatalf("config %+v", cfg2)
	}
	for n, x := range w {
		for i, v := range x.Data {
			if w2[n].Data[i] != v {
				t.Fatalf("%s[%d] differs after the round trip", n, i)
			}
		}
	}
	data, _ := os.ReadFile(filepath.Join(dir, "config.json"))
	for _, want := range []string{`"LlamaForCausalLM"`, `"torch_dtype": "float32"`, `"model_type": "llama"`} {
		if !bytes.Contains(data, []byte(want)) {
			t.Errorf("config.json lacks %s", want)
		}
	}
	ts, _, _ := ReadSafetensors(filepath.Join(dir, "model.safetensors"))
	if _, ok := ts["lm_head.weight"]; ok {
		t.Error("tied model stored lm_head.weight")
	}
	delete(w, "model.norm.weight")
	if err := SaveHF(dir, cfg, w, F32); err == nil || !strings.Contains(err.Error(), "model.norm.weight") {
		t.Errorf("missing weight: %v", err)
	}
}

// header builds a safetensors image from a header JSON and n data bytes.
func header(js string, n int) []byte {
	var b bytes.Buffer
	binary.Write(&b, binary.LittleEndian, uint64(len(js)))
	b.WriteString(js)
	b.Write(make([]byte, n))
	return b.Bytes()
}

// TestBadFiles: each malformed file gives an error naming what is wrong.
func TestBadFiles(t *testing.T) {
	for _, tc := range []struct {
		name string
		data []byte
		want string
	}{
		{"short", []byte{1, 2, 3}, "too short"},
		{"header too long", header(`{}`, 0)[:9], "does not fit"},
		{"not json", header(`{"a":`, 0), "JSON"},
		{"bad dtype", header(`{"w":{"dtype":"Q8","shape":[1],"data_offsets":[0,1]}}`, 1), `"w" has dtype "Q8"`},
		{"size mismatch", header(`{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}}`, 4), `"w": shape [2]`},
		{"out of range", header(`{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}`, 4), `"w" has data offsets`},
		{"overlap", header(`{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}`, 8), "overlap"},
		{"negative shape", header(`{"w":{"dtype":"F32","shape":[-1],"data_offsets":[0,0]}}`, 0), `"w" has shape`},
	} {
		_, _, err := ParseSafetensors(bytes.NewReader(tc.data), int64(len(tc.data)))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: error %v, want it to mention %q", tc.name, err, tc.want)
		}
	}
}

// TestAtomicWrite: a write that fails midway leaves the previous file intact and no temp file.
func TestAtomicWrite(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "model.safetensors")
	w := map[string]engine.HostTensor{"x": {Shape: []int{2}, Data: []float32{1, 2}}}
	if err := WriteSafetensors(p, w, F32, nil); err != nil {
		t.Fatal(err)
	}
	before, _ := os.ReadFile(p)
	boom := errors.New("disk full")
	if err := writeAtomic(p, func(w io.Writer) error { w.Write([]byte("partial")); return boom }); !errors.Is(err, boom) {
		t.Fatalf("error %v", err)
	}
	after, _ := os.ReadFile(p)
	if !bytes.Equal(before, after) {
		t.Fatal("a failed write changed the file")
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Fatalf("left behind: %v", entries)
	}
}

// FuzzParseSafetensors: arbitrary bytes never panic, and what parses writes back and parses
// again to the same values.
func FuzzParseSafetensors(f *testing.F) {
	f.Add(header(`{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"__metadata__":{"format":"pt"}}`, 8))
	f.Add(header(`{"w":{"dtype":"BF16","shape":[1,2],"data_offsets":[0,4]}}`, 4))
	f.Add(header(`{"a":{"dtype":"F16","shape":[1],"data_offsets":[0,2]},"b":{"dtype":"F32","shape":[],"data_offsets":[2,6]}}`, 6))
	f.Fuzz(func(t *testing.T, data []byte) {
		ts, _, err := ParseSafetensors(bytes.NewReader(data), int64(len(data)))
		if err != nil {
			return
		}
		w := map[string]engine.HostTensor{}
		for n, x := range ts {
			w[n] = x.HostTensor
		}
		p := filepath.Join(t.TempDir(), "x.safetensors")
		if err := WriteSafetensors(p, w, F32, nil); err != nil {
			t.Fatal(err)
		}
		back, _, err := ReadSafetensors(p)
		if err != nil {
			t.Fatal(err)
		}
		for n, x := range ts {
			for i, v := range x.Data {
				if b := back[n].Data[i]; b != v && !(v != v && b != b) {
					t.Fatalf("%s[%d]: %v after a round trip, was %v", n, i, b, v)
				}
			}
		}
	})
}
