package tokenizer

import (
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/prolong-rl/prolong/grpo/quickstart"
	"github.com/prolong-rl/prolong/grpo/tasks"
)

// quickstartCorpus is text the default model reads and writes: the default task's prompts
// with BOS, its worked answers with EOS, and seeded random strings over its alphabet with
// special tokens mixed in.
func quickstartCorpus(t *testing.T) []string {
	t.Helper()
	ts, err := tasks.Generate(quickstart.Task(), tasks.GenerateConfig{Split: tasks.Train, N: 200, Seed: 7})
	if err != nil {
		t.Fatal(err)
	}
	var texts []string
	for _, task := range ts {
		texts = append(texts, quickstart.BOS+task.Prompt, quickstart.Working(task.Prompt)+quickstart.EOS)
	}
	pieces := []string{quickstart.Pad, quickstart.BOS, quickstart.EOS, quickstart.AnswerOn, quickstart.AnswerOff}
	for _, c := range "0123456789+-*=() " {
		pieces = append(pieces, string(c), string(c), string(c))
	}
	rng := rand.New(rand.NewPCG(1, 2))
	for range 200 {
		var b strings.Builder
		for range rng.IntN(40) {
			b.WriteString(pieces[rng.IntN(len(pieces))])
		}
		texts = append(texts, b.String())
	}
	return texts
}

// quickstartTokenizer is the default model's tokenizer as tokenizer.json, saved and loaded
// back.
func quickstartTokenizer(t *testing.T) (*Tokenizer, string) {
	t.Helper()
	q := quickstart.NewTokenizer()
	tok, err := NewCharLevel(q.Tokens, []string{quickstart.Pad, quickstart.BOS, quickstart.EOS}, quickstart.EOS)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := tok.Save(dir); err != nil {
		t.Fatal(err)
	}
	back, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	return back, dir
}

// TestCharLevelMatchesQuickstart: the default model's tokenizer saved as tokenizer.json
// encodes the default task's text to the ids of grpo/quickstart's own tokenizer, and decodes
// them back to the same text.
func TestCharLevelMatchesQuickstart(t *testing.T) {
	q := quickstart.NewTokenizer()
	tok, _ := quickstartTokenizer(t)
	if tok.VocabSize() != len(q.Tokens) {
		t.Errorf("vocab size %d, quickstart %d", tok.VocabSize(), len(q.Tokens))
	}
	if id, ok := tok.EOS(); !ok || id != q.ID(quickstart.EOS) {
		t.Errorf("EOS %d %v, quickstart %d", id, ok, q.ID(quickstart.EOS))
	}
	if tok.HasChatTemplate() {
		t.Error("a chat template without one")
	}
	if _, err := tok.ApplyChatTemplate([]Message{{"user", "1+1"}}, true); err == nil {
		t.Error("ApplyChatTemplate without a chat template gave no error")
	}
	for _, text := range quickstartCorpus(t) {
		want, err := q.Encode(text)
		if err != nil {
			t.Fatal(err)
		}
		got := tok.Encode(text)
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Fatalf("%q: tokenizer.json gives %v, quickstart %v", text, got, want)
		}
		dec, err := tok.Decode(got)
		if err != nil || dec != text {
			t.Fatalf("Decode(Encode(%q)) = %q, %v", text, dec, err)
		}
		// quickstart's Decode drops EOS and padding; DecodeSkipSpecial drops BOS as well.
		skip, err := tok.DecodeSkipSpecial(got)
		if wantSkip := strings.ReplaceAll(q.Decode(want), quickstart.BOS, ""); err != nil || skip != wantSkip {
			t.Fatalf("DecodeSkipSpecial(%v) = %q, %v; want %q", got, skip, err, wantSkip)
		}
	}
}
