// Package tokenizer reads and writes Hugging Face tokenizers (tokenizer.json and
// tokenizer_config.json) of the model families the engine runs: byte-level BPE as Qwen2 /
// Qwen2.5 / Qwen3 and Llama 3 ship it (NFC normalizer, the split regex, GPT-2's byte alphabet,
// merges, added and special tokens, the post-processor's BOS), character-level BPE as the
// project's default model uses, and the family's chat template (ChatML for Qwen, header
// blocks for Llama 3), so that a checkpoint directory is a whole model.
package tokenizer

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"unicode/utf8"

	"golang.org/x/text/unicode/norm"
)

// File names of a Hugging Face tokenizer in a model directory.
const (
	TokenizerFile = "tokenizer.json"
	ConfigFile    = "tokenizer_config.json"
)

// Message is one chat message.
type Message struct {
	Role    string `json:"role"`
	Content string `json:"content"`
}

// Tokenizer encodes text to token ids and back. It is safe for concurrent use.
type Tokenizer struct {
	vocab        map[string]int32
	tokens       []string // id -> token (vocabulary and added tokens)
	ranks        map[[2]string]int
	byteLevel    bool // GPT-2 byte alphabet: split words, map bytes, byte-level decode
	maxDigits    int  // 1 (Qwen) or 3 (Llama 3); 0: no split pre-tokenizer
	nfc          bool
	ignoreMerges bool
	unk          int32 // -1: unknown characters are dropped (as tokenizers does without unk_token)

	added    []addedToken // longest first
	special  map[int32]bool
	addedIDs map[int32]bool
	prefix   []int32 // post-processor tokens before the text (Llama 3's <|begin_of_text|>)

	chatTemplate string
	chatFamily   chatFamily
	defaultSys   string
	eos, bos     string

	raw, rawConfig []byte // the files as read, written back unchanged by Save

	mu    sync.Mutex
	cache map[string][]int32 // BPE of a pre-token
}

type addedToken struct {
	content string
	id      int32
	special bool
}

// tokenizerJSON is the part of tokenizer.json this package reads.
type tokenizerJSON struct {
	AddedTokens []struct {
		ID      int32  `json:"id"`
		Content string `json:"content"`
		Special bool   `json:"special"`
	} `json:"added_tokens"`
	Normalizer    json.RawMessage `json:"normalizer"`
	PreTokenizer  json.RawMessage `json:"pre_tokenizer"`
	PostProcessor json.RawMessage `json:"post_processor"`
	Decoder       json.RawMessage `json:"decoder"`
	Model         struct {
		Type         string           `json:"type"`
		Vocab        map[string]int32 `json:"vocab"`
		Merges       json.RawMessage  `json:"merges"`
		UnkToken     *string          `json:"unk_token"`
		IgnoreMerges bool             `json:"ignore_merges"`
		ByteFallback bool             `json:"byte_fallback"`
		Dropout      *float64         `json:"dropout"`
		Prefix       string           `json:"continuing_subword_prefix"`
		Suffix       string           `json:"end_of_word_suffix"`
	} `json:"model"`
}

type component struct {
	Type          string          `json:"type"`
	Pretokenizers []component     `json:"pretokenizers"`
	Normalizers   []component     `json:"normalizers"`
	Processors    []component     `json:"processors"`
	Decoders      []component     `json:"decoders"`
	Pattern       json.RawMessage `json:"pattern"`
	Behavior      string          `json:"behavior"`
	Invert        bool            `json:"invert"`
	UseRegex      *bool           `json:"use_regex"`
	AddPrefix     bool            `json:"add_prefix_space"`
	Single        []struct {
		SpecialToken *struct {
			ID string `json:"id"`
		} `json:"SpecialToken"`
		Sequence *struct {
			ID string `json:"id"`
		} `json:"Sequence"`
	} `json:"single"`
}

// Load reads dir/tokenizer.json and, when present, dir/tokenizer_config.json.
func Load(dir string) (*Tokenizer, error) {
	data, err := os.ReadFile(filepath.Join(dir, TokenizerFile))
	if err != nil {
		return nil, fmt.Errorf("tokenizer: %w", err)
	}
	cfg, err := os.ReadFile(filepath.Join(dir, ConfigFile))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("tokenizer: %w", err)
	}
	t, err := Parse(data, cfg)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", filepath.Join(dir, TokenizerFile), err)
	}
	return t, nil
}

// Parse builds a tokenizer from the bytes of tokenizer.json and of tokenizer_config.json
// (nil when there is none).
func Parse(tokenizerJSONBytes, configJSON []byte) (*Tokenizer, error) {
	var f tokenizerJSON
	if err := json.Unmarshal(tokenizerJSONBytes, &f); err != nil {
		return nil, fmt.Errorf("tokenizer.json: %w", err)
	}
	m := f.Model
	switch {
	case m.Type != "BPE" && m.Type != "":
		return nil, fmt.Errorf("tokenizer.json: model.type %q is not supported (only BPE)", m.Type)
	case m.Type == "" && m.Vocab == nil:
		return nil, errors.New("tokenizer.json: no model")
	case m.ByteFallback:
		return nil, errors.New("tokenizer.json: model.byte_fallback (SentencePiece-style BPE, Llama 2) is not supported")
	case m.Dropout != nil && *m.Dropout != 0:
		return nil, errors.New("tokenizer.json: model.dropout is not supported")
	case m.Prefix != "" || m.Suffix != "":
		return nil, errors.New("tokenizer.json: model.continuing_subword_prefix / end_of_word_suffix are not supported")
	}
	t := &Tokenizer{vocab: map[string]int32{}, ranks: map[[2]string]int{}, special: map[int32]bool{}, addedIDs: map[int32]bool{}, unk: -1,
		ignoreMerges: m.IgnoreMerges, cache: map[string][]int32{}}
	t.raw = append([]byte(nil), tokenizerJSONBytes...)
	maxID := int32(-1)
	for s, id := range m.Vocab {
		if id < 0 || id > 1<<24 {
			return nil, fmt.Errorf("tokenizer.json: model.vocab[%q] = %d is out of range", s, id)
		}
		t.vocab[s] = id
		maxID = max(maxID, id)
	}
	for i, a := range f.AddedTokens {
		if a.Content == "" || a.ID < 0 || a.ID > 1<<24 {
			return nil, fmt.Errorf("tokenizer.json: added_tokens[%d]: empty content or id %d out of range", i, a.ID)
		}
		t.vocab[a.Content] = a.ID
		t.added = append(t.added, addedToken{a.Content, a.ID, a.Special})
		if a.Special {
			t.special[a.ID] = true
		}
		maxID = max(maxID, a.ID)
	}
	sort.SliceStable(t.added, func(i, j int) bool { return len(t.added[i].content) > len(t.added[j].content) })
	t.tokens = make([]string, maxID+1)
	for s, id := range m.Vocab {
		if t.tokens[id] != "" {
			return nil, fmt.Errorf("tokenizer.json: model.vocab gives id %d to both %q and %q", id, t.tokens[id], s)
		}
		t.tokens[id] = s
	}
	for _, a := range t.added { // an added token's text wins over a vocabulary entry of its id
		t.tokens[a.id] = a.content
		t.addedIDs[a.id] = true
	}
	if m.UnkToken != nil {
		id, ok := t.vocab[*m.UnkToken]
		if !ok {
			return nil, fmt.Errorf("tokenizer.json: model.unk_token %q is not in the vocabulary", *m.UnkToken)
		}
		t.unk = id
	}
	if err := t.parseMerges(m.Merges); err != nil {
		return nil, err
	}
	if err := t.parseNormalizer(f.Normalizer); err != nil {
		return nil, err
	}
	if err := t.parsePreTokenizer(f.PreTokenizer); err != nil {
		return nil, err
	}
	if err := t.parsePostProcessor(f.PostProcessor); err != nil {
		return nil, err
	}
	if err := t.parseDecoder(f.Decoder); err != nil {
		return nil, err
	}
	if configJSON != nil {
		if err := t.parseConfig(configJSON); err != nil {
			return nil, err
		}
	}
	return t, nil
}

func (t *Tokenizer) parseMerges(raw json.RawMessage) error {
	if len(raw) == 0 || string(raw) == "null" {
		return nil
	}
	var list []json.RawMessage
	if err := json.Unmarshal(raw, &list); err != nil {
		return fmt.Errorf("tokenizer.json: model.merges: %w", err)
	}
	for i, item := range list {
		var pair [2]string
		var s string
		if err := json.Unmarshal(item, &s); err == nil {
			a, b, ok := strings.Cut(s, " ")
			if !ok || a == "" || b == "" {
				return fmt.Errorf("tokenizer.json: model.merges[%d] = %q is not two tokens separated by a space", i, s)
			}
			pair = [2]string{a, b}
		} else {
			var p []string
			if err := json.Unmarshal(item, &p); err != nil || len(p) != 2 {
				return fmt.Errorf("tokenizer.json: model.merges[%d] is neither \"a b\" nor [\"a\", \"b\"]", i)
			}
			pair = [2]string{p[0], p[1]}
		}
		if _, dup := t.ranks[pair]; !dup {
			t.ranks[pair] = i
		}
	}
	return nil
}

func isNull(raw json.RawMessage) bool { return len(raw) == 0 || string(raw) == "null" }

func (t *Tokenizer) parseNormalizer(raw json.RawMessage) error {
	if isNull(raw) {
		return nil
	}
	var c component
	if err := json.Unmarshal(raw, &c); err != nil {
		return fmt.Errorf("tokenizer.json: normalizer: %w", err)
	}
	list := []component{c}
	if c.Type == "Sequence" {
		list = c.Normalizers
	}
	for _, n := range list {
		if n.Type != "NFC" {
			return fmt.Errorf("tokenizer.json: normalizer type %q is not supported (only NFC)", n.Type)
		}
		t.nfc = true
	}
	return nil
}

func (t *Tokenizer) parsePreTokenizer(raw json.RawMessage) error {
	if isNull(raw) {
		return nil
	}
	var c component
	if err := json.Unmarshal(raw, &c); err != nil {
		return fmt.Errorf("tokenizer.json: pre_tokenizer: %w", err)
	}
	list := []component{c}
	if c.Type == "Sequence" {
		list = c.Pretokenizers
	}
	for i, p := range list {
		field := fmt.Sprintf("pre_tokenizer[%d]", i)
		switch p.Type {
		case "Split":
			var pat struct {
				Regex *string `json:"Regex"`
			}
			if err := json.Unmarshal(p.Pattern, &pat); err != nil || pat.Regex == nil {
				return fmt.Errorf("tokenizer.json: %s.pattern: want {\"Regex\": ...}", field)
			}
			d, ok := splitPatterns[*pat.Regex]
			if !ok {
				return fmt.Errorf("tokenizer.json: %s.pattern.Regex %q is not supported (Qwen2/Qwen3 and Llama 3 patterns are)", field, *pat.Regex)
			}
			if p.Behavior != "Isolated" || p.Invert {
				return fmt.Errorf("tokenizer.json: %s: behavior %q invert %v is not supported (Isolated, false)", field, p.Behavior, p.Invert)
			}
			t.maxDigits = d
		case "ByteLevel":
			if p.AddPrefix {
				return fmt.Errorf("tokenizer.json: %s.add_prefix_space is not supported", field)
			}
			if p.UseRegex == nil || *p.UseRegex {
				return fmt.Errorf("tokenizer.json: %s.use_regex (GPT-2's own split) is not supported", field)
			}
			t.byteLevel = true
		default:
			return fmt.Errorf("tokenizer.json: %s.type %q is not supported", field, p.Type)
		}
	}
	if t.maxDigits > 0 && !t.byteLevel {
		return errors.New("tokenizer.json: pre_tokenizer: a Split without ByteLevel is not supported")
	}
	return nil
}

func (t *Tokenizer) parsePostProcessor(raw json.RawMessage) error {
	if isNull(raw) {
		return nil
	}
	var c component
	if err := json.Unmarshal(raw, &c); err != nil {
		return fmt.Errorf("tokenizer.json: post_processor: %w", err)
	}
	list := []component{c}
	if c.Type == "Sequence" {
		list = c.Processors
	}
	for _, p := range list {
		switch p.Type {
		case "ByteLevel": // offsets only
		case "TemplateProcessing":
			seen := false
			for _, piece := range p.Single {
				switch {
				case piece.SpecialToken != nil:
					id, ok := t.vocab[piece.SpecialToken.ID]
					if !ok {
						return fmt.Errorf("tokenizer.json: post_processor: special token %q is not in the vocabulary", piece.SpecialToken.ID)
					}
					if seen {
						return errors.New("tokenizer.json: post_processor: tokens after the text are not supported")
					}
					t.prefix = append(t.prefix, id)
				case piece.Sequence != nil:
					seen = true
				}
			}
		default:
			return fmt.Errorf("tokenizer.json: post_processor type %q is not supported", p.Type)
		}
	}
	return nil
}

func (t *Tokenizer) parseDecoder(raw json.RawMessage) error {
	if isNull(raw) {
		if t.byteLevel {
			return errors.New("tokenizer.json: a byte-level tokenizer without a ByteLevel decoder")
		}
		return nil
	}
	var c component
	if err := json.Unmarshal(raw, &c); err != nil {
		return fmt.Errorf("tokenizer.json: decoder: %w", err)
	}
	switch {
	case c.Type == "ByteLevel" && t.byteLevel, c.Type == "Fuse" && !t.byteLevel:
		return nil
	}
	return fmt.Errorf("tokenizer.json: decoder type %q is not supported with this pre-tokenizer", c.Type)
}

// tokenizerConfig is the part of tokenizer_config.json read here.
type tokenizerConfig struct {
	ChatTemplate json.RawMessage `json:"chat_template"`
	EOS          json.RawMessage `json:"eos_token"`
	BOS          json.RawMessage `json:"bos_token"`
}

func tokenString(raw json.RawMessage) string {
	var s string
	if json.Unmarshal(raw, &s) == nil {
		return s
	}
	var obj struct {
		Content string `json:"content"`
	}
	if json.Unmarshal(raw, &obj) == nil {
		return obj.Content
	}
	return ""
}

func (t *Tokenizer) parseConfig(data []byte) error {
	var c tokenizerConfig
	if err := json.Unmarshal(data, &c); err != nil {
		return fmt.Errorf("tokenizer_config.json: %w", err)
	}
	t.rawConfig = append([]byte(nil), data...)
	t.eos, t.bos = tokenString(c.EOS), tokenString(c.BOS)
	if t.eos != "" {
		if _, ok := t.vocab[t.eos]; !ok {
			return fmt.Errorf("tokenizer_config.json: eos_token %q is not in the vocabulary", t.eos)
		}
	}
	if !isNull(c.ChatTemplate) {
		var s string
		if err := json.Unmarshal(c.ChatTemplate, &s); err != nil {
			var named []struct{ Name, Template string }
			if err := json.Unmarshal(c.ChatTemplate, &named); err != nil {
				return errors.New("tokenizer_config.json: chat_template is neither a string nor a list of {name, template}")
			}
			for _, n := range named {
				if n.Name == "default" {
					s = n.Template
				}
			}
		}
		t.chatTemplate = s
		t.chatFamily, t.defaultSys = detectChat(s)
	}
	return nil
}

// VocabSize is one more than the largest token id.
func (t *Tokenizer) VocabSize() int { return len(t.tokens) }

// TokenID returns the id of a token (vocabulary entry or added token).
func (t *Tokenizer) TokenID(s string) (int32, bool) {
	id, ok := t.vocab[s]
	return id, ok
}

// EOS returns the end-of-sequence token of tokenizer_config.json.
func (t *Tokenizer) EOS() (int32, bool) {
	if t.eos == "" {
		return 0, false
	}
	return t.TokenID(t.eos)
}

// IsSpecial reports whether id is a special added token (skipped by DecodeSkipSpecial).
func (t *Tokenizer) IsSpecial(id int32) bool { return t.special[id] }

// Encode turns text into ids as Hugging Face's tokenizer(text) does by default: added tokens
// (special ones included) are recognised in the text, and the post-processor's tokens (Llama
// 3's <|begin_of_text|>) are put in front.
func (t *Tokenizer) Encode(text string) []int32 {
	return append(append([]int32(nil), t.prefix...), t.EncodePlain(text)...)
}

// EncodePlain encodes without the post-processor's tokens (add_special_tokens=False), as
// apply_chat_template(tokenize=True) does: the template already holds them.
func (t *Tokenizer) EncodePlain(text string) []int32 {
	var out []int32
	for len(text) > 0 {
		// The next added token, leftmost, longest at its position.
		pos, tok := -1, addedToken{}
		for _, a := range t.added {
			if i := strings.Index(text, a.content); i >= 0 && (pos < 0 || i < pos) {
				pos, tok = i, a
			}
		}
		if pos < 0 {
			return t.encodeText(text, out)
		}
		out = t.encodeText(text[:pos], out)
		out = append(out, tok.id)
		text = text[pos+len(tok.content):]
	}
	return out
}

// encodeText encodes a stretch of text without added tokens.
func (t *Tokenizer) encodeText(text string, out []int32) []int32 {
	if text == "" {
		return out
	}
	if t.nfc {
		text = norm.NFC.String(text)
	}
	if !t.byteLevel {
		return t.bpe(text, out)
	}
	var words []string
	if t.maxDigits > 0 {
		words = splitWords(text, t.maxDigits, nil)
	} else {
		words = []string{text}
	}
	var b strings.Builder
	for _, w := range words {
		b.Reset()
		for i := 0; i < len(w); i++ {
			b.WriteRune(byteToRune[w[i]])
		}
		out = t.bpe(b.String(), out)
	}
	return out
}

// bpe encodes one pre-token: its characters merged pair by pair, lowest merge rank first.
func (t *Tokenizer) bpe(word string, out []int32) []int32 {
	t.mu.Lock()
	ids, ok := t.cache[word]
	t.mu.Unlock()
	if ok {
		return append(out, ids...)
	}
	if id, ok := t.vocab[word]; ok && (t.ignoreMerges || utf8.RuneCountInString(word) == 1) {
		ids = []int32{id}
	} else {
		syms := make([]string, 0, len(word))
		for _, r := range word {
			syms = append(syms, string(r))
		}
		for len(syms) > 1 {
			best, at := -1, -1
			for i := 0; i+1 < len(syms); i++ {
				if r, ok := t.ranks[[2]string{syms[i], syms[i+1]}]; ok && (best < 0 || r < best) {
					best, at = r, i
				}
			}
			if at < 0 {
				break
			}
			// Merge every occurrence of the best pair, left to right.
			a, b := syms[at], syms[at+1]
			merged := syms[:0:0]
			for i := 0; i < len(syms); i++ {
				if i+1 < len(syms) && syms[i] == a && syms[i+1] == b {
					merged = append(merged, a+b)
					i++
				} else {
					merged = append(merged, syms[i])
				}
			}
			syms = merged
		}
		for _, s := range syms {
			if id, ok := t.vocab[s]; ok {
				ids = append(ids, id)
			} else if t.unk >= 0 {
				ids = append(ids, t.unk)
			}
		}
	}
	if len(word) <= 256 {
		t.mu.Lock()
		if len(t.cache) > 1<<16 {
			clear(t.cache)
		}
		t.cache[word] = ids
		t.mu.Unlock()
	}
	return append(out, ids...)
}

// Decode turns ids into text; added tokens (special ones included) appear as their text.
func (t *Tokenizer) Decode(ids []int32) (string, error) { return t.decode(ids, false) }

// DecodeSkipSpecial decodes without the special tokens (skip_special_tokens=True).
func (t *Tokenizer) DecodeSkipSpecial(ids []int32) (string, error) { return t.decode(ids, true) }

func (t *Tokenizer) decode(ids []int32, skipSpecial bool) (string, error) {
	var out strings.Builder
	var pending []byte
	flush := func() {
		out.WriteString(strings.ToValidUTF8(string(pending), "\uFFFD"))
		pending = pending[:0]
	}
	for i, id := range ids {
		if id < 0 || int(id) >= len(t.tokens) || t.tokens[id] == "" {
			return "", fmt.Errorf("tokenizer: id %d at position %d is not in the vocabulary (size %d)", id, i, len(t.tokens))
		}
		if skipSpecial && t.special[id] {
			continue
		}
		s := t.tokens[id]
		if t.addedIDs[id] || !t.byteLevel {
			flush()
			out.WriteString(s)
			continue
		}
		for _, r := range s {
			b, ok := runeToByte[r]
			if !ok {
				return "", fmt.Errorf("tokenizer: token %d %q is not in the byte-level alphabet", id, s)
			}
			pending = append(pending, b)
		}
	}
	flush()
	return out.String(), nil
}

// Save writes tokenizer.json (and tokenizer_config.json when there is one) into dir, each
// atomically (temporary file, fsync, rename).
func (t *Tokenizer) Save(dir string) error {
	if err := writeAtomic(filepath.Join(dir, TokenizerFile), t.raw); err != nil {
		return err
	}
	if t.rawConfig != nil {
		return writeAtomic(filepath.Join(dir, ConfigFile), t.rawConfig)
	}
	return nil
}

func writeAtomic(path string, data []byte) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("tokenizer: write %s: %w", path, err)
	}
	if d, err := os.Open(filepath.Dir(path)); err == nil {
		d.Sync()
		d.Close()
	}
	return nil
}

// NewCharLevel builds a character-level tokenizer: tokens[i] is token i; single characters
// are the vocabulary, longer entries are added tokens, special when listed in special (they
// are what DecodeSkipSpecial drops). eos names the end-of-sequence token. The tokenizer.json it
// saves is a BPE model without merges, which Hugging Face tokenizers and transformers.js load.
func NewCharLevel(tokens []string, special []string, eos string) (*Tokenizer, error) {
	isSpecial := map[string]bool{}
	for _, s := range special {
		isSpecial[s] = true
	}
	type added struct {
		ID         int32  `json:"id"`
		Content    string `json:"content"`
		SingleWord bool   `json:"single_word"`
		LStrip     bool   `json:"lstrip"`
		RStrip     bool   `json:"rstrip"`
		Normalized bool   `json:"normalized"`
		Special    bool   `json:"special"`
	}
	vocab := map[string]int32{}
	var adds []added
	seen := map[string]bool{}
	for i, s := range tokens {
		if s == "" || seen[s] {
			return nil, fmt.Errorf("tokenizer: char-level token %d %q is empty or repeated", i, s)
		}
		seen[s] = true
		vocab[s] = int32(i)
		if utf8.RuneCountInString(s) > 1 || isSpecial[s] {
			adds = append(adds, added{ID: int32(i), Content: s, Special: isSpecial[s]})
		}
	}
	if !seen[eos] {
		return nil, fmt.Errorf("tokenizer: eos token %q is not among the tokens", eos)
	}
	doc := map[string]any{
		"version": "1.0", "truncation": nil, "padding": nil, "added_tokens": adds,
		"normalizer": nil, "pre_tokenizer": nil, "post_processor": nil,
		"decoder": map[string]any{"type": "Fuse"},
		"model": map[string]any{"type": "BPE", "dropout": nil, "unk_token": nil, "continuing_subword_prefix": nil,
			"end_of_word_suffix": nil, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
			"vocab": vocab, "merges": []string{}},
	}
	raw, err := json.MarshalIndent(doc, "", "  ")
	if err != nil {
		return nil, err
	}
	cfg, err := json.MarshalIndent(map[string]any{"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": eos,
		"clean_up_tokenization_spaces": false, "model_max_length": 1 << 20}, "", "  ")
	if err != nil {
		return nil, err
	}
	return Parse(bytes.TrimSpace(raw), cfg)
}
