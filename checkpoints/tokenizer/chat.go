package tokenizer

import (
	"errors"
	"fmt"
	"regexp"
	"strings"
)

// chatFamily is a chat format this package renders. Templates are Jinja programs; rather than
// run Jinja, the family is recognised from the template and rendered here as its template
// renders plain messages (no tools, no images).
type chatFamily int

const (
	chatNone   chatFamily = iota
	chatML                // Qwen2 / Qwen2.5 / Qwen3: <|im_start|>role\ncontent<|im_end|>\n
	chatLlama3            // Llama 3: <|start_header_id|>role<|end_header_id|>\n\ncontent<|eot_id|>
)

// defaultSystemRe finds the system prompt a ChatML template adds when the conversation has none
// (Qwen2: "You are a helpful assistant.", Qwen2.5: "You are Qwen, created by Alibaba Cloud. ...").
var defaultSystemRe = regexp.MustCompile(`'<\|im_start\|>system\\n(You are [^'<]*)<\|im_end\|>\\n'`)

func detectChat(tmpl string) (chatFamily, string) {
	switch {
	case strings.Contains(tmpl, "<|im_start|>"):
		sys := ""
		if m := defaultSystemRe.FindStringSubmatch(tmpl); m != nil {
			sys = m[1]
		}
		return chatML, sys
	case strings.Contains(tmpl, "<|start_header_id|>") && !strings.Contains(tmpl, "Cutting Knowledge Date"):
		return chatLlama3, ""
	}
	return chatNone, ""
}

// HasChatTemplate reports whether tokenizer_config.json has a chat template this package can
// render.
func (t *Tokenizer) HasChatTemplate() bool { return t.chatFamily != chatNone }

// ApplyChatTemplate renders messages as the model's chat template does (tokenize=False); with
// addGenerationPrompt the assistant's turn is opened for the model to write.
func (t *Tokenizer) ApplyChatTemplate(msgs []Message, addGenerationPrompt bool) (string, error) {
	if t.chatFamily == chatNone {
		if t.chatTemplate != "" {
			return "", errors.New("tokenizer: the chat template of tokenizer_config.json is not one this package renders (ChatML as Qwen2/Qwen2.5/Qwen3, Llama 3.0 headers)")
		}
		return "", errors.New("tokenizer: no chat_template in tokenizer_config.json")
	}
	if len(msgs) == 0 {
		return "", errors.New("tokenizer: no messages")
	}
	var b strings.Builder
	for i, m := range msgs {
		switch m.Role {
		case "system", "user", "assistant":
		default:
			return "", fmt.Errorf("tokenizer: message %d: role %q (want system, user or assistant)", i, m.Role)
		}
	}
	switch t.chatFamily {
	case chatML:
		if msgs[0].Role != "system" && t.defaultSys != "" {
			b.WriteString("<|im_start|>system\n" + t.defaultSys + "<|im_end|>\n")
		}
		for _, m := range msgs {
			content := m.Content
			if m.Role == "assistant" {
				// Qwen3 keeps only the answer of earlier turns, not their reasoning.
				if i := strings.LastIndex(content, "</think>"); i >= 0 {
					content = strings.TrimLeft(content[i+len("</think>"):], "\n")
				}
			}
			b.WriteString("<|im_start|>" + m.Role + "\n" + content + "<|im_end|>\n")
		}
		if addGenerationPrompt {
			b.WriteString("<|im_start|>assistant\n")
		}
	case chatLlama3:
		if t.bos != "" {
			b.WriteString(t.bos)
		}
		for _, m := range msgs {
			b.WriteString("<|start_header_id|>" + m.Role + "<|end_header_id|>\n\n" + strings.TrimSpace(m.Content) + "<|eot_id|>")
		}
		if addGenerationPrompt {
			b.WriteString("<|start_header_id|>assistant<|end_header_id|>\n\n")
		}
	}
	return b.String(), nil
}
