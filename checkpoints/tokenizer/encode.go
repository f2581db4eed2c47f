package tokenizer

import (
	"strings"
	"unicode/utf8"

	"golang.org/x/text/unicode/norm"
)

// merge is one BPE merge rule: the pair's rank (lower merges first) and the merged token.
type merge struct {
	rank   int32
	result int32
}

// Encode turns text into ids as Hugging Face's tokenizer(text) does by default: added tokens
// (special ones included) are recognised in the text, and the post-processor's tokens (Llama
// 3's <|begin_of_text|>) are put in front.
func (t *Tokenizer) Encode(text string) []int32 {
	return t.encode(text, append([]int32(nil), t.prefix...))
}

// EncodePlain encodes without the post-processor's tokens (add_special_tokens=False), as
// apply_chat_template(tokenize=True) does: the template already holds them.
func (t *Tokenizer) EncodePlain(text string) []int32 { return t.encode(text, nil) }

func (t *Tokenizer) encode(text string, out []int32) []int32 {
	out, _ = t.encodeAtMost(text, out, -1)
	return out
}

// encodeAtMost is encode that gives up, returning false, as soon as it knows the ids number
// more than limit (limit < 0: no bound).
func (t *Tokenizer) encodeAtMost(text string, out []int32, limit int) ([]int32, bool) {
	start := 0 // the text not yet encoded begins here
	ok := true
	for i := 0; i < len(text); {
		a, found := t.addedAt(text, i)
		if !found {
			i++
			continue
		}
		if out, ok = t.encodeText(text[start:i], out, limit); !ok {
			return nil, false
		}
		out = append(out, a.id)
		if limit >= 0 && len(out) > limit {
			return nil, false
		}
		i += len(a.content)
		start = i
	}
	return t.encodeText(text[start:], out, limit)
}

// addedAt returns the longest added token that text holds at byte offset i.
func (t *Tokenizer) addedAt(text string, i int) (addedToken, bool) {
	for _, k := range t.addedByFirst[text[i]] { // longest first
		if a := t.added[k]; strings.HasPrefix(text[i:], a.content) {
			return a, true
		}
	}
	return addedToken{}, false
}

// encodeText encodes a stretch of text without added tokens: normalizer, pre-tokenizer, BPE
// of each piece. With limit >= 0 it stops, returning false, once the ids number more than limit,
// or before a piece that is sure to take them past it (see fits).
func (t *Tokenizer) encodeText(text string, out []int32, limit int) ([]int32, bool) {
	if text == "" {
		return out, true
	}
	if t.nfc {
		text = norm.NFC.String(text)
	}
	if t.maxDigits == 0 {
		if !t.fits(text, len(out), limit) {
			return nil, false
		}
		if out = t.bpeCached(text, out); limit >= 0 && len(out) > limit {
			return nil, false
		}
		return out, true
	}
	for i := 0; i < len(text); {
		n := matchAt(text[i:], t.maxDigits)
		if !t.fits(text[i:i+n], len(out), limit) {
			return nil, false
		}
		out = t.bpeCached(text[i:i+n], out)
		if limit >= 0 && len(out) > limit {
			return nil, false
		}
		i += n
	}
	return out, true
}

// maxCachedWord is the longest pre-token (bytes) whose ids are kept; maxCacheEntries bounds the
// cache (it is emptied when full).
const (
	maxCachedWord   = 256
	maxCacheEntries = 1 << 16
)

// bpeCached is bpe with a cache per pre-token.
func (t *Tokenizer) bpeCached(word string, out []int32) []int32 {
	if len(word) > maxCachedWord {
		return t.bpe(word, out)
	}
	t.mu.Lock()
	ids, ok := t.cache[word]
	t.mu.Unlock()
	if ok {
		return append(out, ids...)
	}
	n := len(out)
	out = t.bpe(word, out)
	ids = append([]int32(nil), out[n:]...)
	t.mu.Lock()
	if len(t.cache) >= maxCacheEntries {
		clear(t.cache)
	}
	t.cache[word] = ids
	t.mu.Unlock()
	return out
}

// symbol is one piece of a word during BPE: a token id in a doubly linked list.
type symbol struct {
	id         int32
	prev, next int // -1 at the ends
	size       int // 0 once merged into the symbol before it
}

// pair is a candidate merge at symbol pos.
type pair struct {
	rank        int32
	pos         int
	left, right int32 // the ids the merge was found for (stale when they changed)
}

// pairHeap is a binary min-heap of candidate merges, by rank, then position.
type pairHeap []pair

func (p pair) less(q pair) bool { return p.rank < q.rank || (p.rank == q.rank && p.pos < q.pos) }

func (h *pairHeap) push(p pair) {
	*h = append(*h, p)
	s := *h
	for i := len(s) - 1; i > 0; {
		up := (i - 1) / 2
		if !s[i].less(s[up]) {
			break
		}
		s[i], s[up] = s[up], s[i]
		i = up
	}
}

func (h *pairHeap) pop() pair {
	s := *h
	top := s[0]
	n := len(s) - 1
	s[0] = s[n]
	s = s[:n]
	for i := 0; ; {
		small, l, r := i, 2*i+1, 2*i+2
		if l < n && s[l].less(s[small]) {
			small = l
		}
		if r < n && s[r].less(s[small]) {
			small = r
		}
		if small == i {
			break
		}
		s[i], s[small] = s[small], s[i]
		i = small
	}
	*h = s
	return top
}

// bpe encodes one pre-token: its characters (bytes, for a byte-level model) become symbols,
// then the pair of lowest merge rank (leftmost among equals) is merged until none is left, as
// Hugging Face tokenizers does. It runs in O(n log n) for a word of n characters.
func (t *Tokenizer) bpe(word string, out []int32) []int32 {
	if span, _ := t.spans(); t.ignoreMerges && int64(len(word)) <= span { // no longer token
		if id, ok := t.wholeWord(word); ok {
			return append(out, id)
		}
	}
	syms := t.symbols(word)
	if len(syms) == 0 {
		return out
	}
	h := make(pairHeap, 0, len(syms))
	push := func(pos int) {
		next := syms[pos].next
		if next < 0 {
			return
		}
		if m, ok := t.merges[[2]int32{syms[pos].id, syms[next].id}]; ok {
			h.push(pair{m.rank, pos, syms[pos].id, syms[next].id})
		}
	}
	for i := range syms {
		push(i)
	}
	for len(h) > 0 {
		p := h.pop()
		s := &syms[p.pos]
		if s.size == 0 || s.id != p.left || s.next < 0 || syms[s.next].id != p.right {
			continue // stale: one side was merged since
		}
		nx := &syms[s.next]
		s.id = t.merges[[2]int32{p.left, p.right}].result
		s.size += nx.size
		nx.size = 0
		s.next = nx.next
		if s.next >= 0 {
			syms[s.next].prev = p.pos
		}
		if s.prev >= 0 {
			push(s.prev)
		}
		push(p.pos)
	}
	for i := 0; i >= 0; i = syms[i].next {
		out = append(out, syms[i].id)
	}
	return out
}

// wholeWord looks a pre-token up as one vocabulary entry (ignore_merges).
func (t *Tokenizer) wholeWord(word string) (int32, bool) {
	if !t.byteLevel {
		id, ok := t.modelVocab[word]
		return id, ok
	}
	var b strings.Builder
	b.Grow(2 * len(word))
	for i := 0; i < len(word); i++ {
		b.WriteRune(byteToRune[word[i]])
	}
	id, ok := t.modelVocab[b.String()]
	return id, ok
}

// symbols splits a pre-token into its initial symbols: one per byte (byte-level) or per
// character. A character the vocabulary lacks becomes the unknown token (consecutive ones
// fused with fuse_unk) or, without one, is dropped, as Hugging Face tokenizers does.
func (t *Tokenizer) symbols(word string) []symbol {
	// Room for every character of a short word; a long one may be mostly dropped or fused
	// unknown characters (EncodeAtMost counts on not allocating for those).
	syms := make([]symbol, 0, min(len(word), maxCachedWord))
	add := func(id int32, ok bool, size int) {
		if !ok {
			if t.unk < 0 {
				return
			}
			if t.fuseUnk && len(syms) > 0 && syms[len(syms)-1].id == t.unk {
				syms[len(syms)-1].size += size
				return
			}
			id = t.unk
		}
		syms = append(syms, symbol{id: id, prev: len(syms) - 1, next: len(syms) + 1, size: size})
	}
	if t.byteLevel {
		for i := 0; i < len(word); i++ {
			id := t.byteIDs[word[i]]
			add(id, id >= 0, 1)
		}
	} else {
		for i := 0; i < len(word); {
			_, n := utf8.DecodeRuneInString(word[i:])
			id, ok := t.modelVocab[word[i:i+n]]
			add(id, ok, n)
			i += n
		}
	}
	if len(syms) > 0 {
		syms[len(syms)-1].next = -1
	}
	return syms
}
