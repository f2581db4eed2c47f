// Package hffixture gives tests the model directories of checkpoints/testdata/hf (written by
// scripts/make_hf_fixtures.py): tiny Qwen2 (tied and untied), Qwen3 (head_dim != hidden/heads),
// Llama 3 (llama3 RoPE scaling) and Qwen2 with yarn, each with its config in the transformers 5
// form (config.json) and the transformers 4 form (config.tf4.json), PyTorch float64 logits and
// greedy continuations.
package hffixture

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
)

// Names are the fixture models.
var Names = []string{"qwen2", "qwen2-tied", "qwen3-headdim", "llama3", "qwen2-yarn", "qwen2-yarn-af"}

// Forms are the config.json forms: "tf5" (config.json as transformers 5 writes it) and "tf4"
// (config.tf4.json, as transformers 4 wrote it).
var Forms = []string{"tf5", "tf4"}

// LogitsTolerance is the largest |logit difference| from the float64 reference that a float32
// engine is held to (the goldens' tolerance).
const LogitsTolerance = 1e-4

// Root is the directory holding the fixtures (checkpoints/testdata/hf of this module).
func Root() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..", "..", "checkpoints", "testdata", "hf")
}

// Fixture is one model's reference data.
type Fixture struct {
	Name string
	// Seqs are token sequences and Logits their reference logits [len(seq) * vocab], each
	// sequence a causal forward pass from position 0.
	Seqs   [][]int32
	Logits [][]float32
	// Prompts are greedy prompts and Continuations their argmax continuations.
	Prompts       [][]int32 `json:"prompts"`
	MaxNewTokens  int       `json:"max_new_tokens"`
	Continuations [][]int32 `json:"continuations"`
}

// Load reads a fixture's reference data.
func Load(name string) (*Fixture, error) {
	dir := filepath.Join(Root(), name)
	f := &Fixture{Name: name}
	b, err := os.ReadFile(filepath.Join(dir, "greedy.json"))
	if err != nil {
		return nil, err
	}
	if err := json.Unmarshal(b, f); err != nil {
		return nil, fmt.Errorf("%s: %w", filepath.Join(dir, "greedy.json"), err)
	}
	f32, i32, err := readSafetensors(filepath.Join(dir, "logits.safetensors"))
	if err != nil {
		return nil, err
	}
	for i := 0; ; i++ {
		ids, ok := i32[fmt.Sprintf("ids.%d", i)]
		if !ok {
			break
		}
		f.Seqs = append(f.Seqs, ids)
		f.Logits = append(f.Logits, f32[fmt.Sprintf("logits.%d", i)])
	}
	return f, nil
}

// WriteDir writes the model as a Hugging Face directory into dir (created if needed) with its
// config in the given form: config.json, generation_config.json and model.safetensors.
func WriteDir(dir, name, form string) error {
	src := filepath.Join(Root(), name)
	cfg := "config.json"
	switch form {
	case "tf5":
	case "tf4":
		cfg = "config.tf4.json"
	default:
		return fmt.Errorf("hffixture: form %q (want tf5 or tf4)", form)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	for dst, from := range map[string]string{"config.json": cfg, "generation_config.json": "generation_config.json", "model.safetensors": "model.safetensors"} {
		if err := copyFile(filepath.Join(dir, dst), filepath.Join(src, from)); err != nil {
			return err
		}
	}
	return nil
}

func copyFile(dst, src string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// MaxAbsDiff returns the largest |a[i]-b[i]| (infinite when the lengths differ).
func MaxAbsDiff(a, b []float32) float64 {
	if len(a) != len(b) {
		return math.Inf(1)
	}
	d := 0.0
	for i := range a {
		d = max(d, math.Abs(float64(a[i])-float64(b[i])))
	}
	return d
}

// LogSoftmax returns the log-probabilities of one row of logits, in float64.
func LogSoftmax(row []float32) []float64 {
	mx := math.Inf(-1)
	for _, v := range row {
		mx = max(mx, float64(v))
	}
	var s float64
	for _, v := range row {
		s += math.Exp(float64(v) - mx)
	}
	out := make([]float64, len(row))
	for i, v := range row {
		out[i] = float64(v) - mx - math.Log(s)
	}
	return out
}

// readSafetensors reads the F32 and I32 tensors of a small safetensors file.
func readSafetensors(path string) (map[string][]float32, map[string][]int32, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, err
	}
	if len(data) < 8 {
		return nil, nil, fmt.Errorf("%s: too short", path)
	}
	n := binary.LittleEndian.Uint64(data)
	if n > uint64(len(data)-8) {
		return nil, nil, fmt.Errorf("%s: header length %d beyond the file", path, n)
	}
	var hdr map[string]json.RawMessage
	if err := json.Unmarshal(data[8:8+n], &hdr); err != nil {
		return nil, nil, fmt.Errorf("%s: header: %w", path, err)
	}
	body := data[8+n:]
	f32, i32 := map[string][]float32{}, map[string][]int32{}
	names := make([]string, 0, len(hdr))
	for k := range hdr {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, name := range names {
		if strings.HasPrefix(name, "__") {
			continue
		}
		var info struct {
			DType   string   `json:"dtype"`
			Offsets [2]int64 `json:"data_offsets"`
		}
		if err := json.Unmarshal(hdr[name], &info); err != nil {
			return nil, nil, fmt.Errorf("%s: tensor %q: %w", path, name, err)
		}
		if info.Offsets[0] < 0 || info.Offsets[1] > int64(len(body)) || info.Offsets[0] > info.Offsets[1] {
			return nil, nil, fmt.Errorf("%s: tensor %q: offsets %v beyond the data", path, name, info.Offsets)
		}
		b := body[info.Offsets[0]:info.Offsets[1]]
		switch info.DType {
		case "F32":
			v := make([]float32, len(b)/4)
			for i := range v {
				v[i] = math.Float32frombits(binary.LittleEndian.Uint32(b[4*i:]))
			}
			f32[name] = v
		case "I32":
			v := make([]int32, len(b)/4)
			for i := range v {
				v[i] = int32(binary.LittleEndian.Uint32(b[4*i:]))
			}
			i32[name] = v
		default:
			return nil, nil, fmt.Errorf("%s: tensor %q: dtype %s", path, name, info.DType)
		}
	}
	return f32, i32, nil
}

// Check runs logits (a causal forward pass from position 0, logits [len(seq) * vocab]) on the
// fixture's sequences and greedy prompts: it returns the largest |logit difference| from
// PyTorch's, and an error when that is over tol or a greedy continuation differs from
// PyTorch's.
func (f *Fixture) Check(vocab int, tol float64, logits func(seq []int32) ([]float32, error)) (float64, error) {
	worst := 0.0
	for i, seq := range f.Seqs {
		got, err := logits(seq)
		if err != nil {
			return worst, err
		}
		d := MaxAbsDiff(got, f.Logits[i])
		worst = max(worst, d)
		if d > tol {
			return worst, fmt.Errorf("%s sequence %d: max |logit difference| from PyTorch %.3g > %g", f.Name, i, d, tol)
		}
	}
	for i, p := range f.Prompts {
		seq := append([]int32(nil), p...)
		for range f.MaxNewTokens {
			lg, err := logits(seq)
			if err != nil {
				return worst, err
			}
			last, best := lg[len(lg)-vocab:], 0
			for j, v := range last {
				if v > last[best] {
					best = j
				}
			}
			seq = append(seq, int32(best))
		}
		if got := seq[len(p):]; fmt.Sprint(got) != fmt.Sprint(f.Continuations[i]) {
			return worst, fmt.Errorf("%s prompt %d: greedy %v, PyTorch %v", f.Name, i, got, f.Continuations[i])
		}
	}
	return worst, nil
}

// VocabSize is the vocabulary size of the fixture's logits.
func (f *Fixture) VocabSize() int { return len(f.Logits[0]) / len(f.Seqs[0]) }
