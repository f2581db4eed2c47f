package tokenizer

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
)

// bpeReference is the plain BPE the heap-based bpe is checked against: find the pair of
// lowest rank, merge every occurrence of it left to right, repeat.
func bpeReference(t *Tokenizer, word string) []int32 {
	var ids []int32
	for _, s := range t.symbols(word) {
		ids = append(ids, s.id)
	}
	for {
		best, found := merge{}, false
		for i := 0; i+1 < len(ids); i++ {
			if m, ok := t.merges[[2]int32{ids[i], ids[i+1]}]; ok && (!found || m.rank < best.rank) {
				best, found = m, true
			}
		}
		if !found {
			return ids
		}
		var next []int32
		for i := 0; i < len(ids); i++ {
			if i+1 < len(ids) {
				if m, ok := t.merges[[2]int32{ids[i], ids[i+1]}]; ok && m == best {
					next = append(next, best.result)
					i++
					continue
				}
			}
			next = append(next, ids[i])
		}
		ids = next
	}
}

// randomBPE makes a character-level BPE tokenizer over a three-letter alphabet with n random
// merges (each of two existing tokens), as tokenizer.json.
func randomBPE(rng *rand.Rand, n int) []byte {
	toks := []string{"a", "b", "c"}
	vocab := map[string]int{"a": 0, "b": 1, "c": 2}
	var merges [][2]string
	for len(merges) < n {
		x, y := toks[rng.IntN(len(toks))], toks[rng.IntN(len(toks))]
		if len(x)+len(y) > 12 || slices.Contains(merges, [2]string{x, y}) {
			continue
		}
		merges = append(merges, [2]string{x, y})
		if _, ok := vocab[x+y]; !ok {
			vocab[x+y] = len(toks)
			toks = append(toks, x+y)
		}
	}
	data, _ := json.Marshal(map[string]any{"model": map[string]any{"type": "BPE", "vocab": vocab, "merges": merges}})
	return data
}

// TestBPEMatchesReference: the heap-based BPE gives the plain algorithm's ids on random
// merge tables and random words, long ones included.
func TestBPEMatchesReference(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	for trial := range 40 {
		tok, err := Parse(randomBPE(rng, 5+rng.IntN(40)))
		if err != nil {
			t.Fatal(err)
		}
		for range 50 {
			var b strings.Builder
			for range rng.IntN(300) {
				b.WriteByte("abc"[rng.IntN(3)])
			}
			word := b.String()
			got := tok.bpe(word, nil)
			want := bpeReference(tok, word)
			if fmt.Sprint(got) != fmt.Sprint(want) {
				t.Fatalf("trial %d, word %q: bpe %v, reference %v", trial, word, got, want)
			}
			if dec, err := tok.Decode(got); err != nil || dec != word {
				t.Fatalf("trial %d: Decode(bpe(%q)) = %q, %v", trial, word, dec, err)
			}
		}
	}
}
