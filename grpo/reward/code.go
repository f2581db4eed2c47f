package reward

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
)

// CodeOptions configures the code reward.
type CodeOptions struct {
	// PartialOnTimeout counts a timed-out test as failed and goes on; by default a time-out
	// makes the reward 0 (ProRL).
	PartialOnTimeout bool
	// MaxTests caps the tests run per response (the first ones); default 64.
	MaxTests int
}

// Code scores Python code: the last fenced code block of the response's final part is run
// against the tests of the ground truth in the Sandbox; the reward is the fraction of tests
// passed, 0 on a syntax error or (by default) a time-out. The ground truth is JSON in one of the
// layouts of public code datasets:
//
//	{"inputs": ["1 2\n", ...], "outputs": ["3\n", ...]}          stdin -> stdout (trailing spaces ignored)
//	{"fn_name": "add", "inputs": [[1, 2], ...], "outputs": [3, ...]}  call-based (APPS; also Solution().add)
//	{"tests": ["assert add(1, 2) == 3", ...]} or ["assert ...", ...]   assert-based (MBPP, HumanEval)
//
// A call-based or assert-based test runs in the same interpreter as the model's code, so a
// determined model could forge a pass; stdin/stdout tests cannot be forged that way.
type Code struct {
	// Sandbox runs the code; nil means a default sandbox made on first use.
	Sandbox *Sandbox
	Options CodeOptions

	once sync.Once
}

func (c *Code) sandbox() *Sandbox {
	c.once.Do(func() {
		if c.Sandbox == nil {
			c.Sandbox = NewSandbox(SandboxConfig{})
		}
	})
	return c.Sandbox
}

// CodeTests is the parsed test set of a code ground truth.
type CodeTests struct {
	Inputs  []json.RawMessage `json:"inputs"`
	Outputs []json.RawMessage `json:"outputs"`
	FnName  string            `json:"fn_name"`
	Asserts []string          `json:"tests"`
}

// ParseCodeTests reads a code ground truth (see Code).
func ParseCodeTests(groundTruth string) (CodeTests, error) {
	var t CodeTests
	gt := strings.TrimSpace(groundTruth)
	if strings.HasPrefix(gt, "[") {
		if err := json.Unmarshal([]byte(gt), &t.Asserts); err != nil {
			return t, fmt.Errorf("code: ground truth is a JSON list but not of strings: %w", err)
		}
	} else if err := json.Unmarshal([]byte(gt), &t); err != nil {
		return t, fmt.Errorf("code: ground truth is not JSON {inputs, outputs[, fn_name]} or {tests}: %w", err)
	}
	if len(t.Inputs) != len(t.Outputs) {
		return t, fmt.Errorf("code: ground truth has %d inputs but %d outputs", len(t.Inputs), len(t.Outputs))
	}
	if t.Len() == 0 {
		return t, fmt.Errorf("code: ground truth has no tests")
	}
	if t.FnName == "" {
		for i, in := range t.Inputs {
			var s string
			if json.Unmarshal(in, &s) != nil {
				return t, fmt.Errorf("code: input %d is not a string (stdin tests need strings; call-based tests need fn_name)", i)
			}
		}
		for i, out := range t.Outputs {
			var s string
			if json.Unmarshal(out, &s) != nil {
				return t, fmt.Errorf("code: output %d is not a string", i)
			}
		}
	}
	return t, nil
}

// Len is the number of tests.
func (t CodeTests) Len() int { return len(t.Inputs) + len(t.Asserts) }

func nonce() string {
	var b [12]byte
	_, _ = rand.Read(b[:])
	return "PROLONG-" + hex.EncodeToString(b[:]) + "-"
}

// normalizeOutput drops trailing spaces on each line and trailing blank lines.
func normalizeOutput(s string) string {
	lines := strings.Split(strings.ReplaceAll(s, "\r\n", "\n"), "\n")
	for i := range lines {
		lines[i] = strings.TrimRight(lines[i], " \t")
	}
	return strings.TrimRight(strings.Join(lines, "\n"), "\n")
}

const syntaxCheck = `import sys
try:
    compile(open("solution.py", encoding="utf-8").read(), "solution.py", "exec")
except (SyntaxError, ValueError) as e:
    print("SYNTAX:", e)
    sys.exit(3)
`

const callHarness = `import json as _json
_src = open("solution.py", encoding="utf-8").read()
_g = {"__name__": "solution"}
exec(compile(_src, "solution.py", "exec"), _g)
_f = _g.get(%[1]q)
if _f is None and "Solution" in _g:
    _f = getattr(_g["Solution"](), %[1]q)
_args = _json.loads(%[2]q)
_want = _json.loads(%[3]q)
_res = _f(*_args)
def _norm(x):
    if isinstance(x, (list, tuple)):
        return [_norm(v) for v in x]
    if isinstance(x, dict):
        return {str(k): _norm(v) for k, v in x.items()}
    return x
_ok = _norm(_res) == _norm(_want) or [_norm(_res)] == _norm(_want)
print()
print(%[4]q + ("PASS" if _ok else "FAIL"))
`

const assertHarness = `_src = open("solution.py", encoding="utf-8").read()
_g = {"__name__": "solution"}
exec(compile(_src, "solution.py", "exec"), _g)
exec(compile(%[1]q, "test.py", "exec"), _g)
print()
print(%[2]q + "PASS")
`

// Score implements Reward.
func (c *Code) Score(ctx context.Context, response, groundTruth string, _ map[string]any) (Result, error) {
	tests, err := ParseCodeTests(groundTruth)
	if err != nil {
		return Result{}, err
	}
	src, ok := CodeBlock(FinalPart(response))
	if !ok || strings.TrimSpace(src) == "" {
		return Result{Reason: "no code block"}, nil
	}
	sb := c.sandbox()
	iso, err := sb.Isolation()
	if err != nil {
		return Result{}, err
	}
	details := map[string]any{"isolation": iso}
	res := Result{Answer: src, Details: details}

	chk, err := sb.Run(ctx, map[string]string{"main.py": syntaxCheck, "solution.py": src}, nil)
	if err != nil {
		return Result{}, err
	}
	if chk.ExitCode != 0 {
		res.Reason = "syntax error"
		details["syntax_error"] = strings.TrimSpace(string(chk.Stdout))
		return res, nil
	}
	n := tests.Len()
	maxTests := c.Options.MaxTests
	if maxTests == 0 {
		maxTests = 64
	}
	n = min(n, maxTests)
	passed, timedOut := 0, 0
	for i := 0; i < n; i++ {
		ok, to, err := c.runTest(ctx, sb, tests, i, src)
		if err != nil {
			return Result{}, err
		}
		if to {
			timedOut++
			if !c.Options.PartialOnTimeout {
				details["passed"], details["total"], details["timed_out"] = passed, n, timedOut
				res.Reason = fmt.Sprintf("test %d timed out", i)
				return res, nil
			}
		}
		if ok {
			passed++
		}
	}
	details["passed"], details["total"], details["timed_out"] = passed, n, timedOut
	res.Score = float64(passed) / float64(n)
	if passed < n {
		res.Reason = fmt.Sprintf("%d of %d tests failed", n-passed, n)
	}
	return res, nil
}

func (c *Code) runTest(ctx context.Context, sb *Sandbox, t CodeTests, i int, src string) (pass, timedOut bool, err error) {
	files := map[string]string{"solution.py": src}
	var stdin []byte
	var mark, want string
	switch {
	case i >= len(t.Inputs):
		mark = nonce()
		files["main.py"] = fmt.Sprintf(assertHarness, t.Asserts[i-len(t.Inputs)], mark)
	case t.FnName != "":
		mark = nonce()
		files["main.py"] = fmt.Sprintf(callHarness, t.FnName, string(t.Inputs[i]), string(t.Outputs[i]), mark)
	default:
		var in string
		_ = json.Unmarshal(t.Inputs[i], &in)
		_ = json.Unmarshal(t.Outputs[i], &want)
		stdin = []byte(in)
		files["main.py"] = src
		delete(files, "solution.py")
	}
	r, err := sb.Run(ctx, files, stdin)
	if err != nil {
		return false, false, err
	}
	if r.TimedOut {
		return false, true, nil
	}
	if r.ExitCode != 0 || r.OutputLimited {
		return false, false, nil
	}
	if mark != "" {
		out := bytes.TrimRight(r.Stdout, "\n")
		last := out[bytes.LastIndexByte(out, '\n')+1:]
		return string(last) == mark+"PASS", false, nil
	}
	return normalizeOutput(string(r.Stdout)) == normalizeOutput(want), false, nil
}
