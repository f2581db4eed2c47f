package tokenizer

import (
	"fmt"
	"unicode/utf8"

	"golang.org/x/text/unicode/norm"
)

// UnknownCharError is a character of a text that the tokenizer cannot represent: its
// vocabulary lacks it (a byte-level vocabulary: one of its bytes) and it has no unknown token,
// so encoding would drop it.
type UnknownCharError struct {
	Char   rune // the character
	Index  int  // its position in the text, in characters from 0
	Offset int  // its position in bytes
	NFC    bool // the positions are in the text's NFC form (the tokenizer's normalizer changed it)
}

// Error names the character and where it is.
func (e *UnknownCharError) Error() string {
	form := ""
	if e.NFC {
		form = " of its NFC form"
	}
	return fmt.Sprintf("character %q (U+%04X) at position %d (byte %d)%s is not in the tokenizer's vocabulary, and the tokenizer has no unknown token", e.Char, e.Char, e.Index, e.Offset, form)
}

// Check returns an *UnknownCharError for the first character of text that Encode would drop,
// or nil. A tokenizer with an unknown token (model.unk_token) drops nothing: such characters
// become that token, as in Hugging Face tokenizers, and Check returns nil.
func (t *Tokenizer) Check(text string) error {
	if t.unk >= 0 {
		return nil
	}
	start, chars := 0, 0 // the text not yet checked begins at byte start, character chars
	for i := 0; i < len(text); {
		a, ok := t.addedAt(text, i)
		if !ok {
			i++
			continue
		}
		if err := t.checkPlain(text[start:i], start, chars); err != nil {
			return err
		}
		chars += utf8.RuneCountInString(text[start:i]) + utf8.RuneCountInString(a.content)
		i += len(a.content)
		start = i
	}
	return t.checkPlain(text[start:], start, chars)
}

// checkPlain checks a stretch of text without added tokens that begins at byte offset and
// character index in the whole text.
func (t *Tokenizer) checkPlain(s string, offset, index int) error {
	nfc := false
	if t.nfc {
		if n := norm.NFC.String(s); n != s {
			s, nfc = n, true
		}
	}
	for i, r := range s {
		_, size := utf8.DecodeRuneInString(s[i:]) // 1 for an invalid byte
		ok := true
		if t.byteLevel {
			for _, b := range []byte(s[i : i+size]) {
				ok = ok && t.byteIDs[b] >= 0
			}
		} else {
			_, ok = t.modelVocab[s[i:i+size]]
		}
		if !ok {
			return &UnknownCharError{Char: r, Index: index, Offset: offset + i, NFC: nfc}
		}
		index++
	}
	return nil
}
