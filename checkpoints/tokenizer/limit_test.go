package tokenizer

import (
	"runtime"
	"slices"
	"strings"
	"testing"
)

// limitTokenizers are tokenizers of every kind the encoder handles: byte-level with and
// without the split pre-tokenizer's pieces, with dropped bytes (the tiny vocabulary lacks most),
// an unknown token (fused), ignore_merges, a post-processor BOS, and the character-level one.
func limitTokenizers(t *testing.T) map[string]*Tokenizer {
	base := string(tinyJSON(t))
	edit := func(pairs ...string) *Tokenizer {
		t.Helper()
		s := strings.NewReplacer(pairs...).Replace(base)
		if s == base {
			t.Fatalf("edit %q not applied", pairs)
		}
		tok, err := Parse([]byte(s))
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	tiny, err := Parse([]byte(base))
	if err != nil {
		t.Fatal(err)
	}
	char, _ := quickstartTokenizer(t)
	return map[string]*Tokenizer{
		"tiny": tiny,
		"bos": edit(`"post_processor": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false}`,
			`"post_processor": {"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "<|end|>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}]}`),
		"ignore_merges":   edit(`"ignore_merges": false`, `"ignore_merges": true`),
		"unk fused":       edit(`"unk_token": null`, `"unk_token": "b"`, `"fuse_unk": false`, `"fuse_unk": true`),
		"character-level": char,
	}
}

// checkAtMost checks EncodeAtMost and EncodePlainAtMost against Encode and EncodePlain at
// limits around the length of each text's ids.
func checkAtMost(t *testing.T, name string, tok *Tokenizer, texts []string) {
	t.Helper()
	for _, text := range texts {
		for _, plain := range []bool{false, true} {
			want := tok.Encode(text)
			at := tok.EncodeAtMost
			if plain {
				want, at = tok.EncodePlain(text), tok.EncodePlainAtMost
			}
			n := len(want)
			for _, limit := range []int{0, 1, n / 2, n - 1, n, n + 1, 2 * n} {
				got, ok := at(text, limit)
				if ok != (n <= limit) || ok && !slices.Equal(got, want) || !ok && got != nil {
					t.Fatalf("%s: plain %v, limit %d: EncodeAtMost(%q) = %v, %v; Encode gives %d ids %v", name, plain, limit, text, got, ok, n, want)
				}
			}
		}
	}
}

// TestEncodeAtMost: EncodeAtMost gives Encode's ids when they number at most the limit, and
// false when they number more, on every tokenizer kind and the test corpora.
func TestEncodeAtMost(t *testing.T) {
	texts := append(corpus(t), randomTexts(300, 7)...)
	for _, tc := range tinyCases {
		texts = append(texts, tc.text)
	}
	texts = append(texts, strings.Repeat("ab", 40), strings.Repeat("zzz", 30)+"ab", strings.Repeat(" ", 50)+"x", "<bos>1+2=3<eos>"+strings.Repeat("9", 60))
	for name, tok := range limitTokenizers(t) {
		checkAtMost(t, name, tok, texts)
	}
	t.Run("families", func(t *testing.T) {
		for name, tok := range families(t) {
			checkAtMost(t, name, tok, texts)
		}
	})
}

// TestEncodeAtMostBounded: a 20 MB prompt refused at 1024 tokens costs little, whatever the
// tokenizer: Encode of it builds one BPE symbol (32 bytes) per byte of a word, over 600 MB
// for the character-level tokenizer, which has no split pre-tokenizer (issue 30).
func TestEncodeAtMostBounded(t *testing.T) {
	const size, limit = 20 << 20, 1024
	texts := map[string]string{
		"one word":      strings.Repeat("ab", size/2),
		"many words":    strings.Repeat("ab ", size/3),
		"digits":        strings.Repeat("1+2=", size/4),
		"unknown bytes": strings.Repeat("zy", size/2) + "ab",
	}
	toks := limitTokenizers(t)
	if _, err := refAvailable(); err == nil {
		for name, tok := range families(t) {
			toks[name] = tok
		}
	}
	for tname, tok := range toks {
		for name, text := range texts {
			var ids []int32
			var ok bool
			if got := allocs(func() { ids, ok = tok.EncodeAtMost(text, limit) }); got > 1<<20 {
				t.Errorf("%s, %s: EncodeAtMost(%d bytes, %d) = %d ids, %v, allocating %d bytes; want at most 1 MiB",
					tname, name, len(text), limit, len(ids), ok, got)
			}
		}
	}
}

// allocs is the bytes f allocates on the heap.
func allocs(f func()) uint64 {
	var a, b runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&a)
	f()
	runtime.ReadMemStats(&b)
	return b.TotalAlloc - a.TotalAlloc
}
