package grpo

import (
	"math"
	"testing"

	"github.com/prolong-rl/prolong/engine"
)

// TestEvalResultByKind: per-kind pass@k and response length against values worked by hand
// from 1 - C(n-c,k)/C(n,k) over three prompts of two kinds, 4 samples each.
func TestEvalResultByKind(t *testing.T) {
	toks := func(n int) engine.Sample { return engine.Sample{Tokens: make([]int32, n)} }
	prompts := []Prompt{{Kind: "x/in"}, {Kind: "x/in"}, {Kind: "x/above"}}
	samples := [][]engine.Sample{
		{toks(1), toks(2), toks(3), toks(4)},
		{toks(2), toks(2), toks(2), toks(2)},
		{toks(6), toks(6), toks(6), toks(6)},
	}
	rewards := [][]float64{{1, 0, 0, 0}, {1, 1, 0, 0.5}, {0, 0, 0.5, 0}} // 0.5 is not a pass
	res := evalResult(prompts, samples, rewards)
	want := map[string]map[int]float64{
		// prompt 1: c=1: pass@2 = 1 - C(3,2)/C(4,2) = 1/2; prompt 2: c=2: 1 - C(2,2)/C(4,2) = 5/6
		"x/in":    {1: (0.25 + 0.5) / 2, 2: (0.5 + 5.0/6) / 2, 4: 1},
		"x/above": {1: 0, 2: 0, 4: 0},
	}
	for kind, byK := range want {
		for k, w := range byK {
			if got := res.PassAtKByKind[kind][k]; math.Abs(got-w) > 1e-12 {
				t.Errorf("%s pass@%d = %v, want %v", kind, k, got, w)
			}
		}
		if len(res.PassAtKByKind[kind]) != len(byK) {
			t.Errorf("%s: ks %v, want 1, 2, 4", kind, res.PassAtKByKind[kind])
		}
	}
	for kind, w := range map[string]float64{"x/in": (10 + 8) / 8.0, "x/above": 6} {
		if got := res.LengthByKind[kind]; got != w {
			t.Errorf("%s mean length = %v, want %v", kind, got, w)
		}
	}
	if got, w := res.PassAtK[1], (0.25+0.5+0)/3; math.Abs(got-w) > 1e-12 {
		t.Errorf("overall pass@1 = %v, want %v", got, w)
	}
	if got, w := res.Accuracy, 3.0/12; got != w {
		t.Errorf("accuracy = %v, want %v", got, w)
	}
}
