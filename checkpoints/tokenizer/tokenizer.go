// Package tokenizer reads and writes Hugging Face tokenizers (tokenizer.json and
// tokenizer_config.json) of the model families the engine runs: byte-level BPE as Qwen2 /
// Qwen2.5 / Qwen3 and Llama 3 ship it (NFC normalizer, the split regex, GPT-2's byte alphabet,
// merges, added and special tokens, the post-processor's BOS), character-level BPE as the
// project's default model uses, and the chat template of tokenizer_config.json (a Jinja program,
// run by a Jinja engine as transformers runs it), so that a checkpoint directory is a whole model.
//
// The reference is Hugging Face tokenizers itself (the Rust library transformers runs): ids,
// decoded text and the ids of added tokens follow it, including where transformers.js differs
// (U+0085 and U+FEFF in the split regex, added tokens in byte-level decoding). The split regex,
// which needs look-ahead that Go's regexp lacks, is matched by hand (pretok.go). Chat templates
// are run by gonja, a Go Jinja engine, set up as transformers sets up Python's Jinja2 (chat.go);
// a template gonja cannot compile is reported as such, never rendered approximately.
//
// Encoding is about 30 MB/s on one core (BenchmarkEncode; tokenizers' Node addon measured in
// the same run did about 1.5 MB/s on the same 2-core machine).
package tokenizer

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"unicode/utf8"

	"github.com/prolong-rl/prolong/checkpoints"
)

// File names of a Hugging Face tokenizer in a model directory.
const (
	TokenizerFile    = "tokenizer.json"
	ConfigFile       = "tokenizer_config.json"
	ChatTemplateFile = "chat_template.jinja" // the chat template, where it is not in ConfigFile
)

// Message is one chat message.
type Message struct {
	Role    string `json:"role"`
	Content string `json:"content"`
}

// Tokenizer encodes text to token ids and back. It is safe for concurrent use.
type Tokenizer struct {
	vocab        map[string]int32 // model.vocab and added tokens
	modelVocab   map[string]int32 // model.vocab
	tokens       []string         // id -> token (vocabulary and added tokens)
	merges       map[[2]int32]merge
	byteLevel    bool       // GPT-2 byte alphabet: map bytes, byte-level decode
	byteIDs      [256]int32 // byte-level: the id of each byte's token, -1 if absent
	maxDigits    int        // 1 (Qwen) or 3 (Llama 3); 0: no split pre-tokenizer
	nfc          bool
	ignoreMerges bool
	fuseUnk      bool
	unk          int32 // -1: unknown characters are dropped (as tokenizers does without unk_token)

	added        []addedToken // longest first
	addedByFirst [256][]int   // first byte -> indices into added, longest first
	special      map[int32]bool
	addedIDs     map[int32]bool
	prefix       []int32 // post-processor tokens before the text (Llama 3's <|begin_of_text|>)

	chatTemplate  string
	chat          *ChatTemplate     // nil: no template, or chatErr
	chatErr       error             // why chat_template did not compile
	specialTokens map[string]string // bos_token, eos_token, pad_token, unk_token of tokenizer_config.json
	eos, bos      string

	raw, rawConfig []byte // the files as read, written back unchanged by Save

	mu    sync.Mutex
	cache map[string][]int32 // BPE of a pre-token

	spanOnce      sync.Once
	span, unkSpan int // the most weight one token covers, the unknown token's (limit.go)
}

type addedToken struct {
	content string
	id      int32
	special bool
}

// tokenizerJSON is the part of tokenizer.json this package reads.
type tokenizerJSON struct {
	AddedTokens []struct {
		ID         int32  `json:"id"`
		Content    string `json:"content"`
		Special    bool   `json:"special"`
		SingleWord bool   `json:"single_word"`
		LStrip     bool   `json:"lstrip"`
		RStrip     bool   `json:"rstrip"`
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
		FuseUnk      bool             `json:"fuse_unk"`
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

// Load reads dir/tokenizer.json and, when present, dir/tokenizer_config.json (chat template,
// bos and eos tokens) and dir/chat_template.jinja.
func Load(dir string) (*Tokenizer, error) { return LoadFile(filepath.Join(dir, TokenizerFile)) }

// LoadFile reads a tokenizer.json at path and, when present, the tokenizer_config.json beside
// it.
func LoadFile(path string) (*Tokenizer, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("tokenizer: %w", err)
	}
	cfgPath := filepath.Join(filepath.Dir(path), ConfigFile)
	cfg, err := os.ReadFile(cfgPath)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("tokenizer: %w", err)
	}
	t, err := parse(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if cfg != nil {
		if err := t.parseConfig(cfg); err != nil {
			return nil, fmt.Errorf("%s: %w", cfgPath, err)
		}
	}
	// transformers 4.43 and later may save the template beside, as chat_template.jinja; it then
	// takes the place of tokenizer_config.json's.
	tmplPath := filepath.Join(filepath.Dir(path), ChatTemplateFile)
	if tmpl, err := os.ReadFile(tmplPath); err == nil {
		t.setChatTemplate(string(tmpl), ChatTemplateFile)
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("tokenizer: %w", err)
	}
	return t, nil
}

// Parse builds a tokenizer from the bytes of a tokenizer.json (no chat template, no eos
// token: those are in tokenizer_config.json, see ParseWithConfig).
func Parse(tokenizerJSON []byte) (*Tokenizer, error) {
	t, err := parse(tokenizerJSON)
	if err != nil {
		return nil, fmt.Errorf("tokenizer.json: %w", err)
	}
	return t, nil
}

// ParseWithConfig builds a tokenizer from the bytes of tokenizer.json and of
// tokenizer_config.json (nil when there is none).
func ParseWithConfig(tokenizerJSON, configJSON []byte) (*Tokenizer, error) {
	t, err := Parse(tokenizerJSON)
	if err != nil {
		return nil, err
	}
	if configJSON != nil {
		if err := t.parseConfig(configJSON); err != nil {
			return nil, fmt.Errorf("tokenizer_config.json: %w", err)
		}
	}
	return t, nil
}

// parse reads tokenizer.json; its errors name the field at fault, not the file.
func parse(tokenizerJSONBytes []byte) (*Tokenizer, error) {
	var f tokenizerJSON
	if err := json.Unmarshal(tokenizerJSONBytes, &f); err != nil {
		return nil, err
	}
	m := f.Model
	switch {
	case m.Type != "BPE" && m.Type != "":
		return nil, fmt.Errorf("model.type %q is not supported (only BPE)", m.Type)
	case m.Type == "" && m.Vocab == nil:
		return nil, errors.New("no model")
	case m.ByteFallback:
		return nil, errors.New("model.byte_fallback (SentencePiece-style BPE, Llama 2) is not supported")
	case m.Dropout != nil && *m.Dropout != 0:
		return nil, errors.New("model.dropout is not supported")
	case m.Prefix != "" || m.Suffix != "":
		return nil, errors.New("model.continuing_subword_prefix / end_of_word_suffix are not supported")
	}
	t := &Tokenizer{vocab: map[string]int32{}, modelVocab: map[string]int32{}, merges: map[[2]int32]merge{},
		special: map[int32]bool{}, addedIDs: map[int32]bool{}, unk: -1,
		ignoreMerges: m.IgnoreMerges, fuseUnk: m.FuseUnk, cache: map[string][]int32{}}
	t.raw = append([]byte(nil), tokenizerJSONBytes...)
	maxID := int32(-1)
	for s, id := range m.Vocab {
		if id < 0 || id > 1<<24 {
			return nil, fmt.Errorf("model.vocab[%q] = %d is out of range", s, id)
		}
		t.vocab[s] = id
		t.modelVocab[s] = id
		maxID = max(maxID, id)
	}
	nextAdded, addedSeen := int32(0), map[string]int32{}
	for i, a := range f.AddedTokens {
		if a.Content == "" || a.ID < 0 || a.ID > 1<<24 {
			return nil, fmt.Errorf("added_tokens[%d]: empty content or id %d out of range", i, a.ID)
		}
		if a.SingleWord || a.LStrip || a.RStrip {
			return nil, fmt.Errorf("added_tokens[%d] %q: single_word, lstrip and rstrip are not supported", i, a.Content)
		}
		// Hugging Face tokenizers does not read the id: a token of model.vocab keeps its id,
		// the others take the ids after the vocabulary, in order. A file whose ids say
		// otherwise would encode differently there, so it is refused.
		want, dup := addedSeen[a.Content]
		inVocab := false
		if !dup {
			want, inVocab = t.modelVocab[a.Content]
		}
		if !dup && !inVocab {
			want = int32(len(m.Vocab))
			if nextAdded > want {
				want = nextAdded
			}
		}
		if a.ID != want {
			return nil, fmt.Errorf("added_tokens[%d] %q: id %d, but Hugging Face tokenizers gives it id %d (a token not in model.vocab takes the next id after the vocabulary and the added tokens before it)", i, a.Content, a.ID, want)
		}
		nextAdded = max(nextAdded, want+1)
		if dup {
			continue
		}
		addedSeen[a.Content] = want
		t.vocab[a.Content] = a.ID
		t.added = append(t.added, addedToken{a.Content, a.ID, a.Special})
		if a.Special {
			t.special[a.ID] = true
		}
		maxID = max(maxID, a.ID)
	}
	sort.SliceStable(t.added, func(i, j int) bool { return len(t.added[i].content) > len(t.added[j].content) })
	for k, a := range t.added {
		t.addedByFirst[a.content[0]] = append(t.addedByFirst[a.content[0]], k)
	}
	t.tokens = make([]string, maxID+1)
	for s, id := range m.Vocab {
		if t.tokens[id] != "" {
			return nil, fmt.Errorf("model.vocab gives id %d to both %q and %q", id, t.tokens[id], s)
		}
		t.tokens[id] = s
	}
	for _, a := range t.added {
		if prev := t.tokens[a.id]; prev != "" && prev != a.content {
			return nil, fmt.Errorf("added token %q has the id %d of model.vocab's %q", a.content, a.id, prev)
		}
		t.tokens[a.id] = a.content
		t.addedIDs[a.id] = true
	}
	if m.UnkToken != nil {
		id, ok := t.vocab[*m.UnkToken]
		if !ok {
			return nil, fmt.Errorf("model.unk_token %q is not in the vocabulary", *m.UnkToken)
		}
		t.unk = id
	}
	if err := t.parseMerges(m.Merges); err != nil {
		return nil, err
	}
	for b := range t.byteIDs {
		id, ok := t.modelVocab[string(byteToRune[b])]
		t.byteIDs[b] = -1
		if ok {
			t.byteIDs[b] = id
		}
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
	return t, nil
}

func (t *Tokenizer) parseMerges(raw json.RawMessage) error {
	if len(raw) == 0 || string(raw) == "null" {
		return nil
	}
	var list []json.RawMessage
	if err := json.Unmarshal(raw, &list); err != nil {
		return fmt.Errorf("model.merges: %w", err)
	}
	pairs := false // the form of merges[0]: Hugging Face tokenizers reads one form or the other
	for i, item := range list {
		var pair [2]string
		var s string
		if i == 0 {
			pairs = len(item) > 0 && item[0] == '['
		} else if isPair := len(item) > 0 && item[0] == '['; isPair != pairs {
			return fmt.Errorf("model.merges[%d]: the list mixes \"a b\" strings and [\"a\", \"b\"] pairs", i)
		}
		if err := json.Unmarshal(item, &s); err == nil {
			a, b, ok := strings.Cut(s, " ")
			if !ok || a == "" || b == "" {
				return fmt.Errorf("model.merges[%d] = %q is not two tokens separated by a space", i, s)
			}
			pair = [2]string{a, b}
		} else {
			var p []string
			if err := json.Unmarshal(item, &p); err != nil || len(p) != 2 || p[0] == "" || p[1] == "" {
				return fmt.Errorf("model.merges[%d] is neither \"a b\" nor [\"a\", \"b\"]", i)
			}
			pair = [2]string{p[0], p[1]}
		}
		var ids [3]int32
		for k, s := range [3]string{pair[0], pair[1], pair[0] + pair[1]} {
			id, ok := t.modelVocab[s]
			if !ok {
				return fmt.Errorf("model.merges[%d] %q: %q is not in model.vocab", i, pair, s)
			}
			ids[k] = id
		}
		if _, dup := t.merges[[2]int32{ids[0], ids[1]}]; !dup {
			t.merges[[2]int32{ids[0], ids[1]}] = merge{rank: int32(i), result: ids[2]}
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
		return fmt.Errorf("normalizer: %w", err)
	}
	list := []component{c}
	if c.Type == "Sequence" {
		list = c.Normalizers
	}
	for _, n := range list {
		if n.Type != "NFC" {
			return fmt.Errorf("normalizer type %q is not supported (only NFC)", n.Type)
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
		return fmt.Errorf("pre_tokenizer: %w", err)
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
				return fmt.Errorf("%s.pattern: want {\"Regex\": ...}", field)
			}
			d, ok := splitPatterns[*pat.Regex]
			if !ok {
				return fmt.Errorf("%s.pattern.Regex %q is not supported (Qwen2/Qwen3 and Llama 3 patterns are)", field, *pat.Regex)
			}
			if p.Behavior != "Isolated" || p.Invert {
				return fmt.Errorf("%s: behavior %q invert %v is not supported (Isolated, false)", field, p.Behavior, p.Invert)
			}
			t.maxDigits = d
		case "ByteLevel":
			if p.AddPrefix {
				return fmt.Errorf("%s.add_prefix_space is not supported", field)
			}
			if p.UseRegex == nil || *p.UseRegex {
				return fmt.Errorf("%s.use_regex (GPT-2's own split) is not supported", field)
			}
			t.byteLevel = true
		default:
			return fmt.Errorf("%s.type %q is not supported", field, p.Type)
		}
	}
	if t.maxDigits > 0 && !t.byteLevel {
		return errors.New("pre_tokenizer: a Split without ByteLevel is not supported")
	}
	return nil
}

func (t *Tokenizer) parsePostProcessor(raw json.RawMessage) error {
	if isNull(raw) {
		return nil
	}
	var c component
	if err := json.Unmarshal(raw, &c); err != nil {
		return fmt.Errorf("post_processor: %w", err)
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
						return fmt.Errorf("post_processor: special token %q is not in the vocabulary", piece.SpecialToken.ID)
					}
					if seen {
						return errors.New("post_processor: tokens after the text are not supported")
					}
					t.prefix = append(t.prefix, id)
				case piece.Sequence != nil:
					seen = true
				}
			}
		default:
			return fmt.Errorf("post_processor type %q is not supported", p.Type)
		}
	}
	return nil
}

func (t *Tokenizer) parseDecoder(raw json.RawMessage) error {
	if isNull(raw) {
		if t.byteLevel {
			return errors.New("a byte-level tokenizer without a ByteLevel decoder")
		}
		return nil
	}
	var c component
	if err := json.Unmarshal(raw, &c); err != nil {
		return fmt.Errorf("decoder: %w", err)
	}
	switch {
	case c.Type == "ByteLevel" && t.byteLevel, c.Type == "Fuse" && !t.byteLevel:
		return nil
	}
	return fmt.Errorf("decoder type %q is not supported with this pre-tokenizer", c.Type)
}

// tokenizerConfig is the part of tokenizer_config.json read here.
type tokenizerConfig struct {
	ChatTemplate json.RawMessage `json:"chat_template"`
	EOS          json.RawMessage `json:"eos_token"`
	BOS          json.RawMessage `json:"bos_token"`
	PAD          json.RawMessage `json:"pad_token"`
	UNK          json.RawMessage `json:"unk_token"`
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
		return err
	}
	t.rawConfig = append([]byte(nil), data...)
	t.eos, t.bos = tokenString(c.EOS), tokenString(c.BOS)
	t.specialTokens = map[string]string{"bos_token": t.bos, "eos_token": t.eos, "pad_token": tokenString(c.PAD), "unk_token": tokenString(c.UNK)}
	if t.eos != "" {
		if _, ok := t.vocab[t.eos]; !ok {
			return fmt.Errorf("eos_token %q is not in the vocabulary", t.eos)
		}
	}
	if !isNull(c.ChatTemplate) {
		var s string
		if err := json.Unmarshal(c.ChatTemplate, &s); err != nil {
			var named []struct{ Name, Template string }
			if err := json.Unmarshal(c.ChatTemplate, &named); err != nil {
				return errors.New("chat_template is neither a string nor a list of {name, template}")
			}
			for _, n := range named {
				if n.Name == "default" {
					s = n.Template
				}
			}
		}
		t.setChatTemplate(s, ConfigFile+": chat_template")
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

// BOS returns the beginning-of-sequence token of tokenizer_config.json.
func (t *Tokenizer) BOS() (int32, bool) {
	if t.bos == "" {
		return 0, false
	}
	return t.TokenID(t.bos)
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

// Decode turns ids into text as Hugging Face tokenizers does: every token, added ones included,
// through the decoder (byte-level: characters back to bytes, a token outside the byte alphabet
// as its UTF-8), invalid UTF-8 replaced by U+FFFD per maximal ill-formed subsequence. Special
// tokens stay; clean_up_tokenization_spaces is not applied (the text comes back exactly).
func (t *Tokenizer) Decode(ids []int32) (string, error) { return t.decode(ids, false) }

// DecodeSkipSpecial decodes without the special tokens (skip_special_tokens=True).
func (t *Tokenizer) DecodeSkipSpecial(ids []int32) (string, error) { return t.decode(ids, true) }

func (t *Tokenizer) decode(ids []int32, skipSpecial bool) (string, error) {
	var buf []byte
	for i, id := range ids {
		if id < 0 || int(id) >= len(t.tokens) || t.tokens[id] == "" {
			return "", fmt.Errorf("tokenizer: id %d at position %d is not in the vocabulary (size %d)", id, i, len(t.tokens))
		}
		if skipSpecial && t.special[id] {
			continue
		}
		s := t.tokens[id]
		if !t.byteLevel {
			buf = append(buf, s...)
			continue
		}
		start := len(buf)
		for _, r := range s {
			b, ok := runeToByte[r]
			if !ok {
				buf = append(buf[:start], s...)
				break
			}
			buf = append(buf, b)
		}
	}
	return lossyUTF8(buf), nil
}

// lossyUTF8 is Rust's String::from_utf8_lossy (and the WHATWG decoder): each maximal
// ill-formed subsequence becomes one U+FFFD.
func lossyUTF8(b []byte) string {
	if utf8.Valid(b) {
		return string(b)
	}
	var out strings.Builder
	for len(b) > 0 {
		r, n := utf8.DecodeRune(b)
		if r != utf8.RuneError || n > 1 {
			out.Write(b[:n])
			b = b[n:]
			continue
		}
		out.WriteRune(utf8.RuneError)
		b = b[maximalSubpart(b):]
	}
	return out.String()
}

// maximalSubpart is the length of the ill-formed sequence at the start of b: its lead byte and
// the continuation bytes that could still begin a valid character (Unicode table 3-7).
func maximalSubpart(b []byte) int {
	lo, hi := byte(0x80), byte(0xBF) // the second byte's range
	var size int
	switch c := b[0]; {
	case 0xC2 <= c && c <= 0xDF:
		size = 2
	case c == 0xE0:
		size, lo = 3, 0xA0
	case c == 0xED:
		size, hi = 3, 0x9F
	case 0xE1 <= c && c <= 0xEF:
		size = 3
	case c == 0xF0:
		size, lo = 4, 0x90
	case c == 0xF4:
		size, hi = 4, 0x8F
	case 0xF1 <= c && c <= 0xF3:
		size = 4
	default:
		return 1
	}
	n := 1
	for ; n < size && n < len(b); n++ {
		if x := b[n]; (n == 1 && (x < lo || x > hi)) || (n > 1 && (x < 0x80 || x > 0xBF)) {
			return n
		}
	}
	return n
}

// Save writes tokenizer.json (and tokenizer_config.json when there is one) into dir, made if
// need be, each atomically and readable by all (checkpoints.WriteFileAtomic, mode 0644).
func (t *Tokenizer) Save(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("tokenizer: %w", err)
	}
	if err := writeAtomic(filepath.Join(dir, TokenizerFile), t.raw); err != nil {
		return err
	}
	if t.rawConfig != nil {
		return writeAtomic(filepath.Join(dir, ConfigFile), t.rawConfig)
	}
	return nil
}

// writeAtomic writes data to path with checkpoints.WriteFileAtomic.
func writeAtomic(path string, data []byte) error {
	err := checkpoints.WriteFileAtomic(path, 0o644, func(w io.Writer) error {
		_, err := w.Write(data)
		return err
	})
	if err != nil {
		return fmt.Errorf("tokenizer: %w", err)
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
	return ParseWithConfig(bytes.TrimSpace(raw), cfg)
}
