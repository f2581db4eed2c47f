// Package engine runs decoder-only language models of the Llama / Qwen2 / Qwen3 family:
// configuration, tensors on a Backend, the decoder forward pass over ragged batches, a paged
// KV cache with prefix sharing, sampling, batched generation and scoring.
//
// The engine is not a general graph interpreter: the model is a fixed, fused decoder, as in
// llm.c and llama.cpp. Backends (the CPU backend here, CUDA in package cuda) implement the
// handful of fused ops it needs.
package engine

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"sort"
	"strings"
)

// RopeScaling is the rope_scaling object of a Hugging Face config.json. Supported kinds:
// "default" (none), "linear" (positions divided by Factor) and "llama3" (frequency-dependent
// scaling of Llama 3.1+).
type RopeScaling struct {
	// Type is the kind: "linear" or "llama3" (HF spells it rope_type, older files type).
	Type string `json:"rope_type"`
	// Factor divides the frequencies (linear) or the low frequencies (llama3).
	Factor float64 `json:"factor"`
	// LowFreqFactor and HighFreqFactor bound the llama3 interpolation band.
	LowFreqFactor  float64 `json:"low_freq_factor,omitempty"`
	HighFreqFactor float64 `json:"high_freq_factor,omitempty"`
	// OriginalMaxPositionEmbeddings is the context length the llama3 band refers to.
	OriginalMaxPositionEmbeddings int `json:"original_max_position_embeddings,omitempty"`
}

// Config describes a decoder in Hugging Face config.json terms. Field names and JSON keys are
// the HF ones, so a config.json of Llama 2/3, Qwen2/2.5 (DeepSeek-R1-Distill-Qwen included) or
// Qwen3 parses directly.
type Config struct {
	ModelType             string       `json:"model_type"`
	Architectures         []string     `json:"architectures,omitempty"`
	VocabSize             int          `json:"vocab_size"`
	HiddenSize            int          `json:"hidden_size"`
	NumHiddenLayers       int          `json:"num_hidden_layers"`
	NumAttentionHeads     int          `json:"num_attention_heads"`
	NumKeyValueHeads      int          `json:"num_key_value_heads"`
	HeadDim               int          `json:"head_dim"`
	IntermediateSize      int          `json:"intermediate_size"`
	RMSNormEps            float64      `json:"rms_norm_eps"`
	RopeTheta             float64      `json:"rope_theta"`
	RopeScaling           *RopeScaling `json:"rope_scaling,omitempty"`
	MaxPositionEmbeddings int          `json:"max_position_embeddings"`
	TieWordEmbeddings     bool         `json:"tie_word_embeddings"`
	// AttentionBias puts biases on q, k and v (Qwen2 always has them; Llama with
	// attention_bias also on o_proj, which this engine does not support).
	AttentionBias bool `json:"attention_bias"`
	// QKNorm applies a per-head RMSNorm to q and k before RoPE (Qwen3). Not an HF key: it is
	// implied by model_type "qwen3".
	QKNorm bool `json:"-"`
	// BOSTokenID and EOSTokenIDs are informational; generation stops on the tokens the caller
	// gives.
	BOSTokenID  *int  `json:"bos_token_id,omitempty"`
	EOSTokenIDs []int `json:"eos_token_id,omitempty"`
}

// ignoredKeys are config.json keys that carry no meaning for the forward pass (bookkeeping,
// training-only settings): they are accepted and dropped.
var ignoredKeys = map[string]bool{
	"transformers_version": true, "torch_dtype": true, "dtype": true, "use_cache": true,
	"initializer_range": true, "attention_dropout": true, "pad_token_id": true,
	"_name_or_path": true, "output_attentions": true, "output_hidden_states": true,
	"return_dict": true,
}

// checkedKeys are keys the engine reads only to verify that they ask for what it implements.
// Each maps to a function returning an error when the value is unsupported.
var checkedKeys = map[string]func(v any) error{
	"hidden_act": func(v any) error {
		if s, _ := v.(string); s != "silu" {
			return fmt.Errorf("only \"silu\" is supported, got %v", v)
		}
		return nil
	},
	"mlp_bias": wantFalse,
	"pretraining_tp": func(v any) error {
		if f, ok := v.(float64); !ok || f != 1 {
			return fmt.Errorf("only 1 is supported, got %v", v)
		}
		return nil
	},
	"use_sliding_window": wantFalse,
	"use_mrope":          wantFalse,
	// sliding_window and max_window_layers only matter when use_sliding_window is true.
	"sliding_window":    func(any) error { return nil },
	"max_window_layers": func(any) error { return nil },
}

func wantFalse(v any) error {
	if b, ok := v.(bool); !ok || b {
		return fmt.Errorf("only false is supported, got %v", v)
	}
	return nil
}

// ParseConfig parses a Hugging Face config.json. Keys the engine does not know, and known keys
// with values it does not implement (hidden_act other than silu, sliding windows, ...), give an
// error naming the key. The returned Config is validated.
func ParseConfig(data []byte) (*Config, error) {
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(data, &raw); err != nil {
		return nil, fmt.Errorf("config.json: %w", err)
	}
	known := jsonKeys(Config{})
	var unknown []string
	for k, v := range raw {
		if known[k] || ignoredKeys[k] {
			continue
		}
		if check, ok := checkedKeys[k]; ok {
			var val any
			if err := json.Unmarshal(v, &val); err != nil {
				return nil, fmt.Errorf("config.json: field %q: %w", k, err)
			}
			if err := check(val); err != nil {
				return nil, fmt.Errorf("config.json: field %q: %w", k, err)
			}
			continue
		}
		unknown = append(unknown, k)
	}
	if len(unknown) > 0 {
		sort.Strings(unknown)
		return nil, fmt.Errorf("config.json: unsupported field(s) %s", strings.Join(unknown, ", "))
	}

	// eos_token_id is an int or a list of ints; rope_scaling spells its kind two ways.
	if v, ok := raw["eos_token_id"]; ok {
		var one int
		if json.Unmarshal(v, &one) == nil {
			raw["eos_token_id"] = json.RawMessage(fmt.Sprintf("[%d]", one))
		}
	}
	if v, ok := raw["rope_scaling"]; ok && string(v) != "null" {
		fixed, err := normaliseRopeScaling(v)
		if err != nil {
			return nil, fmt.Errorf("config.json: field \"rope_scaling\": %w", err)
		}
		raw["rope_scaling"] = fixed
	}
	fixed, _ := json.Marshal(raw)
	var c Config
	dec := json.NewDecoder(bytes.NewReader(fixed))
	if err := dec.Decode(&c); err != nil {
		return nil, fmt.Errorf("config.json: %w", err)
	}
	if _, ok := raw["num_key_value_heads"]; !ok {
		c.NumKeyValueHeads = c.NumAttentionHeads
	}
	switch c.ModelType {
	case "qwen2":
		// Qwen2 has q/k/v biases whatever the file says (HF hard-codes bias=True).
		c.AttentionBias = true
	case "qwen3":
		c.QKNorm = true
	case "llama":
		if c.AttentionBias {
			return nil, fmt.Errorf("config.json: field \"attention_bias\": Llama with attention_bias also biases o_proj, which is not supported")
		}
	case "":
		return nil, fmt.Errorf("config.json: missing field \"model_type\"")
	default:
		return nil, fmt.Errorf("config.json: field \"model_type\": %q is not supported (want llama, qwen2 or qwen3)", c.ModelType)
	}
	if _, ok := raw["rope_theta"]; !ok {
		c.RopeTheta = 10000
	}
	if c.HeadDim == 0 && c.NumAttentionHeads > 0 {
		c.HeadDim = c.HiddenSize / c.NumAttentionHeads
	}
	if err := c.Validate(); err != nil {
		return nil, fmt.Errorf("config.json: %w", err)
	}
	return &c, nil
}

// LoadConfig reads and parses a config.json file; errors name the file.
func LoadConfig(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	c, err := ParseConfig(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return c, nil
}

func normaliseRopeScaling(v json.RawMessage) (json.RawMessage, error) {
	var m map[string]any
	if err := json.Unmarshal(v, &m); err != nil {
		return nil, err
	}
	if t, ok := m["type"]; ok {
		if _, has := m["rope_type"]; !has {
			m["rope_type"] = t
		}
		delete(m, "type")
	}
	allowed := map[string]bool{"rope_type": true, "factor": true, "low_freq_factor": true,
		"high_freq_factor": true, "original_max_position_embeddings": true}
	for k := range m {
		if !allowed[k] {
			return nil, fmt.Errorf("unsupported key %q", k)
		}
	}
	return json.Marshal(m)
}

// jsonKeys lists the JSON keys of a struct's fields.
func jsonKeys(v any) map[string]bool {
	keys := map[string]bool{}
	b, _ := json.Marshal(v)
	var m map[string]any
	_ = json.Unmarshal(b, &m)
	for k := range m {
		keys[k] = true
	}
	// omitempty fields are missing from the marshalled zero value.
	for _, k := range []string{"architectures", "rope_scaling", "bos_token_id", "eos_token_id"} {
		keys[k] = true
	}
	return keys
}

// Validate checks that the sizes are positive and consistent and the RoPE scaling is supported.
// Errors name the offending field.
func (c *Config) Validate() error {
	pos := []struct {
		name string
		v    int
	}{
		{"vocab_size", c.VocabSize}, {"hidden_size", c.HiddenSize},
		{"num_hidden_layers", c.NumHiddenLayers}, {"num_attention_heads", c.NumAttentionHeads},
		{"num_key_value_heads", c.NumKeyValueHeads}, {"head_dim", c.HeadDim},
		{"intermediate_size", c.IntermediateSize},
		{"max_position_embeddings", c.MaxPositionEmbeddings},
	}
	for _, p := range pos {
		if p.v <= 0 {
			return fmt.Errorf("field %q must be positive, got %d", p.name, p.v)
		}
	}
	if c.NumAttentionHeads%c.NumKeyValueHeads != 0 {
		return fmt.Errorf("field \"num_attention_heads\" (%d) must be a multiple of \"num_key_value_heads\" (%d)",
			c.NumAttentionHeads, c.NumKeyValueHeads)
	}
	if c.HeadDim%2 != 0 {
		return fmt.Errorf("field \"head_dim\" must be even for RoPE, got %d", c.HeadDim)
	}
	if !(c.RMSNormEps > 0) {
		return fmt.Errorf("field \"rms_norm_eps\" must be positive, got %g", c.RMSNormEps)
	}
	if !(c.RopeTheta > 0) {
		return fmt.Errorf("field \"rope_theta\" must be positive, got %g", c.RopeTheta)
	}
	if rs := c.RopeScaling; rs != nil {
		switch rs.Type {
		case "default", "":
		case "linear":
			if !(rs.Factor > 0) {
				return errors.New("field \"rope_scaling.factor\" must be positive")
			}
		case "llama3":
			if !(rs.Factor > 0) || !(rs.LowFreqFactor > 0) || !(rs.HighFreqFactor > rs.LowFreqFactor) ||
				rs.OriginalMaxPositionEmbeddings <= 0 {
				return errors.New("field \"rope_scaling\": llama3 needs factor > 0, 0 < low_freq_factor < high_freq_factor and original_max_position_embeddings > 0")
			}
		default:
			return fmt.Errorf("field \"rope_scaling.rope_type\": %q is not supported (want linear or llama3)", rs.Type)
		}
	}
	return nil
}

// QDim is the width of the query projection, num_attention_heads x head_dim.
func (c *Config) QDim() int { return c.NumAttentionHeads * c.HeadDim }

// KVDim is the width of the key and value projections, num_key_value_heads x head_dim.
func (c *Config) KVDim() int { return c.NumKeyValueHeads * c.HeadDim }

// InvFreq returns the RoPE inverse frequencies [head_dim/2] after rope_scaling, computed in
// float64 as Hugging Face does before casting.
func (c *Config) InvFreq() []float64 {
	half := c.HeadDim / 2
	inv := make([]float64, half)
	for i := range inv {
		inv[i] = 1 / math.Pow(c.RopeTheta, float64(2*i)/float64(c.HeadDim))
	}
	rs := c.RopeScaling
	if rs == nil {
		return inv
	}
	switch rs.Type {
	case "linear":
		for i := range inv {
			inv[i] /= rs.Factor
		}
	case "llama3":
		old := float64(rs.OriginalMaxPositionEmbeddings)
		lowWavelen := old / rs.LowFreqFactor
		highWavelen := old / rs.HighFreqFactor
		for i, f := range inv {
			wavelen := 2 * math.Pi / f
			switch {
			case wavelen < highWavelen:
				// high frequencies are kept
			case wavelen > lowWavelen:
				inv[i] = f / rs.Factor
			default:
				smooth := (old/wavelen - rs.LowFreqFactor) / (rs.HighFreqFactor - rs.LowFreqFactor)
				inv[i] = (1-smooth)*f/rs.Factor + smooth*f
			}
		}
	}
	return inv
}

// NumParams counts the model's parameters (the LM head once when tied).
func (c *Config) NumParams() int64 {
	d, q, kv, in := int64(c.HiddenSize), int64(c.QDim()), int64(c.KVDim()), int64(c.IntermediateSize)
	layer := d + d + d*q + 2*d*kv + q*d + 3*d*in
	if c.AttentionBias {
		layer += q + 2*kv
	}
	if c.QKNorm {
		layer += 2 * int64(c.HeadDim)
	}
	n := int64(c.VocabSize)*d + int64(c.NumHiddenLayers)*layer + d
	if !c.TieWordEmbeddings {
		n += int64(c.VocabSize) * d
	}
	return n
}

// LayerMatmulParams counts the weights of the decoder layers' linear projections (q, k, v, o,
// gate, up, down): a token's forward pass costs about 2 FLOPs per such weight, plus attention
// and the LM head.
func (c *Config) LayerMatmulParams() int64 {
	d, q, kv, in := int64(c.HiddenSize), int64(c.QDim()), int64(c.KVDim()), int64(c.IntermediateSize)
	return int64(c.NumHiddenLayers) * (d*q + 2*d*kv + q*d + 3*d*in)
}
