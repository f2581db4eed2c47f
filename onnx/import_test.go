package onnx

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/prolong-rl/prolong/checkpoints"
	"github.com/prolong-rl/prolong/engine"
	"github.com/prolong-rl/prolong/onnx/onnxpb"
	"google.golang.org/protobuf/proto"
)

// sameWeights reports the first difference between two weight sets, comparing bits.
func sameWeights(t *testing.T, got, want map[string]engine.HostTensor) {
	t.Helper()
	if len(got) != len(want) {
		t.Errorf("%d weights, want %d", len(got), len(want))
	}
	for n, w := range want {
		g, ok := got[n]
		if !ok {
			t.Errorf("tensor %s: missing after import", n)
			continue
		}
		if !slices.Equal(g.Shape, w.Shape) || len(g.Data) != len(w.Data) {
			t.Errorf("tensor %s: shape %v, want %v", n, g.Shape, w.Shape)
			continue
		}
		for i := range w.Data {
			if math.Float32bits(g.Data[i]) != math.Float32bits(w.Data[i]) {
				t.Errorf("tensor %s[%d]: %v, want %v", n, i, g.Data[i], w.Data[i])
				break
			}
		}
	}
}

// TestImportRoundTrip checks import(export(m)) == m bit for bit, inline and with external
// data, with the config from the metadata, from config.json beside the model, and passed in.
func TestImportRoundTrip(t *testing.T) {
	for _, g := range loadGoldens(t) {
		t.Run(g.name, func(t *testing.T) {
			for _, ext := range []bool{false, true} {
				dir := t.TempDir()
				path := filepath.Join(dir, "model.onnx")
				if err := Export(path, g.cfg, g.weights, ExportOptions{ExternalData: ext}); err != nil {
					t.Fatal(err)
				}
				cfg, w, err := Import(path, ImportOptions{})
				if err != nil {
					t.Fatalf("external %v: %v", ext, err)
				}
				sameConfig(t, cfg, g.cfg)
				sameWeights(t, w, g.weights)

				// config.json beside the model wins over the metadata.
				cj, _ := os.ReadFile(filepath.Join(g.dir, "config.json"))
				if err := os.WriteFile(filepath.Join(dir, "config.json"), cj, 0o644); err != nil {
					t.Fatal(err)
				}
				cfg2, w2, err := Import(path, ImportOptions{})
				if err != nil {
					t.Fatal(err)
				}
				sameConfig(t, cfg2, g.cfg)
				sameWeights(t, w2, g.weights)
				cfg3, w3, err := Import(path, ImportOptions{Config: g.cfg})
				if err != nil {
					t.Fatal(err)
				}
				if cfg3 != g.cfg {
					t.Errorf("a passed config is not the one used")
				}
				sameWeights(t, w3, g.weights)
			}
		})
	}
}

func sameConfig(t *testing.T, got, want *engine.Config) {
	t.Helper()
	if !reflect.DeepEqual(got, want) {
		t.Errorf("config %+v, want %+v", got, want)
	}
}

// expectImportError fails t unless Import(path, opts) fails with an error that names every
// one of wants (what names the case); it logs the error.
func expectImportError(t *testing.T, what, path string, opts ImportOptions, wants ...string) {
	t.Helper()
	_, _, err := Import(path, opts)
	if err == nil {
		t.Errorf("%s: no error", what)
		return
	}
	for _, w := range wants {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("%s: error %q does not name %q", what, err, w)
		}
	}
	t.Logf("%s: %v", what, err)
}

// TestImportErrors checks that broken files give errors naming the file, tensor or node.
func TestImportErrors(t *testing.T) {
	g := loadGoldens(t)[0]
	dir := t.TempDir()
	path := filepath.Join(dir, "model.onnx")
	if err := Export(path, g.cfg, g.weights, ExportOptions{ExternalData: true}); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	write := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	expectImportError(t, "truncated", write("trunc.onnx", data[:len(data)/2]), ImportOptions{}, "trunc.onnx")
	expectImportError(t, "wrong magic", write("magic.onnx", append([]byte("PK\x03\x04garbage"), data[:100]...)), ImportOptions{}, "magic.onnx")
	expectImportError(t, "empty", write("empty.onnx", nil), ImportOptions{}, "empty.onnx")
	expectImportError(t, "missing file", filepath.Join(dir, "nope.onnx"), ImportOptions{}, "nope.onnx")

	// Truncated external data file, then a missing one.
	dataPath := path + ".data"
	full, err := os.ReadFile(dataPath)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dataPath, full[:len(full)-100], 0o644); err != nil {
		t.Fatal(err)
	}
	expectImportError(t, "truncated external data", path, ImportOptions{}, "model.onnx.data", "model.layers.1.mlp.down_proj.weight", "beyond")
	if err := os.Remove(dataPath); err != nil {
		t.Fatal(err)
	}
	expectImportError(t, "missing external data", path, ImportOptions{}, "model.onnx.data", "model.embed_tokens.weight")

	// Edited models.
	m, err := Build(g.cfg, g.weights)
	if err != nil {
		t.Fatal(err)
	}
	edit := func(name string, f func(m *onnxpb.ModelProto)) string {
		c := proto.Clone(m).(*onnxpb.ModelProto)
		f(c)
		b, err := proto.Marshal(c)
		if err != nil {
			t.Fatal(err)
		}
		return write(name, b)
	}
	expectImportError(t, "quantized op", edit("op.onnx", func(m *onnxpb.ModelProto) {
		m.Graph.Node[3].OpType = proto.String("MatMulNBits")
		m.Graph.Node[3].Domain = proto.String("com.microsoft")
	}), ImportOptions{}, "MatMulNBits", m.Graph.Node[3].GetName(), "quantized")
	expectImportError(t, "other activation", edit("gelu.onnx", func(m *onnxpb.ModelProto) {
		m.Graph.Node[5].OpType = proto.String("Gelu")
	}), ImportOptions{}, "Gelu", m.Graph.Node[5].GetName(), "SiLU")
	expectImportError(t, "unknown domain", edit("dom.onnx", func(m *onnxpb.ModelProto) {
		m.Graph.Node[4].Domain = proto.String("com.example")
	}), ImportOptions{}, m.Graph.Node[4].GetName(), "com.example")
	expectImportError(t, "shape", edit("shape.onnx", func(m *onnxpb.ModelProto) {
		m.Graph.Initializer[1].Dims = []int64{3}
	}), ImportOptions{}, m.Graph.Initializer[1].GetName(), "dims")
	expectImportError(t, "raw_data", edit("raw.onnx", func(m *onnxpb.ModelProto) {
		m.Graph.Initializer[2].RawData = m.Graph.Initializer[2].RawData[4:]
	}), ImportOptions{}, m.Graph.Initializer[2].GetName(), "raw_data")
	expectImportError(t, "missing tensor", edit("miss.onnx", func(m *onnxpb.ModelProto) {
		m.Graph.Initializer = m.Graph.Initializer[1:]
	}), ImportOptions{}, "model.embed_tokens.weight", "missing")
	expectImportError(t, "no config", edit("nocfg.onnx", func(m *onnxpb.ModelProto) {
		m.MetadataProps = nil
	}), ImportOptions{}, "max_position_embeddings", "nocfg.onnx")
	expectImportError(t, "escaping location", edit("esc.onnx", func(m *onnxpb.ModelProto) {
		t := m.Graph.Initializer[0]
		t.RawData = nil
		t.DataLocation = onnxpb.TensorProto_EXTERNAL.Enum()
		t.ExternalData = []*onnxpb.StringStringEntryProto{{Key: proto.String("location"), Value: proto.String("../../etc/passwd")}}
	}), ImportOptions{}, "model.embed_tokens.weight", "leaves")
	other := *g.cfg
	other.ModelType, other.AttentionBias = "llama", false
	expectImportError(t, "architecture mismatch", path, ImportOptions{Config: &other}, "model.layers.0.self_attn.k_proj.bias", "not a weight of a llama model")
}

// TestTensorDecoding covers the encodings real files use: typed fields, float16, bfloat16,
// double and int64 initializers.
func TestTensorDecoding(t *testing.T) {
	want := []float32{1, -2.5, 0.333251953125, 65504, 0}
	f16 := []uint16{0x3c00, 0xc100, 0x3555, 0x7bff, 0x0000}
	bf := []uint16{0x3f80, 0xc020, 0x3eab, 0x477f, 0}
	bfWant := []float32{1, -2.5, 0.333984375, 65280, 0}
	raw16 := func(v []uint16) []byte {
		b := make([]byte, 2*len(v))
		for i, x := range v {
			binary.LittleEndian.PutUint16(b[2*i:], x)
		}
		return b
	}
	i32 := func(v []uint16) []int32 {
		out := make([]int32, len(v))
		for i, x := range v {
			out[i] = int32(x)
		}
		return out
	}
	dt := func(d onnxpb.TensorProto_DataType) *int32 { return proto.Int32(int32(d)) }
	dims := []int64{5}
	f64 := make([]float64, 5)
	for i, v := range want {
		f64[i] = float64(v)
	}
	cases := []struct {
		name string
		t    *onnxpb.TensorProto
		want []float32
	}{
		{"float raw", &onnxpb.TensorProto{DataType: dt(onnxpb.TensorProto_FLOAT), Dims: dims, RawData: float32Bytes(want)}, want},
		{"float_data", &onnxpb.TensorProto{DataType: dt(onnxpb.TensorProto_FLOAT), Dims: dims, FloatData: want}, want},
		{"float16 raw", &onnxpb.TensorProto{DataType: dt(onnxpb.TensorProto_FLOAT16), Dims: dims, RawData: raw16(f16)}, want},
		{"float16 int32_data", &onnxpb.TensorProto{DataType: dt(onnxpb.TensorProto_FLOAT16), Dims: dims, Int32Data: i32(f16)}, want},
		{"bfloat16 raw", &onnxpb.TensorProto{DataType: dt(onnxpb.TensorProto_BFLOAT16), Dims: dims, RawData: raw16(bf)}, bfWant},
		{"bfloat16 int32_data", &onnxpb.TensorProto{DataType: dt(onnxpb.TensorProto_BFLOAT16), Dims: dims, Int32Data: i32(bf)}, bfWant},
		{"double_data", &onnxpb.TensorProto{DataType: dt(onnxpb.TensorProto_DOUBLE), Dims: dims, DoubleData: f64}, want},
	}
	for _, c := range cases {
		got, err := TensorFloat32(c.t, "")
		if err != nil {
			t.Errorf("%s: %v", c.name, err)
			continue
		}
		for i := range c.want {
			if got[i] != c.want[i] {
				t.Errorf("%s: [%d] = %v, want %v", c.name, i, got[i], c.want[i])
			}
		}
	}
	if v := checkpoints.F16ToF32(0x0001); v != float32(math.Ldexp(1, -24)) {
		t.Errorf("smallest subnormal half: %v", v)
	}
	if v := checkpoints.F16ToF32(0xfc00); !math.IsInf(float64(v), -1) {
		t.Errorf("half -inf: %v", v)
	}
	ints := []int64{-1, 0, 1 << 40}
	for _, tp := range []*onnxpb.TensorProto{
		{DataType: dt(onnxpb.TensorProto_INT64), Dims: []int64{3}, RawData: int64Bytes(ints)},
		{DataType: dt(onnxpb.TensorProto_INT64), Dims: []int64{3}, Int64Data: ints},
	} {
		got, err := TensorInt64(tp, "")
		if err != nil || len(got) != 3 || got[0] != -1 || got[2] != 1<<40 {
			t.Errorf("int64: %v %v", got, err)
		}
	}
	if _, err := TensorFloat32(&onnxpb.TensorProto{Name: proto.String("w"), DataType: dt(onnxpb.TensorProto_FLOAT), Dims: []int64{1 << 30, 1 << 30}}, ""); err == nil || !strings.Contains(err.Error(), "w") {
		t.Errorf("huge dims: %v", err)
	}
	if _, err := TensorFloat32(&onnxpb.TensorProto{Name: proto.String("s"), DataType: dt(onnxpb.TensorProto_STRING), Dims: []int64{1}}, ""); err == nil || !strings.Contains(err.Error(), "s") {
		t.Errorf("string tensor: %v", err)
	}
}

// tinyModel is a 1-layer model small enough for the fuzz corpus.
func tinyModel(t testing.TB) (*engine.Config, []byte) {
	t.Helper()
	cfg, err := engine.ParseConfig([]byte(`{"model_type":"qwen3","vocab_size":8,"hidden_size":4,
		"num_hidden_layers":1,"num_attention_heads":2,"num_key_value_heads":1,"head_dim":2,
		"intermediate_size":4,"rms_norm_eps":1e-6,"rope_theta":10000,"max_position_embeddings":16,
		"tie_word_embeddings":true}`))
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := Write(&buf, cfg, engine.RandomWeights(cfg, 1, 0.5)); err != nil {
		t.Fatal(err)
	}
	return cfg, buf.Bytes()
}

// FuzzImport feeds arbitrary bytes to the loader: it must return an error or a valid model,
// never panic. The seed corpus (testdata/fuzz/FuzzImport) holds a tiny exported model.
func FuzzImport(f *testing.F) {
	cfg, model := tinyModel(f)
	if _, _, err := ImportBytes(model, ImportOptions{}); err != nil {
		f.Fatalf("seed model does not import: %v", err)
	}
	f.Add(model)
	f.Add(model[:len(model)/3])
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		for _, opts := range []ImportOptions{{}, {Config: cfg}} {
			c, w, err := ImportBytes(data, opts)
			if err != nil {
				continue
			}
			for _, n := range engine.WeightNames(c) {
				shape, _ := engine.WeightShape(c, n)
				if len(w[n].Data) != engine.NumElements(shape) {
					t.Fatalf("tensor %s: %d values for shape %v", n, len(w[n].Data), shape)
				}
			}
		}
	})
}

// TestImportConstantNodes moves weights from initializers into Constant nodes (as some
// exporters store them): ONNX Runtime still runs the file, and Import finds every weight.
func TestImportConstantNodes(t *testing.T) {
	g := loadGoldens(t)[1]
	m, err := Build(g.cfg, g.weights)
	if err != nil {
		t.Fatal(err)
	}
	var consts []*onnxpb.NodeProto
	for _, tp := range m.Graph.Initializer[:4] {
		name := tp.GetName()
		c := proto.Clone(tp).(*onnxpb.TensorProto)
		c.Name = nil
		consts = append(consts, &onnxpb.NodeProto{Name: proto.String("/const/" + name), OpType: proto.String("Constant"),
			Output: []string{name}, Attribute: []*onnxpb.AttributeProto{{Name: proto.String("value"),
				Type: onnxpb.AttributeProto_TENSOR.Enum(), T: c}}})
	}
	m.Graph.Initializer = m.Graph.Initializer[4:]
	m.Graph.Node = append(consts, m.Graph.Node...)
	data, err := proto.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "model.onnx")
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	cfg, w, err := Import(path, ImportOptions{})
	if err != nil {
		t.Fatal(err)
	}
	sameConfig(t, cfg, g.cfg)
	sameWeights(t, w, g.weights)

	// ImportModel leaves the caller's proto intact.
	if _, _, err := ImportModel(m, "", ImportOptions{}); err != nil {
		t.Fatal(err)
	}
	if len(m.Graph.Initializer[0].GetRawData()) == 0 {
		t.Errorf("ImportModel dropped the caller's tensor data")
	}

	needORT(t)
	d := checkPrefillDecode(t, g, path, 6, 2)
	t.Logf("%s with Constant-node weights: max |logit diff| %.3g", g.name, d)
}

// TestImportBadDims (issue 30): an initializer whose dims are negative, overflow, exceed what a
// tensor may hold, or have a rank no weight has, is refused with its name, its dims and why
// (it used to be skipped, and then reported "missing from the graph").
func TestImportBadDims(t *testing.T) {
	g := loadGoldens(t)[0]
	m, err := Build(g.cfg, g.weights)
	if err != nil {
		t.Fatal(err)
	}
	v, h := int64(g.cfg.VocabSize), int64(g.cfg.HiddenSize)
	raw := fmt.Sprintf("%d bytes of raw_data", 4*v*h)
	cases := []struct {
		name string
		dims []int64
		want string
	}{
		{"product overflows", []int64{1 << 32, 1 << 32, 1 << 32}, "tensor model.embed_tokens.weight: dims [4294967296 4294967296 4294967296]: their product overflows 64 bits (its data: " + raw + ")"},
		{"product overflows, 2 dims", []int64{1 << 62, 4}, "dims [4611686018427387904 4]: their product overflows 64 bits"},
		{"over 2^34 elements", []int64{1 << 20, 1 << 20}, "tensor model.embed_tokens.weight: dims [1048576 1048576]: over 2^34 elements, more than a tensor may hold (its data: " + raw + ")"},
		{"negative", []int64{-1, h}, fmt.Sprintf("tensor model.embed_tokens.weight: dims [-1 %d]: dim 0 is negative", h)},
		{"rank 3", []int64{v, h, 1}, fmt.Sprintf("tensor model.embed_tokens.weight: dims [%d %d 1]: a weight has 1 or 2 dims", v, h)},
		{"rank 0", []int64{}, "tensor model.embed_tokens.weight: dims []: a weight has 1 or 2 dims"},
		{"more than the data", []int64{2 * v, h}, fmt.Sprintf("tensor model.embed_tokens.weight: raw_data has %d bytes, dims [%d %d] of FLOAT need %d", 4*v*h, 2*v, h, 8*v*h)},
		{"at 2^34 elements", []int64{1 << 17, 1 << 17}, fmt.Sprintf("raw_data has %d bytes, dims [131072 131072] of FLOAT need %d", 4*v*h, int64(1)<<36)},
	}
	for _, c := range cases {
		e := proto.Clone(m).(*onnxpb.ModelProto)
		found := false
		for _, it := range e.Graph.Initializer {
			if it.GetName() == engine.EmbedWeight {
				it.Dims, found = c.dims, true
			}
		}
		if !found {
			t.Fatal("no model.embed_tokens.weight initializer")
		}
		if _, _, err := ImportModel(e, "", ImportOptions{}); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: error %v, want %q", c.name, err, c.want)
		}
	}
	// An unnamed constant the graph does not use is checked too.
	e := proto.Clone(m).(*onnxpb.ModelProto)
	e.Graph.Initializer = append(e.Graph.Initializer, &onnxpb.TensorProto{Name: proto.String("onnx::Extra_1"), Dims: []int64{3, -2},
		DataType: proto.Int32(int32(onnxpb.TensorProto_FLOAT)), RawData: make([]byte, 24)})
	if _, _, err := ImportModel(e, "", ImportOptions{}); err == nil || !strings.Contains(err.Error(), "tensor onnx::Extra_1: dims [3 -2]: dim 1 is negative") {
		t.Errorf("unused constant with a negative dim: error %v", err)
	}
}

// TestWriteBadDimsSeed writes the fuzz seed testdata/fuzz/FuzzImport/overflow_dims (the tiny
// model with model.embed_tokens.weight's dims [2^32, 2^32, 2^32]) when PROLONG_WRITE_SEEDS=1,
// and otherwise checks that the committed seed is refused naming them.
func TestWriteBadDimsSeed(t *testing.T) {
	path := filepath.Join("testdata", "fuzz", "FuzzImport", "overflow_dims")
	if os.Getenv("PROLONG_WRITE_SEEDS") == "1" {
		_, model := tinyModel(t)
		var m onnxpb.ModelProto
		if err := proto.Unmarshal(model, &m); err != nil {
			t.Fatal(err)
		}
		for _, it := range m.Graph.Initializer {
			if it.GetName() == engine.EmbedWeight {
				it.Dims = []int64{1 << 32, 1 << 32, 1 << 32}
			}
		}
		b, err := proto.Marshal(&m)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte("go test fuzz v1\n[]byte("+strconv.Quote(string(b))+")\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	seed, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	lit := strings.TrimSuffix(strings.TrimPrefix(string(seed), "go test fuzz v1\n[]byte("), ")\n")
	b, err := strconv.Unquote(lit)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := ImportBytes([]byte(b), ImportOptions{}); err == nil || !strings.Contains(err.Error(), "tensor model.embed_tokens.weight: dims [4294967296 4294967296 4294967296]: their product overflows 64 bits") {
		t.Errorf("seed: error %v", err)
	}
}

// TestExternalOffsetOverflow: an external_data offset near 2^63 is refused naming the tensor,
// its size and the offset (the message used to print the range's end overflowed, negative).
func TestExternalOffsetOverflow(t *testing.T) {
	g := loadGoldens(t)[0]
	dir := t.TempDir()
	path := filepath.Join(dir, "model.onnx")
	if err := Export(path, g.cfg, g.weights, ExportOptions{ExternalData: true}); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var m onnxpb.ModelProto
	if err := proto.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	for _, it := range m.Graph.Initializer {
		if it.GetName() != engine.EmbedWeight {
			continue
		}
		for _, e := range it.ExternalData {
			if e.GetKey() == "offset" {
				e.Value = proto.String("9223372036854775800")
			}
		}
	}
	if b, err = proto.Marshal(&m); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
	size := 4 * g.cfg.VocabSize * g.cfg.HiddenSize
	want := fmt.Sprintf("tensor model.embed_tokens.weight: external data %s: %d bytes at offset 9223372036854775800, beyond its", path+".data", size)
	if _, _, err := Import(path, ImportOptions{}); err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("error %v, want %q", err, want)
	}
}
