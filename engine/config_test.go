package engine

import (
	"errors"
	"math"
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
		{"yarn", `{` + base + `,"rope_scaling":{"rope_type":"yarn","factor":4}}`, `"rope_scaling.rope_type"`},
		{"rope key", `{` + base + `,"rope_scaling":{"type":"linear","factor":2,"beta_fast":3}}`, `unsupported key "beta_fast"`},
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

func FuzzParseConfig(f *testing.F) {
	for _, name := range []string{"deepseek-r1-distill-qwen-1.5b.json", "llama-3.1-8b.json", "qwen3-0.6b.json"} {
		data, err := readFile("testdata/configs/" + name)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	f.Add([]byte(`{"rope_scaling":{"type":"linear"}}`))
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
