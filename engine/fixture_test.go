package engine_test

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"sort"
	"testing"

	"github.com/prolong-rl/prolong/engine"
	"github.com/prolong-rl/prolong/engine/cpu"
)

// readSafetensors is a minimal reader for the golden fixtures (F32 and I32 tensors). The real
// safetensors support lives in package checkpoints.
func readSafetensors(path string) (map[string]engine.HostTensor, map[string][]int32, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, err
	}
	if len(data) < 8 {
		return nil, nil, fmt.Errorf("%s: too short", path)
	}
	n := binary.LittleEndian.Uint64(data)
	if n > uint64(len(data)-8) {
		return nil, nil, fmt.Errorf("%s: header length %d beyond file", path, n)
	}
	var hdr map[string]json.RawMessage
	if err := json.Unmarshal(data[8:8+n], &hdr); err != nil {
		return nil, nil, fmt.Errorf("%s: header: %w", path, err)
	}
	body := data[8+n:]
	fl := map[string]engine.HostTensor{}
	ints := map[string][]int32{}
	for name, raw := range hdr {
		if name == "__metadata__" {
			continue
		}
		var info struct {
			DType   string   `json:"dtype"`
			Shape   []int    `json:"shape"`
			Offsets [2]int64 `json:"data_offsets"`
		}
		if err := json.Unmarshal(raw, &info); err != nil {
			return nil, nil, fmt.Errorf("%s: tensor %q: %w", path, name, err)
		}
		b := body[info.Offsets[0]:info.Offsets[1]]
		switch info.DType {
		case "F32":
			v := make([]float32, len(b)/4)
			for i := range v {
				v[i] = math.Float32frombits(binary.LittleEndian.Uint32(b[4*i:]))
			}
			fl[name] = engine.HostTensor{Shape: info.Shape, Data: v}
		case "I32":
			v := make([]int32, len(b)/4)
			for i := range v {
				v[i] = int32(binary.LittleEndian.Uint32(b[4*i:]))
			}
			ints[name] = v
		default:
			return nil, nil, fmt.Errorf("%s: tensor %q: dtype %s", path, name, info.DType)
		}
	}
	return fl, ints, nil
}

// golden is one fixture model of testdata/golden (made by scripts/make_goldens.py).
type golden struct {
	name    string
	dir     string
	cfg     *engine.Config
	weights map[string]engine.HostTensor
	seqs    [][]int32   // ragged sequences
	logits  [][]float32 // [len*V] for each sequence
	greedy  struct {
		Prompts       [][]int32 `json:"prompts"`
		MaxNewTokens  int       `json:"max_new_tokens"`
		Continuations [][]int32 `json:"continuations"`
	}
}

func goldenNames(t testing.TB) []string {
	dirs, err := filepath.Glob("testdata/golden/*/config.json")
	if err != nil || len(dirs) == 0 {
		t.Fatalf("no golden fixtures under testdata/golden (run /usr/bin/python3 scripts/make_goldens.py): %v", err)
	}
	var names []string
	for _, d := range dirs {
		names = append(names, filepath.Base(filepath.Dir(d)))
	}
	sort.Strings(names)
	return names
}

func loadGolden(t testing.TB, name string) *golden {
	t.Helper()
	g := &golden{name: name, dir: filepath.Join("testdata/golden", name)}
	var err error
	if g.cfg, err = engine.LoadConfig(filepath.Join(g.dir, "config.json")); err != nil {
		t.Fatal(err)
	}
	if g.weights, _, err = readSafetensors(filepath.Join(g.dir, "model.safetensors")); err != nil {
		t.Fatal(err)
	}
	lg, ids, err := readSafetensors(filepath.Join(g.dir, "logits.safetensors"))
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; ; i++ {
		s, ok := ids[fmt.Sprintf("ids.%d", i)]
		if !ok {
			break
		}
		g.seqs = append(g.seqs, s)
		g.logits = append(g.logits, lg[fmt.Sprintf("logits.%d", i)].Data)
	}
	data, err := os.ReadFile(filepath.Join(g.dir, "greedy.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(data, &g.greedy); err != nil {
		t.Fatal(err)
	}
	return g
}

func (g *golden) model(t testing.TB, dt engine.DType) *engine.Model {
	t.Helper()
	m, err := engine.NewModel(g.cfg, cpu.New(), g.weights, dt)
	if err != nil {
		t.Fatalf("%s: %v", g.name, err)
	}
	return m
}
