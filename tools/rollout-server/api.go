package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"strings"

	"github.com/prolong-rl/prolong/checkpoints/tokenizer"
)

// The OpenAI-compatible request and response bodies, with the extensions RL trainers use
// (vLLM's names where it has them): prompts as token ids, top_k, stop_token_ids, and token ids
// in every choice.

// apiError is an OpenAI-style error: {"error": {"message", "type", "param", "code"}}.
type apiError struct {
	Status  int    `json:"-"`
	Message string `json:"message"`
	Type    string `json:"type"`
	Param   string `json:"param,omitempty"`
	Code    string `json:"code,omitempty"`
}

func (e *apiError) Error() string { return e.Message }

func badRequest(param, format string, args ...any) *apiError {
	return &apiError{Status: 400, Type: "invalid_request_error", Param: param, Message: fmt.Sprintf(format, args...)}
}

// samplingFields are the fields shared by completions and chat completions.
type samplingFields struct {
	Model         string          `json:"model"`
	N             *int            `json:"n"`
	Temperature   *float64        `json:"temperature"`
	TopP          *float64        `json:"top_p"`
	TopK          *int            `json:"top_k"`
	MaxTokens     *int            `json:"max_tokens"`
	MaxCompletion *int            `json:"max_completion_tokens"`
	Stop          json.RawMessage `json:"stop"`
	StopTokenIDs  []int64         `json:"stop_token_ids"`
	Seed          *int64          `json:"seed"`
	Stream        bool            `json:"stream"`
	StreamOptions *struct {
		IncludeUsage bool `json:"include_usage"`
	} `json:"stream_options"`
	PresencePenalty  *float64       `json:"presence_penalty"`
	FrequencyPenalty *float64       `json:"frequency_penalty"`
	LogitBias        map[string]any `json:"logit_bias"`
	BestOf           *int           `json:"best_of"`
	User             string         `json:"user"`
	IgnoreEOS        bool           `json:"ignore_eos"`
}

// completionRequest is POST /v1/completions.
type completionRequest struct {
	samplingFields
	Prompt   json.RawMessage `json:"prompt"`
	Logprobs *int            `json:"logprobs"`
	Echo     bool            `json:"echo"`
	Suffix   *string         `json:"suffix"`
}

// chatMessage is one message of a chat request (content as text, or as a list of text parts).
type chatMessage struct {
	Role    string          `json:"role"`
	Content json.RawMessage `json:"content"`
}

// chatRequest is POST /v1/chat/completions.
type chatRequest struct {
	samplingFields
	Messages    []chatMessage `json:"messages"`
	Logprobs    bool          `json:"logprobs"`
	TopLogprobs *int          `json:"top_logprobs"`
	Tools       []any         `json:"tools"`
}

// maxTopLogprobs bounds completions' logprobs and chat's top_logprobs, as OpenAI and vLLM do.
const maxTopLogprobs = 20

// limits are the server's bounds on a request (flags).
type limits struct {
	MaxN, MaxTokens, MaxPrompts int
}

// sampling is a validated request's generation settings.
type sampling struct {
	adapter            *loraAdapter // the request's LoRA adapter (its model field); nil: the base
	n, topK, maxTokens int
	temperature, topP  float64
	seed               *int64
	stopStrings        []string
	stopIDs            []int32
	ignoreEOS          bool
	topLogprobs        int // the most likely tokens sent with each token (logprobs, top_logprobs)
}

// decodeStrict decodes a JSON body into v, naming the field of a type error.
func decodeStrict(body []byte, v any) *apiError {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	if err := dec.Decode(v); err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) {
			field := strings.TrimPrefix(te.Field, "samplingFields.")
			return badRequest(field, "field %q: expected %s, got a JSON %s", field, te.Type, te.Value)
		}
		return badRequest("", "malformed JSON body: %v", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return badRequest("", "malformed JSON body: data after the JSON object")
	}
	return nil
}

// validate checks the shared fields against the limits and vocabulary.
func (f *samplingFields) validate(lim limits, vocab int) (sampling, *apiError) {
	s := sampling{n: 1, temperature: 1, topP: 1, maxTokens: 16, seed: f.Seed, ignoreEOS: f.IgnoreEOS}
	if f.N != nil {
		s.n = *f.N
	}
	if s.n < 1 || s.n > lim.MaxN {
		return s, badRequest("n", "n must be between 1 and %d, got %d", lim.MaxN, s.n)
	}
	if f.BestOf != nil && *f.BestOf != s.n {
		return s, badRequest("best_of", "best_of is not supported (give n)")
	}
	if f.Temperature != nil {
		s.temperature = *f.Temperature
	}
	if s.temperature < 0 || s.temperature > 100 || math.IsNaN(s.temperature) {
		return s, badRequest("temperature", "temperature must be between 0 and 100, got %g", s.temperature)
	}
	if f.TopP != nil {
		s.topP = *f.TopP
	}
	if !(s.topP > 0 && s.topP <= 1) {
		return s, badRequest("top_p", "top_p must be in (0, 1], got %g", s.topP)
	}
	if f.TopK != nil {
		s.topK = *f.TopK
	}
	if s.topK == -1 {
		s.topK = 0 // vLLM's "all"
	}
	if s.topK < 0 {
		return s, badRequest("top_k", "top_k must be -1, 0 (all) or positive, got %d", s.topK)
	}
	switch {
	case f.MaxCompletion != nil:
		s.maxTokens = *f.MaxCompletion
	case f.MaxTokens != nil:
		s.maxTokens = *f.MaxTokens
	}
	if s.maxTokens < 1 || s.maxTokens > lim.MaxTokens {
		return s, badRequest("max_tokens", "max_tokens must be between 1 and %d, got %d", lim.MaxTokens, s.maxTokens)
	}
	for name, v := range map[string]*float64{"presence_penalty": f.PresencePenalty, "frequency_penalty": f.FrequencyPenalty} {
		if v != nil && *v != 0 {
			return s, badRequest(name, "%s is not supported (RL rollouts sample from the model's own distribution)", name)
		}
	}
	if len(f.LogitBias) > 0 {
		return s, badRequest("logit_bias", "logit_bias is not supported")
	}
	if len(f.Stop) > 0 && string(f.Stop) != "null" {
		var one string
		if err := json.Unmarshal(f.Stop, &one); err == nil {
			s.stopStrings = []string{one}
		} else if err := json.Unmarshal(f.Stop, &s.stopStrings); err != nil {
			return s, badRequest("stop", "stop must be a string or a list of strings")
		}
		if len(s.stopStrings) > 4 {
			return s, badRequest("stop", "at most 4 stop strings, got %d", len(s.stopStrings))
		}
		for _, st := range s.stopStrings {
			if st == "" {
				return s, badRequest("stop", "stop strings must not be empty")
			}
		}
	}
	for _, id := range f.StopTokenIDs {
		if id < 0 || id >= int64(vocab) {
			return s, badRequest("stop_token_ids", "token id %d is outside the vocabulary [0, %d)", id, vocab)
		}
		s.stopIDs = append(s.stopIDs, int32(id))
	}
	return s, nil
}

// parsePrompts reads a completion prompt: a string, a list of token ids, a list of strings or a
// list of lists of token ids. Texts come back in texts (to tokenize), id lists in ids.
func parsePrompts(raw json.RawMessage, vocab, maxPrompts int) (texts []string, ids [][]int32, e *apiError) {
	if len(raw) == 0 || string(raw) == "null" {
		return nil, nil, badRequest("prompt", "prompt is required")
	}
	var one string
	if json.Unmarshal(raw, &one) == nil {
		return []string{one}, nil, checkText("prompt", one)
	}
	var list []json.RawMessage
	if err := json.Unmarshal(raw, &list); err != nil || len(list) == 0 {
		return nil, nil, badRequest("prompt", "prompt must be a string, a list of token ids, a list of strings or a list of lists of token ids")
	}
	if len(list) > maxPrompts*4096 {
		return nil, nil, badRequest("prompt", "prompt too long")
	}
	toIDs := func(items []json.RawMessage, param string) ([]int32, *apiError) {
		out := make([]int32, len(items))
		for i, it := range items {
			var id int64
			if err := json.Unmarshal(it, &id); err != nil {
				return nil, badRequest(param, "%s[%d] is not an integer token id", param, i)
			}
			if id < 0 || id >= int64(vocab) {
				return nil, badRequest(param, "%s[%d] = %d is outside the vocabulary [0, %d)", param, i, id, vocab)
			}
			out[i] = int32(id)
		}
		return out, nil
	}
	switch list[0][0] {
	case '"':
		for i, it := range list {
			var s string
			if err := json.Unmarshal(it, &s); err != nil {
				return nil, nil, badRequest("prompt", "prompt[%d] is not a string", i)
			}
			texts = append(texts, s)
		}
	case '[':
		for i, it := range list {
			var items []json.RawMessage
			if err := json.Unmarshal(it, &items); err != nil || len(items) == 0 {
				return nil, nil, badRequest("prompt", "prompt[%d] is not a non-empty list of token ids", i)
			}
			p, e := toIDs(items, fmt.Sprintf("prompt[%d]", i))
			if e != nil {
				return nil, nil, e
			}
			ids = append(ids, p)
		}
	default:
		p, e := toIDs(list, "prompt")
		if e != nil {
			return nil, nil, e
		}
		ids = [][]int32{p}
	}
	if n := len(texts) + len(ids); n > maxPrompts {
		return nil, nil, badRequest("prompt", "at most %d prompts per request, got %d", maxPrompts, n)
	}
	return texts, ids, nil
}

func checkText(param, s string) *apiError {
	if s == "" {
		return badRequest(param, "%s is empty", param)
	}
	return nil
}

// messageText is a chat message's content: a string, or the text parts of a list.
func messageText(i int, m chatMessage) (string, *apiError) {
	param := fmt.Sprintf("messages[%d].content", i)
	var s string
	if json.Unmarshal(m.Content, &s) == nil {
		return s, nil
	}
	var parts []struct {
		Type string `json:"type"`
		Text string `json:"text"`
	}
	if err := json.Unmarshal(m.Content, &parts); err != nil {
		return "", badRequest(param, "%s must be a string or a list of text parts", param)
	}
	var b strings.Builder
	for k, p := range parts {
		if p.Type != "text" {
			return "", badRequest(param, "%s[%d]: only text parts are supported, got %q", param, k, p.Type)
		}
		b.WriteString(p.Text)
	}
	return b.String(), nil
}

// Response bodies.

type usage struct {
	PromptTokens     int `json:"prompt_tokens"`
	CompletionTokens int `json:"completion_tokens"`
	TotalTokens      int `json:"total_tokens"`
}

type completionLogprobs struct {
	Tokens        []string     `json:"tokens"`
	TokenLogprobs []*float32   `json:"token_logprobs"` // null for an echoed prompt's first token
	TopLogprobs   []topLogprob `json:"top_logprobs"`   // null there too
	TextOffset    []int        `json:"text_offset"`
}

// topLogprob is one position's entry of a completion's top_logprobs: a JSON object from token
// text to log-prob, written in vLLM's order (the chosen token first, then the most likely
// tokens by rank) with each token text once; a nil one is null.
type topLogprob []tokenLogprob

// tokenLogprob is a token's text and log-prob.
type tokenLogprob struct {
	Token   string
	Logprob float32
}

// MarshalJSON writes the entries as one object, in order.
func (t topLogprob) MarshalJSON() ([]byte, error) {
	if t == nil {
		return []byte("null"), nil
	}
	var b bytes.Buffer
	b.WriteByte('{')
	seen := map[string]bool{}
	for _, e := range t {
		if seen[e.Token] {
			continue
		}
		seen[e.Token] = true
		if len(seen) > 1 {
			b.WriteByte(',')
		}
		k, err := marshalNoEscape(e.Token)
		if err != nil {
			return nil, err
		}
		v, _ := json.Marshal(e.Logprob)
		b.Write(k)
		b.WriteByte(':')
		b.Write(v)
	}
	b.WriteByte('}')
	return b.Bytes(), nil
}

// marshalNoEscape is json.Marshal without HTML escaping (as writeJSON encodes).
func marshalNoEscape(v any) ([]byte, error) {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(b.Bytes(), []byte("\n")), nil
}

type completionChoice struct {
	Index        int                 `json:"index"`
	Text         string              `json:"text"`
	Logprobs     *completionLogprobs `json:"logprobs"`
	FinishReason *string             `json:"finish_reason"`
	// Extensions: the prompt's and the sampled token ids (vLLM's prompt_token_ids /
	// token_ids), what RL trainers need.
	PromptTokenIDs []int32 `json:"prompt_token_ids,omitempty"`
	TokenIDs       []int32 `json:"token_ids"`
}

type completionResponse struct {
	ID            string             `json:"id"`
	Object        string             `json:"object"`
	Created       int64              `json:"created"`
	Model         string             `json:"model"`
	Choices       []completionChoice `json:"choices"`
	Usage         *usage             `json:"usage,omitempty"`
	WeightVersion uint64             `json:"weight_version"`
}

type chatLogprob struct {
	Token       string       `json:"token"`
	Logprob     float32      `json:"logprob"`
	Bytes       []int        `json:"bytes"`
	TopLogprobs []chatTopAlt `json:"top_logprobs"`
}

// chatTopAlt is one of a position's most likely tokens in a chat answer's top_logprobs.
type chatTopAlt struct {
	Token   string  `json:"token"`
	Logprob float32 `json:"logprob"`
	Bytes   []int   `json:"bytes"`
}

// chatLogprobs is a chat choice's logprobs: one entry a token.
type chatLogprobs struct {
	Content []chatLogprob `json:"content"`
}

type chatChoice struct {
	Index        int           `json:"index"`
	Message      *chatOut      `json:"message,omitempty"`
	Delta        *chatOut      `json:"delta,omitempty"`
	Logprobs     *chatLogprobs `json:"logprobs"`
	FinishReason *string       `json:"finish_reason"`
	// Extensions, as in completions: the rendered prompt's token ids and the sampled ones.
	PromptTokenIDs []int32 `json:"prompt_token_ids,omitempty"`
	TokenIDs       []int32 `json:"token_ids"`
}

type chatOut struct {
	Role    string `json:"role,omitempty"`
	Content string `json:"content"`
}

type chatResponse struct {
	ID            string       `json:"id"`
	Object        string       `json:"object"`
	Created       int64        `json:"created"`
	Model         string       `json:"model"`
	Choices       []chatChoice `json:"choices"`
	Usage         *usage       `json:"usage,omitempty"`
	WeightVersion uint64       `json:"weight_version"`
}

// parsedCompletion is a validated /v1/completions request: its fields, its sampling
// settings, and its prompts (texts still to tokenize, or token ids within the vocabulary).
type parsedCompletion struct {
	req   completionRequest
	smp   sampling
	texts []string
	ids   [][]int32
}

// parseCompletionRequest decodes and checks a /v1/completions body against the limits and a
// vocabulary of vocab tokens; hasTok says whether the model has a tokenizer (text prompts and
// stop strings need one). Every refusal is a 400 naming the field at fault.
func parseCompletionRequest(body []byte, lim limits, vocab int, hasTok bool) (*parsedCompletion, *apiError) {
	p := &parsedCompletion{}
	if e := decodeStrict(body, &p.req); e != nil {
		return nil, e
	}
	smp, e := p.req.validate(lim, vocab)
	if e != nil {
		return nil, e
	}
	p.smp = smp
	switch {
	case p.req.Logprobs != nil && (*p.req.Logprobs < 0 || *p.req.Logprobs > maxTopLogprobs):
		return nil, badRequest("logprobs", "logprobs must be between 0 and %d, got %d", maxTopLogprobs, *p.req.Logprobs)
	case p.req.Suffix != nil:
		return nil, badRequest("suffix", "suffix is not supported")
	case len(smp.stopStrings) > 0 && !hasTok:
		return nil, badRequest("stop", "stop strings need a tokenizer, and this model directory has none: use stop_token_ids")
	}
	if p.texts, p.ids, e = parsePrompts(p.req.Prompt, vocab, lim.MaxPrompts); e != nil {
		return nil, e
	}
	if len(p.texts) > 0 && !hasTok {
		return nil, badRequest("prompt", "this model directory has no tokenizer.json: send the prompt as token ids")
	}
	return p, nil
}

// parseChatRequest decodes and checks a /v1/chat/completions body; noChat says why the model
// cannot render chat messages (no tokenizer, no chat template, a template that does not
// compile), nil when it can. It returns the messages to render.
func parseChatRequest(body []byte, lim limits, vocab int, noChat error) (*chatRequest, sampling, []tokenizer.Message, *apiError) {
	var req chatRequest
	if e := decodeStrict(body, &req); e != nil {
		return nil, sampling{}, nil, e
	}
	smp, e := req.validate(lim, vocab)
	switch {
	case e != nil:
	case noChat != nil:
		e = badRequest("messages", "messages need a chat template and this model has none it can render (%v): use /v1/completions", noChat)
	case len(req.Messages) == 0:
		e = badRequest("messages", "messages is required")
	case len(req.Messages) > lim.MaxPrompts*64:
		e = badRequest("messages", "at most %d messages, got %d", lim.MaxPrompts*64, len(req.Messages))
	case req.TopLogprobs != nil && (*req.TopLogprobs < 0 || *req.TopLogprobs > maxTopLogprobs):
		e = badRequest("top_logprobs", "top_logprobs must be between 0 and %d, got %d", maxTopLogprobs, *req.TopLogprobs)
	case req.TopLogprobs != nil && *req.TopLogprobs > 0 && !req.Logprobs:
		e = badRequest("top_logprobs", "top_logprobs needs logprobs: true")
	case len(req.Tools) > 0:
		e = badRequest("tools", "tools are not supported")
	}
	if e != nil {
		return nil, smp, nil, e
	}
	msgs := make([]tokenizer.Message, len(req.Messages))
	for i, m := range req.Messages {
		switch m.Role {
		case "system", "user", "assistant":
		default:
			return nil, smp, nil, badRequest(fmt.Sprintf("messages[%d].role", i), "messages[%d].role %q: want system, user or assistant", i, m.Role)
		}
		text, e := messageText(i, m)
		if e != nil {
			return nil, smp, nil, e
		}
		msgs[i] = tokenizer.Message{Role: m.Role, Content: text}
	}
	return &req, smp, msgs, nil
}
