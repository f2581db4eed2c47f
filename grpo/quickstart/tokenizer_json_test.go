package quickstart

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/prolong-rl/prolong/checkpoints/tokenizer"
	"github.com/prolong-rl/prolong/grpo/tasks"
)

// tokenizerTestdata is where checkpoints/tokenizer's tests find the default model's tokenizer
// and text: that package cannot import this one (grpo imports it), so the files are committed
// there and TestTokenizerTestdata keeps them equal to what this package makes.
const tokenizerTestdata = "../../checkpoints/tokenizer/testdata/quickstart"

// corpus is text the default model reads and writes: the default task's prompts with BOS, its
// worked answers with EOS, and seeded random strings over its alphabet with special tokens
// mixed in.
func corpus(t *testing.T) []string {
	t.Helper()
	ts, err := tasks.Generate(Task(), tasks.GenerateConfig{Split: tasks.Train, N: 200, Seed: 7})
	if err != nil {
		t.Fatal(err)
	}
	var texts []string
	for _, task := range ts {
		texts = append(texts, BOS+task.Prompt, Working(task.Prompt)+EOS)
	}
	pieces := []string{Pad, BOS, EOS, AnswerOn, AnswerOff}
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

// charLevel is the default model's tokenizer as tokenizer.json, saved to dir and loaded back.
func charLevel(t *testing.T, dir string) *tokenizer.Tokenizer {
	t.Helper()
	q := NewTokenizer()
	tok, err := tokenizer.NewCharLevel(q.Tokens, []string{Pad, BOS, EOS}, EOS)
	if err != nil {
		t.Fatal(err)
	}
	if err := tok.Save(dir); err != nil {
		t.Fatal(err)
	}
	back, err := tokenizer.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	return back
}

// TestTokenizerTestdata: checkpoints/tokenizer/testdata/quickstart holds this package's
// tokenizer as tokenizer.json and its corpus, as made now (PROLONG_WRITE_TESTDATA=1 rewrites
// them).
func TestTokenizerTestdata(t *testing.T) {
	dir := t.TempDir()
	charLevel(t, dir)
	text, err := json.MarshalIndent(corpus(t), "", " ")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "corpus.json"), append(text, '\n'), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{tokenizer.TokenizerFile, tokenizer.ConfigFile, "corpus.json"} {
		want, err := os.ReadFile(filepath.Join(dir, f))
		if err != nil {
			t.Fatal(err)
		}
		path := filepath.Join(tokenizerTestdata, f)
		if os.Getenv("PROLONG_WRITE_TESTDATA") == "1" {
			if err := os.MkdirAll(tokenizerTestdata, 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(path, want, 0o644); err != nil {
				t.Fatal(err)
			}
			continue
		}
		got, err := os.ReadFile(path)
		if err != nil || !bytes.Equal(got, want) {
			t.Errorf("%s is not what this package makes now (%v): rerun with PROLONG_WRITE_TESTDATA=1", path, err)
		}
	}
}

// TestCharLevelMatchesQuickstart: the default model's tokenizer saved as tokenizer.json
// encodes the default task's text to the ids of this package's own tokenizer, and decodes
// them back to the same text.
func TestCharLevelMatchesQuickstart(t *testing.T) {
	q := NewTokenizer()
	tok := charLevel(t, t.TempDir())
	if tok.VocabSize() != len(q.Tokens) {
		t.Errorf("vocab size %d, quickstart %d", tok.VocabSize(), len(q.Tokens))
	}
	if id, ok := tok.EOS(); !ok || id != q.ID(EOS) {
		t.Errorf("EOS %d %v, quickstart %d", id, ok, q.ID(EOS))
	}
	for _, text := range corpus(t) {
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
		if wantSkip := strings.ReplaceAll(q.Decode(want), BOS, ""); err != nil || skip != wantSkip {
			t.Fatalf("DecodeSkipSpecial(%v) = %q, %v; want %q", got, skip, err, wantSkip)
		}
	}
}
