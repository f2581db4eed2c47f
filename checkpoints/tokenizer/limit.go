package tokenizer

import "unicode/utf8"

// EncodeAtMost is Encode for a caller that keeps only encodings of at most limit ids (a
// trainer's prompt-length cut-off): it returns Encode's ids and true when they number at most
// limit, else nil and false, having stopped early. It stops once the ids encoded so far pass
// limit, and does not encode a pre-token (or, without a split pre-tokenizer, a stretch of
// text) that is sure to take them past it: one whose characters weigh more than the ids left
// can cover (see fits). So its memory is bounded by limit, not by len(text), beyond a copy of
// the text where it needs NFC normalization.
func (t *Tokenizer) EncodeAtMost(text string, limit int) ([]int32, bool) {
	if limit < 0 || len(t.prefix) > limit {
		return nil, false
	}
	return t.encodeAtMost(text, append([]int32(nil), t.prefix...), limit)
}

// EncodePlainAtMost is EncodeAtMost without the post-processor's tokens (EncodePlain).
func (t *Tokenizer) EncodePlainAtMost(text string, limit int) ([]int32, bool) {
	if limit < 0 {
		return nil, false
	}
	return t.encodeAtMost(text, nil, limit)
}

// spans returns the weight one token can cover at most, and the weight of the unknown token.
// A character the vocabulary holds weighs its bytes (1 a byte for a byte-level model); an
// unknown character, or a run of them fused into one unknown token, weighs at most the
// unknown token's length; a dropped character weighs nothing. A token's string is at least
// as long as the weight it covers (a merged token's string is its parts' joined, and an
// ignore_merges token is the word itself), so no token covers more than the longest string
// in the vocabulary. 0 when the vocabulary is empty.
func (t *Tokenizer) spans() (span, unk int64) {
	units := func(s string) int {
		if t.byteLevel {
			return utf8.RuneCountInString(s)
		}
		return len(s)
	}
	t.spanOnce.Do(func() {
		for s := range t.modelVocab {
			t.span = max(t.span, units(s))
		}
		if t.unk >= 0 && int(t.unk) < len(t.tokens) {
			t.unkSpan = units(t.tokens[t.unk])
		}
	})
	return int64(t.span), int64(t.unkSpan)
}

// fits reports whether word may encode to at most limit-have more ids (limit < 0: always).
// It is false only when word's characters weigh more than that many tokens can cover
// (spans); it scans word only as far as it takes to know.
func (t *Tokenizer) fits(word string, have, limit int) bool {
	if limit < 0 {
		return true
	}
	span, unkSpan := t.spans()
	if span == 0 {
		return true
	}
	room := int64(limit-have) * span // the most weight the ids left can cover
	if int64(len(word)) <= room {    // no character weighs more than its bytes
		return true
	}
	weight, inUnk := int64(0), false
	for i := 0; i < len(word); {
		n, id, known := 1, int32(-1), false
		if t.byteLevel {
			id = t.byteIDs[word[i]]
			known = id >= 0
		} else {
			_, n = utf8.DecodeRuneInString(word[i:])
			id, known = t.modelVocab[word[i:i+n]]
		}
		switch {
		case known: // unknown characters after the unknown token's own fuse into it
			weight, inUnk = weight+int64(n), id == t.unk
		case t.unk >= 0:
			if !inUnk || !t.fuseUnk {
				weight += min(unkSpan, int64(n))
			}
			inUnk = true
		}
		if weight > room {
			return false
		}
		i += n
	}
	return true
}
