package engine

import (
	"errors"
	"math"
	"os"
	"reflect"
	"strings"
	"testing"
)

// Parameter counts published for these models (model cards / safetensors index totals).
func TestParseRealConfigs(t *testing.T) {
	tests := []struct {
		file        string
		params      int64
		bias, qk    bool
		heads, kv   int
		headDim     int
		rope        string
		tied        bool
		eosTokenIDs []int
	}{
		{"deepseek-r1-distill-qwen-1.5b.json", 1_777_088_000, true, false, 12, 2, 128, "", false, []int{151643}},
		{"llama-3.1-8b.json", 8_030_261_248, false, false, 32, 8, 128, "llama3", false, []int{128001, 128008, 128009}},
		{"llama-2-7b.json", 6_738_415_616, false, false, 32, 32, 128, "", false, []int{2}},
		{"qwen3-0.6b.json", 596_049_920, false, true, 16, 8, 128, "", true, []int{151645}},
		{"qwen3-0.6b.tf5.json", 596_049_920, false, true, 16, 8, 128, "", true, []int{151645}},
		{"qwen2.5-0.5b-instruct.json", 494_032_768, true, false, 14, 2, 64, "", true, []int{151645}},
		{"qwen2.5-0.5b-instruct.tf5.json", 494_032_768, true, false, 14, 2, 64, "", true, []int{151645}},
		{"llama-3.2-1b.json", 1_235_814_400, false, false, 32, 8, 64, "llama3", true, []int{128001}},
		{"llama-3.2-1b.tf5.json", 1_235_814_400, false, false, 32, 8, 64, "llama3", true, []int{128001}},
	}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			c, err := LoadConfig("testdata/configs/" + tt.file)
			if err != nil {
				t.Fatal(err)
			}
			if got := c.NumParams(); got != tt.params {
				t.Errorf("NumParams = %d, want %d", got, tt.params)
			}
			if c.AttentionBias != tt.bias || c.QKNorm != tt.qk || c.NumAttentionHeads != tt.heads ||
				c.NumKeyValueHeads != tt.kv || c.HeadDim != tt.headDim || c.TieWordEmbeddings != tt.tied {
				t.Errorf("parsed %+v", c)
			}
			rope := ""
			if c.RopeScaling != nil {
				rope = c.RopeScaling.Type
			}
			if rope != tt.rope {
				t.Errorf("rope scaling %q, want %q", rope, tt.rope)
			}
			if len(c.EOSTokenIDs) != len(tt.eosTokenIDs) || c.EOSTokenIDs[0] != tt.eosTokenIDs[0] {
				t.Errorf("eos %v, want %v", c.EOSTokenIDs, tt.eosTokenIDs)
			}
		})
	}
}

func TestParseConfigErrors(t *testing.T) {
	base := `"model_type":"llama","vocab_size":10,"hidden_size":8,"num_hidden_layers":1,"num_attention_heads":2,"intermediate_size":16,"rms_norm_eps":1e-5,"max_position_embeddings":64`
	tests := []struct {
		name, json, want string
	}{
		{"unknown field", `{` + base + `,"foo_bar":1}`, `unsupported field(s) foo_bar`},
		{"gelu", `{` + base + `,"hidden_act":"gelu"}`, `"hidden_act"`},
		{"sliding window", `{` + base + `,"use_sliding_window":true}`, `"use_sliding_window"`},
		{"dynamic rope", `{` + base + `,"rope_scaling":{"rope_type":"dynamic","factor":4}}`, `"rope_scaling.rope_type"`},
		{"yarn attention factor", `{` + base + `,"rope_scaling":{"rope_type":"yarn","factor":4,"attention_factor":-1}}`, `"rope_scaling.attention_factor" must be positive`},
		{"rope key", `{` + base + `,"rope_scaling":{"type":"linear","factor":2,"long_factor":[3]}}`, `unsupported key "long_factor"`},
		{"rope_parameters key", `{` + base + `,"rope_parameters":{"rope_type":"longrope","rope_theta":1e4,"short_factor":[1]}}`, `"rope_parameters": unsupported key "short_factor"`},
		{"rope_parameters type", `{` + base + `,"rope_parameters":{"rope_type":"dynamic","rope_theta":1e4,"factor":2}}`, `"rope_scaling.rope_type": "dynamic" is not supported`},
		{"rope_parameters theta", `{` + base + `,"rope_theta":500000,"rope_parameters":{"rope_type":"default","rope_theta":1e4}}`, `"rope_parameters.rope_theta" (1e4) disagree`},
		{"rope_parameters not object", `{` + base + `,"rope_parameters":3}`, `"rope_parameters": want an object`},
		{"rope_parameters partial", `{` + base + `,"rope_parameters":{"rope_type":"default","rope_theta":1e4,"partial_rotary_factor":0.5}}`, `"rope_parameters.partial_rotary_factor"`},
		{"rope_parameters sliding", `{` + base + `,"rope_parameters":{"full_attention":{"rope_type":"default"},"sliding_attention":{"rope_type":"default"}}}`, `"sliding_attention" layers`},
		{"rope both forms", `{` + base + `,"rope_scaling":{"type":"linear","factor":2},"rope_parameters":{"rope_type":"linear","factor":3}}`, `"rope_scaling" and "rope_parameters" disagree`},
		{"sliding layer", `{` + base + `,"layer_types":["sliding_attention"]}`, `layer 0 is "sliding_attention": sliding-window attention is not supported`},
		{"layer type", `{` + base + `,"layer_types":["linear_attention"]}`, `layer 0 is "linear_attention"`},
		{"layer count", `{` + base + `,"layer_types":["full_attention","full_attention"]}`, `"layer_types" has 2 entries for 1 layers`},
		{"partial rotary", `{` + base + `,"partial_rotary_factor":0.5}`, `"partial_rotary_factor"`},
		{"quantized", `{` + base + `,"quantization_config":{"bits":4}}`, `unsupported field(s) quantization_config`},
		{"not an object", `[1]`, `config.json`},
		{"null", `null`, `not a JSON object`},
		{"gqa", `{` + base + `,"num_key_value_heads":3}`, `multiple of "num_key_value_heads"`},
		{"zero vocab", strings.Replace(`{`+base+`}`, `"vocab_size":10`, `"vocab_size":0`, 1), `"vocab_size" must be positive`},
		{"model type", strings.Replace(`{`+base+`}`, `llama`, `mistral`, 1), `"model_type"`},
		{"llama bias", `{` + base + `,"attention_bias":true}`, `"attention_bias"`},
		{"bad json", `{` + base, `config.json`},
		{"wrong type", `{` + base + `,"rms_norm_eps":"small"}`, `config.json`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseConfig([]byte(tt.json))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want it to mention %s", err, tt.want)
			}
		})
	}
	c, err := ParseConfig([]byte(`{` + base + `}`))
	if err != nil {
		t.Fatal(err)
	}
	if c.NumKeyValueHeads != 2 || c.HeadDim != 4 || c.RopeTheta != 10000 {
		t.Errorf("defaults not applied: %+v", c)
	}
	if errors.Is(err, ErrKVBudget) {
		t.Fatal("unreachable")
	}
}

// The llama3 frequencies worked by hand for head_dim 4, theta 10000, factor 8, band [1,4]
// over an original context of 8 positions: inv_freq = [1, 0.01], wavelengths 2π (inside the
// band: smooth = (8/2π - 1)/3) and 200π (low frequency: divided by 8).
func TestLlama3InvFreq(t *testing.T) {
	c := &Config{HeadDim: 4, RopeTheta: 10000, RopeScaling: &RopeScaling{Type: "llama3", Factor: 8,
		LowFreqFactor: 1, HighFreqFactor: 4, OriginalMaxPositionEmbeddings: 8}}
	smooth := (8/(2*math.Pi) - 1) / 3
	want := []float64{(1-smooth)*1/8 + smooth*1, 0.01 / 8}
	got := c.InvFreq()
	for i := range want {
		if math.Abs(got[i]-want[i]) > 1e-15 {
			t.Errorf("inv_freq[%d] = %g, want %g", i, got[i], want[i])
		}
	}
	c.RopeScaling = &RopeScaling{Type: "linear", Factor: 2}
	if got := c.InvFreq(); got[0] != 0.5 || math.Abs(got[1]-0.005) > 1e-18 {
		t.Errorf("linear inv_freq = %v", got)
	}
}

// The transformers 5 form of a config (rope_parameters, dtype, layer_types) parses to the same
// Config as the transformers 4 form of the same model.
func TestConfigForms(t *testing.T) {
	for _, name := range []string{"qwen3-0.6b", "qwen2.5-0.5b-instruct", "llama-3.2-1b"} {
		v4, err := LoadConfig("testdata/configs/" + name + ".json")
		if err != nil {
			t.Fatal(err)
		}
		v5, err := LoadConfig("testdata/configs/" + name + ".tf5.json")
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(v4, v5) {
			t.Errorf("%s: transformers 4 form %+v, transformers 5 form %+v", name, v4, v5)
		}
	}
	base := `"model_type":"qwen3","vocab_size":10,"hidden_size":8,"num_hidden_layers":2,"num_attention_heads":2,"intermediate_size":16,"rms_norm_eps":1e-5,"max_position_embeddings":64`
	for _, tt := range []struct{ name, json string }{
		{"per layer type", `{` + base + `,"rope_parameters":{"full_attention":{"rope_type":"linear","factor":2,"rope_theta":5e5}}}`},
		{"v4 type key", `{` + base + `,"rope_theta":5e5,"rope_scaling":{"type":"linear","factor":2}}`},
		{"both forms agree", `{` + base + `,"rope_theta":5e5,"rope_scaling":{"type":"linear","factor":2},"rope_parameters":{"rope_type":"linear","factor":2,"rope_theta":5e5}}`},
		{"nulls", `{` + base + `,"rope_theta":5e5,"rope_scaling":{"type":"linear","factor":2,"beta_fast":null},"eos_token_id":null,"pad_token_id":null,"layer_types":null,"rope_parameters":null}`},
	} {
		c, err := ParseConfig([]byte(tt.json))
		if err != nil {
			t.Fatalf("%s: %v", tt.name, err)
		}
		if c.RopeTheta != 5e5 || c.RopeScaling == nil || c.RopeScaling.Type != "linear" || c.RopeScaling.Factor != 2 || c.EOSTokenIDs != nil {
			t.Errorf("%s: parsed %+v, rope %+v", tt.name, c, c.RopeScaling)
		}
	}
	c, err := ParseConfig([]byte(`{` + base + `,"rope_parameters":{"rope_type":"default","rope_theta":1e6},"pad_token_id":7}`))
	if err != nil {
		t.Fatal(err)
	}
	if c.RopeScaling != nil || c.RopeTheta != 1e6 || c.PadTokenID == nil || *c.PadTokenID != 7 {
		t.Errorf("default rope: %+v", c)
	}
}

// The yarn frequencies worked by hand for head_dim 8, theta 10000, factor 4 over an original
// context of 64: the correction range is dims [floor(-0.50), ceil(1.008)] = [0, 2], so the
// ramp over the 4 frequencies 10^-i is 0, 1/2, 1, 1 and inv_freq = 10^-i ((1-r) + r/4).
func TestYarnInvFreq(t *testing.T) {
	one := 1.0
	c := &Config{VocabSize: 10, HiddenSize: 16, NumHiddenLayers: 1, NumAttentionHeads: 2, NumKeyValueHeads: 2,
		IntermediateSize: 8, RMSNormEps: 1e-6, HeadDim: 8, RopeTheta: 10000, MaxPositionEmbeddings: 256, RopeScaling: &RopeScaling{Type: "yarn",
			Factor: 4, OriginalMaxPositionEmbeddings: 64}}
	want := []float64{1, 0.1 * (0.5 + 0.5/4), 0.01 / 4, 0.001 / 4}
	got := c.InvFreq()
	for i := range want {
		if math.Abs(got[i]-want[i]) > 1e-15 {
			t.Errorf("inv_freq[%d] = %g, want %g", i, got[i], want[i])
		}
	}
	if a := c.RopeAttentionFactor(); math.Abs(a-(0.1*math.Log(4)+1)) > 1e-15 {
		t.Errorf("attention factor %g", a)
	}
	if err := c.Validate(); err != nil { // the model, the reference and the export apply it
		t.Errorf("yarn with attention factor %g: %v", c.RopeAttentionFactor(), err)
	}
	cos, sin := c.RopeTables(3)
	for p := 0; p < 3; p++ {
		for i, f := range got {
			a := 0.1*math.Log(4) + 1
			if w := float32(math.Cos(float64(p)*f) * a); cos[p*4+i] != w {
				t.Errorf("cos[%d,%d] = %g, want %g (scaled by the attention factor)", p, i, cos[p*4+i], w)
			}
			if w := float32(math.Sin(float64(p)*f) * a); sin[p*4+i] != w {
				t.Errorf("sin[%d,%d] = %g, want %g", p, i, sin[p*4+i], w)
			}
		}
	}
	c.RopeScaling.AttentionFactor = &one
	if err := c.Validate(); err != nil {
		t.Errorf("yarn with attention_factor 1: %v", err)
	}
	c.RopeScaling.Mscale, c.RopeScaling.MscaleAllDim, c.RopeScaling.AttentionFactor = 2, 1, nil
	if a, w := c.RopeAttentionFactor(), (0.2*math.Log(4)+1)/(0.1*math.Log(4)+1); math.Abs(a-w) > 1e-15 {
		t.Errorf("mscale attention factor %g, want %g", a, w)
	}
	// Without truncation the range is [0, 1.008]: ramp 0, 0.992, 1, 1.
	no := false
	c.RopeScaling.Truncate = &no
	r := 1 / (1.0 * 8 * math.Log(64/(2*math.Pi)) / (2 * math.Log(10000)))
	if got := c.InvFreq()[1]; math.Abs(got-0.1*((1-r)+r/4)) > 1e-15 {
		t.Errorf("untruncated inv_freq[1] = %g, want %g", got, 0.1*((1-r)+r/4))
	}
	cos, sin = c.RopeTables(3)
	if len(cos) != 12 || cos[0] != float32(c.RopeAttentionFactor()) || sin[0] != 0 {
		t.Errorf("RopeTables: cos %v sin %v", cos, sin)
	}
}

func FuzzParseConfig(f *testing.F) {
	for _, name := range []string{"deepseek-r1-distill-qwen-1.5b.json", "llama-3.1-8b.json", "qwen3-0.6b.json",
		"qwen3-0.6b.tf5.json", "llama-3.2-1b.tf5.json"} {
		data, err := os.ReadFile("testdata/configs/" + name)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	f.Add([]byte(`{"rope_scaling":{"type":"linear"}}`))
	f.Add([]byte(`{"model_type":"qwen2","vocab_size":10,"hidden_size":8,"num_hidden_layers":1,"num_attention_heads":2,"intermediate_size":16,"rms_norm_eps":1e-5,"max_position_embeddings":64,"rope_parameters":{"rope_type":"yarn","factor":2,"attention_factor":1,"rope_theta":1e4},"layer_types":["full_attention"]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := ParseConfig(data)
		if err != nil {
			return
		}
		if err := c.Validate(); err != nil {
			t.Fatalf("parsed config does not validate: %v", err)
		}
	})
}
