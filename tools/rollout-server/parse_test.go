package main

import (
	"encoding/json"
	"errors"
	"testing"
)

var parseSeeds = []string{
	`{"prompt": [1, 2], "max_tokens": 2}`,
	`{"prompt": "<bos>1+", "n": 2, "stream": true, "temperature": 0.5, "top_p": 0.9, "top_k": 3}`,
	`{"prompt": [[1], [2, 3]], "stop": ["1"], "echo": true, "logprobs": 1, "seed": 5}`,
	`{"prompt": ["a", "b"], "stop": "x", "stop_token_ids": [2], "ignore_eos": true}`,
	`{"prompt": "x", "temperature": 1e308}`,
	`{"prompt": [1], "top_k": -1, "max_completion_tokens": 3}`,
	`{"messages": [{"role": "user", "content": "1+2="}], "n": 2, "logprobs": true}`,
	`{"messages": [{"role": "user", "content": "x"}], "logprobs": true, "top_logprobs": 20}`,
	`{"prompt": [1, 2], "logprobs": 20, "echo": true}`,
	`{"messages": [{"role": "system", "content": [{"type": "text", "text": "hi"}]}, {"role": "user", "content": "x"}]}`,
	`{"prompt": [1, 2], "n": "two"}`,
	`[]`, `{"prompt": [1, 2]} x`, `{"prompt": [1.5]}`,
}

// checkParseError: a refusal is a 400 OpenAI error object with a message and a type, and it
// encodes as {"error": {"message", "type", ...}}.
func checkParseError(t *testing.T, body string, e *apiError) {
	t.Helper()
	if e.Status != 400 || e.Message == "" || e.Type != "invalid_request_error" {
		t.Fatalf("%q: refusal %+v", body, e)
	}
	b, err := json.Marshal(map[string]any{"error": e})
	var back struct {
		Error struct{ Message, Type string }
	}
	if err != nil || json.Unmarshal(b, &back) != nil || back.Error.Message != e.Message {
		t.Fatalf("%q: error object %s: %v", body, b, err)
	}
}

// checkSampling: accepted settings are within the limits the server was given.
func checkSampling(t *testing.T, body string, s sampling, lim limits, vocab int) {
	t.Helper()
	if s.n < 1 || s.n > lim.MaxN || s.maxTokens < 1 || s.maxTokens > lim.MaxTokens || s.temperature < 0 ||
		!(s.topP > 0 && s.topP <= 1) || s.topK < 0 || len(s.stopStrings) > 4 {
		t.Fatalf("%q: accepted out-of-bounds settings %+v", body, s)
	}
	for _, id := range s.stopIDs {
		if id < 0 || int(id) >= vocab {
			t.Fatalf("%q: stop token %d outside the vocabulary", body, id)
		}
	}
}

// FuzzParseCompletionRequest: any body is either refused with a 400 error object or accepted
// with settings within the limits and 1..MaxPrompts prompts whose token ids are in the
// vocabulary (text prompts only when the model has a tokenizer).
func FuzzParseCompletionRequest(f *testing.F) {
	for _, s := range parseSeeds {
		f.Add([]byte(s), true)
		f.Add([]byte(s), false)
	}
	lim := limits{MaxN: 4, MaxTokens: 32, MaxPrompts: 3}
	const vocab = 40
	f.Fuzz(func(t *testing.T, body []byte, hasTok bool) {
		p, e := parseCompletionRequest(body, lim, vocab, hasTok)
		if e != nil {
			checkParseError(t, string(body), e)
			return
		}
		checkSampling(t, string(body), p.smp, lim, vocab)
		if lp := p.req.Logprobs; lp != nil && (*lp < 0 || *lp > maxTopLogprobs) {
			t.Fatalf("%q: logprobs %d accepted", body, *lp)
		}
		if n := len(p.texts) + len(p.ids); n < 1 || n > lim.MaxPrompts || (!hasTok && len(p.texts) > 0) {
			t.Fatalf("%q: %d texts, %d id prompts", body, len(p.texts), len(p.ids))
		}
		for _, ids := range p.ids {
			if len(ids) == 0 {
				t.Fatalf("%q: empty prompt accepted", body)
			}
			for _, id := range ids {
				if id < 0 || id >= vocab {
					t.Fatalf("%q: token %d outside the vocabulary", body, id)
				}
			}
		}
	})
}

// FuzzParseChatRequest: any body is either refused with a 400 error object or accepted with
// settings within the limits and at least one message of a known role.
func FuzzParseChatRequest(f *testing.F) {
	for _, s := range parseSeeds {
		f.Add([]byte(s), true)
		f.Add([]byte(s), false)
	}
	lim := limits{MaxN: 4, MaxTokens: 32, MaxPrompts: 3}
	const vocab = 40
	f.Fuzz(func(t *testing.T, body []byte, hasTemplate bool) {
		var noChat error
		if !hasTemplate {
			noChat = errors.New("no chat_template in tokenizer_config.json")
		}
		req, smp, msgs, e := parseChatRequest(body, lim, vocab, noChat)
		if e != nil {
			checkParseError(t, string(body), e)
			return
		}
		checkSampling(t, string(body), smp, lim, vocab)
		if k := req.TopLogprobs; k != nil && (*k < 0 || *k > maxTopLogprobs || *k > 0 && !req.Logprobs) {
			t.Fatalf("%q: top_logprobs %d accepted (logprobs %v)", body, *k, req.Logprobs)
		}
		if !hasTemplate || len(msgs) == 0 {
			t.Fatalf("%q: accepted (template %v, %d messages)", body, hasTemplate, len(msgs))
		}
		for _, m := range msgs {
			if m.Role != "system" && m.Role != "user" && m.Role != "assistant" {
				t.Fatalf("%q: role %q accepted", body, m.Role)
			}
		}
	})
}

// TestParseTable: requests worked out by hand, accepted with the settings they ask (defaults
// where they ask none) or refused naming the field.
func TestParseTable(t *testing.T) {
	lim := limits{MaxN: 4, MaxTokens: 32, MaxPrompts: 3}
	for _, tc := range []struct {
		body              string
		n, maxTokens, nID int
		temperature, topP float64
		param             string // refused naming it
	}{
		{body: `{"prompt": [1, 2]}`, n: 1, maxTokens: 16, nID: 1, temperature: 1, topP: 1},
		{body: `{"prompt": [[1], [2, 3]], "n": 4, "max_tokens": 32, "temperature": 0, "top_p": 0.5}`, n: 4, maxTokens: 32, nID: 2, temperature: 0, topP: 0.5},
		{body: `{"prompt": [1], "max_completion_tokens": 7, "max_tokens": 9}`, n: 1, maxTokens: 7, nID: 1, temperature: 1, topP: 1},
		{body: `{"prompt": [[1], [2], [3], [4]]}`, param: "prompt"},
		{body: `{"prompt": [1], "n": 5}`, param: "n"},
		{body: `{"prompt": [1], "max_tokens": 0}`, param: "max_tokens"},
		{body: `{"prompt": [1], "temperature": -1}`, param: "temperature"},
		{body: `{"prompt": [40]}`, param: "prompt"},
		{body: `{"prompt": [1], "seed": "x"}`, param: "seed"},
		{body: `{"prompt": [1], "stop": ["a", "b", "c", "d", "e"]}`, param: "stop"},
		{body: `{"prompt": [1], "suffix": "x"}`, param: "suffix"},
	} {
		p, e := parseCompletionRequest([]byte(tc.body), lim, 40, true)
		switch {
		case tc.param != "":
			if e == nil || e.Param != tc.param {
				t.Errorf("%s: %+v, want a refusal naming %q", tc.body, e, tc.param)
			}
		case e != nil:
			t.Errorf("%s: refused: %v", tc.body, e)
		case p.smp.n != tc.n || p.smp.maxTokens != tc.maxTokens || len(p.ids) != tc.nID || p.smp.temperature != tc.temperature || p.smp.topP != tc.topP:
			t.Errorf("%s: parsed %+v with %d prompts", tc.body, p.smp, len(p.ids))
		}
	}
}
