//go:build cgo

package onnx

import (
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/prolong-rl/prolong/engine"
	ort "github.com/yalue/onnxruntime_go"
)

// ONNX Runtime is the independent reference: its CPU library comes from the npm package
// onnxruntime-node via scripts/setup-ort.sh. Tests find it through $ONNXRUNTIME_LIB or the
// script's default location; without it they skip, unless PROLONG_REQUIRE_ORT=1 (CI), where
// they fail.

var (
	ortOnce sync.Once
	ortErr  error
	ortPath string
)

func ortLibPath() string {
	if p := os.Getenv("ONNXRUNTIME_LIB"); p != "" {
		return p
	}
	cache := os.Getenv("PROLONG_CACHE")
	if cache == "" {
		home, _ := os.UserHomeDir()
		cache = filepath.Join(home, ".cache", "prolong")
	}
	return filepath.Join(cache, "ort-1.24.1", "package", "bin", "napi-v6", "linux", "x64", "libonnxruntime.so.1")
}

// needORT initialises ONNX Runtime once, or skips (fails under PROLONG_REQUIRE_ORT=1).
func needORT(t testing.TB) {
	t.Helper()
	ortOnce.Do(func() {
		ortPath = ortLibPath()
		if _, err := os.Stat(ortPath); err != nil {
			ortErr = fmt.Errorf("ONNX Runtime library %s: %w (run scripts/setup-ort.sh or set ONNXRUNTIME_LIB)", ortPath, err)
			return
		}
		ort.SetSharedLibraryPath(ortPath)
		ortErr = ort.InitializeEnvironment(ort.WithLogLevelError())
	})
	if ortErr != nil {
		if os.Getenv("PROLONG_REQUIRE_ORT") == "1" {
			t.Fatalf("PROLONG_REQUIRE_ORT=1: %v", ortErr)
		}
		t.Skipf("skipping: %v", ortErr)
	}
}

// ortSession runs a decoder ONNX file in ONNX Runtime. It reads the model's inputs: always
// input_ids and attention_mask; position_ids and past_key_values.{i}.key/.value when present
// (outputs present.{i}.key/.value then).
type ortSession struct {
	cfg      *engine.Config
	sess     *ort.DynamicAdvancedSession
	ins      []string
	outs     []string
	withPast bool
	withPos  bool
}

func newORTSession(t testing.TB, path string, cfg *engine.Config) *ortSession {
	return newORTSessionThreads(t, path, cfg, 1)
}

// newORTSessionThreads opens a session with the given intra-op thread count.
func newORTSessionThreads(t testing.TB, path string, cfg *engine.Config, threads int) *ortSession {
	t.Helper()
	infos, _, err := ort.GetInputOutputInfo(path)
	if err != nil {
		t.Fatalf("ONNX Runtime cannot load %s: %v", path, err)
	}
	o := &ortSession{cfg: cfg}
	have := map[string]bool{}
	for _, in := range infos {
		have[in.Name] = true
	}
	o.withPast, o.withPos = have["past_key_values.0.key"], have["position_ids"]
	o.ins = []string{"input_ids", "attention_mask"}
	if o.withPos {
		o.ins = append(o.ins, "position_ids")
	}
	o.outs = []string{"logits"}
	if o.withPast {
		for i := 0; i < cfg.NumHiddenLayers; i++ {
			for _, kv := range []string{"key", "value"} {
				o.ins = append(o.ins, fmt.Sprintf("past_key_values.%d.%s", i, kv))
				o.outs = append(o.outs, fmt.Sprintf("present.%d.%s", i, kv))
			}
		}
	}
	if len(o.ins) != len(infos) {
		t.Fatalf("%s: inputs %v, expected %v", path, infos, o.ins)
	}
	opts, err := ort.NewSessionOptions()
	if err != nil {
		t.Fatal(err)
	}
	defer opts.Destroy()
	if err := opts.SetIntraOpNumThreads(threads); err != nil {
		t.Fatal(err)
	}
	s, err := ort.NewDynamicAdvancedSession(path, o.ins, o.outs, opts)
	if err != nil {
		t.Fatalf("ONNX Runtime cannot load %s: %v", path, err)
	}
	t.Cleanup(func() { s.Destroy() })
	o.sess = s
	return o
}

// kvState is the fed-back cache: per layer key and value, [B, KV, P, Dh] row-major.
type kvState struct {
	past int
	k, v [][]float32
}

// step runs one call: ids [B][S] at positions past..past+S-1, all attention_mask 1. It returns
// logits [B][S*V] and the new cache.
func (o *ortSession) step(t testing.TB, ids [][]int64, st kvState) ([][]float32, kvState) {
	t.Helper()
	var pos, mask [][]int64
	for _, row := range ids {
		var p, m []int64
		for j := range row {
			p = append(p, int64(st.past+j))
		}
		for j := 0; j < st.past+len(row); j++ {
			m = append(m, 1)
		}
		pos, mask = append(pos, p), append(mask, m)
	}
	return o.stepWith(t, ids, pos, mask, st)
}

// stepWith runs one call with explicit position_ids [B][S] and attention_mask [B][P+S].
func (o *ortSession) stepWith(t testing.TB, ids, posIDs, maskRows [][]int64, st kvState) ([][]float32, kvState) {
	t.Helper()
	c := o.cfg
	bsz, s := len(ids), len(ids[0])
	total := st.past + s
	var flat, pos, mask []int64
	for b, row := range ids {
		flat = append(flat, row...)
		pos = append(pos, posIDs[b]...)
		mask = append(mask, maskRows[b]...)
	}
	var vals []ort.Value
	defer func() {
		for _, v := range vals {
			v.Destroy()
		}
	}()
	add := func(v ort.Value, err error) {
		if err != nil {
			t.Fatal(err)
		}
		vals = append(vals, v)
	}
	add(ort.NewTensor(ort.NewShape(int64(bsz), int64(s)), flat))
	add(ort.NewTensor(ort.NewShape(int64(bsz), int64(total)), mask))
	if o.withPos {
		add(ort.NewTensor(ort.NewShape(int64(bsz), int64(s)), pos))
	}
	kvShape := ort.NewShape(int64(bsz), int64(c.NumKeyValueHeads), int64(st.past), int64(c.HeadDim))
	for i := 0; o.withPast && i < c.NumHiddenLayers; i++ {
		k, v := []float32{}, []float32{}
		if st.k != nil {
			k, v = st.k[i], st.v[i]
		}
		add(ort.NewTensor(kvShape, k))
		add(ort.NewTensor(kvShape, v))
	}
	outs := make([]ort.Value, len(o.outs))
	if err := o.sess.Run(vals, outs); err != nil {
		t.Fatalf("ONNX Runtime run (past %d, seq %d): %v", st.past, s, err)
	}
	defer func() {
		for _, v := range outs {
			if v != nil {
				v.Destroy()
			}
		}
	}()
	lg := outs[0].(*ort.Tensor[float32])
	if want := ort.NewShape(int64(bsz), int64(s), int64(c.VocabSize)); !lg.GetShape().Equals(want) {
		t.Fatalf("logits shape %v, want %v", lg.GetShape(), want)
	}
	data := lg.GetData()
	logits := make([][]float32, bsz)
	for b := range logits {
		logits[b] = append([]float32(nil), data[b*s*c.VocabSize:(b+1)*s*c.VocabSize]...)
	}
	next := kvState{past: total}
	if !o.withPast {
		return logits, next
	}
	wantKV := ort.NewShape(int64(bsz), int64(c.NumKeyValueHeads), int64(total), int64(c.HeadDim))
	for i := 0; i < c.NumHiddenLayers; i++ {
		pk := outs[1+2*i].(*ort.Tensor[float32])
		pv := outs[2+2*i].(*ort.Tensor[float32])
		if !pk.GetShape().Equals(wantKV) || !pv.GetShape().Equals(wantKV) {
			t.Fatalf("present.%d shapes %v %v, want %v", i, pk.GetShape(), pv.GetShape(), wantKV)
		}
		next.k = append(next.k, append([]float32(nil), pk.GetData()...))
		next.v = append(next.v, append([]float32(nil), pv.GetData()...))
	}
	return logits, next
}
