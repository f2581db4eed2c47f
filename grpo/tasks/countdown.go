package tasks

import (
	"encoding/json"
	"fmt"
	"math/big"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
)

// Countdown is the countdown equation puzzle (as in TinyZero): reach a target with + - * / and
// parentheses, using each given number exactly once. The answer is the expression, e.g.
// "(7-3)*5+4"; the ground truth is {"numbers": [...], "target": n}. Division is exact (rational),
// so 7/2*2 = 7. Every generated puzzle is solvable: its target is the value of a random
// expression over the numbers.
type Countdown struct {
	Numbers   int // how many numbers, 2..6
	MaxNumber int // numbers are drawn in [1, MaxNumber]
	MaxTarget int // targets are positive integers <= MaxTarget
	// Ops are the operators puzzles are built and solved with, a subset of "+-*/" (knob ops;
	// empty means all four). The verifier accepts any of the four.
	Ops string
	// Terse writes the prompt in digits, spaces and "=" only ("3 4 5=12" for "use 3 4 5 to
	// make 12"), for character-level tokenizers without letters (knob terse=1).
	Terse bool
}

// CountdownTruth is the ground truth of a countdown puzzle.
type CountdownTruth struct {
	Numbers []int64 `json:"numbers"`
	Target  int64   `json:"target"`
}

// Name implements Family.
func (c *Countdown) Name() string { return "countdown" }

// Params implements Family.
func (c *Countdown) Params() map[string]string {
	p := map[string]string{"numbers": strconv.Itoa(c.Numbers), "max": strconv.Itoa(c.MaxNumber), "max_target": strconv.Itoa(c.MaxTarget)}
	if c.Terse {
		p["terse"] = "1"
	}
	if c.Ops != "" {
		p["ops"] = c.Ops
	}
	return p
}

func (c *Countdown) validate() error {
	if c.Numbers < 2 || c.Numbers > 6 {
		return fmt.Errorf("countdown: numbers = %d, want 2..6", c.Numbers)
	}
	if c.MaxNumber < 1 || c.MaxNumber > 1000 {
		return fmt.Errorf("countdown: max = %d, want 1..1000", c.MaxNumber)
	}
	if strings.Trim(c.Ops, "+-*/") != "" {
		return fmt.Errorf("countdown: ops = %q, want a subset of \"+-*/\"", c.Ops)
	}
	if c.MaxTarget < 1 {
		return fmt.Errorf("countdown: max_target = %d, want >= 1", c.MaxTarget)
	}
	return nil
}

// Sample implements Family. It draws numbers and a random expression tree over all of them
// until the expression's value is an integer in [1, MaxTarget].
func (c *Countdown) Sample(rng *rand.Rand) Problem {
	for {
		nums := make([]int64, c.Numbers)
		for i := range nums {
			nums[i] = int64(1 + rng.IntN(c.MaxNumber))
		}
		vals := make([]*big.Rat, len(nums))
		for i, n := range nums {
			vals[i] = new(big.Rat).SetInt64(n)
		}
		// Combine random pairs until one value is left.
		for len(vals) > 1 {
			i := rng.IntN(len(vals))
			j := rng.IntN(len(vals) - 1)
			if j >= i {
				j++
			}
			ops := c.ops()
			r, ok := applyOp(vals[i], vals[j], ops[rng.IntN(len(ops))])
			if !ok {
				break
			}
			rest := make([]*big.Rat, 0, len(vals)-1)
			for k := range vals {
				if k != i && k != j {
					rest = append(rest, vals[k])
				}
			}
			vals = append(rest, r)
		}
		if len(vals) != 1 || !vals[0].IsInt() {
			continue
		}
		t := vals[0].Num()
		if t.Sign() <= 0 || !t.IsInt64() || t.Int64() > int64(c.MaxTarget) {
			continue
		}
		truth := CountdownTruth{Numbers: nums, Target: t.Int64()}
		gt, _ := json.Marshal(truth)
		list := make([]string, len(nums))
		for i, n := range nums {
			list[i] = strconv.FormatInt(n, 10)
		}
		prompt := fmt.Sprintf("use %s to make %d", strings.Join(list, " "), truth.Target)
		if c.Terse {
			prompt = fmt.Sprintf("%s=%d", strings.Join(list, " "), truth.Target)
		}
		return Problem{Prompt: prompt, GroundTruth: string(gt), Key: prompt}
	}
}

// ops returns the operators puzzles use.
func (c *Countdown) ops() string {
	if c.Ops == "" {
		return "+-*/"
	}
	return c.Ops
}

func applyOp(a, b *big.Rat, op byte) (*big.Rat, bool) {
	r := new(big.Rat)
	switch op {
	case '+':
		r.Add(a, b)
	case '-':
		r.Sub(a, b)
	case '*':
		r.Mul(a, b)
	case '/':
		if b.Sign() == 0 {
			return nil, false
		}
		r.Quo(a, b)
	}
	return r, true
}

// ParseCountdownTruth reads a countdown ground truth.
func ParseCountdownTruth(groundTruth string) (CountdownTruth, error) {
	var t CountdownTruth
	if err := json.Unmarshal([]byte(groundTruth), &t); err != nil {
		return t, fmt.Errorf("tasks: countdown ground truth %q: %w", groundTruth, err)
	}
	if len(t.Numbers) < 1 || len(t.Numbers) > 8 {
		return t, fmt.Errorf("tasks: countdown ground truth %q: %d numbers, want 1..8", groundTruth, len(t.Numbers))
	}
	return t, nil
}

// Solve implements Family: an exhaustive search over ways of combining the numbers, exact.
func (c *Countdown) Solve(groundTruth string) (string, error) {
	t, err := ParseCountdownTruth(groundTruth)
	if err != nil {
		return "", err
	}
	items := make([]cdItem, len(t.Numbers))
	for i, n := range t.Numbers {
		items[i] = cdItem{new(big.Rat).SetInt64(n), strconv.FormatInt(n, 10), 0}
	}
	target := new(big.Rat).SetInt64(t.Target)
	if s, ok := solveCountdown(items, target, c.ops()); ok {
		return s, nil
	}
	return "", fmt.Errorf("tasks: countdown %s has no solution", groundTruth)
}

// cdItem is a partial expression: its value, its text, and the precedence of its top operator
// (0 atom, 1 + -, 2 * /) for minimal parentheses.
type cdItem struct {
	v    *big.Rat
	s    string
	prec int
}

func wrap(it cdItem, need int, right bool) string {
	if it.prec != 0 && (it.prec < need || (right && it.prec == need)) {
		return "(" + it.s + ")"
	}
	return it.s
}

func solveCountdown(items []cdItem, target *big.Rat, ops string) (string, bool) {
	if len(items) == 1 {
		return items[0].s, items[0].v.Cmp(target) == 0
	}
	for i := range items {
		for j := range items {
			if i == j {
				continue
			}
			rest := make([]cdItem, 0, len(items)-1)
			for k := range items {
				if k != i && k != j {
					rest = append(rest, items[k])
				}
			}
			a, b := items[i], items[j]
			for _, op := range ops {
				if (op == '+' || op == '*') && i > j {
					continue // commutative: one order suffices
				}
				v, ok := applyOp(a.v, b.v, byte(op))
				if !ok {
					continue
				}
				prec := 1
				if op == '*' || op == '/' {
					prec = 2
				}
				s := wrap(a, prec, false) + string(op) + wrap(b, prec, op == '-' || op == '/')
				if got, ok := solveCountdown(append(rest, cdItem{v, s, prec}), target, ops); ok {
					return got, true
				}
			}
		}
	}
	return "", false
}

// Verify implements Family: 1 when the answer is an expression of + - * / and parentheses that
// uses each given number exactly once and equals the target (an optional "= target" suffix is
// allowed), else 0.
func (c *Countdown) Verify(answer, groundTruth string) (float64, error) {
	t, err := ParseCountdownTruth(groundTruth)
	if err != nil {
		return 0, err
	}
	expr, _, _ := strings.Cut(answer, "=")
	v, used, err := EvalRational(expr)
	if err != nil {
		return 0, nil
	}
	a, b := slices.Clone(used), slices.Clone(t.Numbers)
	slices.Sort(a)
	slices.Sort(b)
	if !slices.Equal(a, b) {
		return 0, nil
	}
	if v.Cmp(new(big.Rat).SetInt64(t.Target)) == 0 {
		return 1, nil
	}
	return 0, nil
}

// EvalRational evaluates an expression of non-negative integer literals, + - * /, unary minus
// and parentheses exactly, and returns its value and the literals it used in order. Division by
// zero, other characters and expressions over 256 bytes are errors.
func EvalRational(expr string) (*big.Rat, []int64, error) {
	if len(expr) > 256 {
		return nil, nil, fmt.Errorf("expression too long (%d bytes)", len(expr))
	}
	p := ratParser{s: expr}
	v, err := p.sum(0)
	if err != nil {
		return nil, nil, err
	}
	p.space()
	if p.i != len(p.s) {
		return nil, nil, fmt.Errorf("unexpected %q at %d", p.s[p.i], p.i)
	}
	return v, p.used, nil
}

type ratParser struct {
	s    string
	i    int
	used []int64
}

func (p *ratParser) space() {
	for p.i < len(p.s) && (p.s[p.i] == ' ' || p.s[p.i] == '\t') {
		p.i++
	}
}

const maxRatDepth = 64

func (p *ratParser) sum(depth int) (*big.Rat, error) {
	v, err := p.product(depth)
	if err != nil {
		return nil, err
	}
	for {
		p.space()
		if p.i >= len(p.s) || (p.s[p.i] != '+' && p.s[p.i] != '-') {
			return v, nil
		}
		op := p.s[p.i]
		p.i++
		r, err := p.product(depth)
		if err != nil {
			return nil, err
		}
		v, _ = applyOp(v, r, op)
	}
}

func (p *ratParser) product(depth int) (*big.Rat, error) {
	v, err := p.unary(depth)
	if err != nil {
		return nil, err
	}
	for {
		p.space()
		if p.i >= len(p.s) || (p.s[p.i] != '*' && p.s[p.i] != '/') {
			return v, nil
		}
		op := p.s[p.i]
		p.i++
		r, err := p.unary(depth)
		if err != nil {
			return nil, err
		}
		var ok bool
		if v, ok = applyOp(v, r, op); !ok {
			return nil, fmt.Errorf("division by zero")
		}
	}
}

func (p *ratParser) unary(depth int) (*big.Rat, error) {
	if depth > maxRatDepth {
		return nil, fmt.Errorf("expression nested too deeply")
	}
	p.space()
	if p.i >= len(p.s) {
		return nil, fmt.Errorf("unexpected end")
	}
	switch c := p.s[p.i]; {
	case c == '-':
		p.i++
		v, err := p.unary(depth + 1)
		if err != nil {
			return nil, err
		}
		return v.Neg(v), nil
	case c == '(':
		p.i++
		v, err := p.sum(depth + 1)
		if err != nil {
			return nil, err
		}
		p.space()
		if p.i >= len(p.s) || p.s[p.i] != ')' {
			return nil, fmt.Errorf("missing )")
		}
		p.i++
		return v, nil
	case c >= '0' && c <= '9':
		start := p.i
		for p.i < len(p.s) && p.s[p.i] >= '0' && p.s[p.i] <= '9' {
			p.i++
		}
		n, err := strconv.ParseInt(p.s[start:p.i], 10, 64)
		if err != nil {
			return nil, fmt.Errorf("number %q: %w", p.s[start:p.i], err)
		}
		p.used = append(p.used, n)
		return new(big.Rat).SetInt64(n), nil
	default:
		return nil, fmt.Errorf("unexpected %q at %d", c, p.i)
	}
}
