package tokenizer

import (
	"unicode/utf8"

	"golang.org/x/text/unicode/norm"
)

func utf8Valid(s string) bool { return utf8.ValidString(s) }
func nfc(s string) string     { return norm.NFC.String(s) }
