package onnx

import (
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/prolong-rl/prolong/engine"
	"github.com/prolong-rl/prolong/onnx/onnxpb"
	"google.golang.org/protobuf/proto"
)

// The fixtures under testdata/ are made by scripts/make_onnx_fixtures.py from the engine's
// golden models: torch.onnx.export of HF-style modules and an onnxruntime-genai-style graph.
type fixture struct {
	dir     string         // under testdata/
	golden  string         // engine/testdata/golden/<golden> holds the source weights
	past    bool           // has past_key_values inputs
	hints   *engine.Config // what the graph cannot tell, when there is no config.json
	needs   string         // without hints, Import must fail naming this field
	how     string         // how the weights are stored, for the log
	decodes int
}

var fixtures = []fixture{
	{dir: "qwen2_past", golden: "qwen2", past: true, decodes: 4,
		how: "torch.onnx.export with past, anonymous transposed MatMul weights, cos/sin cache, no config.json"},
	{dir: "llama3_nopast", golden: "llama3",
		how: "torch.onnx.export without past, tied embeddings (anonymous lm_head copy), config.json"},
	{dir: "qwen3_past_ext", golden: "qwen3", past: true, decodes: 4,
		hints: &engine.Config{MaxPositionEmbeddings: 512}, needs: "max_position_embeddings",
		how: "torch.onnx.export with past, named weights behind Transpose, external data, no config.json"},
	{dir: "genai_qwen2", golden: "qwen2", past: true, decodes: 4,
		how: "onnxruntime-genai style: fused qkv [in, out], GroupQueryAttention, SkipSimplifiedLayerNormalization"},
}

func goldenByName(t *testing.T, name string) golden {
	t.Helper()
	for _, g := range loadGoldens(t) {
		if g.name == name {
			return g
		}
	}
	t.Fatalf("no golden model %s", name)
	return golden{}
}

// mathConfig drops the fields that do not change the model's function (and that a graph
// cannot tell), for comparing an inferred config with config.json.
func mathConfig(c *engine.Config) engine.Config {
	m := *c
	m.Architectures, m.BOSTokenID, m.EOSTokenIDs = nil, nil, nil
	return m
}

// TestImportFixtures imports every fixture and checks the weights bit for bit against the
// golden model they were made from, the config against its config.json, and then the engine
// on the imported model against ONNX Runtime running the fixture file itself.
func TestImportFixtures(t *testing.T) {
	for _, fx := range fixtures {
		t.Run(fx.dir, func(t *testing.T) {
			g := goldenByName(t, fx.golden)
			path := filepath.Join("testdata", fx.dir, "model.onnx")
			if fx.needs != "" {
				_, _, err := Import(path, ImportOptions{})
				if err == nil || !strings.Contains(err.Error(), fx.needs) || !strings.Contains(err.Error(), path) {
					t.Fatalf("without hints: error %v, want one naming %q and the file", err, fx.needs)
				}
			}
			cfg, w, err := Import(path, ImportOptions{Hints: fx.hints})
			if err != nil {
				t.Fatal(err)
			}
			if got, want := mathConfig(cfg), mathConfig(g.cfg); !reflect.DeepEqual(got, want) {
				t.Errorf("config\n got  %+v\n want %+v", got, want)
			}
			sameWeights(t, w, g.weights)

			needORT(t)
			imported := golden{name: fx.dir, cfg: cfg, weights: w}
			prefill := 9
			if !fx.past {
				prefill = 12
			}
			d := checkPrefillDecode(t, imported, path, prefill, fx.decodes)
			t.Logf("%s (%s): weights bit-identical to %s; max |logit diff| engine vs ONNX Runtime over prefill %d + %d decode steps: %.3g",
				fx.dir, fx.how, fx.golden, prefill, fx.decodes, d)
		})
	}
}

// TestImportInferenceLimits checks what an import without config.json cannot know: Llama 3
// rope scaling (the fixture's graph has only its scaled frequencies) is refused naming
// rope_scaling, and a wrong config.json is refused naming the field it gets wrong.
func TestImportInferenceLimits(t *testing.T) {
	src := filepath.Join("testdata", "llama3_nopast", "model.onnx")
	data, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	path := filepath.Join(dir, "model.onnx")
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	_, _, err = Import(path, ImportOptions{})
	if err == nil || !strings.Contains(err.Error(), "rope_scaling") {
		t.Errorf("llama3 without config.json: error %v, want one naming rope_scaling", err)
	}
	g := goldenByName(t, "llama3")
	cfg, w, err := Import(path, ImportOptions{Hints: &engine.Config{RopeScaling: g.cfg.RopeScaling, RopeTheta: g.cfg.RopeTheta, MaxPositionEmbeddings: 512}})
	if err != nil {
		t.Fatalf("llama3 with rope_scaling hint: %v", err)
	}
	if got, want := mathConfig(cfg), mathConfig(g.cfg); !reflect.DeepEqual(got, want) {
		t.Errorf("config with hints\n got  %+v\n want %+v", got, want)
	}
	sameWeights(t, w, g.weights)
	wrong := *g.cfg.RopeScaling
	wrong.Factor = 4
	_, _, err = Import(path, ImportOptions{Hints: &engine.Config{RopeScaling: &wrong, RopeTheta: g.cfg.RopeTheta, MaxPositionEmbeddings: 512}})
	if err == nil || !strings.Contains(err.Error(), "rope_scaling") {
		t.Errorf("wrong rope_scaling hint: error %v, want one naming rope_scaling", err)
	}

	bad := []struct {
		edit  func(c *engine.Config)
		field string
	}{
		{func(c *engine.Config) { c.RopeTheta = 10000 }, "rope_theta"},
		{func(c *engine.Config) { c.RMSNormEps = 1e-6 }, "rms_norm_eps"},
		{func(c *engine.Config) { c.IntermediateSize = 64 }, "mlp.gate_proj.weight"},
		{func(c *engine.Config) { c.NumAttentionHeads, c.HeadDim = 8, 8 }, "head_dim"},
		{func(c *engine.Config) { c.NumAttentionHeads = 2 }, "model.layers.0.self_attn.q_proj.weight"},
	}
	for _, b := range bad {
		c := *g.cfg
		b.edit(&c)
		_, _, err := Import(path, ImportOptions{Config: &c})
		if err == nil || !strings.Contains(err.Error(), b.field) {
			t.Errorf("wrong config (%s): error %v, want one naming %s", b.field, err, b.field)
		}
	}
	// A config that ties lm_head to the embedding of a model whose lm_head differs.
	q := goldenByName(t, "qwen2")
	tied := *q.cfg
	tied.TieWordEmbeddings = true
	_, _, err = Import(filepath.Join("testdata", "qwen2_past", "model.onnx"), ImportOptions{Config: &tied})
	if err == nil || !strings.Contains(err.Error(), "lm_head.weight") || !strings.Contains(err.Error(), "ties") {
		t.Errorf("tied config on an untied model: error %v, want one naming lm_head.weight", err)
	}
	// A hint that contradicts the graph.
	_, _, err = Import(filepath.Join("testdata", "qwen2_past", "model.onnx"), ImportOptions{Hints: &engine.Config{HiddenSize: 32}})
	if err == nil || !strings.Contains(err.Error(), "hidden_size") {
		t.Errorf("contradicting hint: error %v, want one naming hidden_size", err)
	}
}

// anonymize renames every value of m that is not a graph input or output to "v<N>" (weights
// included) and clears every node name, so that nothing but the data flow tells a weight's
// role.
func anonymize(m *onnxpb.ModelProto) {
	g := m.GetGraph()
	keep := map[string]bool{"": true}
	for _, v := range g.GetInput() {
		keep[v.GetName()] = true
	}
	for _, v := range g.GetOutput() {
		keep[v.GetName()] = true
	}
	names := map[string]string{}
	rename := func(s string) string {
		if keep[s] {
			return s
		}
		if r, ok := names[s]; ok {
			return r
		}
		names[s] = fmt.Sprintf("v%d", len(names))
		return names[s]
	}
	for _, t := range g.GetInitializer() {
		t.Name = proto.String(rename(t.GetName()))
	}
	for _, n := range g.GetNode() {
		n.Name = proto.String("")
		for i := range n.Input {
			n.Input[i] = rename(n.Input[i])
		}
		for i := range n.Output {
			n.Output[i] = rename(n.Output[i])
		}
	}
	g.ValueInfo = nil
}

// TestImportByDataFlow strips every tensor and node name from the torch fixtures and checks
// that Import still places every weight, bit for bit, by following the graph.
func TestImportByDataFlow(t *testing.T) {
	for _, fx := range fixtures {
		if !strings.HasPrefix(fx.dir, "qwen") && !strings.HasPrefix(fx.dir, "llama") {
			continue
		}
		t.Run(fx.dir, func(t *testing.T) {
			g := goldenByName(t, fx.golden)
			src := filepath.Join("testdata", fx.dir)
			data, err := os.ReadFile(filepath.Join(src, "model.onnx"))
			if err != nil {
				t.Fatal(err)
			}
			var m onnxpb.ModelProto
			if err := proto.Unmarshal(data, &m); err != nil {
				t.Fatal(err)
			}
			anonymize(&m)
			for _, tp := range m.GetGraph().GetInitializer() {
				if strings.Contains(tp.GetName(), "model.") || strings.Contains(tp.GetName(), "lm_head") {
					t.Fatalf("initializer %s kept its name", tp.GetName())
				}
			}
			dir := t.TempDir()
			out, err := proto.Marshal(&m)
			if err != nil {
				t.Fatal(err)
			}
			path := filepath.Join(dir, "model.onnx")
			if err := os.WriteFile(path, out, 0o644); err != nil {
				t.Fatal(err)
			}
			if ext, err := os.ReadFile(filepath.Join(src, "model.onnx.data")); err == nil {
				if err := os.WriteFile(filepath.Join(dir, "model.onnx.data"), ext, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			cfg, w, err := Import(path, ImportOptions{Config: g.cfg})
			if err != nil {
				t.Fatal(err)
			}
			sameWeights(t, w, g.weights)
			if fx.dir == "qwen2_past" { // and with the config inferred, too
				cfg, w, err = Import(path, ImportOptions{})
				if err != nil {
					t.Fatal(err)
				}
				if got, want := mathConfig(cfg), mathConfig(g.cfg); !reflect.DeepEqual(got, want) {
					t.Errorf("config\n got  %+v\n want %+v", got, want)
				}
				sameWeights(t, w, g.weights)
			}
		})
	}
}

// TestImportExportByDataFlow does the same with Export's own graphs (Gemm layers, grouped
// attention through 5-D reshapes).
func TestImportExportByDataFlow(t *testing.T) {
	for _, g := range loadGoldens(t) {
		m, err := Build(g.cfg, g.weights)
		if err != nil {
			t.Fatal(err)
		}
		anonymize(m)
		data, err := proto.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		cfg, w, err := ImportBytes(data, ImportOptions{})
		if err != nil {
			t.Fatalf("%s: %v", g.name, err)
		}
		sameConfig(t, cfg, g.cfg)
		sameWeights(t, w, g.weights)
	}
}

// TestImportFixtureErrors damages the real-tool fixtures: each error names the file, tensor,
// node or config field at fault.
func TestImportFixtureErrors(t *testing.T) {
	read := func(fx, name string) []byte {
		b, err := os.ReadFile(filepath.Join("testdata", fx, name))
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	dir := t.TempDir()
	write := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	qwen2 := read("qwen2_past", "model.onnx")
	expectImportError(t, "truncated", write("trunc/model.onnx", qwen2[:len(qwen2)*2/3]), ImportOptions{}, "trunc/model.onnx")
	expectImportError(t, "wrong magic", write("zip/model.onnx", append([]byte("PK\x03\x04"), qwen2[4:1000]...)), ImportOptions{}, "zip/model.onnx")

	// External data: the side file missing, then cut short.
	ext := write("ext/model.onnx", read("qwen3_past_ext", "model.onnx"))
	expectImportError(t, "missing external data", ext, ImportOptions{Hints: &engine.Config{MaxPositionEmbeddings: 512}},
		"model.onnx.data", "model.embed_tokens.weight", "no such file")
	data := read("qwen3_past_ext", "model.onnx.data")
	write("ext/model.onnx.data", data[:len(data)-4096])
	expectImportError(t, "truncated external data", ext, ImportOptions{Hints: &engine.Config{MaxPositionEmbeddings: 512}},
		"model.onnx.data", "lm_head.weight", "beyond")

	edit := func(name string, f func(m *onnxpb.ModelProto)) string {
		var m onnxpb.ModelProto
		if err := proto.Unmarshal(qwen2, &m); err != nil {
			t.Fatal(err)
		}
		f(&m)
		b, err := proto.Marshal(&m)
		if err != nil {
			t.Fatal(err)
		}
		return write(name, b)
	}
	findNode := func(m *onnxpb.ModelProto, name string) *onnxpb.NodeProto {
		for _, n := range m.GetGraph().GetNode() {
			if n.GetName() == name {
				return n
			}
		}
		t.Fatalf("no node %s", name)
		return nil
	}
	expectImportError(t, "another activation", edit("gelu/model.onnx", func(m *onnxpb.ModelProto) {
		findNode(m, "/layers.0/mlp/act_fn/Sigmoid").OpType = proto.String("Gelu")
	}), ImportOptions{}, "/layers.0/mlp/act_fn/Sigmoid", "Gelu", "SiLU")
	expectImportError(t, "LayerNorm", edit("ln/model.onnx", func(m *onnxpb.ModelProto) {
		findNode(m, "/layers.0/input_layernorm/Sqrt").OpType = proto.String("LayerNormalization")
	}), ImportOptions{}, "/layers.0/input_layernorm/Sqrt", "RMSNorm")

	// q_proj's anonymous weight cut to half its outputs: named by its HF name, its initializer
	// and the node it was placed by.
	var qname string
	q := goldenByName(t, "qwen2")
	expectImportError(t, "mismatched shape", edit("shape/model.onnx", func(m *onnxpb.ModelProto) {
		w := findNode(m, "/layers.0/self_attn/q_proj/MatMul").GetInput()[1]
		qname = w
		for _, tp := range m.GetGraph().GetInitializer() {
			if tp.GetName() == w {
				tp.Dims = []int64{tp.Dims[0], tp.Dims[1] / 2}
				tp.RawData = tp.RawData[:len(tp.RawData)/2]
			}
		}
	}), ImportOptions{Config: q.cfg}, "model.layers.0.self_attn.q_proj.weight", "onnx::MatMul_", "/layers.0/self_attn/q_proj/MatMul")
	if !strings.HasPrefix(qname, "onnx::MatMul_") {
		t.Errorf("q_proj's weight is %q, want an anonymous onnx::MatMul_ initializer", qname)
	}

	// An unsupported architecture in config.json beside the model.
	dirBad := filepath.Join(dir, "mistral")
	write("mistral/model.onnx", qwen2)
	cj := strings.Replace(string(read("llama3_nopast", "config.json")), `"model_type": "llama"`, `"model_type": "mistral"`, 1)
	write("mistral/config.json", []byte(cj))
	expectImportError(t, "unsupported architecture", filepath.Join(dirBad, "model.onnx"), ImportOptions{}, "config.json", "model_type", "mistral")
}

// TestWeightNames covers the spellings of weight and scope names the importer reads.
func TestWeightNames(t *testing.T) {
	for in, want := range map[string]string{
		"model.layers.3.self_attn.q_proj.weight":           "model.layers.3.self_attn.q_proj.weight",
		"model.layers.0.attn.qkv_proj.MatMul.weight":       "model.layers.0.self_attn.qkv_proj.weight",
		"model.layers.0.attn.q_proj.MatMul.weight":         "model.layers.0.self_attn.q_proj.weight",
		"model.layers.0.attn.v_proj.Add.bias":              "model.layers.0.self_attn.v_proj.bias",
		"model.layers.12.mlp.down_proj.MatMul.weight":      "model.layers.12.mlp.down_proj.weight",
		"model.layers.1.mlp.gate_up_proj.MatMul.weight":    "model.layers.1.mlp.gate_up_proj.weight",
		"lm_head.MatMul.weight":                            "lm_head.weight",
		"model.embed_tokens.weight":                        "model.embed_tokens.weight",
		"model.model.norm.weight":                          "model.norm.weight",
		"onnx::MatMul_1234":                                "",
		"model.rotary_emb.inv_freq":                        "",
		"model.layers.0.self_attn.rotary_emb.inv_freq":     "",
		"/model/layers.0/self_attn/q_proj/MatMul_output_0": "",
	} {
		if got := paramFromName(in); got != want {
			t.Errorf("paramFromName(%q) = %q, want %q", in, got, want)
		}
	}
	for _, c := range []struct{ name, out, want string }{
		{"/model/layers.3/self_attn/q_proj/MatMul", "", "model.layers.3.self_attn.q_proj"},
		{"/layers.3/mlp/up_proj/MatMul", "", "model.layers.3.mlp.up_proj"},
		{"/lm_head/MatMul", "logits", "lm_head"},
		{"MatMul_17", "/model/layers.1/attn/o_proj/MatMul_output_0", "model.layers.1.self_attn.o_proj"},
		{"MatMul_17", "123", ""},
	} {
		n := &onnxpb.NodeProto{Name: proto.String(c.name), Output: []string{c.out}}
		if got := scopeOf(n); got != c.want {
			t.Errorf("scopeOf(%q, %q) = %q, want %q", c.name, c.out, got, c.want)
		}
	}
}
