package tokenizer

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// The reference for chat templates is Python's Jinja2 set up as transformers sets it up
// (testdata/chat_ref.py, run by Debian's /usr/bin/python3 with python3-jinja2) on real models'
// templates (testdata/chat_templates: Qwen2.5, Qwen3, Llama 3.1, DeepSeek-R1-Distill-Qwen,
// Mistral Nemo, Gemma 2, and a probe of Jinja features; sources in its README.md). The committed
// golden comes from
//
//	cd checkpoints/tokenizer && /usr/bin/python3 testdata/chat_ref.py testdata/chat_templates testdata/chat_templates/chats.jsonl > testdata/chat_templates/golden.jsonl

const chatTemplateDir = "testdata/chat_templates"

// templateSpec is one entry of testdata/chat_templates/templates.json: the template's file and
// the special tokens of its model's tokenizer_config.json.
type templateSpec map[string]string

func readTemplateSpecs(t *testing.T) map[string]templateSpec {
	t.Helper()
	var specs map[string]templateSpec
	if err := json.Unmarshal(readFile(t, filepath.Join(chatTemplateDir, "templates.json")), &specs); err != nil {
		t.Fatal(err)
	}
	return specs
}

type jinjaGolden struct {
	Template            string `json:"template"`
	Conversation        int    `json:"conversation"`
	AddGenerationPrompt bool   `json:"add_generation_prompt"`
	Text                *string
	Error               *string
}

// checkJinja renders every line of a golden file of chat_ref.py and compares the text, or the
// message the template raised.
func checkJinja(t *testing.T, goldenPath string) {
	t.Helper()
	specs := readTemplateSpecs(t)
	chats := readJSONL[struct{ Messages []Message }](t, filepath.Join(chatTemplateDir, "chats.jsonl"))
	lines := readJSONL[jinjaGolden](t, goldenPath)
	tmpls := map[string]*ChatTemplate{}
	seen := map[string]int{}
	for _, g := range lines {
		spec, ok := specs[g.Template]
		if !ok || g.Conversation >= len(chats) {
			t.Fatalf("%s: template %q conversation %d: regenerate it", goldenPath, g.Template, g.Conversation)
		}
		tmpl := tmpls[g.Template]
		if tmpl == nil {
			var err error
			if tmpl, err = ParseChatTemplate(string(readFile(t, filepath.Join(chatTemplateDir, spec["file"])))); err != nil {
				t.Fatalf("%s: %v", g.Template, err)
			}
			tmpls[g.Template] = tmpl
		}
		special := map[string]string{}
		for k, v := range spec {
			if strings.HasSuffix(k, "_token") {
				special[k] = v
			}
		}
		where := fmt.Sprintf("%s conversation %d add_generation_prompt=%v", g.Template, g.Conversation, g.AddGenerationPrompt)
		text, err := tmpl.Render(chats[g.Conversation].Messages, g.AddGenerationPrompt, special)
		switch {
		case g.Error != nil:
			var te *TemplateError
			if !errors.As(err, &te) || te.Message != *g.Error {
				t.Errorf("%s: got %q, %v; Python's Jinja2 raised %q", where, text, err, *g.Error)
			}
		case err != nil:
			t.Errorf("%s: %v; Python's Jinja2 rendered %q", where, err, *g.Text)
		case text != *g.Text:
			t.Errorf("%s:\n got %q\nwant %q", where, text, *g.Text)
		}
		seen[g.Template]++
	}
	for name := range specs {
		if seen[name] == 0 {
			t.Errorf("%s: no rendering of template %s", goldenPath, name)
		}
	}
	t.Logf("%d renderings of %d templates checked", len(lines), len(seen))
}

// TestChatTemplatesJinja2: real models' chat templates render as Python's Jinja2 renders them
// under transformers' settings, raised errors included (Gemma refuses a system message, Mistral
// a conversation that does not alternate).
func TestChatTemplatesJinja2(t *testing.T) {
	checkJinja(t, filepath.Join(chatTemplateDir, "golden.jsonl"))
}

// needJinja2 returns /usr/bin/python3 when it imports jinja2; it skips without, or fails under
// PROLONG_REQUIRE_PYTHON=1 (CI).
func needJinja2(t *testing.T) string {
	t.Helper()
	const py = "/usr/bin/python3"
	err := exec.Command(py, "-c", "import jinja2").Run()
	if err != nil {
		if os.Getenv("PROLONG_REQUIRE_PYTHON") == "1" {
			t.Fatalf("PROLONG_REQUIRE_PYTHON=1 but %s cannot import jinja2 (apt-get install python3-jinja2): %v", py, err)
		}
		t.Skipf("%s with jinja2 is not installed (apt-get install python3-jinja2): %v", py, err)
	}
	return py
}

// TestChatTemplatesLiveJinja2 runs the reference itself, so that a stale golden file cannot
// hide a difference.
func TestChatTemplatesLiveJinja2(t *testing.T) {
	py := needJinja2(t)
	cmd := exec.Command(py, "testdata/chat_ref.py", chatTemplateDir, filepath.Join(chatTemplateDir, "chats.jsonl"))
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("testdata/chat_ref.py: %v: %s", err, stderr.String())
	}
	golden := filepath.Join(t.TempDir(), "golden.jsonl")
	if err := os.WriteFile(golden, out, 0o644); err != nil {
		t.Fatal(err)
	}
	checkJinja(t, golden)
	if committed := readFile(t, filepath.Join(chatTemplateDir, "golden.jsonl")); !bytes.Equal(committed, out) {
		t.Errorf("%s/golden.jsonl differs from what chat_ref.py writes now: regenerate it", chatTemplateDir)
	}
}

// TestQwen3ChatPython: where transformers.js's Jinja engine (@huggingface/jinja 0.5.11) and
// Python's Jinja2, which transformers runs, part ways, ApplyChatTemplate follows Python: its
// str.lstrip('\n') / rstrip('\n') / strip('\n') remove only line breaks, while the JavaScript
// engine ignores the argument and trims all white space. Worked by hand from Qwen3's template.
func TestQwen3ChatPython(t *testing.T) {
	tok := families(t)["qwen3"]
	for _, tc := range []struct {
		msgs []Message
		want string
	}{
		{[]Message{{"user", "q"}, {"assistant", "<think> r </think>\n\n x"}},
			"<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\n<think>\n r \n</think>\n\n x<|im_end|>\n"},
		{[]Message{{"user", "q"}, {"assistant", "\n spaced"}},
			"<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n spaced<|im_end|>\n"},
		// Before the last user message reasoning is dropped; the answer keeps its spaces.
		{[]Message{{"user", "q"}, {"assistant", "<think>r</think> a "}, {"user", "q2"}},
			"<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\n a <|im_end|>\n<|im_start|>user\nq2<|im_end|>\n"},
	} {
		got, err := tok.ApplyChatTemplate(tc.msgs, false)
		if err != nil || got != tc.want {
			t.Errorf("%q:\n got %q, %v\nwant %q", tc.msgs, got, err, tc.want)
		}
	}
}

// TestChatErrors: no template, a template that is not Jinja, a template that raises, no
// messages. Each error says which.
func TestChatErrors(t *testing.T) {
	for _, tc := range []struct{ config, want string }{
		{`{}`, "no chat_template in tokenizer_config.json"},
		{`{"chat_template": "{% for m in messages %}{{ m.content }}"}`, "tokenizer_config.json: chat_template: tokenizer: the chat template is not Jinja"},
	} {
		tok, err := ParseWithConfig(tinyJSON(t), []byte(tc.config))
		if err != nil {
			t.Fatal(err)
		}
		if tok.HasChatTemplate() {
			t.Errorf("%s: HasChatTemplate", tc.config)
		}
		if err := tok.ChatTemplateProblem(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: ChatTemplateProblem %v, want %q", tc.config, err, tc.want)
		}
		if _, err := tok.ApplyChatTemplate([]Message{{"user", "x"}}, true); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want %q", tc.config, err, tc.want)
		}
	}
	tok, err := ParseWithConfig(tinyJSON(t), []byte(`{"chat_template": "{% if messages[0].role == 'tool' %}{{ raise_exception('no tools here: ' + messages[0].content) }}{% endif %}ok"}`))
	if err != nil {
		t.Fatal(err)
	}
	if err := tok.ChatTemplateProblem(); err != nil || !tok.HasChatTemplate() {
		t.Fatalf("ChatTemplateProblem %v", err)
	}
	var te *TemplateError
	if _, err := tok.ApplyChatTemplate([]Message{{"tool", "x"}}, true); !errors.As(err, &te) || te.Message != "no tools here: x" {
		t.Errorf("raise_exception: %v", err)
	} else if want := "tokenizer: the chat template refused the conversation: no tools here: x"; err.Error() != want {
		t.Errorf("raise_exception: %q, want %q", err, want)
	}
	if got, err := tok.ApplyChatTemplate([]Message{{"user", "x"}}, true); err != nil || got != "ok" {
		t.Errorf("got %q, %v", got, err)
	}
	if _, err := tok.ApplyChatTemplate(nil, true); err == nil {
		t.Error("no messages: no error")
	}
}

// TestStrftime: transformers' strftime_now global formats as Python's strftime, worked by hand
// for 2024-07-05 09:03:07, a Friday.
func TestStrftime(t *testing.T) {
	at := time.Date(2024, 7, 5, 21, 3, 7, 0, time.UTC)
	for _, tc := range []struct{ format, want string }{
		{"%d %b %Y", "05 Jul 2024"},
		{"%Y-%m-%d", "2024-07-05"},
		{"%A %a %B %y %j", "Friday Fri July 24 187"},
		{"%H:%M:%S %I %p 100%%", "21:03:07 09 PM 100%"},
		{"plain %q %", "plain %q %"},
	} {
		if got := strftime(at, tc.format); got != tc.want {
			t.Errorf("strftime(%q) = %q, want %q", tc.format, got, tc.want)
		}
	}
	tmpl, err := ParseChatTemplate("{{ strftime_now('%Y') }}")
	if err != nil {
		t.Fatal(err)
	}
	before := time.Now().Year()
	got, err := tmpl.Render([]Message{{"user", "x"}}, false, nil)
	if err != nil || (got != fmt.Sprint(before) && got != fmt.Sprint(time.Now().Year())) {
		t.Errorf("strftime_now('%%Y') = %q, %v", got, err)
	}
}

// TestWithConfig: a chat template set on a tokenizer is saved in tokenizer_config.json and
// loaded back, the other fields kept.
func TestWithConfig(t *testing.T) {
	base, err := ParseWithConfig(tinyJSON(t), []byte(`{"eos_token": "b", "model_max_length": 7}`))
	if err != nil {
		t.Fatal(err)
	}
	tok, err := base.WithConfig(map[string]any{"chat_template": "{{ bos_token }}{{ messages[0].content }}{{ eos_token }}", "bos_token": "a"})
	if err != nil {
		t.Fatal(err)
	}
	dir, back := saveLoad(t, tok)
	if got, err := back.ApplyChatTemplate([]Message{{"user", "x"}}, true); err != nil || got != "axb" {
		t.Errorf("got %q, %v", got, err)
	}
	var cfg map[string]any
	if err := json.Unmarshal(readFile(t, filepath.Join(dir, ConfigFile)), &cfg); err != nil || cfg["model_max_length"] != 7.0 {
		t.Errorf("%s: %v, %v", ConfigFile, cfg, err)
	}
}

// TestChatTemplateFile: a chat_template.jinja beside tokenizer.json, as transformers 4.43 and
// later save it, is the template, in place of tokenizer_config.json's.
func TestChatTemplateFile(t *testing.T) {
	dir := t.TempDir()
	files := map[string]string{TokenizerFile: string(tinyJSON(t)), ConfigFile: `{"chat_template": "from the config"}`,
		ChatTemplateFile: "{% for m in messages %}[{{ m.role }}]{{ m.content }}{% endfor %}"}
	for name, body := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	tok, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := tok.ApplyChatTemplate([]Message{{"user", "x"}}, true); err != nil || got != "[user]x" {
		t.Errorf("got %q, %v", got, err)
	}
	if err := os.WriteFile(filepath.Join(dir, ChatTemplateFile), []byte("{% if %}"), 0o644); err != nil {
		t.Fatal(err)
	}
	if tok, err = Load(dir); err != nil {
		t.Fatal(err)
	}
	if err := tok.ChatTemplateProblem(); err == nil || !strings.HasPrefix(err.Error(), ChatTemplateFile+": ") {
		t.Errorf("a broken %s: %v", ChatTemplateFile, err)
	}
}

// TestChatConcurrent: one compiled template renders from many goroutines at once (the server
// renders requests concurrently) with the same results as one at a time. Run it under -race.
func TestChatConcurrent(t *testing.T) {
	specs := readTemplateSpecs(t)
	chats := readJSONL[struct{ Messages []Message }](t, filepath.Join(chatTemplateDir, "chats.jsonl"))
	name := "llama-3.1-8b-instruct"
	tmpl, err := ParseChatTemplate(string(readFile(t, filepath.Join(chatTemplateDir, specs[name]["file"]))))
	if err != nil {
		t.Fatal(err)
	}
	special := map[string]string{"bos_token": specs[name]["bos_token"], "eos_token": specs[name]["eos_token"]}
	want := make([]string, len(chats))
	for i, c := range chats {
		if want[i], err = tmpl.Render(c.Messages, true, special); err != nil {
			t.Fatal(err)
		}
	}
	errs := make(chan error, 8)
	for g := range 8 {
		go func() {
			for k := range 3 * len(chats) {
				i := (g + k) % len(chats)
				if got, err := tmpl.Render(chats[i].Messages, true, special); err != nil || got != want[i] {
					errs <- fmt.Errorf("goroutine %d conversation %d: %q, %v", g, i, got, err)
					return
				}
			}
			errs <- nil
		}()
	}
	for range 8 {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
}
