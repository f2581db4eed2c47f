package tokenizer

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"time"
	"unicode"

	"github.com/nikolalohinski/gonja/v2/builtins"
	"github.com/nikolalohinski/gonja/v2/config"
	"github.com/nikolalohinski/gonja/v2/exec"
	"github.com/nikolalohinski/gonja/v2/loaders"
)

// ChatTemplate is a Hugging Face chat template (tokenizer_config.json's chat_template, a Jinja
// program) compiled by gonja, a Go implementation of Jinja2. It renders as transformers'
// apply_chat_template(tokenize=False) does: trim_blocks and lstrip_blocks on, the variables
// messages, add_generation_prompt, tools=None, documents=None and the tokenizer's special tokens
// (bos_token, eos_token, pad_token, unk_token where tokenizer_config.json names them), and
// transformers' globals raise_exception and strftime_now. It is safe for concurrent use.
type ChatTemplate struct {
	tpl *exec.Template
}

// TemplateError is the message a chat template raised with raise_exception (Gemma's "System
// role not supported", Mistral's "conversation roles must alternate ..."): the conversation is
// not one the template accepts.
type TemplateError struct{ Message string }

func (e *TemplateError) Error() string {
	return "the chat template refused the conversation: " + e.Message
}

// chatEnv is the Jinja environment of every chat template: gonja's filters, tests and methods
// (Python's str.startswith, endswith, replace ... among them) with transformers' tojson filter
// and Python's own strip, lstrip, rstrip, split, rsplit (gonja 2.9.1's fail without an
// argument: their default is the rune ' ', not a string), startswith and endswith.
var chatEnv = func() *exec.Environment {
	filters := exec.NewFilterSet(map[string]exec.FilterFunction{}).Update(builtins.Filters)
	if err := filters.Replace("tojson", filterToJSON); err != nil {
		panic(err)
	}
	str := map[string]exec.Method[string]{}
	for _, name := range []string{"capitalize", "capwords", "casefold", "center", "count", "encode", "endswith",
		"expandtabs", "find", "format", "format_map", "isalnum", "isalpha", "isascii", "isdecimal", "isdigit",
		"islower", "isnumeric", "isprintable", "isspace", "istitle", "isupper", "join", "ljust", "lower",
		"partition", "removeprefix", "removesuffix", "replace", "rfind", "rjust", "rpartition", "splitlines",
		"startswith", "swapcase", "title", "upper", "zfill"} {
		if m, ok := builtins.Methods.Str.Get(name); ok {
			str[name] = m
		}
	}
	for name, m := range pyStrMethods {
		str[name] = m
	}
	methods := builtins.Methods
	methods.Str = exec.NewMethodSet(str)
	return &exec.Environment{
		Context:           exec.EmptyContext().Update(builtins.GlobalFunctions).Update(builtins.GlobalVariables),
		Filters:           filters,
		Tests:             builtins.Tests,
		ControlStructures: builtins.ControlStructures,
		Methods:           methods,
	}
}()

// pyList is a list handed to a template. Its items are looked up as Python does: gonja 2.9.1
// finds no item at x[-n] when x has n items (so messages[-1] of a one-message conversation is
// None there); a pyList's own GetItem, which gonja asks first, does. Slices of a pyList
// (messages[1:]) stay pyLists.
type pyList []any

// GetItem implements gonja's exec.ItemGetter.
func (l pyList) GetItem(key any) (*exec.Value, bool) {
	var i int
	switch k := key.(type) {
	case int:
		i = k
	case int64:
		i = int(k)
	default:
		return exec.AsValue(nil), false
	}
	if i < 0 {
		i += len(l)
	}
	if i < 0 || i >= len(l) {
		return exec.AsValue(nil), false
	}
	return exec.ToValue(reflect.ValueOf(l).Index(i)), true
}

// pyArg is argument i (or keyword name) of a method call: ok is false when it is absent or None.
func pyArg(args *exec.VarArgs, i int, name string) (v *exec.Value, ok bool) {
	if i < len(args.Args) {
		v = args.Args[i]
	} else if kw, found := args.KwArgs[name]; found {
		v = kw
	}
	if v == nil || v.IsNil() {
		return nil, false
	}
	return v, true
}

// pySpace is Python's str.isspace for one character.
func pySpace(r rune) bool { return unicode.IsSpace(r) || (r >= 0x1c && r <= 0x1f) }

// pyStrip is str.strip, lstrip or rstrip: white space by default, else the characters given.
func pyStrip(left, right bool) exec.Method[string] {
	return func(self string, _ *exec.Value, args *exec.VarArgs) (any, error) {
		cut := pySpace
		if v, ok := pyArg(args, 0, "chars"); ok {
			if !v.IsString() {
				return nil, fmt.Errorf("strip arg must be None or str, not %s", v.String())
			}
			chars := v.String()
			cut = func(r rune) bool { return strings.ContainsRune(chars, r) }
		}
		if left {
			self = strings.TrimLeftFunc(self, cut)
		}
		if right {
			self = strings.TrimRightFunc(self, cut)
		}
		return self, nil
	}
}

// pySplit is str.split (or rsplit from the right): on runs of white space by default, else on
// the separator given, at most maxsplit times.
func pySplit(fromRight bool) exec.Method[string] {
	return func(self string, _ *exec.Value, args *exec.VarArgs) (any, error) {
		maxsplit := -1
		if v, ok := pyArg(args, 1, "maxsplit"); ok {
			if !v.IsInteger() {
				return nil, fmt.Errorf("split: maxsplit %s is not an integer", v.String())
			}
			maxsplit = v.Integer()
		}
		var parts []string
		if v, ok := pyArg(args, 0, "sep"); ok {
			sep := v.String()
			if !v.IsString() || sep == "" {
				return nil, fmt.Errorf("split: separator %q is empty or not a string", sep)
			}
			switch {
			case maxsplit < 0:
				parts = strings.Split(self, sep)
			case !fromRight:
				parts = strings.SplitN(self, sep, maxsplit+1)
			default:
				for len(parts) < maxsplit {
					i := strings.LastIndex(self, sep)
					if i < 0 {
						break
					}
					parts = append([]string{self[i+len(sep):]}, parts...)
					self = self[:i]
				}
				parts = append([]string{self}, parts...)
			}
		} else {
			fields := strings.FieldsFunc(self, pySpace)
			if maxsplit >= 0 && len(fields) > maxsplit+1 {
				// The text after the last split keeps its inner white space.
				if !fromRight {
					rest := self
					for range maxsplit {
						rest = strings.TrimLeftFunc(rest, pySpace)
						rest = rest[strings.IndexFunc(rest, pySpace):]
					}
					fields = append(fields[:maxsplit:maxsplit], strings.TrimFunc(rest, pySpace))
				} else {
					rest := self
					for range maxsplit {
						rest = strings.TrimRightFunc(rest, pySpace)
						rest = rest[:strings.LastIndexFunc(rest, pySpace)+1]
					}
					fields = append([]string{strings.TrimFunc(rest, pySpace)}, fields[len(fields)-maxsplit:]...)
				}
			}
			parts = fields
		}
		out := make(pyList, len(parts))
		for i, p := range parts {
			out[i] = p
		}
		return out, nil
	}
}

// pyAffix is str.startswith or str.endswith (gonja 2.9.1 says ”.endswith('?') is True): the
// argument is a string or a tuple (list) of strings.
func pyAffix(has func(s, affix string) bool) exec.Method[string] {
	return func(self string, _ *exec.Value, args *exec.VarArgs) (any, error) {
		v, ok := pyArg(args, 0, "prefix")
		if !ok || len(args.Args) > 1 {
			return nil, errors.New("startswith/endswith takes one string or a tuple of strings")
		}
		if v.IsString() {
			return has(self, v.String()), nil
		}
		if !v.IsList() {
			return nil, fmt.Errorf("startswith/endswith: %s is not a string or a tuple", v.String())
		}
		found := false
		v.Iterate(func(_, _ int, item, _ *exec.Value) bool {
			found = found || has(self, item.String())
			return !found
		}, func() {})
		return found, nil
	}
}

var pyStrMethods = map[string]exec.Method[string]{
	"strip": pyStrip(true, true), "lstrip": pyStrip(true, false), "rstrip": pyStrip(false, true),
	"split": pySplit(false), "rsplit": pySplit(true),
	"startswith": pyAffix(strings.HasPrefix), "endswith": pyAffix(strings.HasSuffix),
}

// ParseChatTemplate compiles a chat template. The error says where the template stops being
// Jinja this package can run.
func ParseChatTemplate(src string) (tmpl *ChatTemplate, err error) {
	defer func() {
		if r := recover(); r != nil { // gonja is a third-party parser: no input may crash the caller
			tmpl, err = nil, fmt.Errorf("tokenizer: the chat template cannot be compiled (the Jinja engine failed: %v)", r)
		}
	}()
	cfg := config.New()
	cfg.TrimBlocks, cfg.LeftStripBlocks = true, true // as transformers compiles templates
	loader, err := loaders.NewFileSystemLoader("")
	if err != nil {
		return nil, fmt.Errorf("tokenizer: chat template: %w", err)
	}
	shifted, err := loaders.NewShiftedLoader("chat_template", strings.NewReader(src), loader)
	if err != nil {
		return nil, fmt.Errorf("tokenizer: chat template: %w", err)
	}
	tpl, err := exec.NewTemplate("chat_template", cfg, shifted, chatEnv)
	if err != nil {
		if inner := errors.Unwrap(err); inner != nil {
			err = inner // gonja's own wrapping quotes the whole template
		}
		return nil, fmt.Errorf("tokenizer: the chat template is not Jinja this package can run: %w", err)
	}
	return &ChatTemplate{tpl: tpl}, nil
}

// Render renders msgs. specialTokens are the tokenizer's special tokens by their
// tokenizer_config.json names (bos_token, eos_token ...); a name left out is undefined in the
// template, as in transformers. A template that calls raise_exception returns a *TemplateError
// (wrapped) carrying its message.
func (c *ChatTemplate) Render(msgs []Message, addGenerationPrompt bool, specialTokens map[string]string) (out string, err error) {
	var raised *TemplateError
	defer func() {
		if r := recover(); r != nil {
			out, err = "", fmt.Errorf("tokenizer: rendering the chat template: the Jinja engine failed: %v", r)
		}
	}()
	messages := make(pyList, len(msgs))
	for i, m := range msgs {
		messages[i] = map[string]any{"role": m.Role, "content": m.Content}
	}
	vars := map[string]any{
		"messages":              messages,
		"add_generation_prompt": addGenerationPrompt,
		"tools":                 nil,
		"documents":             nil,
		"raise_exception": func(msg string) (string, error) {
			raised = &TemplateError{Message: msg}
			return "", raised
		},
		"strftime_now": func(format string) string { return strftime(time.Now(), format) },
	}
	for k, v := range specialTokens {
		if v != "" {
			vars[k] = v
		}
	}
	out, err = c.tpl.ExecuteToString(exec.NewContext(vars))
	if err != nil {
		if raised != nil {
			return "", fmt.Errorf("tokenizer: %w", raised)
		}
		return "", fmt.Errorf("tokenizer: rendering the chat template: %w", err)
	}
	return out, nil
}

// setChatTemplate compiles src as the chat template; where names its source in errors. A
// template that does not compile leaves the tokenizer usable for plain text: ApplyChatTemplate
// and ChatTemplateProblem say why chat is unavailable.
func (t *Tokenizer) setChatTemplate(src, where string) {
	t.chatTemplate, t.chat, t.chatErr = src, nil, nil
	if src == "" {
		return
	}
	if t.chat, t.chatErr = ParseChatTemplate(src); t.chatErr != nil {
		t.chatErr = fmt.Errorf("%s: %w", where, t.chatErr)
	}
}

// HasChatTemplate reports whether tokenizer_config.json has a chat template this package can
// render.
func (t *Tokenizer) HasChatTemplate() bool { return t.chat != nil }

// ChatTemplateProblem says why ApplyChatTemplate cannot render: tokenizer_config.json has no
// chat_template, or its template does not compile. It is nil when the template compiled.
func (t *Tokenizer) ChatTemplateProblem() error {
	switch {
	case t.chat != nil:
		return nil
	case t.chatErr != nil:
		return t.chatErr
	}
	return errors.New("tokenizer: no chat_template in tokenizer_config.json")
}

// ApplyChatTemplate renders messages with the model's chat template as transformers'
// apply_chat_template(tokenize=False) does; with addGenerationPrompt the template opens the
// assistant's turn for the model to write. Encode the result with EncodePlain: it holds the
// special tokens the model needs.
func (t *Tokenizer) ApplyChatTemplate(msgs []Message, addGenerationPrompt bool) (string, error) {
	if err := t.ChatTemplateProblem(); err != nil {
		return "", err
	}
	if len(msgs) == 0 {
		return "", errors.New("tokenizer: no messages")
	}
	return t.chat.Render(msgs, addGenerationPrompt, t.specialTokens)
}

// WithConfig returns a copy of t whose tokenizer_config.json has the given fields set
// (chat_template, bos_token ...), the others kept; Save writes it.
func (t *Tokenizer) WithConfig(fields map[string]any) (*Tokenizer, error) {
	doc := map[string]any{}
	if t.rawConfig != nil {
		if err := json.Unmarshal(t.rawConfig, &doc); err != nil {
			return nil, fmt.Errorf("tokenizer: %s: %w", ConfigFile, err)
		}
	}
	for k, v := range fields {
		doc[k] = v
	}
	cfg, err := json.MarshalIndent(doc, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("tokenizer: %s: %w", ConfigFile, err)
	}
	return ParseWithConfig(t.raw, cfg)
}

// strftime formats t as Python's datetime.strftime does for the directives templates use.
func strftime(t time.Time, format string) string {
	var b strings.Builder
	for i := 0; i < len(format); i++ {
		if format[i] != '%' || i+1 == len(format) {
			b.WriteByte(format[i])
			continue
		}
		i++
		switch format[i] {
		case 'Y':
			b.WriteString(strconv.Itoa(t.Year()))
		case 'y':
			fmt.Fprintf(&b, "%02d", t.Year()%100)
		case 'm':
			fmt.Fprintf(&b, "%02d", int(t.Month()))
		case 'd':
			fmt.Fprintf(&b, "%02d", t.Day())
		case 'B':
			b.WriteString(t.Month().String())
		case 'b':
			b.WriteString(t.Month().String()[:3])
		case 'A':
			b.WriteString(t.Weekday().String())
		case 'a':
			b.WriteString(t.Weekday().String()[:3])
		case 'H':
			fmt.Fprintf(&b, "%02d", t.Hour())
		case 'I':
			fmt.Fprintf(&b, "%02d", (t.Hour()+11)%12+1)
		case 'p':
			b.WriteString(t.Format("PM"))
		case 'M':
			fmt.Fprintf(&b, "%02d", t.Minute())
		case 'S':
			fmt.Fprintf(&b, "%02d", t.Second())
		case 'j':
			fmt.Fprintf(&b, "%03d", t.YearDay())
		case '%':
			b.WriteByte('%')
		default:
			b.WriteByte('%')
			b.WriteByte(format[i])
		}
	}
	return b.String()
}

// filterToJSON is transformers' tojson filter: json.dumps(x, ensure_ascii=False, indent=indent,
// separators=separators), not Jinja's own (which escapes HTML). Dict literals keep their order;
// Go maps (a message) have none, so their keys come sorted.
func filterToJSON(_ *exec.Evaluator, in *exec.Value, params *exec.VarArgs) *exec.Value {
	if in.IsError() {
		return in
	}
	indent := -1
	if v, ok := params.KwArgs["indent"]; ok && !v.IsNil() {
		if !v.IsInteger() {
			return exec.AsValue(fmt.Errorf("tojson: indent %s is not an integer", v.String()))
		}
		indent = v.Integer()
	}
	itemSep, keySep := ", ", ": "
	if indent >= 0 {
		itemSep = ","
	}
	if v, ok := params.KwArgs["separators"]; ok && !v.IsNil() {
		seps, ok := v.Interface().([]any)
		if !ok || len(seps) != 2 {
			return exec.AsValue(fmt.Errorf("tojson: separators %s is not a pair", v.String()))
		}
		itemSep, keySep = fmt.Sprint(seps[0]), fmt.Sprint(seps[1])
	}
	var b strings.Builder
	if err := writePyJSON(&b, reflect.ValueOf(in.Interface()), indent, 0, itemSep, keySep); err != nil {
		return exec.AsValue(fmt.Errorf("tojson: %w", err))
	}
	return exec.AsSafeValue(b.String())
}

// writePyJSON writes v as Python's json.dumps with ensure_ascii=False writes it.
func writePyJSON(b *strings.Builder, v reflect.Value, indent, depth int, itemSep, keySep string) error {
	for v.IsValid() && (v.Kind() == reflect.Interface || v.Kind() == reflect.Pointer) {
		if val, ok := v.Interface().(*exec.Value); ok && val != nil {
			v = reflect.ValueOf(val.Interface())
			continue
		}
		if v.IsNil() {
			break
		}
		v = v.Elem()
	}
	newline := func(d int) {
		if indent >= 0 {
			b.WriteString("\n" + strings.Repeat(" ", indent*d))
		}
	}
	if v.IsValid() && v.Type() == reflect.TypeOf(exec.Dict{}) { // a dict literal: keys in order, as Python keeps them
		pairs := v.Interface().(exec.Dict).Pairs
		if len(pairs) == 0 {
			b.WriteString("{}")
			return nil
		}
		b.WriteByte('{')
		for i, p := range pairs {
			if i > 0 {
				b.WriteString(itemSep)
			}
			newline(depth + 1)
			writePyString(b, p.Key.String())
			b.WriteString(keySep)
			if err := writePyJSON(b, reflect.ValueOf(p.Value), indent, depth+1, itemSep, keySep); err != nil {
				return err
			}
		}
		newline(depth)
		b.WriteByte('}')
		return nil
	}
	switch {
	case !v.IsValid() || ((v.Kind() == reflect.Interface || v.Kind() == reflect.Pointer || v.Kind() == reflect.Map || v.Kind() == reflect.Slice) && v.IsNil()):
		b.WriteString("null")
	case v.Kind() == reflect.Bool:
		b.WriteString(map[bool]string{true: "true", false: "false"}[v.Bool()])
	case v.CanInt():
		b.WriteString(strconv.FormatInt(v.Int(), 10))
	case v.CanUint():
		b.WriteString(strconv.FormatUint(v.Uint(), 10))
	case v.CanFloat():
		f := v.Float()
		switch {
		case math.IsNaN(f):
			b.WriteString("NaN")
		case math.IsInf(f, 1):
			b.WriteString("Infinity")
		case math.IsInf(f, -1):
			b.WriteString("-Infinity")
		case f == math.Trunc(f) && math.Abs(f) < 1e16:
			b.WriteString(strconv.FormatFloat(f, 'f', 1, 64))
		default:
			b.WriteString(strconv.FormatFloat(f, 'g', -1, 64))
		}
	case v.Kind() == reflect.String:
		writePyString(b, v.String())
	case v.Kind() == reflect.Slice || v.Kind() == reflect.Array:
		if v.Len() == 0 {
			b.WriteString("[]")
			return nil
		}
		b.WriteByte('[')
		for i := 0; i < v.Len(); i++ {
			if i > 0 {
				b.WriteString(itemSep)
			}
			newline(depth + 1)
			if err := writePyJSON(b, v.Index(i), indent, depth+1, itemSep, keySep); err != nil {
				return err
			}
		}
		newline(depth)
		b.WriteByte(']')
	case v.Kind() == reflect.Map:
		if v.Len() == 0 {
			b.WriteString("{}")
			return nil
		}
		keys := v.MapKeys()
		sort.Slice(keys, func(i, j int) bool { return fmt.Sprint(keys[i].Interface()) < fmt.Sprint(keys[j].Interface()) })
		b.WriteByte('{')
		for i, k := range keys {
			if i > 0 {
				b.WriteString(itemSep)
			}
			newline(depth + 1)
			writePyString(b, fmt.Sprint(k.Interface()))
			b.WriteString(keySep)
			if err := writePyJSON(b, v.MapIndex(k), indent, depth+1, itemSep, keySep); err != nil {
				return err
			}
		}
		newline(depth)
		b.WriteByte('}')
	default:
		return fmt.Errorf("a %s is not JSON", v.Type())
	}
	return nil
}

// writePyString writes s as a JSON string the way Python's json.dumps(ensure_ascii=False) does.
func writePyString(b *strings.Builder, s string) {
	b.WriteByte('"')
	for _, r := range s {
		switch r {
		case '"':
			b.WriteString(`\"`)
		case '\\':
			b.WriteString(`\\`)
		case '\n':
			b.WriteString(`\n`)
		case '\r':
			b.WriteString(`\r`)
		case '\t':
			b.WriteString(`\t`)
		case '\b':
			b.WriteString(`\b`)
		case '\f':
			b.WriteString(`\f`)
		default:
			if r < 0x20 {
				fmt.Fprintf(b, `\u%04x`, r)
			} else {
				b.WriteRune(r)
			}
		}
	}
	b.WriteByte('"')
}
