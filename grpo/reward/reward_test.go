package reward

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/prolong-rl/prolong/grpo/tasks"
)

var ctx = context.Background()

func score(t *testing.T, r Reward, response, truth string, meta map[string]any) Result {
	t.Helper()
	res, err := r.Score(ctx, response, truth, meta)
	if err != nil {
		t.Fatalf("Score(%q, %q): %v", response, truth, err)
	}
	return res
}

func TestLastBoxed(t *testing.T) {
	cases := []struct {
		in, want string
		ok       bool
	}{
		{`so \boxed{42}.`, "42", true},
		{`\boxed{\frac{1}{2}}`, `\frac{1}{2}`, true},
		{`first \boxed{1}, then \boxed{2}, finally \boxed{3}`, "3", true},
		{`\boxed{\{1, 2\}}`, `\{1, 2\}`, true},
		{`\boxed{{a}{b}}`, "{a}{b}", true},
		{`answer \boxed 7 done`, "7", true},
		{`\fbox{9}`, "9", true},
		{`\boxed{1} and then a cut-off \boxed{\frac{3}{`, "", false},
		{`\boxed{}}}}`, "", true},
		{`no box here`, "", false},
		{`\boxed`, "", false},
		{`\boxed{` + strings.Repeat("{", 10000), "", false},
	}
	for _, c := range cases {
		got, ok := LastBoxed(c.in)
		if got != c.want || ok != c.ok {
			t.Errorf("LastBoxed(%.40q) = %q, %v; want %q, %v", c.in, got, ok, c.want, c.ok)
		}
	}
}

func TestFinalPartAndTags(t *testing.T) {
	if got := FinalPart("<think>maybe \\boxed{1}</think> so \\boxed{2}"); got != " so \\boxed{2}" {
		t.Errorf("FinalPart = %q", got)
	}
	if got := FinalPart("<think>cut off \\boxed{1}"); got != "" {
		t.Errorf("unclosed think: FinalPart = %q", got)
	}
	if got, ok := AnswerTag("<answer>1</answer> <answer> 2 </answer>"); !ok || got != "2" {
		t.Errorf("AnswerTag = %q %v", got, ok)
	}
	if _, ok := AnswerTag("<answer>1"); ok {
		t.Error("unclosed <answer> accepted")
	}
	if got, ok := AnswerIsPhrase("So the answer is $\\frac{3}{4}$.\nThanks"); !ok || got != `\frac{3}{4}` {
		t.Errorf("AnswerIsPhrase = %q %v", got, ok)
	}
	if got, ok := CodeBlock("x\n```python\nprint(1)\n```\nand\n```\nprint(2)\n```\n```python\nunclosed"); !ok || got != "print(2)\n" {
		t.Errorf("CodeBlock = %q %v", got, ok)
	}
}

func TestMathEqual(t *testing.T) {
	cases := []struct {
		a, b string
		want bool
	}{
		{"42", "42", true},
		{"42.0", "42", true},
		{"0.75", `\frac{3}{4}`, true},
		{"3/4", `\dfrac34`, true},
		{`\frac{6}{8}`, "0.75", true},
		{"-0.5", `-\frac{1}{2}`, true},
		{"2^3", "8", true},
		{"2^{10}", "1024", true},
		{"2^{-1}", "0.5", true},
		{`\sqrt{16}`, "4", true},
		{`\sqrt{\frac{9}{4}}`, "1.5", true},
		{`\sqrt{2}`, `\sqrt2`, false}, // not parsed, and the strings differ
		{`\sqrt{2}`, `\sqrt{2}`, true},
		{"1,000,000", "1000000", true},
		{`50\%`, "0.5", true},
		{"50%", "50", true},
		{"x = 5", "5", true},
		{`5 \text{ cm}`, "5", true},
		{`\$12.50`, "12.5", true},
		{`90^\circ`, "90", true},
		{"(1, 2)", "(1,2)", true},
		{"(1, 2)", "(2,1)", false},
		{"(1/2, 3)", "(0.5, 3)", true},
		{"[1, 2)", "(1, 2)", false},
		{`\pi`, `\pi`, true},
		{"0.333", `\frac{1}{3}`, false},
		{"41", "42", false},
		{"", "42", false},
		{"2^{100000000}", "0", false},
		{"1/0", "0", false},
		{"4.2.1", "4.2", false},
		{"1,2", "12", false},
	}
	for _, c := range cases {
		if got := MathEqual(c.a, c.b); got != c.want {
			t.Errorf("MathEqual(%q, %q) = %v, want %v", c.a, c.b, got, c.want)
		}
		if got := MathEqual(c.b, c.a); got != c.want {
			t.Errorf("MathEqual(%q, %q) = %v, want %v (symmetry)", c.b, c.a, got, c.want)
		}
	}
}

func TestMathReward(t *testing.T) {
	m := &Math{}
	cases := []struct {
		resp, truth string
		want        float64
	}{
		{"<think>\nLet me compute 3/4 as a decimal... maybe \\boxed{0.8}? No.\n</think>\nThe result is $\\boxed{\\frac{3}{4}}$.", "0.75", 1},
		{"<think>The answer is clearly \\boxed{0.75}", "0.75", 0}, // cut off in the thinking
		{"We get \\boxed{12} or maybe \\boxed{13}", "12", 0},      // hedging: the last box counts
		{"Therefore, the final answer is: 1,024.", "1024", 1},
		{"The answer is 7", "\\boxed{7}", 1},
		{"I don't know", "7", 0},
		{"\\boxed{7", "7", 0},
		{strings.Repeat("\\boxed{", 5000) + "7", "7", 0},
	}
	for _, c := range cases {
		if got := score(t, m, c.resp, c.truth, nil); got.Score != c.want {
			t.Errorf("Math(%.50q, %q) = %+v, want %v", c.resp, c.truth, got, c.want)
		}
	}
	if s := score(t, &Math{Options: MathOptions{BoxedOnly: true}}, "the answer is 7", "7", nil); s.Score != 0 {
		t.Errorf("BoxedOnly accepted an unboxed answer")
	}
	if _, err := m.Score(ctx, "\\boxed{1}", " ", nil); err == nil {
		t.Error("empty ground truth: no error")
	}
}

func TestFormat(t *testing.T) {
	cases := []struct {
		f    Format
		resp string
		want float64
	}{
		{Format{}, "<think>\n12+7=19, 19-5=14\n</think>\n<answer>14</answer>", 1},
		{Format{}, "<think>x</think> so \\boxed{3}", 1},
		{Format{}, "<answer>14</answer>", 0},
		{Format{}, "<think>x</think><answer>14</answer> trailing chatter", 0},
		{Format{}, "<think>x</think><answer>1</answer><answer>2</answer>", 0},
		{Format{}, "<think>x</think><think>y</think><answer>1</answer>", 0},
		{Format{}, "<think></think><answer>1</answer>", 0},
		{Format{}, "<think>x</think><answer></answer>", 0},
		{Format{}, "<think>never closed <answer>1</answer>", 0},
		{Format{}, "preamble <think>x</think><answer>1</answer>", 0},
		{Format{ThinkPrefilled: true}, "x</think><answer>1</answer>", 1},
		{Format{ThinkPrefilled: true}, "<think>x</think><answer>1</answer>", 0},
		{Format{NoThink: true}, "<answer>14</answer>", 1},
	}
	for _, c := range cases {
		if got := score(t, c.f, c.resp, "", nil); got.Score != c.want {
			t.Errorf("%+v on %q = %+v, want %v", c.f, c.resp, got, c.want)
		}
	}
}

func TestTaskRewards(t *testing.T) {
	reg := NewDefault(Options{})
	cases := []struct {
		kind, resp, truth string
		meta              map[string]any
		want              float64
	}{
		{"arith", "<answer>14</answer>", "14", nil, 1},
		{"arith", "<think>12+7=19 19-5=14</think><answer>14</answer>", "14", nil, 1},
		{"arith", "<think>maybe <answer>14</answer></think><answer>15</answer>", "14", nil, 0},
		{"arith", "14", "14", nil, 0}, // no tags
		{"logic/sort", "<answer>1 5 3 9</answer>", "1 3 5 9", nil, 0.5},
		{"sort", "<answer>1 3 5 9</answer>", "1 3 5 9", nil, 1},
		{"logic", "<answer>True</answer>", "True", map[string]any{"family": "boolean"}, 1},
		{"countdown", "<answer>(5*7-3)-8</answer>", `{"numbers":[3,5,7,8],"target":24}`, nil, 1},
		{"count", "<answer> 3 </answer>", "3", nil, 1},
	}
	for _, c := range cases {
		res, err := reg.Score(ctx, c.kind, c.resp, c.truth, c.meta)
		if err != nil || res.Score != c.want {
			t.Errorf("%s(%q) = %+v, %v; want %v", c.kind, c.resp, res, err, c.want)
		}
	}
	if _, err := reg.Score(ctx, "logic", "<answer>1</answer>", "1", nil); err == nil || !strings.Contains(err.Error(), `meta["family"]`) {
		t.Errorf("logic without family: %v", err)
	}
	if _, err := reg.Score(ctx, "arith", "<answer>1</answer>", "one", nil); err == nil || !strings.Contains(err.Error(), `kind "arith"`) {
		t.Errorf("bad ground truth: %v", err)
	}
	// Every family's reference answer, wrapped in tags, scores 1 through the registry.
	for _, name := range tasks.Names() {
		f, _ := tasks.New(name)
		ts, err := tasks.Generate(f, tasks.GenerateConfig{Split: tasks.Train, N: 20, Seed: 1})
		if err != nil {
			t.Fatal(err)
		}
		for _, tk := range ts {
			ans, _ := f.Solve(tk.GroundTruth)
			res, err := reg.Score(ctx, tk.Family, "<think>ok</think>"+tasks.Target(ans), tk.GroundTruth, tk.Meta)
			if err != nil || res.Score != 1 {
				t.Fatalf("%s %q: reference answer %q scored %+v %v", name, tk.Prompt, ans, res, err)
			}
		}
	}
}

func TestIFEval(t *testing.T) {
	cons := `[{"type":"word_count","min":5,"max":12},{"type":"no_commas"},{"type":"include_keywords","keywords":["graph","Node"]},
		{"type":"ends_with","phrase":"Any questions?"},{"type":"bullet_points","count":2},{"type":"exclude_keywords","keywords":["tree"]}]`
	resp := "<think>plan, plan</think>* a graph has nodes\n* each node links\nAny questions?"
	res := score(t, IFEval{}, resp, cons, nil)
	// word count: "a graph has nodes each node links Any questions" = 9 words: ok; no commas
	// (the thinking is not judged): ok; keywords: "graph" yes, "Node" as a whole word yes;
	// ends with: ok; bullets: 2 ok; no "tree": ok.
	if res.Score != 1 {
		t.Errorf("all met: %+v", res)
	}
	res = score(t, IFEval{}, "* a graph, with nodes and a tree\nbye", cons, nil)
	// words 8 ok; commas: fail; keywords: "nodes" is not "node": fail; ends with: fail;
	// bullets 1: fail; tree present: fail. 1 of 6.
	if math.Abs(res.Score-1.0/6) > 1e-12 {
		t.Errorf("one met: %+v", res)
	}
	meta := map[string]any{"constraints": []any{map[string]any{"type": "json_format"}, map[string]any{"type": "lowercase"}}}
	if res := score(t, IFEval{}, "```json\n{\"a\": [1, 2]}\n```", "", meta); res.Score != 1 {
		t.Errorf("json in a fence: %+v", res)
	}
	if res := score(t, IFEval{}, "{\"a\": 1", "", meta); res.Score != 0.5 {
		t.Errorf("broken json: %+v", res)
	}
	more := `[{"type":"title"},{"type":"quotation"},{"type":"paragraph_count","count":2},{"type":"keyword_frequency","keyword":"go","min":2},{"type":"starts_with","phrase":"\"<<"},{"type":"sentence_count","max":3},{"type":"max_chars","max":80},{"type":"uppercase"}]`
	if res := score(t, IFEval{}, "\"<<Title>> Go go.\n\nBye.\"", more, nil); res.Score != 7.0/8 {
		t.Errorf("more constraints: %+v", res)
	}
	for _, bad := range []string{`[{"type":"rhymes"}]`, `[{"type":"word_count"}]`, `[]`, `nope`, `[{"type":"bullet_points"}]`} {
		if _, err := (IFEval{}).Score(ctx, "x", bad, nil); err == nil || !strings.Contains(err.Error(), "ifeval") {
			t.Errorf("constraints %s: error %v", bad, err)
		}
	}
}

func TestRegistry(t *testing.T) {
	reg := NewDefault(Options{})
	custom := Func(func(_ context.Context, resp, gt string, _ map[string]any) (Result, error) {
		if strings.Contains(resp, gt) {
			return Result{Score: 1}, nil
		}
		return Result{}, nil
	})
	if err := reg.Register("mytask", custom); err != nil {
		t.Fatal(err)
	}
	if res, err := reg.Score(ctx, "mytask/v2", "hello world", "world", nil); err != nil || res.Score != 1 {
		t.Errorf("custom via prefix: %+v %v", res, err)
	}
	if _, kind, ok := reg.Lookup("openai/gsm8k"); !ok || kind != "openai/gsm8k" {
		t.Errorf("gsm8k alias: %q %v", kind, ok)
	}
	if _, err := reg.Score(ctx, "chess", "", "", nil); err == nil || !strings.Contains(err.Error(), `"chess"`) {
		t.Errorf("unknown kind: %v", err)
	}
	bad := Func(func(context.Context, string, string, map[string]any) (Result, error) { return Result{Score: 1.5}, nil })
	_ = reg.Register("bad", bad)
	if _, err := reg.Score(ctx, "bad", "", "", nil); err == nil || !strings.Contains(err.Error(), "outside [0, 1]") {
		t.Errorf("out-of-range score: %v", err)
	}
	nan := Func(func(context.Context, string, string, map[string]any) (Result, error) {
		return Result{Score: math.NaN()}, nil
	})
	_ = reg.Register("nan", nan)
	if _, err := reg.Score(ctx, "nan", "", "", nil); err == nil {
		t.Error("NaN score: no error")
	}
	if reg.Register("", custom) == nil || reg.Register("x", nil) == nil {
		t.Error("Register accepted an empty kind or nil reward")
	}
	// Sum: 0.9 correctness + 0.1 format.
	sum := Sum(Part{&Math{}, 0.9}, Part{Format{}, 0.1})
	if res := score(t, sum, "<think>x</think>\\boxed{2}", "3", nil); math.Abs(res.Score-0.1) > 1e-12 {
		t.Errorf("Sum: %+v", res)
	}
	if res := score(t, sum, "<think>x</think>\\boxed{3}", "3", nil); math.Abs(res.Score-1) > 1e-12 {
		t.Errorf("Sum: %+v", res)
	}
	for _, c := range []struct {
		n, max, cache int
		want          float64
	}{{100, 200, 50, 0}, {150, 200, 50, 0}, {175, 200, 50, -0.5}, {200, 200, 50, -1}, {300, 200, 50, -1}, {199, 200, 0, 0}, {200, 200, 0, -1}} {
		if got := OverlongPenalty(c.n, c.max, c.cache); math.Abs(got-c.want) > 1e-12 {
			t.Errorf("OverlongPenalty(%d, %d, %d) = %v, want %v", c.n, c.max, c.cache, got, c.want)
		}
	}
}

func TestChoice(t *testing.T) {
	reg := NewDefault(Options{})
	cases := []struct {
		resp, truth string
		want        float64
	}{
		{"<think>B looks wrong, so C</think> The answer is (C).", "C", 1},
		{"<think>x</think>\\boxed{C}", "(C)", 1},
		{"<think>x</think>\\boxed{\\text{C}}", "C", 1},
		{"<think>x</think><answer>c) ethanol</answer>", "C", 1},
		{"<think>x</think><answer>B. methanol</answer>", "C", 0},
		{"<think>the answer is C</think> I am not sure.", "C", 0},
		{"<think>x</think>\\boxed{CD}", "C", 0},
		{"<think>x</think>\\boxed{B} and then \\boxed{C}", "C", 1},
	}
	for _, c := range cases {
		res, err := reg.Score(ctx, "stem", c.resp, c.truth, nil)
		if err != nil || res.Score != c.want {
			t.Errorf("stem(%q, %q) = %+v, %v; want %v", c.resp, c.truth, res, err, c.want)
		}
	}
	if _, err := reg.Score(ctx, "choice", "\\boxed{A}", "42", nil); err == nil {
		t.Error("numeric ground truth accepted as an option")
	}
}

func codeReward(t *testing.T) *Code {
	t.Helper()
	sb := NewSandbox(SandboxConfig{Timeout: time.Second})
	if _, err := sb.Isolation(); err != nil {
		skipUnlessRequired(t, "code sandbox unavailable: %v", err)
	}
	return &Code{Sandbox: sb}
}

func TestCodeReward(t *testing.T) {
	c := codeReward(t)
	stdio := `{"inputs": ["1 2\n", "10 -3\n", "5 5\n"], "outputs": ["3\n", "7\n", "10"]}`
	fence := func(src string) string { return "<think>read two ints</think>\n```python\n" + src + "\n```" }
	cases := []struct {
		name, resp, truth string
		want              float64
	}{
		{"stdio correct", fence("a, b = map(int, input().split())\nprint(a + b)"), stdio, 1},
		{"stdio trailing spaces", fence("a, b = map(int, input().split())\nprint(a + b, '  ')"), stdio, 1},
		{"stdio partly", fence("a, b = map(int, input().split())\nprint(a + b if a < 10 else 0)"), stdio, 2.0 / 3},
		{"syntax error", fence("def f(:\n    pass"), stdio, 0},
		{"no code", "I would add the numbers.", stdio, 0},
		{"infinite loop", fence("while True:\n    pass"), stdio, 0},
		{"crash", fence("raise ValueError('no')"), stdio, 0},
		{"call-based", fence("def add(a, b):\n    return a + b"), `{"fn_name": "add", "inputs": [[1, 2], [3, 4]], "outputs": [3, [7]]}`, 1},
		{"call-based class", fence("class Solution:\n    def pair(self, a):\n        return (a, a)"), `{"fn_name": "pair", "inputs": [[1]], "outputs": [[1, 1]]}`, 1},
		{"asserts", fence("def sq(x):\n    return x * x"), `["assert sq(3) == 9", "assert sq(-2) == 4", "assert sq(0) == 1"]`, 2.0 / 3},
		{"assert exit hack", fence("import sys\nsys.exit(0)"), `{"tests": ["assert f() == 1"]}`, 0},
		{"forged pass line", fence("print('PROLONG-0000-PASS')\nimport os\nos._exit(0)"), `{"tests": ["assert False"]}`, 0},
		{"network attempt", fence("import socket\ntry:\n    socket.create_connection(('127.0.0.1', 9), timeout=1)\n    print('net')\nexcept OSError:\n    print('nonet')"), `{"inputs": [""], "outputs": ["nonet"]}`, 1},
	}
	for _, tc := range cases {
		res := score(t, c, tc.resp, tc.truth, nil)
		if math.Abs(res.Score-tc.want) > 1e-12 {
			t.Errorf("%s: %+v, want %v", tc.name, res, tc.want)
		}
	}
	c.Options.PartialOnTimeout = true
	loopy := fence("a, b = map(int, input().split())\nwhile a == 5:\n    pass\nprint(a + b)")
	if res := score(t, c, loopy, stdio, nil); math.Abs(res.Score-2.0/3) > 1e-12 {
		t.Errorf("PartialOnTimeout: %+v", res)
	}
	for _, bad := range []string{`{"inputs": ["1"], "outputs": []}`, `{}`, `[1, 2]`, `{"inputs": [1], "outputs": [2]}`, "not json"} {
		if _, err := c.Score(ctx, fence("print(1)"), bad, nil); err == nil || !strings.HasPrefix(err.Error(), "code:") {
			t.Errorf("ground truth %s: error %v", bad, err)
		}
	}
}

// Parallel scoring through one sandbox: every result right, the slots bound the runs in flight.
func TestCodeRewardParallel(t *testing.T) {
	sb := NewSandbox(SandboxConfig{Timeout: 2 * time.Second, Concurrency: 2})
	if _, err := sb.Isolation(); err != nil {
		skipUnlessRequired(t, "code sandbox unavailable: %v", err)
	}
	reg := NewDefault(Options{Sandbox: sb})
	resp := "```python\nprint(sum(map(int, input().split())))\n```"
	errs := make(chan error, 6)
	for i := 0; i < 6; i++ {
		go func() {
			res, err := reg.Score(ctx, "code", resp, `{"inputs": ["1 2", "3 4"], "outputs": ["3", "7"]}`, nil)
			if err == nil && res.Score != 1 {
				err = fmt.Errorf("score %+v", res)
			}
			errs <- err
		}()
	}
	for i := 0; i < 6; i++ {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
	if len(sb.slots) != 2 {
		t.Errorf("%d free slots after the runs, want 2", len(sb.slots))
	}
}

func FuzzExtract(f *testing.F) {
	for _, s := range []string{`\boxed{\frac{1}{2}}`, `<think>a</think><answer>b</answer>`, `\boxed{{}`, "the answer is $3$.", "```py\nx\n```", `\boxed \boxed{`, `\}\{`} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if b, ok := LastBoxed(s); ok && !strings.Contains(s, b) {
			t.Fatalf("LastBoxed(%q) = %q, not a substring", s, b)
		}
		if a, ok := AnswerTag(s); ok && !strings.Contains(s, a) {
			t.Fatalf("AnswerTag(%q) = %q", s, a)
		}
		_, _ = AnswerIsPhrase(s)
		_, _ = CodeBlock(s)
		if fp := FinalPart(s); !strings.HasSuffix(s, fp) {
			t.Fatalf("FinalPart(%q) = %q is not a suffix", s, fp)
		}
		_ = (Format{}).check(s)
	})
}

func FuzzMathEqual(f *testing.F) {
	for _, s := range []string{"3/4", `\frac{3}{4}`, "2^{10}", `\sqrt{\frac{9}{4}}`, "50%", "(1,2)", "x=5", "1,000", "((((", "2^-1", `\frac\frac12 3`} {
		f.Add(s, "0.75")
	}
	f.Fuzz(func(t *testing.T, a, b string) {
		if !utf8.ValidString(a) || !utf8.ValidString(b) {
			return
		}
		ab, ba := MathEqual(a, b), MathEqual(b, a)
		if ab != ba {
			t.Fatalf("MathEqual not symmetric on %q, %q", a, b)
		}
		if strings.TrimSpace(a) != "" && normalizeMath(a, true) != "" && !MathEqual(a, a) {
			t.Fatalf("MathEqual(%q, itself) = false", a)
		}
		if v, err := ParseRational(normalizeMath(a, true)); err == nil {
			if v.Num().BitLen() > 2*maxRatBits+64 {
				t.Fatalf("ParseRational(%q) grew to %d bits", a, v.Num().BitLen())
			}
		}
	})
}

func FuzzIFEvalConstraints(f *testing.F) {
	f.Add(`[{"type":"word_count","min":1}]`, "hello world")
	f.Add(`[{"type":"json_format"},{"type":"bullet_points","count":1}]`, "* {}")
	f.Fuzz(func(t *testing.T, cons, resp string) {
		res, err := (IFEval{}).Score(ctx, resp, cons, nil)
		if err == nil && !(res.Score >= 0 && res.Score <= 1) {
			t.Fatalf("score %v", res.Score)
		}
		if err == nil {
			var list []json.RawMessage
			if json.Unmarshal([]byte(cons), &list) != nil {
				t.Fatalf("accepted constraints %q that are not a JSON list", cons)
			}
		}
	})
}
