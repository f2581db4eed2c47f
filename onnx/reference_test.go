package onnx

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"testing"

	"github.com/prolong-rl/prolong/engine"
)

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
