package tokenizer

import (
	"unicode"
	"unicode/utf8"
)

// The pre-tokenizer regular expressions of the byte-level BPE tokenizers supported. Go's
// regexp has no look-ahead (`\s+(?!\S)`), so splitWords implements them by hand, with the
// leftmost-first alternation and backtracking semantics of the regex engines Hugging Face
// tokenizers (Oniguruma) and transformers.js (JavaScript RegExp) use.
const (
	// qwenPattern is Qwen2 / Qwen2.5 / Qwen3's: numbers split into single digits.
	qwenPattern = `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`
	// llama3Pattern is Llama 3's: numbers in groups of up to three digits.
	llama3Pattern = `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`
)

// splitPatterns maps a supported pattern to the longest run of digits it keeps together.
var splitPatterns = map[string]int{qwenPattern: 1, llama3Pattern: 3}

func isL(r rune) bool  { return unicode.IsLetter(r) }
func isN(r rune) bool  { return unicode.IsNumber(r) }
func isWS(r rune) bool { return unicode.IsSpace(r) }
func isNL(r rune) bool { return r == '\r' || r == '\n' }

// isPunct is [^\s\p{L}\p{N}].
func isPunct(r rune) bool { return !isWS(r) && !isL(r) && !isN(r) }

// splitWords cuts text into the pieces the pattern matches ("Isolated" behaviour: every
// character belongs to exactly one piece). maxDigits is 1 (Qwen) or 3 (Llama 3).
func splitWords(text string, maxDigits int, out []string) []string {
	for i := 0; i < len(text); {
		n := matchAt(text[i:], maxDigits)
		out = append(out, text[i:i+n])
		i += n
	}
	return out
}

// at decodes the rune at byte offset i of s (utf8.RuneError, 0 past the end).
func at(s string, i int) (rune, int) {
	if i >= len(s) {
		return utf8.RuneError, 0
	}
	return utf8.DecodeRuneInString(s[i:])
}

// matchAt returns the length in bytes of the pattern's match at the start of s (always > 0 for
// a non-empty s: the last alternatives match any single character class).
func matchAt(s string, maxDigits int) int {
	c0, n0 := at(s, 0)
	// (?i:'s|'t|'re|'ve|'m|'ll|'d)
	if c0 == '\'' {
		for _, suf := range []string{"s", "t", "re", "ve", "m", "ll", "d"} {
			if n := foldPrefix(s[1:], suf); n > 0 {
				return 1 + n
			}
		}
	}
	// [^\r\n\p{L}\p{N}]?\p{L}+
	if !isNL(c0) && !isL(c0) && !isN(c0) {
		if c1, _ := at(s, n0); isL(c1) {
			return n0 + letters(s[n0:])
		}
	}
	if isL(c0) {
		return letters(s)
	}
	// \p{N} or \p{N}{1,3}
	if isN(c0) {
		n := n0
		for d := 1; d < maxDigits; d++ {
			c, w := at(s, n)
			if !isN(c) {
				break
			}
			n += w
		}
		return n
	}
	// ` ?[^\s\p{L}\p{N}]+[\r\n]*`
	start := 0
	if c0 == ' ' {
		if c1, _ := at(s, 1); isPunct(c1) {
			start = 1
		}
	}
	if c, _ := at(s, start); isPunct(c) {
		n := start
		for {
			c, w := at(s, n)
			if w == 0 || !isPunct(c) {
				break
			}
			n += w
		}
		for n < len(s) && (s[n] == '\r' || s[n] == '\n') {
			n++
		}
		return n
	}
	// From here c0 is white space. j: the end of the run of white space.
	j, lastNL := 0, -1
	for {
		c, w := at(s, j)
		if w == 0 || !isWS(c) {
			break
		}
		if isNL(c) {
			lastNL = j
		}
		j += w
	}
	// \s*[\r\n]+ : the white space up to and including its last line break.
	if lastNL >= 0 {
		return lastNL + 1
	}
	// \s+(?!\S) : all of it at the end of the text, else all but its last character.
	if j == len(s) {
		return j
	}
	if _, w := utf8.DecodeLastRuneInString(s[:j]); j-w > 0 {
		return j - w
	}
	// \s+
	return j
}

// letters is the length of the run of letters at the start of s.
func letters(s string) int {
	n := 0
	for {
		c, w := at(s, n)
		if w == 0 || !isL(c) {
			return n
		}
		n += w
	}
}

// foldPrefix returns the length in bytes of the prefix of s that equals the lower-case ASCII
// word under Unicode simple case folding (so "'ſ", with U+017F, is a contraction too, as the
// regex engines find), or 0.
func foldPrefix(s, word string) int {
	n := 0
	for i := 0; i < len(word); i++ {
		r, w := at(s, n)
		if w == 0 || !foldsTo(r, rune(word[i])) {
			return 0
		}
		n += w
	}
	return n
}

// foldsTo reports whether r is in the case-folding orbit of the ASCII letter c.
func foldsTo(r, c rune) bool {
	for f := c; ; {
		if f == r {
			return true
		}
		if f = unicode.SimpleFold(f); f == c {
			return false
		}
	}
}

// byteToRune is GPT-2's byte-level alphabet: printable bytes stand for themselves, the others
// are moved to code points from U+0100 up, so every byte is a visible character.
var byteToRune, runeToByte = func() ([256]rune, map[rune]byte) {
	var b2r [256]rune
	r2b := map[rune]byte{}
	n := 0
	for b := 0; b < 256; b++ {
		if ('!' <= b && b <= '~') || (0xA1 <= b && b <= 0xAC) || (0xAE <= b && b <= 0xFF) {
			b2r[b] = rune(b)
		} else {
			b2r[b] = rune(256 + n)
			n++
		}
		r2b[b2r[b]] = byte(b)
	}
	return b2r, r2b
}()
