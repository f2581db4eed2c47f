package quickstart

// ChatTemplate is the default model's chat template (tokenizer_config.json's chat_template),
// shaped by how the model is trained: a prompt is BOS then the question ("<bos>8+7-5="), and
// the answer follows the "=" directly, so a user message is one question (BOS added unless the
// text has it), an assistant message a worked answer closed by EOS, and add_generation_prompt
// adds nothing. Other roles are refused with a message saying so.
const ChatTemplate = `{#- The default model: each user message is an arithmetic question such as 8+7-5=, which the
    model answers after BOS; an assistant message is a worked answer, ended by EOS. -#}
{%- for message in messages -%}
{%- if message.role == 'user' -%}
{%- if loop.first and not message.content.startswith(bos_token) %}{{ bos_token }}{% endif -%}
{{ message.content }}
{%- elif message.role == 'assistant' -%}
{{ message.content }}{{ eos_token }}
{%- else -%}
{{ raise_exception("the default model answers user messages holding an arithmetic question such as 8+7-5=; it has no " + message.role + " role") }}
{%- endif -%}
{%- endfor -%}
`

// TokenizerConfig are the tokenizer_config.json fields of the default model's Hugging Face
// tokenizer beyond what tokenizer.NewCharLevel writes: bos_token and ChatTemplate. (This
// package does not build that tokenizer itself: checkpoints/tokenizer's tests import it.)
func TokenizerConfig() map[string]any {
	return map[string]any{"bos_token": BOS, "chat_template": ChatTemplate}
}
