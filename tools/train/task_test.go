package main

import (
	"context"
	"fmt"
	"strings"
	"testing"
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
		if o.maxResponseLen != tc.want {
			t.Errorf("%v: --max-response %d, want %d", tc.args, o.maxResponseLen, tc.want)
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
