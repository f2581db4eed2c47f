package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prolong-rl/prolong/checkpoints"
	"github.com/prolong-rl/prolong/checkpoints/tokenizer"
	"github.com/prolong-rl/prolong/engine"
	"github.com/prolong-rl/prolong/engine/cpu"
)

// charTokens is a small character vocabulary (the default model's kind).
var charTokens = []string{"<pad>", "<bos>", "<eos>", "<answer>", "</answer>", "0", "1", "2", "3", "4", "5", "6", "7", "8", "9",
	"+", "-", "*", "=", "(", ")", " ", "a", "b", "c", "d", "e", "f", "g", "h", "i", "j",
	// For chat: the rest of the letters, newline and ChatML's markers.
	"k", "l", "m", "n", "o", "p", "q", "r", "s", "t", "u", "v", "w", "x", "y", "z", "\n", "<|im_start|>", "<|im_end|>"}

// chatMLTemplate is Qwen2's chat template without its default system prompt.
const chatMLTemplate = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"

func tinyConfig(vocab int) *engine.Config {
	return &engine.Config{ModelType: "qwen2", VocabSize: vocab, HiddenSize: 32, NumHiddenLayers: 2, NumAttentionHeads: 4,
		NumKeyValueHeads: 2, HeadDim: 8, IntermediateSize: 64, RMSNormEps: 1e-6, RopeTheta: 10000,
		MaxPositionEmbeddings: 256, AttentionBias: true, EOSTokenIDs: []int{2}}
}

// modelDir writes a random tiny model (with the character tokenizer and a ChatML chat template
// when tok) to a directory.
func modelDir(t testing.TB, seed uint64, tok bool) (string, *engine.Config, map[string]engine.HostTensor) {
	t.Helper()
	dir := t.TempDir()
	cfg := tinyConfig(len(charTokens))
	w := engine.RandomWeights(cfg, seed, 0.3)
	if err := checkpoints.Save(dir, cfg, w, checkpoints.SaveOptions{}); err != nil {
		t.Fatal(err)
	}
	if tok {
		tk, err := tokenizer.NewCharLevel(charTokens, []string{"<pad>", "<bos>", "<eos>", "<|im_start|>", "<|im_end|>"}, "<eos>")
		if err != nil {
			t.Fatal(err)
		}
		if err := tk.Save(dir); err != nil {
			t.Fatal(err)
		}
		path := filepath.Join(dir, tokenizer.ConfigFile)
		var tc map[string]any
		if b, err := os.ReadFile(path); err != nil || json.Unmarshal(b, &tc) != nil {
			t.Fatalf("%s: %v", path, err)
		}
		tc["chat_template"] = chatMLTemplate
		b, _ := json.Marshal(tc)
		if err := os.WriteFile(path, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir, cfg, w
}

// longModelDir writes a random tiny model without a tokenizer whose 8192 positions let a
// request run for seconds: long enough to still be in flight when a test acts on it.
func longModelDir(t testing.TB, seed uint64) (string, *engine.Config, map[string]engine.HostTensor) {
	t.Helper()
	dir := t.TempDir()
	cfg := tinyConfig(len(charTokens))
	cfg.MaxPositionEmbeddings = 8192
	w := engine.RandomWeights(cfg, seed, 0.3)
	if err := checkpoints.Save(dir, cfg, w, checkpoints.SaveOptions{}); err != nil {
		t.Fatal(err)
	}
	return dir, cfg, w
}

func testOptions(dir string) options {
	var o options
	fs := newFlags(&o)
	fs.Parse([]string{"--model", dir, "--api-key", "sekret"})
	return o
}

// startServer serves a model dir in-process.
func startServer(t testing.TB, o options) (*server, *httptest.Server) {
	t.Helper()
	s, err := newServer(o)
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(s.routes())
	t.Cleanup(func() { ts.Close(); s.sched.Close() })
	return s, ts
}

// send posts a JSON body with the API key; a failed request ends the test.
func send(t testing.TB, url string, body io.Reader) *http.Response {
	t.Helper()
	req, _ := http.NewRequest("POST", url, body)
	req.Header.Set("Authorization", "Bearer sekret")
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	return resp
}

// post sends a JSON body with the API key and decodes the JSON answer.
func post(t testing.TB, url, body string) (int, map[string]any, http.Header) {
	t.Helper()
	resp := send(t, url, strings.NewReader(body))
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	var v map[string]any
	if err := json.Unmarshal(data, &v); err != nil {
		t.Fatalf("%s: not JSON: %s", url, data)
	}
	return resp.StatusCode, v, resp.Header
}

type choice struct {
	Index        int     `json:"index"`
	Text         string  `json:"text"`
	TokenIDs     []int32 `json:"token_ids"`
	FinishReason string  `json:"finish_reason"`
	Logprobs     struct {
		TokenLogprobs []float32 `json:"token_logprobs"`
	} `json:"logprobs"`
}

func completion(t testing.TB, url, body string) ([]choice, uint64) {
	t.Helper()
	resp := send(t, url+"/v1/completions", strings.NewReader(body))
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		t.Fatalf("HTTP %d: %s", resp.StatusCode, data)
	}
	var r struct {
		Choices []choice `json:"choices"`
		Version uint64   `json:"weight_version"`
	}
	if err := json.Unmarshal(data, &r); err != nil {
		t.Fatal(err)
	}
	return r.Choices, r.Version
}

// direct generates with the engine itself.
func direct(t testing.TB, cfg *engine.Config, w map[string]engine.HostTensor, r engine.Request) engine.Result {
	t.Helper()
	m, err := engine.NewModel(cfg, cpu.New(), w, engine.F32)
	if err != nil {
		t.Fatal(err)
	}
	g, err := engine.NewGenerator(m, engine.GeneratorOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	res, err := g.Generate(context.Background(), []engine.Request{r})
	if err != nil {
		t.Fatal(err)
	}
	return res[0]
}

func sameSamples(t testing.TB, what string, got []choice, want engine.Result) {
	t.Helper()
	if len(got) != len(want.Samples) {
		t.Fatalf("%s: %d choices, want %d", what, len(got), len(want.Samples))
	}
	for k, s := range want.Samples {
		c := got[k]
		if !slices.Equal(c.TokenIDs, s.Tokens) || !slices.Equal(c.Logprobs.TokenLogprobs, s.LogProbs) || c.FinishReason != string(s.Finish) {
			t.Fatalf("%s sample %d: served %v %v %s, engine %v %v %s", what, k, c.TokenIDs, c.Logprobs.TokenLogprobs, c.FinishReason, s.Tokens, s.LogProbs, s.Finish)
		}
	}
}

// TestServedEqualsEngine: token ids and log-probs served, for requests sent one by one and
// sixteen at once, are the engine's own for the same seed.
func TestServedEqualsEngine(t *testing.T) {
	dir, cfg, w := modelDir(t, 1, false)
	_, ts := startServer(t, testOptions(dir))
	req := func(i int) (string, engine.Request) {
		prompt := []int32{1, int32(5 + i%10), 15, int32(5 + (i*3)%10), 18}
		r := engine.Request{Prompt: prompt, Params: engine.SamplingParams{N: 1 + i%3, Temperature: 0.8 + 0.1*float32(i%4), TopP: 0.95, TopK: i % 5,
			MaxNewTokens: 10 + i, Seed: uint64(100 + i), StopTokens: []int32{2}}}
		ids, _ := json.Marshal(prompt)
		body := fmt.Sprintf(`{"prompt": %s, "n": %d, "temperature": %g, "top_p": 0.95, "top_k": %d, "max_tokens": %d, "seed": %d, "logprobs": 1}`,
			ids, r.Params.N, r.Params.Temperature, r.Params.TopK, r.Params.MaxNewTokens, r.Params.Seed)
		return body, r
	}
	for i := 0; i < 3; i++ {
		body, r := req(i)
		got, v := completion(t, ts.URL, body)
		sameSamples(t, fmt.Sprintf("request %d", i), got, direct(t, cfg, w, r))
		if v != 1 {
			t.Errorf("weight version %d", v)
		}
	}
	var wg sync.WaitGroup
	for i := 0; i < 16; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			body, r := req(i)
			got, _ := completion(t, ts.URL, body)
			sameSamples(t, fmt.Sprintf("concurrent request %d", i), got, direct(t, cfg, w, r))
		}()
	}
	wg.Wait()
}

// streamCompletion sends body with stream set and adds up each choice's chunks; it fails
// without the final [DONE].
func streamCompletion(t *testing.T, url, body string, n int) []choice {
	t.Helper()
	resp := send(t, url+"/v1/completions", strings.NewReader(strings.Replace(body, "{", `{"stream": true,`, 1)))
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); ct != "text/event-stream" {
		t.Fatalf("content type %q", ct)
	}
	got := make([]choice, n)
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line, ok := strings.CutPrefix(sc.Text(), "data: ")
		if !ok {
			continue
		}
		if line == "[DONE]" {
			return got
		}
		var chunk struct{ Choices []choice }
		if err := json.Unmarshal([]byte(line), &chunk); err != nil {
			t.Fatal(err, line)
		}
		for _, c := range chunk.Choices {
			g := &got[c.Index]
			g.Text += c.Text
			g.TokenIDs = append(g.TokenIDs, c.TokenIDs...)
			g.Logprobs.TokenLogprobs = append(g.Logprobs.TokenLogprobs, c.Logprobs.TokenLogprobs...)
			if c.FinishReason != "" {
				g.FinishReason = c.FinishReason
			}
		}
	}
	t.Fatal("no [DONE]")
	return nil
}

// TestStreamEqualsNonStream: the server-sent events of a streamed completion add up to the
// non-streamed answer, and end with [DONE]; with a two-character stop string taken from the
// middle of an answer, the streamed text never shows the stop string's first character.
func TestStreamEqualsNonStream(t *testing.T) {
	dir, _, _ := modelDir(t, 2, true)
	_, ts := startServer(t, testOptions(dir))
	body := `{"prompt": "<bos>1+2=", "n": 2, "max_tokens": 40, "seed": 5, "temperature": 1, "logprobs": 1, "ignore_eos": true}`
	first, _ := completion(t, ts.URL, body)
	text := []rune(first[0].Text)
	if len(text) < 10 {
		t.Fatalf("answer %q too short to take a stop string from", first[0].Text)
	}
	stop := string(text[len(text)/2 : len(text)/2+2])
	cut := strings.Index(first[0].Text, stop)
	withStop := strings.Replace(body, "{", fmt.Sprintf(`{"stop": [%q, "zzz"],`, stop), 1)
	for _, b := range []string{body, withStop} {
		want, _ := completion(t, ts.URL, b)
		got := streamCompletion(t, ts.URL, b, 2)
		for k := range want {
			if got[k].Text != want[k].Text || !slices.Equal(got[k].TokenIDs, want[k].TokenIDs) || got[k].FinishReason != want[k].FinishReason ||
				!slices.Equal(got[k].Logprobs.TokenLogprobs, want[k].Logprobs.TokenLogprobs) {
				t.Errorf("%s choice %d: streamed %+v, whole %+v", b, k, got[k], want[k])
			}
		}
		if b == withStop && (want[0].Text != first[0].Text[:cut] || want[0].FinishReason != "stop") {
			t.Errorf("stop %q: text %q (%s), want %q", stop, want[0].Text, want[0].FinishReason, first[0].Text[:cut])
		}
	}
}

// chatPrompt12 is the ChatML rendering of one user message "1+2=" with the assistant's turn
// opened, as token ids of the character-level test vocabulary, worked out by hand.
func chatPrompt12() []int32 {
	var prompt []int32
	for _, tok := range []string{"<|im_start|>", "u", "s", "e", "r", "\n", "1", "+", "2", "=", "<|im_end|>", "\n",
		"<|im_start|>", "a", "s", "s", "i", "s", "t", "a", "n", "t", "\n"} {
		prompt = append(prompt, int32(slices.Index(charTokens, tok)))
	}
	return prompt
}

// TestChat: a chat request is the ChatML rendering of its messages (token ids worked out by
// hand from the vocabulary), sampled as the engine samples it; the message content is the
// sampled tokens' text without special tokens, and the streamed chunks of n = 2 add up to it.
func TestChat(t *testing.T) {
	dir, cfg, w := modelDir(t, 12, true)
	_, ts := startServer(t, testOptions(dir))
	prompt := chatPrompt12()
	want := direct(t, cfg, w, engine.Request{Prompt: prompt, Params: engine.SamplingParams{N: 2, Temperature: 1, TopP: 1, MaxNewTokens: 10, Seed: 11, StopTokens: []int32{2}}})
	text := func(ids []int32) string {
		var b strings.Builder
		for _, i := range ids {
			if tok := charTokens[i]; !slices.Contains([]string{"<pad>", "<bos>", "<eos>", "<|im_start|>", "<|im_end|>"}, tok) {
				b.WriteString(tok)
			}
		}
		return b.String()
	}
	body := `{"messages": [{"role": "user", "content": "1+2="}], "n": 2, "max_tokens": 10, "seed": 11, "temperature": 1, "logprobs": true}`
	code, v, _ := post(t, ts.URL+"/v1/chat/completions", body)
	if code != 200 {
		t.Fatalf("HTTP %d %v", code, v)
	}
	var resp struct {
		Object  string
		Choices []struct {
			Index    int
			Message  struct{ Role, Content string }
			TokenIDs []int32 `json:"token_ids"`
			Logprobs struct {
				Content []struct{ Logprob float32 }
			}
			FinishReason string `json:"finish_reason"`
		}
		Usage struct {
			PromptTokens int `json:"prompt_tokens"`
		}
	}
	b, _ := json.Marshal(v)
	json.Unmarshal(b, &resp)
	if resp.Object != "chat.completion" || len(resp.Choices) != 2 || resp.Usage.PromptTokens != len(prompt) {
		t.Fatalf("response %s", b)
	}
	for k, c := range resp.Choices {
		smp := want.Samples[k]
		var lps []float32
		for _, l := range c.Logprobs.Content {
			lps = append(lps, l.Logprob)
		}
		if c.Index != k || c.Message.Role != "assistant" || c.Message.Content != text(smp.Tokens) || !slices.Equal(c.TokenIDs, smp.Tokens) ||
			!slices.Equal(lps, smp.LogProbs) || c.FinishReason != string(smp.Finish) {
			t.Errorf("choice %d: served %+v, engine %v %v %s (text %q)", k, c, smp.Tokens, smp.LogProbs, smp.Finish, text(smp.Tokens))
		}
	}
	// Streamed.
	sresp := send(t, ts.URL+"/v1/chat/completions", strings.NewReader(strings.Replace(body, "{", `{"stream": true,`, 1)))
	defer sresp.Body.Close()
	content, ids := make([]string, 2), make([][]int32, 2)
	sc := bufio.NewScanner(sresp.Body)
	for sc.Scan() {
		line, ok := strings.CutPrefix(sc.Text(), "data: ")
		if !ok || line == "[DONE]" {
			continue
		}
		var chunk struct {
			Object  string
			Choices []struct {
				Index    int
				Delta    struct{ Content string }
				TokenIDs []int32 `json:"token_ids"`
			}
		}
		if err := json.Unmarshal([]byte(line), &chunk); err != nil || chunk.Object != "chat.completion.chunk" {
			t.Fatalf("chunk %s: %v", line, err)
		}
		for _, c := range chunk.Choices {
			content[c.Index] += c.Delta.Content
			ids[c.Index] = append(ids[c.Index], c.TokenIDs...)
		}
	}
	for k, smp := range want.Samples {
		if content[k] != text(smp.Tokens) || !slices.Equal(ids[k], smp.Tokens) {
			t.Errorf("streamed choice %d: %q %v, engine %q %v", k, content[k], ids[k], text(smp.Tokens), smp.Tokens)
		}
	}
	for _, tc := range []struct{ body, param string }{
		{`{"messages": []}`, "messages"},
		{`{"messages": [{"role": "robot", "content": "x"}]}`, "messages[0].role"},
		{`{"messages": [{"role": "user", "content": 7}]}`, "messages[0].content"},
		{`{"messages": [{"role": "user", "content": "x"}], "top_logprobs": 3}`, "top_logprobs"}, // without logprobs
		{`{"messages": [{"role": "user", "content": "x"}], "logprobs": true, "top_logprobs": 21}`, "top_logprobs"},
		{`{"messages": [{"role": "user", "content": "x\u00e9"}]}`, "messages[0].content"}, // é is not in the vocabulary
		{`{"messages": [{"role": "user", "content": "x"}], "max_tokens": -1}`, "max_tokens"},
	} {
		code, v, _ := post(t, ts.URL+"/v1/chat/completions", tc.body)
		if e, _ := v["error"].(map[string]any); code != 400 || e == nil || e["param"] != tc.param {
			t.Errorf("%s: HTTP %d %v, want 400 naming %q", tc.body, code, v, tc.param)
		}
	}
}

// TestBadRequests: each malformed or out-of-bounds request gets a 400 (413 for a body over
// the limit) with an OpenAI error object naming the field, and the server keeps serving.
func TestBadRequests(t *testing.T) {
	dir, _, _ := modelDir(t, 3, false)
	o := testOptions(dir)
	o.maxN, o.maxTokens, o.maxBodyKiB = 4, 32, 1
	_, ts := startServer(t, o)
	for _, tc := range []struct{ body, param string }{
		{`{"prompt": [1, 2`, ""},
		{`not json`, ""},
		{`{"prompt": [1, 2]} {"x": 1}`, ""},
		{`{"prompt": [1, 2], "n": "two"}`, "n"},
		{`{"prompt": [1, 2], "temperature": "hot"}`, "temperature"},
		{`{"prompt": [1, 2], "n": 5}`, "n"},
		{`{"prompt": [1, 2], "n": 0}`, "n"},
		{`{"prompt": [1, 2], "max_tokens": 33}`, "max_tokens"},
		{`{"prompt": [1, 2], "temperature": -0.5}`, "temperature"},
		{`{"prompt": [1, 2], "top_p": 0}`, "top_p"},
		{`{"prompt": [1, 2], "top_k": -3}`, "top_k"},
		{`{"prompt": [1, 51]}`, "prompt"},
		{`{"prompt": [1, -1]}`, "prompt"},
		{`{"prompt": [[1], [2, 99]]}`, "prompt[1]"},
		{`{"prompt": [1, 2], "stop_token_ids": [60]}`, "stop_token_ids"},
		{`{"prompt": "hello"}`, "prompt"}, // no tokenizer: ids only
		{`{"prompt": [1.5]}`, "prompt"},
		{`{"prompt": {}}`, "prompt"},
		{`{}`, "prompt"},
		{`{"prompt": [1, 2], "logprobs": 21}`, "logprobs"},
		{`{"prompt": [1, 2], "logprobs": -1}`, "logprobs"},
		{`{"prompt": [1, 2], "presence_penalty": 1}`, "presence_penalty"},
		{`{"prompt": [1, 2], "stop": "x"}`, "stop"},
		{`{"prompt": [1, 2], "max_tokens": 30, "n": 1, "best_of": 3}`, "best_of"},
	} {
		code, v, _ := post(t, ts.URL+"/v1/completions", tc.body)
		e, _ := v["error"].(map[string]any)
		if code != 400 || e == nil || e["message"] == "" || e["type"] != "invalid_request_error" || (tc.param != "" && e["param"] != tc.param) {
			t.Errorf("%s: HTTP %d %v, want 400 naming %q", tc.body, code, v, tc.param)
		}
	}
	big := `{"prompt": [` + strings.Repeat("1,", 1000) + `1]}`
	if code, v, _ := post(t, ts.URL+"/v1/completions", big); code != 413 || v["error"] == nil {
		t.Errorf("oversize body: HTTP %d %v", code, v)
	}
	if code, v, _ := post(t, ts.URL+"/v1/chat/completions", `{"messages": [{"role": "user", "content": "hi"}]}`); code != 400 || !strings.Contains(fmt.Sprint(v), "chat template") {
		t.Errorf("chat without a template: HTTP %d %v", code, v)
	}
	// Still serving.
	if got, _ := completion(t, ts.URL, `{"prompt": [1, 2], "max_tokens": 3}`); len(got) != 1 || len(got[0].TokenIDs) == 0 {
		t.Errorf("after the bad requests: %+v", got)
	}
}

// TestAuthAndCapacity: the API key guards the API, the weights endpoint needs it always, and
// a request beyond --max-concurrent gets 429 with Retry-After.
func TestAuthAndCapacity(t *testing.T) {
	dir, _, _ := longModelDir(t, 4)
	o := testOptions(dir)
	o.maxConcurrent, o.maxTokens = 1, 8000
	_, ts := startServer(t, o)
	resp, _ := http.Post(ts.URL+"/v1/completions", "application/json", strings.NewReader(`{"prompt": [1]}`))
	if resp.StatusCode != 401 {
		t.Errorf("no key: HTTP %d", resp.StatusCode)
	}
	resp.Body.Close()
	// One long streamed request holds the only slot.
	long := send(t, ts.URL+"/v1/completions", strings.NewReader(`{"prompt": [1], "max_tokens": 8000, "stream": true, "stop_token_ids": [], "ignore_eos": true}`))
	bufio.NewReader(long.Body).ReadString('\n') // it has started
	code, v, h := post(t, ts.URL+"/v1/completions", `{"prompt": [1], "max_tokens": 2}`)
	if code != 429 || h.Get("Retry-After") == "" || v["error"] == nil {
		t.Errorf("over capacity: HTTP %d %v Retry-After %q", code, v, h.Get("Retry-After"))
	}
	long.Body.Close()

	noKey := testOptions(dir)
	noKey.apiKey = ""
	_, ts2 := startServer(t, noKey)
	if code, _, _ := post(t, ts2.URL+"/v1/weights", `{"path": "x"}`); code != 403 {
		t.Errorf("weights without a configured key: HTTP %d", code)
	}
	noKey.addr = "0.0.0.0:0"
	if _, err := newServer(noKey); err == nil || !strings.Contains(err.Error(), "api-key") {
		t.Errorf("non-loopback without a key: %v", err)
	}
}

// TestDisconnectCancels: a client that goes away mid-stream has its sequences cancelled and
// their KV blocks freed long before its max_tokens would have been generated.
func TestDisconnectCancels(t *testing.T) {
	dir, _, _ := longModelDir(t, 13)
	o := testOptions(dir)
	o.maxTokens = 8000
	s, ts := startServer(t, o)
	resp := send(t, ts.URL+"/v1/completions", strings.NewReader(`{"prompt": [1], "n": 2, "max_tokens": 8000, "ignore_eos": true, "stream": true}`))
	bufio.NewReader(resp.Body).ReadString('\n') // it runs
	resp.Body.Close()                           // and the client leaves
	deadline := time.Now().Add(10 * time.Second)
	for st := s.sched.Stats(); st.Running > 0 || st.KVBlocksUsed > 0; st = s.sched.Stats() {
		if time.Now().After(deadline) {
			t.Fatalf("still running 10 s after the client left: %+v", st)
		}
		time.Sleep(time.Millisecond)
	}
	if st := s.sched.Stats(); st.TokensGenerated >= 16000 {
		t.Errorf("all %d tokens generated: the disconnect did not cancel", st.TokensGenerated)
	} else {
		t.Logf("cancelled after %d of 16000 tokens", st.TokensGenerated)
	}
}

// TestWeightUpdate: weights pushed as a safetensors body become version 2. A request in flight
// during the update (still running when the swap is pending) finishes on version 1 with
// version 1's tokens, and the update answers once it has; a request sent while the update
// waits, and later ones, run on the new weights, as the engine does with them.
func TestWeightUpdate(t *testing.T) {
	dir, cfg, w1 := longModelDir(t, 5)
	o := testOptions(dir)
	o.maxTokens = 8000
	s, ts := startServer(t, o)
	w2 := engine.RandomWeights(cfg, 77, 0.3)
	long := engine.Request{Prompt: []int32{1, 6, 15}, Params: engine.SamplingParams{N: 2, Temperature: 1, TopP: 1, MaxNewTokens: 1500, Seed: 9}}
	r := engine.Request{Prompt: []int32{1, 6, 15}, Params: engine.SamplingParams{N: 2, Temperature: 1, TopP: 1, MaxNewTokens: 60, Seed: 9, StopTokens: []int32{2}}}
	body := `{"prompt": [1, 6, 15], "n": 2, "temperature": 1, "max_tokens": 60, "seed": 9, "logprobs": 1}`
	// The request in flight: streamed, and running (its first token read) before the push; with
	// logprobs 0 (the sampled tokens' own log-probs) its tokens stream as they are sampled.
	sreq, _ := http.NewRequest("POST", ts.URL+"/v1/completions", strings.NewReader(
		`{"stream": true, "prompt": [1, 6, 15], "n": 2, "temperature": 1, "max_tokens": 1500, "seed": 9, "logprobs": 0, "ignore_eos": true}`))
	sreq.Header.Set("Authorization", "Bearer sekret")
	stream, err := http.DefaultClient.Do(sreq)
	if err != nil {
		t.Fatal(err)
	}
	defer stream.Body.Close()
	events := bufio.NewScanner(stream.Body)
	events.Scan()
	st := filepath.Join(t.TempDir(), "w.safetensors")
	if err := checkpoints.WriteSafetensors(st, w2, checkpoints.F32, nil); err != nil {
		t.Fatal(err)
	}
	data, _ := os.ReadFile(st)
	m1 := s.sched.Model()
	pushed := make(chan string, 1)
	go func() {
		req, _ := http.NewRequest("POST", ts.URL+"/v1/weights", bytes.NewReader(data))
		req.Header.Set("Authorization", "Bearer sekret")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			pushed <- err.Error()
			return
		}
		msg, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		pushed <- fmt.Sprintf("HTTP %d %s", resp.StatusCode, bytes.TrimSpace(msg))
	}()
	for s.sched.Model() == m1 { // the swap is pending
		time.Sleep(100 * time.Microsecond)
	}
	if st := s.sched.Stats(); st.Running != 2 {
		t.Fatalf("the long request is not running while the update waits: %+v", st)
	}
	during := make(chan []choice, 1)
	go func() {
		var c []choice
		defer func() { during <- c }()
		var v uint64
		if c, v = completion(t, ts.URL, body); v != 2 {
			t.Errorf("request sent during the update: version %d, want 2", v)
		}
	}()
	old := make([]choice, 2)
	for line := events.Text(); ; line = events.Text() {
		if data, ok := strings.CutPrefix(line, "data: "); ok && data != "[DONE]" {
			var chunk struct {
				Choices []choice
				Version uint64 `json:"weight_version"`
			}
			if err := json.Unmarshal([]byte(data), &chunk); err != nil {
				t.Fatal(err)
			}
			if chunk.Version != 1 {
				t.Fatalf("in-flight chunk of version %d", chunk.Version)
			}
			for _, c := range chunk.Choices {
				o := &old[c.Index]
				o.TokenIDs = append(o.TokenIDs, c.TokenIDs...)
				o.Logprobs.TokenLogprobs = append(o.Logprobs.TokenLogprobs, c.Logprobs.TokenLogprobs...)
				if c.FinishReason != "" {
					o.FinishReason = c.FinishReason
				}
			}
		}
		if !events.Scan() {
			break
		}
	}
	sameSamples(t, "in flight during the update", old, direct(t, cfg, w1, long))
	if msg := <-pushed; msg != `HTTP 200 {"model":"001","tensors":27,"weight_version":2}` {
		t.Fatalf("push: %s", msg)
	}
	sameSamples(t, "sent during the update", <-during, direct(t, cfg, w2, r))
	now, v := completion(t, ts.URL, body)
	if v != 2 {
		t.Errorf("after the update: version %d", v)
	}
	sameSamples(t, "after the update", now, direct(t, cfg, w2, r))
	// A directory of another shape is refused, naming it.
	other, _, _ := modelDir(t, 6, false)
	c2 := tinyConfig(len(charTokens))
	c2.NumHiddenLayers = 3
	checkpoints.Save(other, c2, engine.RandomWeights(c2, 1, 0.1), checkpoints.SaveOptions{})
	if code, v, _ := post(t, ts.URL+"/v1/weights", fmt.Sprintf(`{"path": %q}`, other)); code != 400 || !strings.Contains(fmt.Sprint(v), "another model") {
		t.Errorf("weights of another model: HTTP %d %v", code, v)
	}
	if code, _, _ := post(t, ts.URL+"/v1/weights", `{"path": "/nonexistent"}`); code != 400 {
		t.Errorf("missing path: HTTP %d", code)
	}
	// Bodies that are not safetensors, or hold another model's tensors, are refused, and the
	// server keeps version 2.
	wrong := filepath.Join(t.TempDir(), "wrong.safetensors")
	if err := checkpoints.WriteSafetensors(wrong, engine.RandomWeights(c2, 1, 0.1), checkpoints.F32, nil); err != nil {
		t.Fatal(err)
	}
	wrongData, _ := os.ReadFile(wrong)
	for _, tc := range []struct {
		what string
		body []byte
		want string
	}{{"garbage", []byte("not a safetensors file"), "not a safetensors file"}, {"3 layers", wrongData, `tensor \"model.layers.2.`}} {
		req, _ := http.NewRequest("POST", ts.URL+"/v1/weights", bytes.NewReader(tc.body))
		req.Header.Set("Authorization", "Bearer sekret")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		msg, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		t.Logf("%s body: %s", tc.what, bytes.TrimSpace(msg))
		if resp.StatusCode != 400 || !strings.Contains(string(msg), tc.want) {
			t.Errorf("%s body: HTTP %d %s, want 400 with %q", tc.what, resp.StatusCode, msg, tc.want)
		}
	}
	if _, v := completion(t, ts.URL, body); v != 2 {
		t.Errorf("after refused updates: version %d, want 2", v)
	}
}

// TestEndpoints: /health, /v1/models and /metrics.
func TestEndpoints(t *testing.T) {
	dir, _, _ := modelDir(t, 7, true)
	_, ts := startServer(t, testOptions(dir))
	completion(t, ts.URL, `{"prompt": "<bos>1+1=", "max_tokens": 4}`)
	for path, want := range map[string]string{
		"/health":    `"status":"ok"`,
		"/metrics":   "prolong_generated_tokens_total",
		"/v1/models": `"max_model_len":256`,
	} {
		req, _ := http.NewRequest("GET", ts.URL+path, nil)
		req.Header.Set("Authorization", "Bearer sekret")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || !strings.Contains(string(b), want) {
			t.Errorf("%s: HTTP %d, want %q in\n%.400s", path, resp.StatusCode, want, b)
		}
		if path == "/metrics" {
			for _, m := range []string{"prolong_queue_depth", "prolong_running_sequences", "prolong_kv_cache_usage_ratio",
				"prolong_request_duration_seconds_bucket", "prolong_generation_tokens_per_second", "process_resident_memory_bytes"} {
				if !strings.Contains(string(b), m) {
					t.Errorf("/metrics lacks %s", m)
				}
			}
		}
	}
}

// FuzzCompletionRequest: whatever the body, the server answers 200, 400 or 413 with JSON, and
// never panics.
func FuzzCompletionRequest(f *testing.F) {
	dir, _, _ := modelDir(f, 8, true)
	o := testOptions(dir)
	o.maxN, o.maxTokens = 2, 3
	s, err := newServer(o)
	if err != nil {
		f.Fatal(err)
	}
	defer s.sched.Close()
	h := s.routes()
	for _, seed := range []string{`{"prompt": [1, 2], "max_tokens": 2}`, `{"prompt": "<bos>1+", "n": 2, "stream": true}`,
		`{"prompt": [[1], [2]], "stop": ["1"], "echo": true, "logprobs": 1}`, `{"prompt": "x", "temperature": 1e308}`, `[]`, `{"prompt": [1], "top_k": -1}`} {
		f.Add(seed, false)
		f.Add(seed, true)
	}
	f.Fuzz(func(t *testing.T, body string, chat bool) {
		path := "/v1/completions"
		if chat {
			path = "/v1/chat/completions"
		}
		req := httptest.NewRequest("POST", path, strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer sekret")
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		switch rec.Code {
		case 200, 400, 413:
		default:
			t.Fatalf("%s %q: HTTP %d %s", path, body, rec.Code, rec.Body.String())
		}
	})
}

// TestStopStringsManyPrompts: with stop strings, each choice of a request with several
// prompts is the engine's sample for its prompt cut before the first stop string (its token
// ids up to the token that completed it, finish_reason "stop"); samples of one prompt ending
// early on a stop string leave the other prompts running.
func TestStopStringsManyPrompts(t *testing.T) {
	dir, cfg, w := modelDir(t, 14, true)
	_, ts := startServer(t, testOptions(dir))
	id := func(tok string) int32 { return int32(slices.Index(charTokens, tok)) }
	texts := []string{"1+2=", "3*4=", "9-5=", "(7)"}
	stops := []string{"3", "="}
	body, _ := json.Marshal(map[string]any{"prompt": texts, "n": 2, "max_tokens": 200, "seed": 40, "temperature": 1, "stop": stops, "ignore_eos": true, "logprobs": 1})
	got, _ := completion(t, ts.URL, string(body))
	if len(got) != 2*len(texts) {
		t.Fatalf("%d choices, want %d", len(got), 2*len(texts))
	}
	cut := 0
	for i, text := range texts {
		var prompt []int32
		for _, r := range text {
			prompt = append(prompt, id(string(r)))
		}
		want := direct(t, cfg, w, engine.Request{Prompt: prompt, Params: engine.SamplingParams{N: 2, Temperature: 1, TopP: 1, MaxNewTokens: 200, Seed: 40 + uint64(i)}})
		for k, smp := range want.Samples {
			// Cut by hand: single-character stop strings end the text at the first such token.
			end, finish, text := len(smp.Tokens), string(smp.Finish), ""
			for p, tid := range smp.Tokens {
				if s := charTokens[tid]; slices.Contains(stops, s) {
					end, finish = p+1, "stop"
					break
				} else if !slices.Contains([]string{"<pad>", "<bos>", "<eos>", "<|im_start|>", "<|im_end|>"}, s) {
					text += s
				}
			}
			if end < len(smp.Tokens) {
				cut++
			}
			c := got[i*2+k]
			if c.Index != i*2+k || c.Text != text || c.FinishReason != finish || !slices.Equal(c.TokenIDs, smp.Tokens[:end]) ||
				!slices.Equal(c.Logprobs.TokenLogprobs, smp.LogProbs[:end]) {
				t.Errorf("prompt %d sample %d: served %q %v %s, engine cut %q %v %s", i, k, c.Text, c.TokenIDs, c.FinishReason, text, smp.Tokens[:end], finish)
			}
		}
	}
	if cut < 4 {
		t.Errorf("only %d of 8 samples ended on a stop string: the test needs more", cut)
	}
}

// TestModelAndContextErrors: a request naming a model the server does not serve is 404
// model_not_found (vLLM's answer), on both endpoints; no name, the served name and a name served
// before a weight update are fine; a prompt that leaves no room for max_tokens is a 400 naming
// max_tokens, the request's field (the engine's own word is max_new_tokens).
func TestModelAndContextErrors(t *testing.T) {
	dir, cfg, _ := modelDir(t, 3, true)
	s, ts := startServer(t, testOptions(dir))
	served := s.modelName()
	for _, tc := range []struct {
		path, body string
		code       int
	}{
		{"/v1/completions", `{"model": "gpt-4", "prompt": [1, 2], "max_tokens": 2}`, 404},
		{"/v1/chat/completions", `{"model": "gpt-4", "messages": [{"role": "user", "content": "1+2="}], "max_tokens": 2}`, 404},
		{"/v1/completions", `{"prompt": [1, 2], "max_tokens": 2}`, 200},
		{"/v1/completions", `{"model": "` + served + `", "prompt": [1, 2], "max_tokens": 2}`, 200},
		{"/v1/chat/completions", `{"model": "` + served + `", "messages": [{"role": "user", "content": "1+2="}], "max_tokens": 2}`, 200},
	} {
		code, v, _ := post(t, ts.URL+tc.path, tc.body)
		if code != tc.code {
			t.Errorf("%s %s: HTTP %d %v, want %d", tc.path, tc.body, code, v, tc.code)
			continue
		}
		if code == 404 {
			e, _ := v["error"].(map[string]any)
			if e["code"] != "model_not_found" || e["param"] != "model" || !strings.Contains(fmt.Sprint(e["message"]), `"gpt-4"`) || !strings.Contains(fmt.Sprint(e["message"]), served) {
				t.Errorf("%s: error %v, want model_not_found naming gpt-4 and %s", tc.path, e, served)
			}
		}
	}
	// After an update under another name, the old name still works: a client started before
	// the trainer's push keeps going.
	s.setModelName("step-000100")
	if code, v, _ := post(t, ts.URL+"/v1/completions", `{"model": "`+served+`", "prompt": [1, 2], "max_tokens": 2}`); code != 200 {
		t.Errorf("the name served before an update: HTTP %d %v", code, v)
	}
	if code, _, _ := post(t, ts.URL+"/v1/completions", `{"model": "step-000099", "prompt": [1, 2], "max_tokens": 2}`); code != 404 {
		t.Errorf("a name never served: HTTP %d, want 404", code)
	}

	long := make([]int, cfg.MaxPositionEmbeddings-4)
	for i := range long {
		long[i] = 1 + i%5
	}
	body, _ := json.Marshal(map[string]any{"prompt": long, "max_tokens": 10})
	code, v, _ := post(t, ts.URL+"/v1/completions", string(body))
	e, _ := v["error"].(map[string]any)
	msg := fmt.Sprint(e["message"])
	if code != 400 || e["param"] != "max_tokens" || strings.Contains(msg, "max_new_tokens") || !strings.Contains(msg, "max_tokens is 10") ||
		!strings.Contains(msg, fmt.Sprintf("context length is %d", cfg.MaxPositionEmbeddings)) {
		t.Errorf("context overflow: HTTP %d %v", code, v)
	}
}
