package onnx

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math"
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

// ortSession runs an exported decoder in ONNX Runtime.
type ortSession struct {
	cfg  *engine.Config
	sess *ort.DynamicAdvancedSession
	outs []string
}

func newORTSession(t testing.TB, path string, cfg *engine.Config) *ortSession {
	return newORTSessionThreads(t, path, cfg, 1)
}

// newORTSessionThreads opens a session with the given intra-op thread count.
func newORTSessionThreads(t testing.TB, path string, cfg *engine.Config, threads int) *ortSession {
	t.Helper()
	in := []string{"input_ids", "attention_mask", "position_ids"}
	outs := []string{"logits"}
	for i := 0; i < cfg.NumHiddenLayers; i++ {
		for _, kv := range []string{"key", "value"} {
			in = append(in, fmt.Sprintf("past_key_values.%d.%s", i, kv))
			outs = append(outs, fmt.Sprintf("present.%d.%s", i, kv))
		}
	}
	opts, err := ort.NewSessionOptions()
	if err != nil {
		t.Fatal(err)
	}
	defer opts.Destroy()
	if err := opts.SetIntraOpNumThreads(threads); err != nil {
		t.Fatal(err)
	}
	s, err := ort.NewDynamicAdvancedSession(path, in, outs, opts)
	if err != nil {
		t.Fatalf("ONNX Runtime cannot load %s: %v", path, err)
	}
	t.Cleanup(func() { s.Destroy() })
	return &ortSession{cfg: cfg, sess: s, outs: outs}
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
	add(ort.NewTensor(ort.NewShape(int64(bsz), int64(s)), pos))
	kvShape := ort.NewShape(int64(bsz), int64(c.NumKeyValueHeads), int64(st.past), int64(c.HeadDim))
	for i := 0; i < c.NumHiddenLayers; i++ {
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

// golden is a fixture model of engine/testdata/golden (scripts/make_goldens.py).
type golden struct {
	name    string
	dir     string
	cfg     *engine.Config
	weights map[string]engine.HostTensor
}

func goldenDir() string { return filepath.Join("..", "engine", "testdata", "golden") }

func loadGoldens(t testing.TB) []golden {
	t.Helper()
	var out []golden
	for _, name := range []string{"qwen2", "llama3", "qwen3", "llama2"} {
		dir := filepath.Join(goldenDir(), name)
		if _, err := os.Stat(filepath.Join(dir, "model.safetensors")); err != nil {
			continue
		}
		cfg, err := engine.LoadConfig(filepath.Join(dir, "config.json"))
		if err != nil {
			t.Fatal(err)
		}
		w, err := readSafetensors(filepath.Join(dir, "model.safetensors"))
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, golden{name: name, dir: dir, cfg: cfg, weights: w})
	}
	if len(out) < 3 {
		t.Fatalf("found %d golden models under %s, want at least qwen2, llama3, qwen3", len(out), goldenDir())
	}
	return out
}

// readSafetensors reads an F32 safetensors file (test fixtures only; the real reader lives in
// package checkpoints).
func readSafetensors(path string) (map[string]engine.HostTensor, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	if len(data) < 8 {
		return nil, fmt.Errorf("%s: too short", path)
	}
	n := binary.LittleEndian.Uint64(data)
	if n > uint64(len(data)-8) {
		return nil, fmt.Errorf("%s: header length %d beyond file", path, n)
	}
	var hdr map[string]json.RawMessage
	if err := json.Unmarshal(data[8:8+n], &hdr); err != nil {
		return nil, fmt.Errorf("%s: header: %w", path, err)
	}
	body := data[8+n:]
	out := map[string]engine.HostTensor{}
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
			return nil, fmt.Errorf("%s: tensor %q: %w", path, name, err)
		}
		if info.DType != "F32" {
			return nil, fmt.Errorf("%s: tensor %q: dtype %s", path, name, info.DType)
		}
		b := body[info.Offsets[0]:info.Offsets[1]]
		v := make([]float32, len(b)/4)
		for i := range v {
			v[i] = math.Float32frombits(binary.LittleEndian.Uint32(b[4*i:]))
		}
		out[name] = engine.HostTensor{Shape: info.Shape, Data: v}
	}
	return out, nil
}

// refKV is an independent float64 reference of the decoder (HF math, as in
// scripts/make_goldens.py) that returns, for one sequence at positions 0..L-1, every layer's
// key (after qk-norm and RoPE) and value: k[layer], v[layer] laid out [KV, L, Dh].
func refKV(c *engine.Config, w map[string]engine.HostTensor, ids []int32) (k, v [][]float64) {
	D, H, KV, Dh, I := c.HiddenSize, c.NumAttentionHeads, c.NumKeyValueHeads, c.HeadDim, c.IntermediateSize
	L := len(ids)
	get := func(n string) []float64 {
		t, ok := w[n]
		if !ok {
			return nil
		}
		out := make([]float64, len(t.Data))
		for i, x := range t.Data {
			out[i] = float64(x)
		}
		return out
	}
	norm := func(x []float64, wt []float64, n int) { // in place, rows of n
		for r := 0; r+n <= len(x); r += n {
			var ss float64
			for _, a := range x[r : r+n] {
				ss += a * a
			}
			inv := 1 / math.Sqrt(ss/float64(n)+c.RMSNormEps)
			for j := 0; j < n; j++ {
				x[r+j] *= inv * wt[j]
			}
		}
	}
	lin := func(x []float64, in int, wt []float64, out int, bias []float64) []float64 { // x [L, in], wt [out, in]
		y := make([]float64, L*out)
		for r := 0; r < L; r++ {
			for o := 0; o < out; o++ {
				var acc float64
				for j := 0; j < in; j++ {
					acc += x[r*in+j] * wt[o*in+j]
				}
				if bias != nil {
					acc += bias[o]
				}
				y[r*out+o] = acc
			}
		}
		return y
	}
	inv := c.InvFreq()
	half := Dh / 2
	rope := func(x []float64, heads int) { // x [L, heads, Dh]
		for p := 0; p < L; p++ {
			for h := 0; h < heads; h++ {
				row := x[(p*heads+h)*Dh:]
				for i := 0; i < half; i++ {
					cs, sn := math.Cos(float64(p)*inv[i]), math.Sin(float64(p)*inv[i])
					a, b := row[i], row[i+half]
					row[i], row[i+half] = a*cs-b*sn, b*cs+a*sn
				}
			}
		}
	}
	emb := get("model.embed_tokens.weight")
	x := make([]float64, L*D)
	for p, id := range ids {
		copy(x[p*D:(p+1)*D], emb[int(id)*D:])
	}
	for l := 0; l < c.NumHiddenLayers; l++ {
		pre := fmt.Sprintf("model.layers.%d.", l)
		h := append([]float64(nil), x...)
		norm(h, get(pre+"input_layernorm.weight"), D)
		q := lin(h, D, get(pre+"self_attn.q_proj.weight"), H*Dh, get(pre+"self_attn.q_proj.bias"))
		kk := lin(h, D, get(pre+"self_attn.k_proj.weight"), KV*Dh, get(pre+"self_attn.k_proj.bias"))
		vv := lin(h, D, get(pre+"self_attn.v_proj.weight"), KV*Dh, get(pre+"self_attn.v_proj.bias"))
		if c.QKNorm {
			norm(q, get(pre+"self_attn.q_norm.weight"), Dh)
			norm(kk, get(pre+"self_attn.k_norm.weight"), Dh)
		}
		rope(q, H)
		rope(kk, KV)
		lk, lv := make([]float64, KV*L*Dh), make([]float64, KV*L*Dh)
		for p := 0; p < L; p++ {
			for g := 0; g < KV; g++ {
				copy(lk[(g*L+p)*Dh:(g*L+p+1)*Dh], kk[(p*KV+g)*Dh:])
				copy(lv[(g*L+p)*Dh:(g*L+p+1)*Dh], vv[(p*KV+g)*Dh:])
			}
		}
		k, v = append(k, lk), append(v, lv)
		att := make([]float64, L*H*Dh)
		for p := 0; p < L; p++ {
			for hh := 0; hh < H; hh++ {
				g := hh / (H / KV)
				sc := make([]float64, p+1)
				mx := math.Inf(-1)
				for j := 0; j <= p; j++ {
					var d float64
					for i := 0; i < Dh; i++ {
						d += q[(p*H+hh)*Dh+i] * lk[(g*L+j)*Dh+i]
					}
					sc[j] = d / math.Sqrt(float64(Dh))
					mx = max(mx, sc[j])
				}
				var sum float64
				for j := range sc {
					sc[j] = math.Exp(sc[j] - mx)
					sum += sc[j]
				}
				for j := range sc {
					for i := 0; i < Dh; i++ {
						att[(p*H+hh)*Dh+i] += sc[j] / sum * lv[(g*L+j)*Dh+i]
					}
				}
			}
		}
		o := lin(att, H*Dh, get(pre+"self_attn.o_proj.weight"), D, nil)
		for i := range x {
			x[i] += o[i]
		}
		h = append(h[:0], x...)
		norm(h, get(pre+"post_attention_layernorm.weight"), D)
		gate := lin(h, D, get(pre+"mlp.gate_proj.weight"), I, nil)
		up := lin(h, D, get(pre+"mlp.up_proj.weight"), I, nil)
		for i := range gate {
			gate[i] = gate[i] / (1 + math.Exp(-gate[i])) * up[i]
		}
		dn := lin(gate, I, get(pre+"mlp.down_proj.weight"), D, nil)
		for i := range x {
			x[i] += dn[i]
		}
	}
	return k, v
}
