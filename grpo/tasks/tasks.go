// Package tasks generates verifiable task families for RL training: short multi-step
// arithmetic (the default task for the project's tiny model), countdown equation puzzles, and
// logic families (sorting a list, counting letters, boolean expressions).
//
// Every family comes with a generator driven by a seed, a reference solver (to make SFT targets)
// and an exact verifier that grpo/reward routes to by the family's name. Train and held-out
// problems are separated by a hash of each problem's canonical key, so the two splits never share
// a problem whatever the seeds and sizes asked for.
//
// Answers go in <answer>...</answer> tags; Target formats a reference answer that way.
package tasks

import (
	"fmt"
	"hash/fnv"
	"math/rand/v2"
	"slices"
	"sort"
	"strconv"
	"strings"
)

// Split names a partition of a family's problem space.
type Split string

// The splits.
const (
	Train   Split = "train"
	HeldOut Split = "test"
)

// DefaultHeldOutPermille is the share (per mille) of the problem space kept for held-out
// evaluation.
const DefaultHeldOutPermille = 100

// Task is one generated problem.
type Task struct {
	// Family is the family's name; it is also the data_source that grpo/reward routes on.
	Family string `json:"family"`
	// Prompt is the question text, without any chat template.
	Prompt string `json:"prompt"`
	// GroundTruth is what the verifier checks an answer against: the answer itself, or for
	// countdown a JSON object {"numbers": [...], "target": n}.
	GroundTruth string `json:"ground_truth"`
	// Key identifies the problem; equal keys are the same problem.
	Key string `json:"key"`
	// Split is the split the problem belongs to.
	Split Split `json:"split"`
	// Meta carries the family's difficulty knobs, for logging per difficulty.
	Meta map[string]any `json:"meta,omitempty"`
}

// Problem is what a family's Sample returns: a task before its split is known.
type Problem struct {
	Prompt      string
	GroundTruth string
	Key         string
}

// Family is one verifiable task family.
type Family interface {
	// Name is the family's name (its data_source).
	Name() string
	// Sample draws one problem.
	Sample(rng *rand.Rand) Problem
	// Solve returns a correct answer (the text to put in <answer> tags) for a ground truth.
	Solve(groundTruth string) (string, error)
	// Verify scores an answer (the text inside the <answer> tags) against a ground truth:
	// 1 is fully correct, 0 wrong, values between are partial credit where the family has it.
	// It returns an error only when the ground truth itself is malformed.
	Verify(answer, groundTruth string) (float64, error)
	// Params returns the family's difficulty knobs, as Spec writes them.
	Params() map[string]string
}

// Target wraps an answer in the tags the verifiers read: "<answer>ANSWER</answer>".
func Target(answer string) string { return "<answer>" + answer + "</answer>" }

// SplitOf returns the split a problem key falls in, with heldOutPermille of the key space
// (by an FNV-1a hash of family and key) held out.
func SplitOf(family, key string, heldOutPermille int) Split {
	h := fnv.New64a()
	h.Write([]byte(family))
	h.Write([]byte{0})
	h.Write([]byte(key))
	if int(h.Sum64()%1000) < heldOutPermille {
		return HeldOut
	}
	return Train
}

// GenerateConfig says what Generate makes.
type GenerateConfig struct {
	// Split is the split to draw from.
	Split Split
	// N is the number of distinct problems.
	N int
	// Seed seeds the generator; the same family, knobs, seed and N give the same tasks.
	Seed uint64
	// HeldOutPermille is the held-out share of the problem space; 0 means
	// DefaultHeldOutPermille. Train and held-out sets must use the same value to stay disjoint.
	HeldOutPermille int
	// MaxTries bounds the draws (duplicates and other-split problems are redrawn); 0 means
	// 200*N + 1000.
	MaxTries int
}

// Generate draws cfg.N distinct problems of one split of a family. It returns an error when the
// family's problem space (for its knobs) is too small to give N distinct problems of that split.
func Generate(f Family, cfg GenerateConfig) ([]Task, error) {
	if cfg.N < 0 {
		return nil, fmt.Errorf("tasks: Generate %s: N = %d", f.Name(), cfg.N)
	}
	if cfg.Split != Train && cfg.Split != HeldOut {
		return nil, fmt.Errorf("tasks: Generate %s: unknown split %q (want %q or %q)", f.Name(), cfg.Split, Train, HeldOut)
	}
	permille := cfg.HeldOutPermille
	if permille == 0 {
		permille = DefaultHeldOutPermille
	}
	if permille < 0 || permille > 1000 {
		return nil, fmt.Errorf("tasks: Generate %s: HeldOutPermille = %d, want 0..1000", f.Name(), permille)
	}
	tries := cfg.MaxTries
	if tries == 0 {
		tries = 200*cfg.N + 1000
	}
	// Distinct streams per split, so that asking for more train problems never changes
	// which held-out problems come first.
	salt := uint64(0x9e3779b97f4a7c15)
	if cfg.Split == HeldOut {
		salt = 0xd1b54a32d192ed03
	}
	rng := rand.New(rand.NewPCG(cfg.Seed, salt))
	seen := make(map[string]bool, cfg.N)
	params := f.Params()
	meta := make(map[string]any, len(params))
	for k, v := range params {
		meta[k] = v
	}
	out := make([]Task, 0, cfg.N)
	for try := 0; len(out) < cfg.N; try++ {
		if try >= tries {
			return out, fmt.Errorf("tasks: Generate %s (%s): only %d distinct %s problems after %d draws, asked for %d; widen the knobs or ask for fewer",
				f.Name(), Spec(f), len(out), cfg.Split, tries, cfg.N)
		}
		p := f.Sample(rng)
		if seen[p.Key] || SplitOf(f.Name(), p.Key, permille) != cfg.Split {
			continue
		}
		seen[p.Key] = true
		out = append(out, Task{Family: f.Name(), Prompt: p.Prompt, GroundTruth: p.GroundTruth, Key: p.Key, Split: cfg.Split, Meta: meta})
	}
	return out, nil
}

// Spec writes a family and its knobs as New reads them: "name:k1=v1,k2=v2" (knobs sorted).
func Spec(f Family) string {
	p := f.Params()
	keys := make([]string, 0, len(p))
	for k := range p {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	b.WriteString(f.Name())
	for i, k := range keys {
		if i == 0 {
			b.WriteByte(':')
		} else {
			b.WriteByte(',')
		}
		b.WriteString(k + "=" + p[k])
	}
	return b.String()
}

// Names lists the built-in families.
func Names() []string { return []string{"arith", "countdown", "sort", "count", "boolean"} }

// Default is the name of the default task family for the project's tiny model.
const Default = "arith"

// New makes a built-in family from a spec "name" or "name:knob=value,knob=value", for
// example "arith:terms=3,max=20,ops=+-" or "countdown:numbers=4". Unknown knobs and bad values
// are errors that name them.
func New(spec string) (Family, error) {
	name, rest, _ := strings.Cut(spec, ":")
	kv := map[string]string{}
	if rest != "" {
		for _, part := range strings.Split(rest, ",") {
			k, v, ok := strings.Cut(part, "=")
			if !ok || k == "" {
				return nil, fmt.Errorf("tasks: spec %q: knob %q is not key=value", spec, part)
			}
			kv[strings.TrimSpace(k)] = strings.TrimSpace(v)
		}
	}
	p := knobs{spec: spec, kv: kv}
	var f Family
	switch name {
	case "arith":
		f = &Arith{MinTerms: p.int("min_terms", 2), MaxTerms: p.int("terms", 3), MaxOperand: p.int("max", 20), Ops: p.str("ops", "+-")}
	case "countdown":
		f = &Countdown{Numbers: p.int("numbers", 4), MaxNumber: p.int("max", 20), MaxTarget: p.int("max_target", 100), Terse: p.flag("terse"), Ops: p.str("ops", "")}
	case "sort":
		f = &Sort{MinLen: p.int("min_len", 3), MaxLen: p.int("len", 6), MaxValue: p.int("max", 99)}
	case "count":
		f = &Count{MinLen: p.int("min_len", 5), MaxLen: p.int("len", 12), Alphabet: p.str("alphabet", "abcde")}
	case "boolean":
		f = &Boolean{Depth: p.int("depth", 3)}
	default:
		return nil, fmt.Errorf("tasks: spec %q: unknown family %q (have %s)", spec, name, strings.Join(Names(), ", "))
	}
	if p.err != nil {
		return nil, p.err
	}
	for k := range kv {
		if !p.used[k] {
			return nil, fmt.Errorf("tasks: spec %q: unknown knob %q for %s", spec, k, name)
		}
	}
	if v, ok := f.(interface{ validate() error }); ok {
		if err := v.validate(); err != nil {
			return nil, fmt.Errorf("tasks: spec %q: %w", spec, err)
		}
	}
	return f, nil
}

type knobs struct {
	spec string
	kv   map[string]string
	used map[string]bool
	err  error
}

func (k *knobs) mark(name string) (string, bool) {
	if k.used == nil {
		k.used = map[string]bool{}
	}
	k.used[name] = true
	v, ok := k.kv[name]
	return v, ok
}

func (k *knobs) int(name string, def int) int {
	v, ok := k.mark(name)
	if !ok {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil && k.err == nil {
		k.err = fmt.Errorf("tasks: spec %q: knob %s=%q is not an integer", k.spec, name, v)
	}
	return n
}

// flag reads a 0/1 knob (absent: 0).
func (k *knobs) flag(name string) bool {
	n := k.int(name, 0)
	if n != 0 && n != 1 && k.err == nil {
		k.err = fmt.Errorf("tasks: spec %q: knob %s=%d, want 0 or 1", k.spec, name, n)
	}
	return n == 1
}

func (k *knobs) str(name, def string) string {
	if v, ok := k.mark(name); ok {
		return v
	}
	return def
}

// parseInt reads a whole answer as an integer, allowing surrounding spaces and a leading '+'.
func parseInt(s string) (int64, bool) {
	s = strings.TrimSpace(s)
	s = strings.TrimPrefix(s, "+")
	if s == "" || len(s) > 19 {
		return 0, false
	}
	n, err := strconv.ParseInt(s, 10, 64)
	return n, err == nil
}

// verifyInt scores an integer answer: 1 if it equals the ground truth, else 0.
func verifyInt(family, answer, groundTruth string) (float64, error) {
	want, ok := parseInt(groundTruth)
	if !ok {
		return 0, fmt.Errorf("tasks: %s ground truth %q is not an integer", family, groundTruth)
	}
	if got, ok := parseInt(answer); ok && got == want {
		return 1, nil
	}
	return 0, nil
}

// Arith is short multi-step integer arithmetic: "12+7-5=" with answer "14". Multiplication
// binds tighter than + and -.
type Arith struct {
	MinTerms, MaxTerms int    // number of operands, drawn uniformly in [MinTerms, MaxTerms]
	MaxOperand         int    // operands are drawn in [0, MaxOperand]
	Ops                string // operators to draw from, a subset of "+-*"
}

// Name implements Family.
func (a *Arith) Name() string { return "arith" }

// Params implements Family.
func (a *Arith) Params() map[string]string {
	return map[string]string{"min_terms": strconv.Itoa(a.MinTerms), "terms": strconv.Itoa(a.MaxTerms),
		"max": strconv.Itoa(a.MaxOperand), "ops": a.Ops}
}

func (a *Arith) validate() error {
	if a.MinTerms < 2 || a.MaxTerms < a.MinTerms || a.MaxTerms > 12 {
		return fmt.Errorf("arith: terms %d..%d, want 2 <= min_terms <= terms <= 12", a.MinTerms, a.MaxTerms)
	}
	if a.MaxOperand < 1 || a.MaxOperand > 1e6 {
		return fmt.Errorf("arith: max = %d, want 1..1000000", a.MaxOperand)
	}
	if a.Ops == "" || strings.Trim(a.Ops, "+-*") != "" {
		return fmt.Errorf("arith: ops = %q, want a non-empty subset of \"+-*\"", a.Ops)
	}
	return nil
}

// Sample implements Family.
func (a *Arith) Sample(rng *rand.Rand) Problem {
	n := a.MinTerms + rng.IntN(a.MaxTerms-a.MinTerms+1)
	var b strings.Builder
	for i := 0; i < n; i++ {
		if i > 0 {
			b.WriteByte(a.Ops[rng.IntN(len(a.Ops))])
		}
		b.WriteString(strconv.Itoa(rng.IntN(a.MaxOperand + 1)))
	}
	expr := b.String()
	v, err := evalArith(expr)
	if err != nil {
		panic("tasks: arith generated an expression it cannot evaluate: " + expr) // programmer error
	}
	return Problem{Prompt: expr + "=", GroundTruth: strconv.FormatInt(v, 10), Key: expr}
}

// Solve implements Family: the ground truth is the answer.
func (a *Arith) Solve(groundTruth string) (string, error) {
	if _, ok := parseInt(groundTruth); !ok {
		return "", fmt.Errorf("tasks: arith ground truth %q is not an integer", groundTruth)
	}
	return strings.TrimSpace(groundTruth), nil
}

// Verify implements Family: 1 for the exact integer, else 0.
func (a *Arith) Verify(answer, groundTruth string) (float64, error) {
	return verifyInt("arith", answer, groundTruth)
}

// SolveArith evaluates an arithmetic prompt such as "12+7*3-5=" (the reference solver from the
// prompt alone, for checking datasets).
func SolveArith(prompt string) (int64, error) {
	return evalArith(strings.TrimSuffix(strings.TrimSpace(prompt), "="))
}

// evalArith evaluates non-negative integer literals joined by + - * with the usual precedence.
func evalArith(expr string) (int64, error) {
	var total, term int64
	sign := int64(1)
	term = -1
	num := int64(-1)
	flushNum := func() error {
		if num < 0 {
			return fmt.Errorf("missing operand")
		}
		if term < 0 {
			term = num
		} else {
			term *= num
		}
		num = -1
		return nil
	}
	for i := 0; i < len(expr); i++ {
		c := expr[i]
		switch {
		case c >= '0' && c <= '9':
			if num < 0 {
				num = 0
			}
			num = num*10 + int64(c-'0')
			if num > 1e12 {
				return 0, fmt.Errorf("operand too large")
			}
		case c == '*':
			if err := flushNum(); err != nil {
				return 0, err
			}
		case c == '+' || c == '-':
			if err := flushNum(); err != nil {
				return 0, err
			}
			total += sign * term
			term = -1
			sign = 1
			if c == '-' {
				sign = -1
			}
		default:
			return 0, fmt.Errorf("unexpected %q at %d", c, i)
		}
	}
	if err := flushNum(); err != nil {
		return 0, err
	}
	return total + sign*term, nil
}

// Sort asks for a list of integers in ascending order: "sort: 5 3 9 1" with answer "1 3 5 9".
// Partial credit: the fraction of positions right (over the longer of answer and truth).
type Sort struct {
	MinLen, MaxLen int // list length drawn in [MinLen, MaxLen]
	MaxValue       int // values drawn in [0, MaxValue]
}

// Name implements Family.
func (s *Sort) Name() string { return "sort" }

// Params implements Family.
func (s *Sort) Params() map[string]string {
	return map[string]string{"min_len": strconv.Itoa(s.MinLen), "len": strconv.Itoa(s.MaxLen), "max": strconv.Itoa(s.MaxValue)}
}

func (s *Sort) validate() error {
	if s.MinLen < 2 || s.MaxLen < s.MinLen || s.MaxLen > 64 {
		return fmt.Errorf("sort: len %d..%d, want 2 <= min_len <= len <= 64", s.MinLen, s.MaxLen)
	}
	if s.MaxValue < 1 || s.MaxValue > 1e9 {
		return fmt.Errorf("sort: max = %d, want 1..1e9", s.MaxValue)
	}
	return nil
}

// Sample implements Family.
func (s *Sort) Sample(rng *rand.Rand) Problem {
	n := s.MinLen + rng.IntN(s.MaxLen-s.MinLen+1)
	xs := make([]int, n)
	for i := range xs {
		xs[i] = rng.IntN(s.MaxValue + 1)
	}
	list := joinInts(xs)
	slices.Sort(xs)
	return Problem{Prompt: "sort: " + list, GroundTruth: joinInts(xs), Key: list}
}

func joinInts(xs []int) string {
	parts := make([]string, len(xs))
	for i, x := range xs {
		parts[i] = strconv.Itoa(x)
	}
	return strings.Join(parts, " ")
}

// parseIntList reads integers separated by spaces and/or commas, optionally in [ ].
func parseIntList(s string) ([]int64, bool) {
	s = strings.TrimSpace(s)
	s = strings.TrimSuffix(strings.TrimPrefix(s, "["), "]")
	fields := strings.FieldsFunc(s, func(r rune) bool { return r == ' ' || r == ',' || r == '\t' || r == '\n' })
	if len(fields) > 1024 {
		return nil, false
	}
	out := make([]int64, 0, len(fields))
	for _, f := range fields {
		n, ok := parseInt(f)
		if !ok {
			return nil, false
		}
		out = append(out, n)
	}
	return out, true
}

// Solve implements Family: the ground truth is the sorted list.
func (s *Sort) Solve(groundTruth string) (string, error) {
	xs, ok := parseIntList(groundTruth)
	if !ok || len(xs) == 0 {
		return "", fmt.Errorf("tasks: sort ground truth %q is not a list of integers", groundTruth)
	}
	return strings.TrimSpace(groundTruth), nil
}

// Verify implements Family: the fraction of positions that hold the right value, over the
// length of the longer list; 0 for an answer that is not a list of integers.
func (s *Sort) Verify(answer, groundTruth string) (float64, error) {
	want, ok := parseIntList(groundTruth)
	if !ok || len(want) == 0 {
		return 0, fmt.Errorf("tasks: sort ground truth %q is not a list of integers", groundTruth)
	}
	got, ok := parseIntList(answer)
	if !ok || len(got) == 0 {
		return 0, nil
	}
	right := 0
	for i := range min(len(got), len(want)) {
		if got[i] == want[i] {
			right++
		}
	}
	return float64(right) / float64(max(len(got), len(want))), nil
}

// Count asks how often a letter occurs in a string: "count b in abcbd" with answer "2".
type Count struct {
	MinLen, MaxLen int    // string length drawn in [MinLen, MaxLen]
	Alphabet       string // letters the string is drawn from
}

// Name implements Family.
func (c *Count) Name() string { return "count" }

// Params implements Family.
func (c *Count) Params() map[string]string {
	return map[string]string{"min_len": strconv.Itoa(c.MinLen), "len": strconv.Itoa(c.MaxLen), "alphabet": c.Alphabet}
}

func (c *Count) validate() error {
	if c.MinLen < 1 || c.MaxLen < c.MinLen || c.MaxLen > 256 {
		return fmt.Errorf("count: len %d..%d, want 1 <= min_len <= len <= 256", c.MinLen, c.MaxLen)
	}
	if len(c.Alphabet) < 2 || strings.ContainsAny(c.Alphabet, " \t\n") {
		return fmt.Errorf("count: alphabet %q, want at least 2 non-space letters", c.Alphabet)
	}
	return nil
}

// Sample implements Family.
func (c *Count) Sample(rng *rand.Rand) Problem {
	n := c.MinLen + rng.IntN(c.MaxLen-c.MinLen+1)
	b := make([]byte, n)
	for i := range b {
		b[i] = c.Alphabet[rng.IntN(len(c.Alphabet))]
	}
	letter := c.Alphabet[rng.IntN(len(c.Alphabet))]
	word := string(b)
	prompt := fmt.Sprintf("count %c in %s", letter, word)
	return Problem{Prompt: prompt, GroundTruth: strconv.Itoa(strings.Count(word, string(letter))), Key: prompt}
}

// Solve implements Family.
func (c *Count) Solve(groundTruth string) (string, error) {
	if _, ok := parseInt(groundTruth); !ok {
		return "", fmt.Errorf("tasks: count ground truth %q is not an integer", groundTruth)
	}
	return strings.TrimSpace(groundTruth), nil
}

// Verify implements Family: 1 for the exact count, else 0.
func (c *Count) Verify(answer, groundTruth string) (float64, error) {
	return verifyInt("count", answer, groundTruth)
}

// Boolean asks for the value of a boolean expression over True/False with not, and, or and
// parentheses: "not (True and False) or False" with answer "True".
type Boolean struct {
	Depth int // nesting depth of the expression tree, 1..6
}

// Name implements Family.
func (b *Boolean) Name() string { return "boolean" }

// Params implements Family.
func (b *Boolean) Params() map[string]string {
	return map[string]string{"depth": strconv.Itoa(b.Depth)}
}

func (b *Boolean) validate() error {
	if b.Depth < 1 || b.Depth > 6 {
		return fmt.Errorf("boolean: depth = %d, want 1..6", b.Depth)
	}
	return nil
}

func (b *Boolean) gen(rng *rand.Rand, depth int) (string, bool) {
	if depth == 0 || rng.IntN(4) == 0 {
		v := rng.IntN(2) == 1
		return boolWord(v), v
	}
	switch rng.IntN(3) {
	case 0:
		s, v := b.gen(rng, depth-1)
		if strings.Contains(s, " ") {
			s = "(" + s + ")"
		}
		return "not " + s, !v
	default:
		l, lv := b.gen(rng, depth-1)
		r, rv := b.gen(rng, depth-1)
		if strings.Contains(l, " ") {
			l = "(" + l + ")"
		}
		if strings.Contains(r, " ") {
			r = "(" + r + ")"
		}
		if rng.IntN(2) == 0 {
			return l + " and " + r, lv && rv
		}
		return l + " or " + r, lv || rv
	}
}

func boolWord(v bool) string {
	if v {
		return "True"
	}
	return "False"
}

// Sample implements Family.
func (b *Boolean) Sample(rng *rand.Rand) Problem {
	expr, v := b.gen(rng, b.Depth)
	return Problem{Prompt: expr + " =", GroundTruth: boolWord(v), Key: expr}
}

func parseBool(s string) (bool, bool) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "true":
		return true, true
	case "false":
		return false, true
	}
	return false, false
}

// Solve implements Family.
func (b *Boolean) Solve(groundTruth string) (string, error) {
	v, ok := parseBool(groundTruth)
	if !ok {
		return "", fmt.Errorf("tasks: boolean ground truth %q is not True or False", groundTruth)
	}
	return boolWord(v), nil
}

// Verify implements Family: 1 for the right truth value (True/False, any case), else 0.
func (b *Boolean) Verify(answer, groundTruth string) (float64, error) {
	want, ok := parseBool(groundTruth)
	if !ok {
		return 0, fmt.Errorf("tasks: boolean ground truth %q is not True or False", groundTruth)
	}
	if got, ok := parseBool(answer); ok && got == want {
		return 1, nil
	}
	return 0, nil
}

// EvalBoolean evaluates an expression as Boolean writes it (the reference solver from the
// prompt alone, for checking datasets): True, False, not, and, or, parentheses; "and" binds
// tighter than "or", "not" tighter than both; a trailing "=" is ignored.
func EvalBoolean(expr string) (bool, error) {
	expr = strings.TrimSuffix(strings.TrimSpace(expr), "=")
	expr = strings.ReplaceAll(strings.ReplaceAll(expr, "(", " ( "), ")", " ) ")
	p := boolParser{toks: strings.Fields(expr)}
	v, err := p.or()
	if err != nil {
		return false, err
	}
	if p.i != len(p.toks) {
		return false, fmt.Errorf("unexpected %q", p.toks[p.i])
	}
	return v, nil
}

type boolParser struct {
	toks []string
	i    int
}

func (p *boolParser) peek() string {
	if p.i < len(p.toks) {
		return p.toks[p.i]
	}
	return ""
}

func (p *boolParser) or() (bool, error) {
	v, err := p.and()
	for err == nil && p.peek() == "or" {
		p.i++
		var r bool
		r, err = p.and()
		v = v || r
	}
	return v, err
}

func (p *boolParser) and() (bool, error) {
	v, err := p.not()
	for err == nil && p.peek() == "and" {
		p.i++
		var r bool
		r, err = p.not()
		v = v && r
	}
	return v, err
}

func (p *boolParser) not() (bool, error) {
	switch t := p.peek(); t {
	case "not":
		p.i++
		v, err := p.not()
		return !v, err
	case "(":
		p.i++
		v, err := p.or()
		if err != nil {
			return false, err
		}
		if p.peek() != ")" {
			return false, fmt.Errorf("missing )")
		}
		p.i++
		return v, nil
	case "True", "False":
		p.i++
		return t == "True", nil
	case "":
		return false, fmt.Errorf("unexpected end")
	default:
		return false, fmt.Errorf("unexpected %q", t)
	}
}
