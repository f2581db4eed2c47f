package tokenizer

import (
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"testing"
)

// TestCheckUnknownChar: a character the vocabulary lacks is an error naming it and its
// position (after added tokens, counted in characters), not dropped silently; with an unknown
// token it becomes that token and Check accepts it.
func TestCheckUnknownChar(t *testing.T) {
	tok, err := NewCharLevel([]string{"<pad>", "<eos>", "a", "b", "=", " "}, []string{"<pad>", "<eos>"}, "<eos>")
	if err != nil {
		t.Fatal(err)
	}
	if err := tok.Check("ab<eos> a=b"); err != nil {
		t.Fatalf("representable text refused: %v", err)
	}
	err = tok.Check("ab<eos>a é=b")
	var ue *UnknownCharError
	if !errors.As(err, &ue) || ue.Char != 'é' || ue.Index != 9 || ue.Offset != 9 {
		t.Fatalf("Check = %v (%+v), want é at character 9, byte 9", err, ue)
	}
	if msg := err.Error(); !strings.Contains(msg, `'é'`) || !strings.Contains(msg, "U+00E9") || !strings.Contains(msg, "position 9") {
		t.Errorf("message %q does not name the character and its position", msg)
	}
	if err := tok.Check("ab\xffa"); !errors.As(err, &ue) || ue.Offset != 2 {
		t.Errorf("an invalid byte: %v", err)
	}

	// The same vocabulary with an unknown token: é becomes <pad>, as in tokenizers.
	var tj map[string]any
	if err := json.Unmarshal(tok.raw, &tj); err != nil {
		t.Fatal(err)
	}
	tj["model"].(map[string]any)["unk_token"] = "<pad>"
	b, _ := json.Marshal(tj)
	withUnk, err := Parse(b)
	if err != nil {
		t.Fatal(err)
	}
	if err := withUnk.Check("a é"); err != nil {
		t.Errorf("with an unknown token: %v", err)
	}
	if ids := withUnk.Encode("aé"); !slices.Equal(ids, []int32{2, 0}) {
		t.Errorf("with an unknown token aé encodes to %v, want [2 0]", ids)
	}
}
