package tokenizer

import (
	"errors"
	"fmt"
	"regexp"
	"strings"
)

// chatFamily is a chat format this package renders. Templates are Jinja programs; rather than
// run Jinja, the family is recognised from the template and rendered here as its template
// renders plain messages (system, user and assistant text; no tools, no images).
type chatFamily int

const (
	chatNone chatFamily = iota
	// chatML is Qwen2 / Qwen2.5: <|im_start|>role\ncontent<|im_end|>\n, with the template's
	// default system prompt when the conversation has none.
	chatML
	// chatQwen3 is ChatML as Qwen3 writes it: no default system prompt; an assistant message
	// after the last user message keeps its reasoning in <think> tags, earlier ones lose it.
	chatQwen3
	// chatLlama3 is Llama 3: bos <|start_header_id|>role<|end_header_id|>\n\ncontent<|eot_id|>.
	chatLlama3
)

// defaultSystemRe finds the system prompt a ChatML template adds when the conversation has none
// (Qwen2: "You are a helpful assistant.", Qwen2.5: "You are Qwen, created by Alibaba Cloud. ...").
var defaultSystemRe = regexp.MustCompile(`'<\|im_start\|>system\\n(You are [^'<]*)<\|im_end\|>\\n'`)

// chatFormat is what the chat template is recognised as.
type chatFormat struct {
	family        chatFamily
	defaultSystem string // chatML
	alwaysPrompt  bool   // chatLlama3: the template opens the assistant turn whatever add_generation_prompt says
}

func detectChat(tmpl string) chatFormat {
	switch {
	case strings.Contains(tmpl, "<|im_start|>") && strings.Contains(tmpl, "reasoning_content") && strings.Contains(tmpl, "last_query_index"):
		return chatFormat{family: chatQwen3}
	case strings.Contains(tmpl, "<|im_start|>") && !strings.Contains(tmpl, "think>"):
		f := chatFormat{family: chatML}
		if m := defaultSystemRe.FindStringSubmatch(tmpl); m != nil {
			f.defaultSystem = m[1]
		}
		return f
	case strings.Contains(tmpl, "<|start_header_id|>") && !strings.Contains(tmpl, "Cutting Knowledge Date"):
		return chatFormat{family: chatLlama3, alwaysPrompt: !strings.Contains(tmpl, "add_generation_prompt")}
	}
	return chatFormat{}
}

// HasChatTemplate reports whether tokenizer_config.json has a chat template this package can
// render.
func (t *Tokenizer) HasChatTemplate() bool { return t.chat.family != chatNone }

// ApplyChatTemplate renders messages as the model's chat template does (tokenize=False); with
// addGenerationPrompt the assistant's turn is opened for the model to write. Encode the result
// with EncodePlain: it holds the special tokens the model needs.
func (t *Tokenizer) ApplyChatTemplate(msgs []Message, addGenerationPrompt bool) (string, error) {
	if t.chat.family == chatNone {
		if t.chatTemplate != "" {
			return "", errors.New("tokenizer: the chat template of tokenizer_config.json is not one this package renders (ChatML as Qwen2/Qwen2.5/Qwen3 write it, Llama 3.0 headers)")
		}
		return "", errors.New("tokenizer: no chat_template in tokenizer_config.json")
	}
	if len(msgs) == 0 {
		return "", errors.New("tokenizer: no messages")
	}
	for i, m := range msgs {
		switch m.Role {
		case "system", "user", "assistant":
		default:
			return "", fmt.Errorf("tokenizer: message %d: role %q (want system, user or assistant)", i, m.Role)
		}
	}
	var b strings.Builder
	switch t.chat.family {
	case chatML:
		if msgs[0].Role != "system" && t.chat.defaultSystem != "" {
			b.WriteString("<|im_start|>system\n" + t.chat.defaultSystem + "<|im_end|>\n")
		}
		for _, m := range msgs {
			b.WriteString("<|im_start|>" + m.Role + "\n" + m.Content + "<|im_end|>\n")
		}
		if addGenerationPrompt {
			b.WriteString("<|im_start|>assistant\n")
		}
	case chatQwen3:
		renderQwen3(&b, msgs)
		if addGenerationPrompt {
			b.WriteString("<|im_start|>assistant\n")
		}
	case chatLlama3:
		b.WriteString(t.bos)
		for _, m := range msgs {
			b.WriteString("<|start_header_id|>" + m.Role + "<|end_header_id|>\n\n" + strings.TrimSpace(m.Content) + "<|eot_id|>")
		}
		if addGenerationPrompt || t.chat.alwaysPrompt {
			b.WriteString("<|start_header_id|>assistant<|end_header_id|>\n\n")
		}
	}
	return b.String(), nil
}

// renderQwen3 writes messages as Qwen3's template does.
func renderQwen3(b *strings.Builder, msgs []Message) {
	// The last user message that is not a tool's response.
	lastQuery := len(msgs) - 1
	for i := len(msgs) - 1; i >= 0; i-- {
		c := msgs[i].Content
		if msgs[i].Role == "user" && !(strings.HasPrefix(c, "<tool_response>") && strings.HasSuffix(c, "</tool_response>")) {
			lastQuery = i
			break
		}
	}
	for i, m := range msgs {
		if m.Role != "assistant" {
			b.WriteString("<|im_start|>" + m.Role + "\n" + m.Content + "<|im_end|>\n")
			continue
		}
		content, reasoning := m.Content, ""
		if strings.Contains(content, "</think>") {
			parts := strings.Split(content, "</think>")
			content = strings.TrimLeft(parts[len(parts)-1], "\n")
			before := strings.Split(strings.TrimRight(parts[0], "\n"), "<think>")
			reasoning = strings.TrimLeft(before[len(before)-1], "\n")
		}
		if i > lastQuery && (i == len(msgs)-1 || reasoning != "") {
			b.WriteString("<|im_start|>assistant\n<think>\n" + strings.Trim(reasoning, "\n") + "\n</think>\n\n" + strings.TrimLeft(content, "\n"))
		} else {
			b.WriteString("<|im_start|>assistant\n" + content)
		}
		b.WriteString("<|im_end|>\n")
	}
}
