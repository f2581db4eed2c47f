package engine

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"reflect"
	"sort"
	"strings"
)

// RopeScaling is the RoPE scaling of a Hugging Face config.json: transformers 4's
// rope_scaling object, or transformers 5's rope_parameters less its rope_theta. Supported
// kinds: "default" (none), "linear" (positions divided by Factor), "llama3"
// (frequency-dependent scaling of Llama 3.1+) and "yarn" (Qwen2.5 / Qwen3 long context).
type RopeScaling struct {
	// Type is the kind: "linear", "llama3" or "yarn" (HF spells it rope_type, older files type).
	Type string `json:"rope_type"`
	// Factor divides the frequencies (linear), the low frequencies (llama3) or the
	// interpolated frequencies (yarn).
	Factor float64 `json:"factor"`
	// LowFreqFactor and HighFreqFactor bound the llama3 interpolation band.
	LowFreqFactor  float64 `json:"low_freq_factor,omitempty"`
	HighFreqFactor float64 `json:"high_freq_factor,omitempty"`
	// OriginalMaxPositionEmbeddings is the context length the llama3 band and the yarn
	// correction range refer to (yarn: max_position_embeddings when zero).
	OriginalMaxPositionEmbeddings int `json:"original_max_position_embeddings,omitempty"`
	// BetaFast and BetaSlow bound yarn's correction range in rotations (HF defaults 32 and 1
	// when zero).
	BetaFast float64 `json:"beta_fast,omitempty"`
	BetaSlow float64 `json:"beta_slow,omitempty"`
	// AttentionFactor scales yarn's cos and sin tables (HF: 0.1 ln(factor) + 1 when absent,
	// or the ratio of the mscale / mscale_all_dim forms when both are given).
	AttentionFactor *float64 `json:"attention_factor,omitempty"`
	Mscale          float64  `json:"mscale,omitempty"`
	MscaleAllDim    float64  `json:"mscale_all_dim,omitempty"`
	// Truncate rounds yarn's correction range to whole dimensions (HF default true when nil).
	Truncate *bool `json:"truncate,omitempty"`
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
	// BOSTokenID, EOSTokenIDs and PadTokenID are informational (they travel to the
	// config.json and generation_config.json written); generation stops on the tokens the
	// caller gives.
	BOSTokenID  *int  `json:"bos_token_id,omitempty"`
	EOSTokenIDs []int `json:"eos_token_id,omitempty"`
	PadTokenID  *int  `json:"pad_token_id,omitempty"`
}

// ignoredKeys are config.json keys that cannot change the forward pass (bookkeeping, the
// stored dtype, training-only settings, defaults of generate()): they are accepted and dropped.
// transformers 4 writes torch_dtype, transformers 5 dtype.
var ignoredKeys = map[string]bool{
	"transformers_version": true, "torch_dtype": true, "dtype": true, "use_cache": true,
	"initializer_range": true, "attention_dropout": true, "_name_or_path": true,
	"output_attentions": true, "output_hidden_states": true, "return_dict": true,
	"use_return_dict": true, "torchscript": true, "use_bfloat16": true, "is_encoder_decoder": true,
	"is_decoder": true, "add_cross_attention": true, "tie_encoder_decoder": true,
	"chunk_size_feed_forward": true, "id2label": true, "label2id": true, "problem_type": true,
	"finetuning_task": true, "tokenizer_class": true, "prefix": true, "sep_token_id": true,
	"decoder_start_token_id": true, "task_specific_params": true, "pruned_heads": true,
	"tf_legacy_loss": true, "cross_attention_hidden_size": true, "_attn_implementation_autoset": true,
	"max_length": true, "min_length": true, "do_sample": true, "early_stopping": true,
	"num_beams": true, "num_beam_groups": true, "diversity_penalty": true, "temperature": true,
	"top_k": true, "top_p": true, "typical_p": true, "repetition_penalty": true,
	"length_penalty": true, "no_repeat_ngram_size": true, "encoder_no_repeat_ngram_size": true,
	"bad_words_ids": true, "num_return_sequences": true, "output_scores": true,
	"return_dict_in_generate": true, "forced_bos_token_id": true, "forced_eos_token_id": true,
	"remove_invalid_values": true, "exponential_decay_length_penalty": true,
	"suppress_tokens": true, "begin_suppress_tokens": true,
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
	// sliding_window and max_window_layers only matter when use_sliding_window is true (or
	// layer_types names sliding_attention, which is refused).
	"sliding_window":    func(any) error { return nil },
	"max_window_layers": func(any) error { return nil },
	// partial_rotary_factor below 1 rotates only part of each head.
	"partial_rotary_factor": wantOne,
}

func wantFalse(v any) error {
	if b, ok := v.(bool); !ok || b {
		return fmt.Errorf("only false is supported, got %v", v)
	}
	return nil
}

func wantOne(v any) error {
	if f, ok := v.(float64); !ok || f != 1 {
		return fmt.Errorf("only 1.0 is supported, got %v", v)
	}
	return nil
}

// ParseConfig parses a Hugging Face config.json, as transformers 4 writes it (top-level
// rope_theta, rope_scaling, torch_dtype) or as transformers 5 does (rope_parameters holding
// rope_theta and the scaling, dtype, layer_types). Keys the engine does not know, and known
// keys with values it does not implement (hidden_act other than silu, sliding windows, rope
// types other than default, linear, llama3 and yarn, ...), give an error naming the key. The
// returned Config is validated.
func ParseConfig(data []byte) (*Config, error) {
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(data, &raw); err != nil {
		return nil, fmt.Errorf("config.json: %w", err)
	}
	if raw == nil {
		return nil, errors.New("config.json: not a JSON object")
	}
	known := jsonKeys(Config{})
	known["rope_parameters"], known["layer_types"] = true, true
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

	// eos_token_id is an int or a list of ints (or null).
	if v, ok := raw["eos_token_id"]; ok {
		var one int
		if isNull(v) {
			delete(raw, "eos_token_id")
		} else if json.Unmarshal(v, &one) == nil {
			raw["eos_token_id"] = json.RawMessage(fmt.Sprintf("[%d]", one))
		}
	}
	if err := foldRopeParameters(raw); err != nil {
		return nil, fmt.Errorf("config.json: %w", err)
	}
	if v, ok := raw["rope_scaling"]; ok && !isNull(v) {
		fixed, err := normaliseRopeScaling(v)
		if err != nil {
			return nil, fmt.Errorf("config.json: field \"rope_scaling\": %w", err)
		}
		raw["rope_scaling"] = fixed
	}
	layerTypes, err := parseLayerTypes(raw)
	if err != nil {
		return nil, fmt.Errorf("config.json: %w", err)
	}
	fixed, _ := json.Marshal(raw)
	var c Config
	dec := json.NewDecoder(bytes.NewReader(fixed))
	if err := dec.Decode(&c); err != nil {
		return nil, fmt.Errorf("config.json: %w", err)
	}
	if layerTypes != nil && len(layerTypes) != c.NumHiddenLayers {
		return nil, fmt.Errorf("config.json: field \"layer_types\" has %d entries for %d layers (num_hidden_layers)", len(layerTypes), c.NumHiddenLayers)
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
	if v, ok := raw["rope_theta"]; !ok || isNull(v) {
		c.RopeTheta = 10000
	}
	if c.HeadDim == 0 && c.NumAttentionHeads > 0 {
		c.HeadDim = c.HiddenSize / c.NumAttentionHeads
	}
	if rs := c.RopeScaling; rs != nil && (rs.Type == "default" || rs.Type == "") {
		c.RopeScaling = nil // no scaling; the writer then leaves rope_scaling out
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

func isNull(v json.RawMessage) bool { return string(bytes.TrimSpace(v)) == "null" }

// foldRopeParameters rewrites transformers 5's rope_parameters into the transformers 4 keys
// the Config reads: its rope_theta to the top-level rope_theta and the rest to rope_scaling.
// A file with both forms must agree. Per-layer-type parameters ({"full_attention": {...}})
// are accepted when only full attention has them.
func foldRopeParameters(raw map[string]json.RawMessage) error {
	v, ok := raw["rope_parameters"]
	delete(raw, "rope_parameters")
	if !ok || isNull(v) {
		return nil
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(v, &m); err != nil || m == nil {
		return fmt.Errorf("field \"rope_parameters\": want an object, got %s", v)
	}
	if inner, ok := m["full_attention"]; ok {
		for k := range m {
			if k != "full_attention" {
				return fmt.Errorf("field \"rope_parameters\": parameters for %q layers are not supported (only full_attention)", k)
			}
		}
		m = nil
		if err := json.Unmarshal(inner, &m); err != nil || m == nil {
			return fmt.Errorf("field \"rope_parameters.full_attention\": want an object, got %s", inner)
		}
	}
	if theta, ok := m["rope_theta"]; ok {
		var t float64
		if err := json.Unmarshal(theta, &t); err != nil {
			return fmt.Errorf("field \"rope_parameters.rope_theta\": want a number, got %s", theta)
		}
		if top, ok := raw["rope_theta"]; ok && !isNull(top) {
			var tt float64
			if json.Unmarshal(top, &tt) != nil || tt != t {
				return fmt.Errorf("field \"rope_theta\" (%s) and \"rope_parameters.rope_theta\" (%s) disagree", top, theta)
			}
		}
		raw["rope_theta"] = theta
		delete(m, "rope_theta")
	}
	if prf, ok := m["partial_rotary_factor"]; ok {
		var f any
		_ = json.Unmarshal(prf, &f)
		if err := wantOne(f); err != nil {
			return fmt.Errorf("field \"rope_parameters.partial_rotary_factor\": %w", err)
		}
		delete(m, "partial_rotary_factor")
	}
	scaling, _ := json.Marshal(m)
	fixed, err := normaliseRopeScaling(scaling)
	if err != nil {
		return fmt.Errorf("field \"rope_parameters\": %w", err)
	}
	if old, ok := raw["rope_scaling"]; ok && !isNull(old) {
		oldFixed, err := normaliseRopeScaling(old)
		if err != nil {
			return fmt.Errorf("field \"rope_scaling\": %w", err)
		}
		var a, b RopeScaling
		_ = json.Unmarshal(oldFixed, &a)
		_ = json.Unmarshal(fixed, &b)
		if !reflect.DeepEqual(a, b) {
			return errors.New("fields \"rope_scaling\" and \"rope_parameters\" disagree")
		}
	}
	raw["rope_scaling"] = fixed
	return nil
}

// parseLayerTypes checks transformers 5's layer_types: every layer full attention. It returns
// the list (nil when absent) for the caller to check its length.
func parseLayerTypes(raw map[string]json.RawMessage) ([]string, error) {
	v, ok := raw["layer_types"]
	delete(raw, "layer_types")
	if !ok || isNull(v) {
		return nil, nil
	}
	var types []string
	if err := json.Unmarshal(v, &types); err != nil {
		return nil, fmt.Errorf("field \"layer_types\": want a list of strings: %w", err)
	}
	for i, t := range types {
		switch t {
		case "full_attention":
		case "sliding_attention":
			return nil, fmt.Errorf("field \"layer_types\": layer %d is \"sliding_attention\": sliding-window attention is not supported yet (only full_attention)", i)
		default:
			return nil, fmt.Errorf("field \"layer_types\": layer %d is %q: not supported (only full_attention)", i, t)
		}
	}
	if types == nil {
		types = []string{}
	}
	return types, nil
}

// ropeScalingKeys are the keys of rope_scaling (or rope_parameters less rope_theta) that the
// engine implements; any other key could change the math and is refused.
var ropeScalingKeys = map[string]bool{"rope_type": true, "factor": true, "low_freq_factor": true,
	"high_freq_factor": true, "original_max_position_embeddings": true, "beta_fast": true,
	"beta_slow": true, "attention_factor": true, "mscale": true, "mscale_all_dim": true,
	"truncate": true}

func normaliseRopeScaling(v json.RawMessage) (json.RawMessage, error) {
	var m map[string]any
	if err := json.Unmarshal(v, &m); err != nil {
		return nil, err
	}
	if m == nil {
		return nil, errors.New("want an object")
	}
	if t, ok := m["type"]; ok {
		if _, has := m["rope_type"]; !has {
			m["rope_type"] = t
		}
		delete(m, "type")
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if !ropeScalingKeys[k] {
			return nil, fmt.Errorf("unsupported key %q", k)
		}
		if m[k] == nil {
			delete(m, k) // null: HF's default
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
	for _, k := range []string{"architectures", "rope_scaling", "bos_token_id", "eos_token_id", "pad_token_id"} {
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
		case "yarn":
			if err := rs.validateYarn(c); err != nil {
				return err
			}
		default:
			return fmt.Errorf("field \"rope_scaling.rope_type\": %q is not supported (want default, linear, llama3 or yarn)", rs.Type)
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
	case "yarn":
		return c.yarnInvFreq()
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
