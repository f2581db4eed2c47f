package tokenizer

import (
	"strings"
	"testing"
)

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

// TestChatErrors: no template, an unknown template, a role the formats do not have.
func TestChatErrors(t *testing.T) {
	for _, tc := range []struct{ config, want string }{
		{`{}`, "no chat_template"},
		{`{"chat_template": "{{ messages }}"}`, "not one this package renders"},
		{`{"chat_template": "{% for m in messages %}<|im_start|>{{ m.content }}<think>{% endfor %}"}`, "not one this package renders"},
	} {
		tok, err := ParseWithConfig(tinyJSON(t), []byte(tc.config))
		if err != nil {
			t.Fatal(err)
		}
		if tok.HasChatTemplate() {
			t.Errorf("%s: HasChatTemplate", tc.config)
		}
		if _, err := tok.ApplyChatTemplate([]Message{{"user", "x"}}, true); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want %q", tc.config, err, tc.want)
		}
	}
	tok, err := ParseWithConfig(tinyJSON(t), []byte(`{"chat_template": "{{ '<|im_start|>' + m.role }}"}`))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tok.ApplyChatTemplate([]Message{{"tool", "x"}}, true); err == nil || !strings.Contains(err.Error(), `role "tool"`) {
		t.Errorf("tool role: %v", err)
	}
	if _, err := tok.ApplyChatTemplate(nil, true); err == nil {
		t.Error("no messages: no error")
	}
}
