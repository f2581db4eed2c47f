package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/prolong-rl/prolong/checkpoints"
	"github.com/prolong-rl/prolong/checkpoints/tokenizer"
	"github.com/prolong-rl/prolong/engine"
	"github.com/prolong-rl/prolong/grpo/quickstart"
)

// defaultModelDir writes a model directory as the default job exports it: the default model's
// shape (random weights) and its Hugging Face tokenizer with the chat template.
func defaultModelDir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	c := quickstart.ModelConfig()
	if err := checkpoints.Save(dir, c, engine.RandomWeights(c, 3, 0.02), checkpoints.SaveOptions{}); err != nil {
		t.Fatal(err)
	}
	// As tools/train's quickstartTokenizerFiles writes it (TestDocs serves the real export).
	q := quickstart.NewTokenizer()
	tok, err := tokenizer.NewCharLevel(q.Tokens, []string{quickstart.Pad, quickstart.BOS, quickstart.EOS}, quickstart.EOS)
	if err != nil {
		t.Fatal(err)
	}
	if tok, err = tok.WithConfig(quickstart.TokenizerConfig()); err != nil {
		t.Fatal(err)
	}
	if err := tok.Save(dir); err != nil {
		t.Fatal(err)
	}
	return dir
}

// TestChatDefaultModel: /v1/chat/completions works on the default job's model directory. A
// user message holding a question is the prompt the trainer feeds the model ("<bos>8+7-5="
// as the default tokenizer encodes it), which is also the chat template's rendering as the
// tokenizer encodes it; a role the template refuses is a 400 carrying the template's message.
func TestChatDefaultModel(t *testing.T) {
	dir := defaultModelDir(t)
	_, ts := startServer(t, testOptions(dir))
	q := quickstart.NewTokenizer()
	trainer, err := q.Encode(quickstart.BOS + "8+7-5=")
	if err != nil {
		t.Fatal(err)
	}
	tok, err := tokenizer.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, content := range []string{"8+7-5=", "<bos>8+7-5="} {
		msgs := []tokenizer.Message{{Role: "user", Content: content}}
		text, err := tok.ApplyChatTemplate(msgs, true)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := json.Marshal(map[string]any{"messages": msgs, "max_tokens": 4, "temperature": 0})
		code, v, _ := post(t, ts.URL+"/v1/chat/completions", string(body))
		if code != 200 {
			t.Fatalf("%q: HTTP %d %v", content, code, v)
		}
		var resp struct {
			Choices []struct {
				PromptTokenIDs []int32 `json:"prompt_token_ids"`
			}
		}
		b, _ := json.Marshal(v)
		if err := json.Unmarshal(b, &resp); err != nil || len(resp.Choices) != 1 {
			t.Fatalf("%q: %v %v", content, v, err)
		}
		got := resp.Choices[0].PromptTokenIDs
		if !slices.Equal(got, tok.EncodePlain(text)) || !slices.Equal(got, trainer) {
			t.Errorf("%q: prompt ids %v; the template's rendering %q encodes to %v, the trainer's prompt to %v", content, got, text, tok.EncodePlain(text), trainer)
		}
	}
	code, v, _ := post(t, ts.URL+"/v1/chat/completions", `{"messages": [{"role": "system", "content": "1+1="}, {"role": "user", "content": "1+2="}]}`)
	if msg := errorMessage(v); code != 400 || !strings.Contains(msg, "the chat template refused the conversation") || !strings.Contains(msg, "it has no system role") {
		t.Errorf("system message: HTTP %d %q", code, msg)
	}
}

// TestChatTemplateUnusable: a chat_template the Jinja engine cannot compile leaves completions
// working and makes a chat request a 400 that says what is wrong with the template.
func TestChatTemplateUnusable(t *testing.T) {
	dir := defaultModelDir(t)
	path := filepath.Join(dir, tokenizer.ConfigFile)
	var cfg map[string]any
	if err := json.Unmarshal(readTestFile(t, path), &cfg); err != nil {
		t.Fatal(err)
	}
	cfg["chat_template"] = "{% for message in messages %}{{ message.content }}"
	b, _ := json.Marshal(cfg)
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
	_, ts := startServer(t, testOptions(dir))
	code, v, _ := post(t, ts.URL+"/v1/chat/completions", `{"messages": [{"role": "user", "content": "1+2="}]}`)
	if msg := errorMessage(v); code != 400 || !strings.Contains(msg, "chat_template") || !strings.Contains(msg, "not Jinja this package can run") {
		t.Errorf("HTTP %d %q", code, msg)
	}
	if got, _ := completion(t, ts.URL, `{"prompt": "<bos>1+2=", "max_tokens": 2}`); len(got) != 1 {
		t.Errorf("completions: %+v", got)
	}
}

func errorMessage(v map[string]any) string {
	e, _ := v["error"].(map[string]any)
	s, _ := e["message"].(string)
	return s
}

func readTestFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestHelpChatTemplates: --help says how chat templates are rendered, which are known to
// work, and what happens to one that cannot be.
func TestHelpChatTemplates(t *testing.T) {
	var out strings.Builder
	if _, err := parseArgs([]string{"--help"}, &out); err == nil {
		t.Fatal("--help: no pflag.ErrHelp")
	}
	for _, want := range []string{"chat_template", "Jinja", "apply_chat_template", "raise_exception", "Llama 3", "Gemma", "disables chat", "400"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("--help does not say %q:\n%s", want, out.String())
		}
	}
}
