package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"strings"
	"testing"

	"github.com/prolong-rl/prolong/grpo"
)

// TestTaskFlag: --task suite gives the suite's worked answers room (--max-response 48 unless
// given), the default job keeps its 24, and an unknown task is an error naming the flag.
func TestTaskFlag(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want int
	}{
		{nil, 24},
		{[]string{"--task", "suite"}, 48},
		{[]string{"--task", "suite", "--max-response", "30"}, 30},
	} {
		o, _, err := parseOptions(tc.args)
		if err != nil {
			t.Fatalf("%v: %v", tc.args, err)
		}
		if o.Run.Trainer.MaxResponseTokens != tc.want {
			t.Errorf("%v: --max-response %d, want %d", tc.args, o.Run.Trainer.MaxResponseTokens, tc.want)
		}
	}
	if _, _, err := parseOptions([]string{"--task", "chess"}); err == nil || !strings.Contains(err.Error(), `--task "chess"`) {
		t.Errorf("--task chess: %v", err)
	}
}

// TestSuiteJob: the suite's default job trains on both families and holds out --eval-size
// problems per family and difficulty, each kind named by family and set.
func TestSuiteJob(t *testing.T) {
	o, _, err := parseOptions([]string{"--task", "suite", "--eval-size", "7", "--train-problems", "100"})
	if err != nil {
		t.Fatal(err)
	}
	j, err := defaultJob(context.Background(), *o, nil, false)
	if err != nil {
		t.Fatal(err)
	}
	kinds := map[string]int{}
	for _, p := range append(j.Train, j.Held...) {
		kinds[p.Kind]++
	}
	want := "map[arith:50 arith/above:7 arith/in:7 countdown:50 countdown/above:7 countdown/in:7]"
	if got := fmt.Sprint(kinds); got != want {
		t.Errorf("prompts per kind %s, want %s", got, want)
	}
}

// TestPrintByKind: one line per held-out kind, in name order, with pass@1, the pass@k above 1
// and the mean length; nothing for a single kind.
func TestPrintByKind(t *testing.T) {
	capture := func(r *grpo.EvalResult) string {
		old := os.Stdout
		rd, w, err := os.Pipe()
		if err != nil {
			t.Fatal(err)
		}
		os.Stdout = w
		printByKind(r)
		os.Stdout = old
		w.Close()
		b, _ := io.ReadAll(rd)
		return string(b)
	}
	got := capture(&grpo.EvalResult{
		PassAtKByKind: map[string]map[int]float64{"b/above": {1: 0.125, 2: 0.25}, "a/in": {1: 0.5, 2: 0.75}},
		LengthByKind:  map[string]float64{"b/above": 30, "a/in": 12.25},
	})
	want := "  a/in             pass@1 50.0%, pass@2 75.0%, mean length 12.2 tokens\n" +
		"  b/above          pass@1 12.5%, pass@2 25.0%, mean length 30.0 tokens\n"
	if got != want {
		t.Errorf("got\n%s\nwant\n%s", got, want)
	}
	if got := capture(&grpo.EvalResult{PassAtKByKind: map[string]map[int]float64{"arith": {1: 0.5}}}); got != "" {
		t.Errorf("one kind: %q", got)
	}
}
