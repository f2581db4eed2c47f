package main

import (
	"fmt"
	"slices"

	"github.com/prolong-rl/prolong/checkpoints/tokenizer"
	"github.com/prolong-rl/prolong/engine"
	"github.com/prolong-rl/prolong/grpo/data"
	"github.com/prolong-rl/prolong/grpo/quickstart"
)

// hfTokenizer is a model directory's Hugging Face tokenizer as a custom job uses it.
type hfTokenizer struct {
	tok *tokenizer.Tokenizer
	dir string
}

func loadTokenizer(dir string) (*hfTokenizer, error) {
	t, err := tokenizer.Load(dir)
	if err != nil {
		return nil, fmt.Errorf("--model %s: tokenizer (a model to train needs tokenizer.json): %w", dir, err)
	}
	return &hfTokenizer{tok: t, dir: dir}, nil
}

func (t *hfTokenizer) vocabSize() int { return t.tok.VocabSize() }

// prompt renders a data row as prompt ids and the text they encode: chat messages, or the text
// of a chat model, go through the chat template with the assistant turn opened; plain text is
// encoded as is. A prompt of more than maxTokens ids gives nil ids, its encoding stopped
// early.
func (t *hfTokenizer) prompt(r data.Row, chat bool, maxTokens int) ([]int32, string, error) {
	text := r.Prompt
	if r.Messages != nil || (chat && t.tok.HasChatTemplate()) {
		if err := t.tok.ChatTemplateProblem(); err != nil {
			return nil, "", fmt.Errorf("chat messages, but the tokenizer in %s cannot render them: %w", t.dir, err)
		}
		msgs := make([]tokenizer.Message, 0, len(r.Chat()))
		for _, m := range r.Chat() {
			msgs = append(msgs, tokenizer.Message{Role: m.Role, Content: m.Content})
		}
		var err error
		if text, err = t.tok.ApplyChatTemplate(msgs, true); err != nil {
			return nil, "", err
		}
	}
	if err := t.tok.Check(text); err != nil { // a character Encode would drop
		return nil, "", err
	}
	encode := t.tok.EncodeAtMost
	if text != r.Prompt || r.Messages != nil {
		encode = t.tok.EncodePlainAtMost // the template holds the special tokens it needs
	}
	if ids, ok := encode(text, maxTokens); ok {
		if ids == nil {
			ids = []int32{} // nil says dropped
		}
		return ids, text, nil
	}
	return nil, text, nil
}

// decode renders a response for the reward: special tokens (end of sequence, padding) are
// dropped, other added tokens (e.g. <answer> tags) kept.
func (t *hfTokenizer) decode(ids []int32) string {
	s, err := t.tok.DecodeSkipSpecial(ids)
	if err != nil {
		return "" // an id the tokenizer does not know: the response earns nothing
	}
	return s
}

// stopTokens are the model's end-of-sequence ids: config.json's eos_token_id and the
// tokenizer's eos token.
func (t *hfTokenizer) stopTokens(c *engine.Config) []int32 {
	var ids []int32
	for _, id := range c.EOSTokenIDs {
		ids = append(ids, int32(id))
	}
	if id, ok := t.tok.EOS(); ok && !slices.Contains(ids, id) {
		ids = append(ids, id)
	}
	return ids
}

// quickstartTokenizerFiles writes the default model's character tokenizer as tokenizer.json,
// with tokenizer_config.json's chat template (quickstart.ChatTemplate: a user message is a
// question, as the model's prompts are), so that its exports are whole Hugging Face model
// directories that /v1/chat/completions serves.
func quickstartTokenizerFiles(dir string) error {
	q := quickstart.NewTokenizer()
	t, err := tokenizer.NewCharLevel(q.Tokens, []string{quickstart.Pad, quickstart.BOS, quickstart.EOS}, quickstart.EOS)
	if err != nil {
		return err
	}
	if t, err = t.WithConfig(quickstart.TokenizerConfig()); err != nil {
		return err
	}
	return t.Save(dir)
}
