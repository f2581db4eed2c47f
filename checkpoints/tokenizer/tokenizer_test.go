package tokenizer

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// tinyCases are texts for testdata/tiny/tokenizer.json, a hand-made byte-level BPE tokenizer
// with the Qwen split, and their ids worked out by hand.
var tinyCases = []struct {
	text string
	want []int32
}{
	{"ab", []int32{4}},       // a b -> ab
	{"abc", []int32{8}},      // ab c -> abc (rank 2)
	{" ab", []int32{5}},      // " ab" is one word: Ġ a b -> Ġ ab -> Ġab
	{"ab ab", []int32{4, 5}}, // words "ab", " ab"
	{"12", []int32{6, 7}},    // digits split one by one
	{"ab<|end|>c", []int32{4, 12, 2}},
	{"<ans>1<ans>", []int32{13, 6, 13}},
	{"a\n\nb", []int32{0, 10, 1}}, // "\n\n" one word: Ċ Ċ -> ĊĊ
	{"ba", []int32{1, 0}},         // no merge "b a" (and ignore_merges is off)
	{"cab", []int32{2, 4}},        // c, then a b -> ab
	{"", nil},
}

func tinyJSON(t testing.TB) []byte { return readFile(t, "testdata/tiny/tokenizer.json") }

// TestTiny: pre-tokenization, byte mapping, merges by rank and added tokens, worked by hand.
func TestTiny(t *testing.T) {
	tok, err := Load("testdata/tiny")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range tinyCases {
		got := tok.Encode(tc.text)
		if fmt.Sprint(got) != fmt.Sprint(tc.want) {
			t.Errorf("Encode(%q) = %v, want %v", tc.text, got, tc.want)
		}
		if dec, err := tok.Decode(got); err != nil || dec != tc.text {
			t.Errorf("Decode(Encode(%q)) = %q, %v", tc.text, dec, err)
		}
	}
	if s, _ := tok.DecodeSkipSpecial([]int32{4, 12, 13}); s != "ab<ans>" {
		t.Errorf("skip special: %q", s)
	}
	if _, err := tok.Decode([]int32{4, 99}); err == nil || !strings.Contains(err.Error(), "id 99 at position 1") {
		t.Errorf("out-of-range id: %v", err)
	}
	if id, ok := tok.EOS(); !ok || id != 12 {
		t.Errorf("EOS = %d, %v", id, ok)
	}
	if tok.VocabSize() != 14 {
		t.Errorf("vocab size %d, want 14", tok.VocabSize())
	}
	if id, ok := tok.TokenID("<ans>"); !ok || id != 13 || tok.IsSpecial(13) || !tok.IsSpecial(12) {
		t.Errorf("TokenID(<ans>) = %d, %v; special 12 %v 13 %v", id, ok, tok.IsSpecial(12), tok.IsSpecial(13))
	}
}

// TestTinyVariants: the post-processor's BOS (Llama 3's TemplateProcessing), ignore_merges,
// and the unknown token, on edits of the tiny tokenizer worked by hand.
func TestTinyVariants(t *testing.T) {
	base := string(tinyJSON(t))
	edit := func(old, new string) *Tokenizer {
		t.Helper()
		s := strings.Replace(base, old, new, 1)
		if s == base {
			t.Fatalf("edit %q not applied", old)
		}
		tok, err := Parse([]byte(s))
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	bos := edit(`"post_processor": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false}`,
		`"post_processor": {"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "<|end|>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}]}`)
	if got := bos.Encode("ab"); !slices.Equal(got, []int32{12, 4}) {
		t.Errorf("TemplateProcessing: Encode(ab) = %v, want [12 4]", got)
	}
	if got := bos.EncodePlain("ab"); !slices.Equal(got, []int32{4}) {
		t.Errorf("TemplateProcessing: EncodePlain(ab) = %v, want [4]", got)
	}
	// "ba" is in the vocabulary but no merge makes it: ignore_merges takes it whole.
	ign := edit(`"ignore_merges": false`, `"ignore_merges": true`)
	if got := ign.Encode("ba ab"); !slices.Equal(got, []int32{11, 5}) {
		t.Errorf("ignore_merges: Encode(ba ab) = %v, want [11 5]", got)
	}
	// A byte the vocabulary lacks ("d"): dropped without an unknown token, as tokenizers does.
	plain := edit(`"ignore_merges": false`, `"ignore_merges": false`+" ")
	if got := plain.Encode("dab"); !slices.Equal(got, []int32{4}) {
		t.Errorf("Encode(dab) = %v, want [4]", got)
	}
	none, err := Parse([]byte(strings.NewReplacer(`"2": 7, "abc": 8, "Ċ": 9, "ĊĊ": 10, "ba": 11`, `"abc": 7, "Ċ": 8, "ĊĊ": 9, "ba": 10`,
		`"id": 12`, `"id": 11`, `"id": 13`, `"id": 12`).Replace(base)))
	if err != nil {
		t.Fatal(err)
	}
	if got := none.Encode("a2b2"); !slices.Equal(got, []int32{0, 1}) {
		t.Errorf("no 2 in the vocabulary: Encode(a2b2) = %v, want [0 1]", got)
	}
	pairs := edit(`"merges": ["a b", "Ġ ab", "ab c", "Ċ Ċ"]`, `"merges": [["a", "b"], ["Ġ", "ab"], ["ab", "c"], ["Ċ", "Ċ"]]`)
	for _, tc := range tinyCases {
		if got := pairs.Encode(tc.text); !slices.Equal(got, tc.want) {
			t.Errorf("merges as pairs: Encode(%q) = %v, want %v", tc.text, got, tc.want)
		}
	}
	unk := edit(`"unk_token": null`, `"unk_token": "b"`)
	if got := unk.Encode("zab"); !slices.Equal(got, []int32{1, 4}) {
		t.Errorf("unk_token b: Encode(zab) = %v, want [1 4]", got)
	}
}

// TestLossyUTF8: one U+FFFD per maximal ill-formed subsequence (Unicode table 3-7; what Rust's
// from_utf8_lossy and the WHATWG decoder give).
func TestLossyUTF8(t *testing.T) {
	const r = "\uFFFD"
	for _, tc := range []struct{ in, want string }{
		{"ok é", "ok é"},
		{"\xff\xfe", r + r},
		{"\xe4\xb8", r},                // a truncated 3-byte character: one subpart
		{"\xe4\xb8x\xad", r + "x" + r}, // cut by a character
		{"\xf0\x9f\x98A", r + "A"},
		{"\xed\xa0\x80", r + r + r}, // a surrogate: ED takes only 80..9F
		{"\xe0\x80", r + r},         // overlong: E0 takes only A0..BF
		{"\xf4\x90\x80\x80", r + r + r + r},
		{"\xc0\x80", r + r},
		{"\xef\xbf\xbd", r}, // U+FFFD itself is valid
	} {
		if got := lossyUTF8([]byte(tc.in)); got != tc.want {
			t.Errorf("lossyUTF8(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

// TestSplitWords: the pre-tokenizer's pieces against the regex worked by hand, including the
// look-ahead cases Go's regexp cannot express.
func TestSplitWords(t *testing.T) {
	for _, tc := range []struct {
		text   string
		digits int
		want   []string
	}{
		{"Hello world", 1, []string{"Hello", " world"}},
		{"it's I'LL", 1, []string{"it", "'s", " I", "'LL"}},
		{"12345", 1, []string{"1", "2", "3", "4", "5"}},
		{"12345", 3, []string{"123", "45"}},
		{"a   b", 1, []string{"a", "  ", " b"}}, // \s+(?!\S) leaves the last space to " b"
		{"a   ", 1, []string{"a", "   "}},       // at the end: all of it
		{"x \n\n  y", 1, []string{"x", " \n\n", " ", " y"}},
		{"(x) += 1;\n", 1, []string{"(x", ")", " +=", " ", "1", ";\n"}}, // [^\r\n\p{L}\p{N}]?\p{L}+ takes "(x"
		{"\tfoo", 1, []string{"\tfoo"}},
		{"café naïve", 1, []string{"café", " naïve"}},
		{"中文，测试", 1, []string{"中文", "，测试"}},
		{"it'ſ", 1, []string{"it", "'ſ"}},                   // U+017F folds to s, as (?i:'s) finds
		{"a\u0085b", 1, []string{"a", "\u0085b"}},           // NEL: white space for Oniguruma (tokenizers), not for JavaScript
		{"a \u0085b", 1, []string{"a", " ", "\u0085b"}},     // \s+(?!\S) then [^\r\n\p{L}\p{N}]?\p{L}+
		{"x\ufeff y", 1, []string{"x", "\ufeff", " y"}},     // BOM: not white space for Oniguruma
		{"\r\n\r\n  x", 1, []string{"\r\n\r\n", " ", " x"}}, // \s*[\r\n]+ stops at the last line break
	} {
		got := splitWords(tc.text, tc.digits, nil)
		if fmt.Sprintf("%q", got) != fmt.Sprintf("%q", tc.want) {
			t.Errorf("splitWords(%q) = %q, want %q", tc.text, got, tc.want)
		}
	}
}

// saveLoad saves tok into a new directory and loads it back: the directory and what Load read.
func saveLoad(t *testing.T, tok *Tokenizer) (string, *Tokenizer) {
	t.Helper()
	dir := t.TempDir()
	if err := tok.Save(dir); err != nil {
		t.Fatal(err)
	}
	back, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	return dir, back
}

// TestCharLevel: the default model's character tokenizer saved as tokenizer.json loads back
// and encodes and decodes as a character table.
func TestCharLevel(t *testing.T) {
	toks := []string{"<pad>", "<bos>", "<eos>", "<answer>", "</answer>", "0", "1", "+", "=", " "}
	tok, err := NewCharLevel(toks, []string{"<pad>", "<bos>", "<eos>"}, "<eos>")
	if err != nil {
		t.Fatal(err)
	}
	_, back := saveLoad(t, tok)
	ids := back.Encode("<bos>1+1=<answer>10</answer><eos>")
	if fmt.Sprint(ids) != "[1 6 7 6 8 3 6 5 4 2]" {
		t.Errorf("ids %v", ids)
	}
	if s, _ := back.DecodeSkipSpecial(ids); s != "1+1=<answer>10</answer>" {
		t.Errorf("decoded %q", s)
	}
	if id, ok := back.EOS(); !ok || id != 2 {
		t.Errorf("EOS %d %v", id, ok)
	}
	if _, err := NewCharLevel([]string{"a", "a"}, nil, "a"); err == nil {
		t.Error("repeated token accepted")
	}
}

// TestParseErrors: unsupported or broken files are refused naming the field.
func TestParseErrors(t *testing.T) {
	tiny := string(tinyJSON(t))
	for _, tc := range []struct{ edit, want, field string }{
		{`"type": "BPE"`, `"type": "WordPiece"`, "model.type"},
		{`"merges": ["a b"`, `"merges": ["ab"`, "model.merges[0]"},
		{`"Ġ ab"`, `["Ġ", "ab"]`, "model.merges[1]"},
		{`"ab c"`, `"ab d"`, "model.merges[2]"},
		{`"id": 13`, `"id": 14`, "added_tokens[1]"}, // tokenizers would number it 13
		{`"single_word": false`, `"single_word": true`, "added_tokens[0]"},
		{`"Regex": "(?i:`, `"Regex": "(?x:`, "pre_tokenizer[0].pattern.Regex"},
		{`"use_regex": false}]}`, `"use_regex": true}]}`, "pre_tokenizer[1].use_regex"},
		{`"normalizer": {"type": "NFC"}`, `"normalizer": {"type": "NFKC"}`, "normalizer type"},
		{`"decoder": {"type": "ByteLevel"`, `"decoder": {"type": "Fuse"`, "decoder type"},
		{`"dropout": null`, `"dropout": 0.1`, "model.dropout"},
	} {
		bad := strings.Replace(tiny, tc.edit, tc.want, 1)
		if bad == tiny {
			t.Fatalf("edit %q not applied", tc.edit)
		}
		_, err := Parse([]byte(bad))
		if err == nil || !strings.Contains(err.Error(), "tokenizer.json: "+tc.field) {
			t.Errorf("with %s: error %v, want one naming %s", tc.want, err, tc.field)
		}
	}
	dir := t.TempDir()
	path := filepath.Join(dir, TokenizerFile)
	if err := os.WriteFile(path, []byte(strings.Replace(tiny, `"type": "BPE"`, `"type": "Unigram"`, 1)), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(dir); err == nil || !strings.Contains(err.Error(), path+": model.type") {
		t.Errorf("Load: %v, want the path and the field", err)
	}
	if _, err := ParseWithConfig([]byte(tiny), []byte(`{"eos_token": "<nope>"}`)); err == nil || !strings.Contains(err.Error(), "eos_token") {
		t.Errorf("unknown eos: %v", err)
	}
}

// FuzzParse: parsing tokenizer.json and tokenizer_config.json never panics, and what parses
// encodes, decodes and renders its chat template without panicking.
func FuzzParse(f *testing.F) {
	f.Add(tinyJSON(f), []byte(`{"eos_token": "<|end|>", "chat_template": "{{ '<|im_start|>system\\nYou are x.<|im_end|>\\n' }}"}`), "ab 12\n")
	f.Add([]byte(`{"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}}`), []byte(`{"bos_token": {"content": "a"}}`), "aa")
	f.Add(tinyJSON(f), []byte(`{"chat_template": [{"name": "default", "template": "<|start_header_id|>"}]}`), "<|end|>")
	f.Fuzz(func(t *testing.T, data, config []byte, text string) {
		if len(config) == 0 {
			config = nil // no tokenizer_config.json
		}
		tok, err := ParseWithConfig(data, config)
		if err != nil {
			return
		}
		ids := tok.Encode(text)
		_, _ = tok.Decode(ids)
		_, _ = tok.DecodeSkipSpecial(append(ids, 0, int32(tok.VocabSize()-1)))
		_, _ = tok.ApplyChatTemplate([]Message{{"system", text}, {"assistant", text}}, true)
	})
}

// FuzzEncodeDecode: on the byte-level tokenizer every valid UTF-8 text survives the round trip
// (NFC-normalised), and EncodeAtMost agrees with Encode.
func FuzzEncodeDecode(f *testing.F) {
	// The tiny tokenizer with every byte in its vocabulary, as real byte-level ones have.
	var doc map[string]any
	if err := json.Unmarshal(tinyJSON(f), &doc); err != nil {
		f.Fatal(err)
	}
	vocab := doc["model"].(map[string]any)["vocab"].(map[string]any)
	for b := 0; b < 256; b++ {
		if _, ok := vocab[string(byteToRune[b])]; !ok {
			vocab[string(byteToRune[b])] = len(vocab)
		}
	}
	for i, a := range doc["added_tokens"].([]any) { // after the vocabulary, as tokenizers numbers them
		a.(map[string]any)["id"] = len(vocab) + i
	}
	full, _ := json.Marshal(doc)
	tok, err := Parse(full)
	if err != nil {
		f.Fatal(err)
	}
	for _, s := range []string{"ab c", "  \n\t x", "é中😀", "<|end|><ans>"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, text string) {
		if !utf8Valid(text) {
			return
		}
		ids := tok.Encode(text)
		dec, err := tok.Decode(ids)
		if err != nil {
			t.Fatal(err)
		}
		// EncodeAtMost agrees at the length and refuses one below it.
		if got, ok := tok.EncodeAtMost(text, len(ids)); !ok || !slices.Equal(got, ids) {
			t.Fatalf("EncodeAtMost(%q, %d) = %v, %v; Encode gives %v", text, len(ids), got, ok, ids)
		}
		if got, ok := tok.EncodeAtMost(text, len(ids)-1); ok {
			t.Fatalf("EncodeAtMost(%q, %d) = %v, true; Encode gives %v", text, len(ids)-1, got, ids)
		}
		if want := nfc(text); dec != want {
			t.Fatalf("round trip of %q gave %q", want, dec)
		}
	})
}

// BenchmarkEncode measures encoding speed on the corpus (joined, 20 times over) with Qwen3's
// tokenizer, in MB/s of text, and, when node is there, Hugging Face tokenizers' speed on the same
// text measured by scripts/tokenizer_ref.mjs in the same run (ref-MB/s, and the ratio x-ref).
func BenchmarkEncode(b *testing.B) {
	tok := families(b)["qwen3"]
	text := strings.Repeat(strings.Join(corpus(b), "\n")+"\n", 20)
	text = text[:len(text)-1]
	b.SetBytes(int64(len(text)))
	start := time.Now()
	n := 0
	for b.Loop() {
		tok.Encode(text)
		n++
	}
	goMBs := float64(len(text)*n) / time.Since(start).Seconds() / 1e6
	if _, err := exec.LookPath("node"); err != nil {
		return
	}
	dir, _ := refAvailable()
	cmd := exec.Command("node", "../../scripts/tokenizer_ref.mjs", "bench", dir, packageModels(dir, "tokenizer-qwen3"))
	cmd.Stdin = bytes.NewReader(readFile(b, "testdata/corpus.jsonl"))
	out, err := cmd.Output()
	if err != nil {
		b.Fatalf("reference bench: %v", err)
	}
	var ref struct {
		MBPerS float64 `json:"mb_per_s"`
	}
	if err := json.Unmarshal(out, &ref); err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(ref.MBPerS, "ref-MB/s")
	b.ReportMetric(goMBs/ref.MBPerS, "x-ref")
}

// TestSave: Save writes the files as read (so tokenizers and transformers load them as they
// loaded the originals), readable by all, with no temporary file left, and fails naming the
// path when it cannot write.
func TestSave(t *testing.T) {
	tok, err := Load("testdata/tiny")
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "a", "b")
	if err := tok.Save(dir); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{TokenizerFile, ConfigFile} {
		got := readFile(t, filepath.Join(dir, name))
		if want := readFile(t, filepath.Join("testdata", "tiny", name)); string(got) != string(want) {
			t.Errorf("%s differs from the file read", name)
		}
		if fi, err := os.Stat(filepath.Join(dir, name)); err != nil || fi.Mode().Perm() != 0o644 {
			t.Errorf("%s: mode %v, %v", name, fi.Mode(), err)
		}
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 2 {
		t.Errorf("%d files in the directory, want 2", len(entries))
	}
	back, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range tinyCases {
		if got := back.Encode(tc.text); !slices.Equal(got, tc.want) {
			t.Errorf("saved: Encode(%q) = %v, want %v", tc.text, got, tc.want)
		}
	}
	blocked := filepath.Join(t.TempDir(), TokenizerFile)
	if err := os.Mkdir(filepath.Join(blocked), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := tok.Save(filepath.Dir(blocked)); err == nil || !strings.Contains(err.Error(), blocked) {
		t.Errorf("Save over a directory: %v", err)
	}
}
