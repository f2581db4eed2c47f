package tasks

import (
	"strings"
	"testing"
)

// TestGenerateSuite: each family gives a training set named after it and held-out sets
// "family/in" (same difficulty, held-out split, no problem shared with training) and
// "family/above" (the harder spec), of the sizes asked for.
func TestGenerateSuite(t *testing.T) {
	suite := []SuiteFamily{
		{Name: "arith", Train: "arith:max=9,min_terms=3,terms=4", Above: "arith:max=9,min_terms=5,terms=6"},
		{Name: "countdown", Train: "countdown:max=9,max_target=40,numbers=3,ops=+-*,terse=1", Above: "countdown:max=9,max_target=40,numbers=4,ops=+-*,terse=1"},
	}
	train, held, err := GenerateSuite(suite, SuiteConfig{TrainN: 300, HeldN: 20, TrainSeed: 1, HeldSeed: 2})
	if err != nil {
		t.Fatal(err)
	}
	if len(train) != 2 || train[0].Kind != "arith" || train[1].Kind != "countdown" {
		t.Fatalf("train sets %v", kinds(train))
	}
	want := []string{"arith/in", "arith/above", "countdown/in", "countdown/above"}
	if got := kinds(held); strings.Join(got, " ") != strings.Join(want, " ") {
		t.Fatalf("held-out sets %v, want %v", got, want)
	}
	trainKeys := map[string]bool{}
	for _, s := range train {
		if len(s.Tasks) != 300 {
			t.Errorf("%s: %d training problems, want 300", s.Kind, len(s.Tasks))
		}
		for _, task := range s.Tasks {
			trainKeys[task.Family+" "+task.Key] = true
		}
	}
	for _, s := range held {
		if len(s.Tasks) != 20 {
			t.Errorf("%s: %d problems, want 20", s.Kind, len(s.Tasks))
		}
		for _, task := range s.Tasks {
			if trainKeys[task.Family+" "+task.Key] {
				t.Errorf("%s: %q is also a training problem", s.Kind, task.Key)
			}
			if KindFamily(s.Kind) != task.Family {
				t.Errorf("%s holds a %s task", s.Kind, task.Family)
			}
		}
	}
	// Above the training difficulty: 5-6 operands against 3-4; 4 numbers against 3.
	for _, tc := range []struct {
		set    SuiteSet
		count  func(string) int
		lo, hi int
	}{
		{held[0], operands, 3, 4}, {held[1], operands, 5, 6}, {held[2], numbersOf, 3, 3}, {held[3], numbersOf, 4, 4},
	} {
		for _, task := range tc.set.Tasks {
			if n := tc.count(task.Prompt); n < tc.lo || n > tc.hi {
				t.Errorf("%s: %q has %d operands, want %d..%d", tc.set.Kind, task.Prompt, n, tc.lo, tc.hi)
			}
		}
	}
}

func kinds(sets []SuiteSet) []string {
	var out []string
	for _, s := range sets {
		out = append(out, s.Kind)
	}
	return out
}

func operands(prompt string) int {
	return len(strings.FieldsFunc(prompt, func(r rune) bool { return strings.ContainsRune("+-*=", r) }))
}

func numbersOf(prompt string) int {
	nums, _, _ := strings.Cut(prompt, "=")
	return len(strings.Fields(nums))
}

// TestCountdownTerseOps: terse=1 writes "3 4 5=12"; ops=+-* builds and solves puzzles without
// division, and the solver's answers verify; bad knobs are errors naming them.
func TestCountdownTerseOps(t *testing.T) {
	f, err := New("countdown:max=9,max_target=40,numbers=3,ops=+-*,terse=1")
	if err != nil {
		t.Fatal(err)
	}
	ts, err := Generate(f, GenerateConfig{Split: Train, N: 200, Seed: 3})
	if err != nil {
		t.Fatal(err)
	}
	for _, task := range ts {
		if strings.Trim(task.Prompt, "0123456789 =") != "" || numbersOf(task.Prompt) != 3 {
			t.Fatalf("prompt %q: want three numbers, spaces and =", task.Prompt)
		}
		ans, err := f.Solve(task.GroundTruth)
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(ans, "/") {
			t.Fatalf("%s: answer %q divides", task.Prompt, ans)
		}
		if s, err := f.Verify(ans, task.GroundTruth); err != nil || s != 1 {
			t.Fatalf("%s: %q scores %v, %v", task.Prompt, ans, s, err)
		}
	}
	if got := Spec(f); got != "countdown:max=9,max_target=40,numbers=3,ops=+-*,terse=1" {
		t.Errorf("Spec = %q", got)
	}
	for spec, want := range map[string]string{
		"countdown:terse=2": "terse=2",
		"countdown:ops=+^":  `ops = "+^"`,
	} {
		if _, err := New(spec); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("New(%q) = %v, want an error naming %s", spec, err, want)
		}
	}
}
