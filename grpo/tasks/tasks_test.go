package tasks

import (
	"strconv"
	"strings"
	"testing"
)

func mustNew(t testing.TB, spec string) Family {
	t.Helper()
	f, err := New(spec)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// Every family: Generate is deterministic, the splits never overlap, the reference solver's
// answer verifies as 1, and the prompt alone determines the ground truth.
func TestFamiliesGenerateSolveVerify(t *testing.T) {
	for _, name := range Names() {
		f := mustNew(t, name)
		train, err := Generate(f, GenerateConfig{Split: Train, N: 300, Seed: 7})
		if err != nil {
			t.Fatal(err)
		}
		again, _ := Generate(f, GenerateConfig{Split: Train, N: 300, Seed: 7})
		test, err := Generate(f, GenerateConfig{Split: HeldOut, N: 40, Seed: 7})
		if err != nil {
			t.Fatal(err)
		}
		other, _ := Generate(f, GenerateConfig{Split: Train, N: 300, Seed: 8})
		keys := map[string]bool{}
		sameOther := 0
		for i, tk := range train {
			if tk.Prompt != again[i].Prompt || tk.GroundTruth != again[i].GroundTruth {
				t.Fatalf("%s: same seed gave different task %d: %q vs %q", name, i, tk.Prompt, again[i].Prompt)
			}
			if keys[tk.Key] {
				t.Fatalf("%s: duplicate train key %q", name, tk.Key)
			}
			keys[tk.Key] = true
			if tk.Prompt == other[i].Prompt {
				sameOther++
			}
		}
		if sameOther > 30 {
			t.Errorf("%s: seeds 7 and 8 agree on %d of 300 prompts", name, sameOther)
		}
		for _, tk := range test {
			if keys[tk.Key] {
				t.Errorf("%s: held-out problem %q is also in train", name, tk.Key)
			}
			if tk.Split != HeldOut || SplitOf(name, tk.Key, DefaultHeldOutPermille) != HeldOut {
				t.Errorf("%s: held-out task has split %q", name, tk.Split)
			}
		}
		for _, tk := range append(train, test...) {
			ans, err := f.Solve(tk.GroundTruth)
			if err != nil {
				t.Fatalf("%s: Solve(%q): %v", name, tk.GroundTruth, err)
			}
			if s, err := f.Verify(ans, tk.GroundTruth); err != nil || s != 1 {
				t.Fatalf("%s: reference answer %q for %q scores %v (%v)", name, ans, tk.Prompt, s, err)
			}
			checkPromptDeterminesTruth(t, name, tk)
		}
	}
}

// Independent solvers working from the prompt text.
func checkPromptDeterminesTruth(t *testing.T, name string, tk Task) {
	t.Helper()
	switch name {
	case "arith":
		v, err := SolveArith(tk.Prompt)
		if err != nil || strconv.FormatInt(v, 10) != tk.GroundTruth {
			t.Fatalf("arith %q: solved %d (%v), truth %s", tk.Prompt, v, err, tk.GroundTruth)
		}
	case "boolean":
		v, err := EvalBoolean(tk.Prompt)
		if err != nil || boolWord(v) != tk.GroundTruth {
			t.Fatalf("boolean %q: %v (%v), truth %s", tk.Prompt, v, err, tk.GroundTruth)
		}
	case "count":
		var letter, word string
		if _, err := fmtSscanf(tk.Prompt, &letter, &word); err != nil {
			t.Fatalf("count prompt %q: %v", tk.Prompt, err)
		}
		n := 0
		for _, c := range word {
			if string(c) == letter {
				n++
			}
		}
		if strconv.Itoa(n) != tk.GroundTruth {
			t.Fatalf("count %q: %d, truth %s", tk.Prompt, n, tk.GroundTruth)
		}
	case "sort":
		xs, _ := parseIntList(strings.TrimPrefix(tk.Prompt, "sort: "))
		ys, _ := parseIntList(tk.GroundTruth)
		// Insertion sort as an independent reference.
		for i := 1; i < len(xs); i++ {
			for j := i; j > 0 && xs[j] < xs[j-1]; j-- {
				xs[j], xs[j-1] = xs[j-1], xs[j]
			}
		}
		if len(xs) != len(ys) {
			t.Fatalf("sort %q: truth %q", tk.Prompt, tk.GroundTruth)
		}
		for i := range xs {
			if xs[i] != ys[i] {
				t.Fatalf("sort %q: truth %q", tk.Prompt, tk.GroundTruth)
			}
		}
	case "countdown":
		truth, err := ParseCountdownTruth(tk.GroundTruth)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.HasSuffix(tk.Prompt, " to make "+strconv.FormatInt(truth.Target, 10)) || truth.Target < 1 || truth.Target > 100 {
			t.Fatalf("countdown %q: truth %s", tk.Prompt, tk.GroundTruth)
		}
	}
}

func fmtSscanf(prompt string, letter, word *string) (int, error) {
	f := strings.Fields(prompt)
	if len(f) != 4 || f[0] != "count" || f[2] != "in" {
		return 0, errBadPrompt
	}
	*letter, *word = f[1], f[3]
	return 2, nil
}

type constErr string

func (e constErr) Error() string { return string(e) }

const errBadPrompt = constErr("bad prompt")

func TestVerifiersByHand(t *testing.T) {
	cd := `{"numbers":[3,5,7,8],"target":24}`
	cases := []struct {
		family, answer, truth string
		want                  float64
	}{
		{"arith", "14", "14", 1},
		{"arith", " +14 ", "14", 1},
		{"arith", "14.0", "14", 0},
		{"arith", "-3", "-3", 1},
		{"arith", "15", "14", 0},
		{"arith", "", "14", 0},
		{"arith", "99999999999999999999999", "14", 0},
		{"countdown", "8*3*(7-5)/2", cd, 0},   // 2 is not given, 5 unused
		{"countdown", "(8-5)*(7-3)*2", cd, 0}, // extra number
		{"countdown", "8*(7-5)+3+5", cd, 0},   // 5 used twice
		{"countdown", "(7+5)*(8/3)-8", cd, 0}, // 8 twice
		{"countdown", "3*8*(7-5)/2", cd, 0},
		{"countdown", "(7-3)*8-5-3", cd, 0},
		{"countdown", "8*(3+7-5)-16", cd, 0},
		{"countdown", "3*(5+7)-8-4", cd, 0},
		{"countdown", "8*3*(7-5)", `{"numbers":[8,3,7,5],"target":48}`, 1},
		{"countdown", "8*3*(7-5) = 48", `{"numbers":[8,3,7,5],"target":48}`, 1},
		{"countdown", "5*3+8+7/7", `{"numbers":[5,3,8,7,7],"target":24}`, 1},
		{"countdown", "7/2*2", `{"numbers":[7,2,2],"target":7}`, 1},
		{"countdown", "7/(2-2)", `{"numbers":[7,2,2],"target":7}`, 0},
		{"sort", "1 3 5 9", "1 3 5 9", 1},
		{"sort", "[1, 3, 5, 9]", "1 3 5 9", 1},
		{"sort", "1 5 3 9", "1 3 5 9", 0.5},
		{"sort", "1 3 5", "1 3 5 9", 0.75},
		{"sort", "1 3 5 9 9 9 9 9", "1 3 5 9", 0.5},
		{"sort", "one two", "1 3 5 9", 0},
		{"count", "3", "3", 1},
		{"count", "three", "3", 0},
		{"boolean", "true", "True", 1},
		{"boolean", "False", "True", 0},
		{"boolean", "True or False", "True", 0},
	}
	for _, c := range cases {
		f := mustNew(t, c.family)
		got, err := f.Verify(c.answer, c.truth)
		if err != nil || got != c.want {
			t.Errorf("%s.Verify(%q, %q) = %v, %v; want %v", c.family, c.answer, c.truth, got, err, c.want)
		}
	}
	// 8/(3-8/3) = 24 exactly with rationals: the classic.
	if s, _ := mustNew(t, "countdown").Verify("8/(3-8/3)", `{"numbers":[8,3,8,3],"target":24}`); s != 1 {
		t.Errorf("8/(3-8/3) scored %v, want 1", s)
	}
	if ans, err := mustNew(t, "countdown").Solve(`{"numbers":[8,3,8,3],"target":24}`); err != nil || ans == "" {
		t.Errorf("Solve 8 3 8 3 -> 24: %q %v", ans, err)
	} else if s, _ := mustNew(t, "countdown").Verify(ans, `{"numbers":[8,3,8,3],"target":24}`); s != 1 {
		t.Errorf("solver's %q does not verify", ans)
	}
	if _, err := mustNew(t, "countdown").Solve(`{"numbers":[1,1],"target":7}`); err == nil {
		t.Error("unsolvable countdown: no error")
	}
	for _, bad := range []struct{ family, truth string }{
		{"arith", "x"}, {"countdown", "24"}, {"countdown", `{"numbers":[],"target":3}`}, {"sort", ""}, {"boolean", "maybe"}, {"count", ""},
	} {
		if _, err := mustNew(t, bad.family).Verify("1", bad.truth); err == nil || !strings.Contains(err.Error(), bad.family) {
			t.Errorf("%s.Verify with truth %q: error %v", bad.family, bad.truth, err)
		}
	}
}

func TestSpecs(t *testing.T) {
	f := mustNew(t, "arith:terms=4,max=9,ops=+-*")
	if Spec(f) != "arith:max=9,min_terms=2,ops=+-*,terms=4" {
		t.Errorf("Spec = %q", Spec(f))
	}
	if g := mustNew(t, Spec(f)); Spec(g) != Spec(f) {
		t.Errorf("round trip: %q", Spec(g))
	}
	for _, c := range []struct{ spec, want string }{
		{"chess", `unknown family "chess"`},
		{"arith:terms=x", `terms="x" is not an integer`},
		{"arith:depth=3", `unknown knob "depth"`},
		{"arith:ops=/", `ops = "/"`},
		{"arith:terms=1", "terms 2..1"},
		{"countdown:numbers=9", "numbers = 9"},
		{"sort:len=1", "len 3..1"},
		{"count:alphabet=a", "alphabet"},
		{"boolean:depth=0", "depth = 0"},
		{"arith:terms", `knob "terms" is not key=value`},
	} {
		if _, err := New(c.spec); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("New(%q) error = %v, want %q", c.spec, err, c.want)
		}
	}
	// A problem space too small for the request is an error, not a hang.
	small := mustNew(t, "arith:terms=2,max=2,ops=+")
	if _, err := Generate(small, GenerateConfig{Split: Train, N: 50, Seed: 1}); err == nil || !strings.Contains(err.Error(), "distinct train problems") {
		t.Errorf("tiny space: %v", err)
	}
	if _, err := Generate(small, GenerateConfig{Split: "dev", N: 1}); err == nil {
		t.Error("unknown split: no error")
	}
}

// The default task's difficulty knobs move the answer distribution as documented.
func TestArithKnobs(t *testing.T) {
	f := mustNew(t, "arith:min_terms=3,terms=3,max=9,ops=*")
	tasks, err := Generate(f, GenerateConfig{Split: Train, N: 100, Seed: 3})
	if err != nil {
		t.Fatal(err)
	}
	for _, tk := range tasks {
		if strings.Count(tk.Prompt, "*") != 2 || strings.ContainsAny(tk.Prompt, "+-") {
			t.Fatalf("prompt %q does not have 3 terms joined by *", tk.Prompt)
		}
		if tk.Meta["ops"] != "*" {
			t.Fatalf("meta %v", tk.Meta)
		}
	}
	if Target("14") != "<answer>14</answer>" {
		t.Error(Target("14"))
	}
}

func FuzzCountdownVerify(f *testing.F) {
	for _, s := range []string{"8*3*(7-5)", "((((1", "1/0", "-(-(-3))", "8/(3-8/3)", "99999999999999999999", "7 7 7", ")("} {
		f.Add(s)
	}
	cd := &Countdown{Numbers: 4, MaxNumber: 20, MaxTarget: 100}
	f.Fuzz(func(t *testing.T, answer string) {
		s, err := cd.Verify(answer, `{"numbers":[8,3,7,5],"target":48}`)
		if err != nil || (s != 0 && s != 1) {
			t.Fatalf("Verify(%q) = %v, %v", answer, s, err)
		}
		if s == 1 {
			v, used, err := EvalRational(strings.SplitN(answer, "=", 2)[0])
			if err != nil || v.RatString() != "48" || len(used) != 4 {
				t.Fatalf("accepted %q: %v %v %v", answer, v, used, err)
			}
		}
	})
}

func BenchmarkCountdownSolve(b *testing.B) {
	f := mustNew(b, "countdown:numbers=5")
	tasks, err := Generate(f, GenerateConfig{Split: Train, N: 20, Seed: 1})
	if err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		for _, tk := range tasks {
			if _, err := f.Solve(tk.GroundTruth); err != nil {
				b.Fatal(err)
			}
		}
	}
}
