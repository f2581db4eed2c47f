package tokenizer

import (
	"encoding/json"
	"os"
	"testing"
)

// quickstartDir holds grpo/quickstart's tokenizer (the default model's) as tokenizer.json and
// text it reads and writes (corpus.json). This package cannot import grpo/quickstart (grpo
// imports this package), so grpo/quickstart's TestTokenizerTestdata keeps these files equal to
// what it makes, and its TestCharLevelMatchesQuickstart checks the ids against its own encoder.
const quickstartDir = "testdata/quickstart"

// quickstartCorpus is the default task's prompts with BOS, its worked answers with EOS, and
// seeded random strings over its alphabet with special tokens mixed in.
func quickstartCorpus(t *testing.T) []string {
	t.Helper()
	b, err := os.ReadFile(quickstartDir + "/corpus.json")
	if err != nil {
		t.Fatal(err)
	}
	var texts []string
	if err := json.Unmarshal(b, &texts); err != nil {
		t.Fatalf("%s/corpus.json: %v", quickstartDir, err)
	}
	return texts
}

// quickstartTokenizer is the default model's tokenizer, loaded from tokenizer.json.
func quickstartTokenizer(t *testing.T) (*Tokenizer, string) {
	t.Helper()
	tok, err := Load(quickstartDir)
	if err != nil {
		t.Fatal(err)
	}
	return tok, quickstartDir
}

// TestCharLevelRoundTrip: the default model's tokenizer decodes what it encodes back to the
// text, has no chat template of its own, and says so when asked to apply one.
func TestCharLevelRoundTrip(t *testing.T) {
	tok, _ := quickstartTokenizer(t)
	if tok.HasChatTemplate() {
		t.Error("a chat template without one")
	}
	if _, err := tok.ApplyChatTemplate([]Message{{"user", "1+1"}}, true); err == nil {
		t.Error("ApplyChatTemplate without a chat template gave no error")
	}
	for _, text := range quickstartCorpus(t) {
		if dec, err := tok.Decode(tok.Encode(text)); err != nil || dec != text {
			t.Fatalf("Decode(Encode(%q)) = %q, %v", text, dec, err)
		}
	}
}
