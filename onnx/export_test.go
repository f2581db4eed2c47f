package onnx

import (
	"bytes"
	"context"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/prolong-rl/prolong/engine"
	"github.com/prolong-rl/prolong/engine/cpu"
	"github.com/prolong-rl/prolong/onnx/onnxpb"
	"google.golang.org/protobuf/proto"
)

const logitTol = 1e-4

// testTokens returns B sequences of n deterministic pseudo-random token ids below vocab.
func testTokens(bsz, n, vocab int, seed uint64) [][]int32 {
	out := make([][]int32, bsz)
	x := seed
	for b := range out {
		for i := 0; i < n; i++ {
			x = x*6364136223846793005 + 1442695040888963407
			out[b] = append(out[b], int32((x>>33)%uint64(vocab)))
		}
	}
	return out
}

func maxAbsDiff(a, b []float32) float64 {
	if len(a) != len(b) {
		return math.Inf(1)
	}
	var m float64
	for i := range a {
		d := math.Abs(float64(a[i]) - float64(b[i]))
		if math.IsNaN(d) {
			return math.Inf(1)
		}
		m = max(m, d)
	}
	return m
}

func engineLogits(t testing.TB, g golden, seqs [][]int32) [][]float32 {
	t.Helper()
	m, err := engine.NewModel(g.cfg, cpu.New(), g.weights, engine.F32)
	if err != nil {
		t.Fatal(err)
	}
	lg, err := m.Logits(context.Background(), seqs)
	if err != nil {
		t.Fatal(err)
	}
	return lg
}

// checkPrefillDecode runs a prefill of `prefill` tokens with an empty past, then `decode`
// single-token steps feeding the present tensors back, and compares every logit row with the
// engine's full causal forward of the whole sequence.
func checkPrefillDecode(t *testing.T, g golden, path string, prefill, decode int) float64 {
	t.Helper()
	const bsz = 2
	v := g.cfg.VocabSize
	seqs := testTokens(bsz, prefill+decode, v, uint64(len(g.name))*7919)
	want := engineLogits(t, g, seqs) // [B][(prefill+decode)*V]
	s := newORTSession(t, path, g.cfg)

	ids := make([][]int64, bsz)
	for b := range ids {
		for _, id := range seqs[b][:prefill] {
			ids[b] = append(ids[b], int64(id))
		}
	}
	got, st := s.step(t, ids, kvState{})
	var worst float64
	for b := 0; b < bsz; b++ {
		d := maxAbsDiff(got[b], want[b][:prefill*v])
		worst = max(worst, d)
		if d > logitTol {
			t.Errorf("%s: prefill (past 0, %d tokens) sequence %d: max |logit diff| %.3g > %g", g.name, prefill, b, d, logitTol)
		}
	}
	for k := 0; k < decode; k++ {
		pos := prefill + k
		for b := range ids {
			ids[b] = []int64{int64(seqs[b][pos])}
		}
		got, st = s.step(t, ids, st)
		for b := 0; b < bsz; b++ {
			d := maxAbsDiff(got[b], want[b][pos*v:(pos+1)*v])
			worst = max(worst, d)
			if d > logitTol {
				t.Errorf("%s: decode step %d (position %d) sequence %d: max |logit diff| %.3g > %g", g.name, k+1, pos, b, d, logitTol)
			}
		}
	}
	if st.past != prefill+decode {
		t.Fatalf("%s: present length %d after decoding, want %d", g.name, st.past, prefill+decode)
	}
	if st.k == nil { // a graph without KV-cache outputs
		return worst
	}
	// The fed-back cache: present.{i}.key/value [B, KV, T, Dh] against a float64 reference.
	n := g.cfg.NumKeyValueHeads * st.past * g.cfg.HeadDim
	var worstKV float64
	for b := 0; b < bsz; b++ {
		rk, rv := refKV(g.cfg, g.weights, seqs[b])
		for l := range rk {
			for _, c := range []struct {
				name     string
				got, ref []float64
			}{{"key", f64s(st.k[l][b*n : (b+1)*n]), rk[l]}, {"value", f64s(st.v[l][b*n : (b+1)*n]), rv[l]}} {
				d := maxAbsDiff64(c.got, c.ref)
				worstKV = max(worstKV, d)
				if d > logitTol {
					t.Errorf("%s: present.%d.%s sequence %d: max |diff| vs float64 reference %.3g > %g", g.name, l, c.name, b, d, logitTol)
				}
			}
		}
	}
	t.Logf("%s: max |present KV diff| ONNX Runtime vs float64 reference: %.3g", g.name, worstKV)
	return worst
}

func f64s(v []float32) []float64 {
	out := make([]float64, len(v))
	for i, x := range v {
		out[i] = float64(x)
	}
	return out
}

func maxAbsDiff64(a, b []float64) float64 {
	if len(a) != len(b) {
		return math.Inf(1)
	}
	var m float64
	for i := range a {
		d := math.Abs(a[i] - b[i])
		if math.IsNaN(d) {
			return math.Inf(1)
		}
		m = max(m, d)
	}
	return m
}

// TestExportMatchesORT exports every golden model, runs it in ONNX Runtime (prefill with an
// empty past, then 3 decode steps through past_key_values) and compares the logits with the
// engine's.
func TestExportMatchesORT(t *testing.T) {
	needORT(t)
	for _, g := range loadGoldens(t) {
		t.Run(g.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "model.onnx")
			if err := Export(path, g.cfg, g.weights, ExportOptions{}); err != nil {
				t.Fatal(err)
			}
			d := checkPrefillDecode(t, g, path, 10, 3)
			t.Logf("%s: max |logit diff| engine vs ONNX Runtime over prefill + 3 decode steps: %.3g", g.name, d)
		})
	}
}

// TestExportExternalData writes the weights to a side file and checks that ONNX Runtime loads
// it and computes the same logits.
func TestExportExternalData(t *testing.T) {
	needORT(t)
	g := loadGoldens(t)[0]
	dir := t.TempDir()
	path := filepath.Join(dir, "model.onnx")
	if err := Export(path, g.cfg, g.weights, ExportOptions{ExternalData: true, DataFile: "weights.bin"}); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	di, err := os.Stat(filepath.Join(dir, "weights.bin"))
	if err != nil {
		t.Fatal(err)
	}
	var wbytes int64
	for _, w := range g.weights {
		wbytes += 4 * int64(len(w.Data))
	}
	if fi.Size() >= wbytes || di.Size() < wbytes {
		t.Errorf("model file %d bytes, data file %d bytes, weights %d bytes: weights are not external", fi.Size(), di.Size(), wbytes)
	}
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if strings.Contains(e.Name(), ".tmp") {
			t.Errorf("temporary file %s left behind", e.Name())
		}
	}
	d := checkPrefillDecode(t, g, path, 10, 3)
	t.Logf("%s (external data): max |logit diff| %.3g", g.name, d)
}

// TestExportProtoRoundTrip parses the written file back with the bindings: the bytes re-marshal
// identically, and every initializer holds its weight bit for bit under its HF name.
func TestExportProtoRoundTrip(t *testing.T) {
	for _, g := range loadGoldens(t) {
		t.Run(g.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "model.onnx")
			if err := Export(path, g.cfg, g.weights, ExportOptions{}); err != nil {
				t.Fatal(err)
			}
			data, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			var m onnxpb.ModelProto
			if err := proto.Unmarshal(data, &m); err != nil {
				t.Fatalf("parse %s: %v", path, err)
			}
			again, err := proto.Marshal(&m)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(again, data) {
				t.Errorf("re-marshalled model differs from the file (%d vs %d bytes)", len(again), len(data))
			}
			var buf bytes.Buffer
			if err := Write(&buf, g.cfg, g.weights); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(buf.Bytes(), data) {
				t.Errorf("Write and Export produce different bytes")
			}
			if m.GetIrVersion() != IRVersion || len(m.GetOpsetImport()) != 1 || m.GetOpsetImport()[0].GetVersion() != Opset {
				t.Errorf("ir_version %d opsets %v", m.GetIrVersion(), m.GetOpsetImport())
			}
			names := engine.WeightNames(g.cfg)
			inits := m.GetGraph().GetInitializer()
			if len(inits) != len(names) {
				t.Fatalf("%d initializers, want %d", len(inits), len(names))
			}
			for i, tp := range inits {
				if tp.GetName() != names[i] {
					t.Fatalf("initializer %d is %q, want %q", i, tp.GetName(), names[i])
				}
				w := g.weights[names[i]]
				if !slices.Equal(w.Shape, intsOf(tp.GetDims())) {
					t.Errorf("%s: dims %v, want %v", names[i], tp.GetDims(), w.Shape)
				}
				if !bytes.Equal(tp.GetRawData(), float32Bytes(w.Data)) {
					t.Errorf("%s: raw_data differs from the weight", names[i])
				}
			}
			for _, op := range m.GetGraph().GetNode() {
				if op.GetDomain() != "" {
					t.Errorf("node %s uses domain %q: only standard ops are allowed", op.GetName(), op.GetDomain())
				}
			}
		})
	}
}

func intsOf(d []int64) []int {
	out := make([]int, len(d))
	for i, v := range d {
		out[i] = int(v)
	}
	return out
}

// TestExportErrors checks that bad weights are refused with errors naming the tensor.
func TestExportErrors(t *testing.T) {
	g := loadGoldens(t)[0]
	clone := func() map[string]engine.HostTensor {
		m := map[string]engine.HostTensor{}
		for k, v := range g.weights {
			m[k] = v
		}
		return m
	}
	dir := t.TempDir()
	cases := []struct {
		name string
		edit func(map[string]engine.HostTensor)
		want string
	}{
		{"missing", func(w map[string]engine.HostTensor) { delete(w, "model.layers.1.mlp.up_proj.weight") }, "model.layers.1.mlp.up_proj.weight"},
		{"shape", func(w map[string]engine.HostTensor) {
			t := w["model.norm.weight"]
			w["model.norm.weight"] = engine.HostTensor{Shape: []int{t.Shape[0] + 1}, Data: append(append([]float32(nil), t.Data...), 0)}
		}, "model.norm.weight"},
		{"data", func(w map[string]engine.HostTensor) {
			t := w["model.norm.weight"]
			w["model.norm.weight"] = engine.HostTensor{Shape: t.Shape, Data: t.Data[1:]}
		}, "model.norm.weight"},
		{"extra", func(w map[string]engine.HostTensor) {
			w["model.layers.9.mlp.up_proj.weight"] = engine.HostTensor{Shape: []int{1}, Data: []float32{1}}
		}, "model.layers.9.mlp.up_proj.weight"},
	}
	for _, c := range cases {
		w := clone()
		c.edit(w)
		path := filepath.Join(dir, c.name+".onnx")
		err := Export(path, g.cfg, w, ExportOptions{})
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: error %v, want one naming %s", c.name, err, c.want)
		}
		if _, serr := os.Stat(path); serr == nil {
			t.Errorf("%s: %s written despite the error", c.name, path)
		}
	}
	err := Export(filepath.Join(dir, "x.onnx"), g.cfg, g.weights, ExportOptions{ExternalData: true, DataFile: "../escape.bin"})
	if err == nil || !strings.Contains(err.Error(), "escape.bin") {
		t.Errorf("data file outside the model directory: error %v", err)
	}
}

// TestExportLeftPadding runs a batch of two prompts of different lengths, the shorter one
// left-padded (attention_mask 0 on the pads, positions counted from its first real token),
// then 3 decode steps; every real token's logits must equal the engine's on the unpadded
// sequence.
func TestExportLeftPadding(t *testing.T) {
	needORT(t)
	for _, g := range loadGoldens(t)[:3] {
		t.Run(g.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "model.onnx")
			if err := Export(path, g.cfg, g.weights, ExportOptions{}); err != nil {
				t.Fatal(err)
			}
			v := g.cfg.VocabSize
			const long, short, decode = 9, 5, 3
			seqs := [][]int32{testTokens(1, long+decode, v, 11)[0], testTokens(1, short+decode, v, 12)[0]}
			want := engineLogits(t, g, seqs)
			s := newORTSession(t, path, g.cfg)
			pad := long - short
			lens := []int{long, short}
			ids, pos, mask := make([][]int64, 2), make([][]int64, 2), make([][]int64, 2)
			for b := range seqs {
				for j := 0; j < long; j++ {
					k := j - (long - lens[b]) // index into the real tokens; < 0 on pads
					if k < 0 {
						ids[b], pos[b], mask[b] = append(ids[b], 0), append(pos[b], 1), append(mask[b], 0)
						continue
					}
					ids[b], pos[b], mask[b] = append(ids[b], int64(seqs[b][k])), append(pos[b], int64(k)), append(mask[b], 1)
				}
			}
			got, st := s.stepWith(t, ids, pos, mask, kvState{})
			var worst float64
			check := func(what string, b int, got, want []float32) {
				d := maxAbsDiff(got, want)
				worst = max(worst, d)
				if d > logitTol {
					t.Errorf("%s: %s sequence %d: max |logit diff| %.3g > %g", g.name, what, b, d, logitTol)
				}
			}
			check("prefill", 0, got[0], want[0][:long*v])
			check("prefill", 1, got[1][pad*v:], want[1][:short*v])
			for k := 0; k < decode; k++ {
				for b := range seqs {
					ids[b] = []int64{int64(seqs[b][lens[b]+k])}
					pos[b] = []int64{int64(lens[b] + k)}
					mask[b] = append(mask[b], 1)
				}
				got, st = s.stepWith(t, ids, pos, mask, st)
				for b := range seqs {
					p := lens[b] + k
					check(fmt.Sprintf("decode step %d", k+1), b, got[b], want[b][p*v:(p+1)*v])
				}
			}
			t.Logf("%s: left-padded batch, max |logit diff| %.3g", g.name, worst)
		})
	}
}

// TestExportLargeGoesExternal checks that weights above the inline limit (2 GiB in
// production, lowered here) go to external data without being asked, and that Write, which
// cannot do that, refuses.
func TestExportLargeGoesExternal(t *testing.T) {
	g := loadGoldens(t)[0]
	old := maxInlineBytes
	maxInlineBytes = 1 << 10
	defer func() { maxInlineBytes = old }()
	dir := t.TempDir()
	path := filepath.Join(dir, "model.onnx")
	if err := Export(path, g.cfg, g.weights, ExportOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(path + ".data"); err != nil {
		t.Errorf("no external data file: %v", err)
	}
	_, w, err := Import(path, ImportOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(w) != len(g.weights) {
		t.Errorf("%d weights imported, want %d", len(w), len(g.weights))
	}
	var buf bytes.Buffer
	if err := Write(&buf, g.cfg, g.weights); err == nil || !strings.Contains(err.Error(), "external data") {
		t.Errorf("Write above the inline limit: error %v", err)
	}
}
