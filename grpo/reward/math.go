package reward

import (
	"context"
	"errors"
	"fmt"
	"math/big"
	"regexp"
	"strings"
)

// MathOptions configures the math reward. The zero value is the default.
type MathOptions struct {
	// BoxedOnly turns off the fallback to "the answer is X" / "final answer: X" when the
	// response has no \boxed{}.
	BoxedOnly bool
}

// Math scores a response 1 when its final answer (the last \boxed{...} after the thinking, or
// "the answer is ...") is equivalent to the ground truth, else 0. Equivalence is exact: both
// sides are read as rational numbers where they can be (integers, decimals, fractions, \frac,
// percentages, + - * / ^ with integer exponents, \sqrt of perfect squares) and compared exactly
// with math/big; otherwise their normalised LaTeX strings must be equal. Comma-separated
// tuples are compared element by element.
type Math struct {
	Options MathOptions
}

// Score implements Reward.
func (m *Math) Score(_ context.Context, response, groundTruth string, _ map[string]any) (Result, error) {
	if strings.TrimSpace(groundTruth) == "" {
		return Result{}, errors.New("math: empty ground truth")
	}
	final := FinalPart(response)
	ans, ok := LastBoxed(final)
	if !ok && !m.Options.BoxedOnly {
		ans, ok = AnswerIsPhrase(final)
	}
	if !ok {
		return Result{Reason: "no final answer (\\boxed{} or 'the answer is')"}, nil
	}
	truth := groundTruth
	if b, ok := LastBoxed(groundTruth); ok {
		truth = b
	}
	if MathEqual(ans, truth) {
		return Result{Score: 1, Answer: ans}, nil
	}
	return Result{Answer: ans, Reason: "answer not equal to ground truth"}, nil
}

// maxMathLen bounds the answers that are parsed; longer ones are compared as strings only.
const maxMathLen = 400

var (
	textCmdRe   = regexp.MustCompile(`\\(?:text|textbf|textit|mathrm|mathbf|mbox|operatorname)\{([^{}]*)\}`)
	thousandsRe = regexp.MustCompile(`^-?\d{1,3}(,\d{3})+(\.\d+)?$`)
	assignRe    = regexp.MustCompile(`^[a-zA-Z][a-zA-Z0-9_]*=`)
)

// normalizeMath puts a LaTeX answer in a canonical textual form: no spacing commands, no
// $ or \( \), \dfrac -> \frac, \cdot -> *, no degree signs, no spaces, "x=5" -> "5", thousands
// separators dropped. keepText false also drops \text{...} blocks (units).
func normalizeMath(s string, keepText bool) string {
	s = strings.TrimSpace(s)
	for _, r := range []struct{ old, new string }{
		{`\displaystyle`, ""}, {`\left`, ""}, {`\right`, ""}, {`\!`, ""}, {`\,`, ""}, {`\;`, ""},
		{`\:`, ""}, {`\ `, ""}, {"~", ""}, {`\(`, ""}, {`\)`, ""}, {`\[`, ""}, {`\]`, ""},
		{`\dfrac`, `\frac`}, {`\tfrac`, `\frac`}, {`\cdot`, "*"}, {`\times`, "*"}, {`\div`, "/"},
		{`^{\circ}`, ""}, {`^\circ`, ""}, {`\circ`, ""}, {"°", ""}, {`\%`, "%"}, {`\$`, ""}, {"$", ""},
	} {
		s = strings.ReplaceAll(s, r.old, r.new)
	}
	if keepText {
		s = textCmdRe.ReplaceAllString(s, "$1")
	} else {
		s = textCmdRe.ReplaceAllString(s, "")
	}
	s = strings.Join(strings.Fields(s), "")
	s = strings.TrimSuffix(s, ".")
	if assignRe.MatchString(s) && strings.Count(s, "=") == 1 {
		s = s[strings.IndexByte(s, '=')+1:]
	}
	if thousandsRe.MatchString(s) {
		s = strings.ReplaceAll(s, ",", "")
	}
	return s
}

// MathEqual reports whether a model's answer and a ground truth denote the same value (see Math).
func MathEqual(answer, truth string) bool {
	a, t := normalizeMath(answer, true), normalizeMath(truth, true)
	if a == "" || t == "" {
		return false
	}
	if a == t {
		return true
	}
	if len(a) > maxMathLen || len(t) > maxMathLen {
		return false
	}
	if ap, tp := splitTopLevel(a), splitTopLevel(t); len(ap) > 1 || len(tp) > 1 {
		if len(ap) != len(tp) || a[0] != t[0] || a[len(a)-1] != t[len(t)-1] {
			return false
		}
		for i := range ap {
			if !atomEqual(ap[i], tp[i]) {
				return false
			}
		}
		return true
	}
	if atomEqual(a, t) {
		return true
	}
	// Units in \text{...}: compare without them.
	a2, t2 := normalizeMath(answer, false), normalizeMath(truth, false)
	return (a2 != a || t2 != t) && a2 != "" && t2 != "" && atomEqual(a2, t2)
}

// splitTopLevel splits "(1,2)" or "1,2" at commas outside brackets; a string with no such
// comma gives one part.
func splitTopLevel(s string) []string {
	inner := s
	if len(s) >= 2 && strings.ContainsRune("([{", rune(s[0])) && strings.ContainsRune(")]}", rune(s[len(s)-1])) {
		inner = s[1 : len(s)-1]
	}
	var parts []string
	depth, start := 0, 0
	for i := 0; i < len(inner); i++ {
		switch inner[i] {
		case '(', '[', '{':
			depth++
		case ')', ']', '}':
			depth--
		case ',':
			if depth == 0 {
				parts = append(parts, inner[start:i])
				start = i + 1
			}
		}
	}
	if len(parts) == 0 {
		return []string{s}
	}
	return append(parts, inner[start:])
}

func atomEqual(a, t string) bool {
	if a == t {
		return true
	}
	av, tv := mathValues(a), mathValues(t)
	for _, x := range av {
		for _, y := range tv {
			if x.Cmp(y) == 0 {
				return true
			}
		}
	}
	return false
}

// mathValues returns the rational values s may denote: one, or for a percentage "p%" both p/100
// and p (graders disagree on whether "50%" answers "50").
func mathValues(s string) []*big.Rat {
	if p, ok := strings.CutSuffix(s, "%"); ok {
		v, err := ParseRational(p)
		if err != nil {
			return nil
		}
		return []*big.Rat{new(big.Rat).Quo(v, big.NewRat(100, 1)), v}
	}
	v, err := ParseRational(s)
	if err != nil {
		return nil
	}
	return []*big.Rat{v}
}

// maxRatBits bounds the size of every intermediate value of ParseRational.
const maxRatBits = 4096

// ParseRational evaluates a normalised math answer exactly: decimal numbers, + - * / ^,
// parentheses and braces, \frac{a}{b} (also \frac12), \sqrt{x} when x is the square of a
// rational. Anything else (symbols, irrational roots, values over 4096 bits) is an error.
func ParseRational(s string) (*big.Rat, error) {
	if len(s) > maxMathLen {
		return nil, fmt.Errorf("too long")
	}
	p := mathParser{s: s}
	v, err := p.expr(0)
	if err != nil {
		return nil, err
	}
	if p.i != len(p.s) {
		return nil, fmt.Errorf("unexpected %q at %d", p.s[p.i:], p.i)
	}
	return v, nil
}

type mathParser struct {
	s string
	i int
}

func (p *mathParser) peek() byte {
	if p.i < len(p.s) {
		return p.s[p.i]
	}
	return 0
}

func tooBig(v *big.Rat) bool {
	return v.Num().BitLen() > maxRatBits || v.Denom().BitLen() > maxRatBits
}

func (p *mathParser) expr(depth int) (*big.Rat, error) {
	if depth > 50 {
		return nil, fmt.Errorf("nested too deeply")
	}
	v, err := p.term(depth)
	if err != nil {
		return nil, err
	}
	for c := p.peek(); c == '+' || c == '-'; c = p.peek() {
		p.i++
		r, err := p.term(depth)
		if err != nil {
			return nil, err
		}
		if c == '+' {
			v.Add(v, r)
		} else {
			v.Sub(v, r)
		}
	}
	return v, nil
}

func (p *mathParser) term(depth int) (*big.Rat, error) {
	v, err := p.unary(depth)
	if err != nil {
		return nil, err
	}
	for c := p.peek(); c == '*' || c == '/'; c = p.peek() {
		p.i++
		r, err := p.unary(depth)
		if err != nil {
			return nil, err
		}
		if c == '*' {
			v.Mul(v, r)
		} else {
			if r.Sign() == 0 {
				return nil, fmt.Errorf("division by zero")
			}
			v.Quo(v, r)
		}
		if tooBig(v) {
			return nil, fmt.Errorf("value too large")
		}
	}
	return v, nil
}

func (p *mathParser) unary(depth int) (*big.Rat, error) {
	if depth > 50 {
		return nil, fmt.Errorf("nested too deeply")
	}
	switch p.peek() {
	case '-':
		p.i++
		v, err := p.unary(depth + 1)
		if err != nil {
			return nil, err
		}
		return v.Neg(v), nil
	case '+':
		p.i++
		return p.unary(depth + 1)
	}
	return p.power(depth)
}

func (p *mathParser) power(depth int) (*big.Rat, error) {
	base, err := p.atom(depth)
	if err != nil {
		return nil, err
	}
	if p.peek() != '^' {
		return base, nil
	}
	p.i++
	var e *big.Rat
	if c := p.peek(); c >= '0' && c <= '9' {
		// x^23 in LaTeX is x^2 3; only a single digit binds without braces.
		e = new(big.Rat).SetInt64(int64(c - '0'))
		p.i++
	} else {
		if e, err = p.unary(depth + 1); err != nil {
			return nil, err
		}
	}
	if !e.IsInt() || e.Num().BitLen() > 16 {
		return nil, fmt.Errorf("exponent %s is not a small integer", e.RatString())
	}
	n := e.Num().Int64()
	if base.Sign() == 0 && n < 0 {
		return nil, fmt.Errorf("0 to a negative power")
	}
	if bits := int64(max(base.Num().BitLen(), base.Denom().BitLen())); bits*abs64(n) > maxRatBits {
		return nil, fmt.Errorf("value too large")
	}
	num := new(big.Int).Exp(base.Num(), big.NewInt(abs64(n)), nil)
	den := new(big.Int).Exp(base.Denom(), big.NewInt(abs64(n)), nil)
	if n < 0 {
		num, den = den, num
	}
	return new(big.Rat).SetFrac(num, den), nil
}

func abs64(n int64) int64 {
	if n < 0 {
		return -n
	}
	return n
}

func (p *mathParser) group(depth int, open, close byte) (*big.Rat, error) {
	p.i++ // open
	v, err := p.expr(depth + 1)
	if err != nil {
		return nil, err
	}
	if p.peek() != close {
		return nil, fmt.Errorf("missing %c", close)
	}
	p.i++
	return v, nil
}

// arg reads a LaTeX macro argument: {expr} or a single digit.
func (p *mathParser) arg(depth int) (*big.Rat, error) {
	switch c := p.peek(); {
	case c == '{':
		return p.group(depth, '{', '}')
	case c >= '0' && c <= '9':
		p.i++
		return new(big.Rat).SetInt64(int64(c - '0')), nil
	}
	return nil, fmt.Errorf("bad macro argument at %d", p.i)
}

func (p *mathParser) atom(depth int) (*big.Rat, error) {
	switch c := p.peek(); {
	case c == '(':
		return p.group(depth, '(', ')')
	case c == '{':
		return p.group(depth, '{', '}')
	case c == '\\':
		switch {
		case strings.HasPrefix(p.s[p.i:], `\frac`):
			p.i += len(`\frac`)
			num, err := p.arg(depth + 1)
			if err != nil {
				return nil, err
			}
			den, err := p.arg(depth + 1)
			if err != nil {
				return nil, err
			}
			if den.Sign() == 0 {
				return nil, fmt.Errorf("division by zero")
			}
			return num.Quo(num, den), nil
		case strings.HasPrefix(p.s[p.i:], `\sqrt`):
			p.i += len(`\sqrt`)
			x, err := p.arg(depth + 1)
			if err != nil {
				return nil, err
			}
			return ratSqrt(x)
		}
		return nil, fmt.Errorf("unknown command at %d", p.i)
	case c >= '0' && c <= '9' || c == '.':
		start := p.i
		for p.i < len(p.s) && (p.s[p.i] >= '0' && p.s[p.i] <= '9' || p.s[p.i] == '.') {
			p.i++
		}
		lit := p.s[start:p.i]
		if strings.Count(lit, ".") > 1 || lit == "." || len(lit) > 200 {
			return nil, fmt.Errorf("bad number %q", lit)
		}
		v, ok := new(big.Rat).SetString(lit)
		if !ok {
			return nil, fmt.Errorf("bad number %q", lit)
		}
		return v, nil
	}
	return nil, fmt.Errorf("unexpected %q at %d", p.peek(), p.i)
}

// ratSqrt returns the exact square root of a rational that is a square, else an error.
func ratSqrt(x *big.Rat) (*big.Rat, error) {
	if x.Sign() < 0 {
		return nil, fmt.Errorf("square root of a negative number")
	}
	n, d := new(big.Int).Sqrt(x.Num()), new(big.Int).Sqrt(x.Denom())
	if new(big.Int).Mul(n, n).Cmp(x.Num()) != 0 || new(big.Int).Mul(d, d).Cmp(x.Denom()) != 0 {
		return nil, fmt.Errorf("irrational square root")
	}
	return new(big.Rat).SetFrac(n, d), nil
}
