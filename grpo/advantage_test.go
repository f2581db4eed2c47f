package grpo

import (
	"math"
	"strings"
	"testing"
)

func near(a, b, tol float64) bool { return math.Abs(a-b) <= tol*(1+math.Abs(b)) }

func checkNested(t *testing.T, name string, got, want [][]float64, tol float64) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: %d groups, want %d", name, len(got), len(want))
	}
	for g := range want {
		if len(got[g]) != len(want[g]) {
			t.Fatalf("%s: group %d has %d values, want %d", name, g, len(got[g]), len(want[g]))
		}
		for i := range want[g] {
			if !near(got[g][i], want[g][i], tol) {
				t.Errorf("%s: [%d][%d] = %.12g, want %.12g", name, g, i, got[g][i], want[g][i])
			}
		}
	}
}

// Values worked by hand. Group [1,0,0,0]: mean 1/4, unbiased variance (9/16+3/16)/3 = 1/4,
// std 1/2; GRPO gives 0.75/(0.5+1e-6) and -0.25/(0.5+1e-6).
func TestAdvantagesByHand(t *testing.T) {
	const eps = 1e-6
	cases := []struct {
		name    string
		rewards [][]float64
		cfg     AdvantageConfig
		want    [][]float64
	}{
		{"grpo", [][]float64{{1, 0, 0, 0}}, AdvantageConfig{},
			[][]float64{{0.75 / 0.500001, -0.25 / 0.500001, -0.25 / 0.500001, -0.25 / 0.500001}}},
		{"grpo uniform group is zero", [][]float64{{1, 1, 1}, {0, 0}}, AdvantageConfig{},
			[][]float64{{0, 0, 0}, {0, 0}}},
		// Group [2, 4]: mean 3, std sqrt(2) (unbiased).
		{"grpo two groups", [][]float64{{2, 4}, {1, 0, 0, 0}}, AdvantageConfig{Estimator: EstimatorGRPO},
			[][]float64{{-1 / (math.Sqrt2 + eps), 1 / (math.Sqrt2 + eps)}, {0.75 / 0.500001, -0.25 / 0.500001, -0.25 / 0.500001, -0.25 / 0.500001}}},
		{"grpo group of one keeps reward", [][]float64{{0.7}}, AdvantageConfig{}, [][]float64{{0.7 / (1 + eps)}}},
		{"dr grpo", [][]float64{{1, 0, 0, 0}}, AdvantageConfig{NoStdNorm: true},
			[][]float64{{0.75, -0.25, -0.25, -0.25}}},
		{"rloo", [][]float64{{1, 0, 0, 0}, {3}}, AdvantageConfig{Estimator: EstimatorRLOO},
			[][]float64{{1, -1.0 / 3, -1.0 / 3, -1.0 / 3}, {3}}},
		// Centred: [.5,-.5],[0,0]; batch mean 0, unbiased variance 0.5/3 = 1/6.
		{"reinforce++ baseline", [][]float64{{1, 0}, {1, 1}}, AdvantageConfig{Estimator: EstimatorReinforcePPBaseline},
			[][]float64{{0.5 / math.Sqrt(1.0/6+1e-8), -0.5 / math.Sqrt(1.0/6+1e-8)}, {0, 0}}},
	}
	for _, c := range cases {
		got, err := Advantages(c.rewards, c.cfg)
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		checkNested(t, c.name, got, c.want, 1e-12)
	}
}

// The token-weighted REINFORCE++ whitening must equal whitening the expanded per-token list, as
// verl's masked_whiten does on a [batch, tokens] tensor.
func TestReinforcePPTokenWeighted(t *testing.T) {
	rewards := [][]float64{{1, 0, 0.5}, {1, 0.25}, {0.3}}
	counts := [][]int{{2, 1, 5}, {3, 0}, {4}}
	got, err := ReinforcePPBaselineAdvantages(rewards, counts)
	if err != nil {
		t.Fatal(err)
	}
	// Reference: centre per group, expand to tokens, whiten the token list.
	var toks []float64
	centred := make([][]float64, len(rewards))
	for g, grp := range rewards {
		var m float64
		if len(grp) > 1 {
			for _, r := range grp {
				m += r
			}
			m /= float64(len(grp))
		}
		for i, r := range grp {
			centred[g] = append(centred[g], r-m)
			for k := 0; k < counts[g][i]; k++ {
				toks = append(toks, r-m)
			}
		}
	}
	var mean, ss float64
	for _, x := range toks {
		mean += x
	}
	mean /= float64(len(toks))
	for _, x := range toks {
		ss += (x - mean) * (x - mean)
	}
	std := math.Sqrt(ss/float64(len(toks)-1) + 1e-8)
	want := make([][]float64, len(rewards))
	for g := range centred {
		for i, x := range centred[g] {
			v := (x - mean) / std
			if counts[g][i] == 0 {
				v = 0
			}
			want[g] = append(want[g], v)
		}
	}
	checkNested(t, "token weighted", got, want, 1e-12)
}

func TestAdvantageErrors(t *testing.T) {
	cases := []struct {
		rewards [][]float64
		cfg     AdvantageConfig
		wantErr string
	}{
		{[][]float64{{1}}, AdvantageConfig{Estimator: "ppo"}, `unknown advantage estimator "ppo"`},
		{[][]float64{{1, math.NaN()}}, AdvantageConfig{}, "group 0 response 1 is NaN"},
		{[][]float64{{1}, {math.Inf(1)}}, AdvantageConfig{}, "group 1 response 0 is +Inf"},
		{[][]float64{{1, 2}}, AdvantageConfig{Estimator: EstimatorReinforcePPBaseline, TokenCounts: [][]int{{1}}}, "group 0 has 1 responses"},
		{[][]float64{{1, 2}}, AdvantageConfig{Estimator: EstimatorReinforcePPBaseline, TokenCounts: [][]int{{1, -2}}}, "response 1 is negative"},
		{[][]float64{{1, 2}}, AdvantageConfig{Estimator: EstimatorReinforcePPBaseline, TokenCounts: [][]int{}}, "TokenCounts has 0 groups"},
	}
	for _, c := range cases {
		_, err := Advantages(c.rewards, c.cfg)
		if err == nil || !strings.Contains(err.Error(), c.wantErr) {
			t.Errorf("Advantages(%v, %+v) error = %v, want it to contain %q", c.rewards, c.cfg, err, c.wantErr)
		}
	}
}

func TestUniformGroups(t *testing.T) {
	rewards := [][]float64{{1, 1, 1}, {0, 1}, {0.5}, {}, {0.2, 0.2 + 1e-12}}
	got := UniformGroups(rewards, 0)
	want := []bool{true, false, true, true, false}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("UniformGroups[%d] = %v, want %v", i, got[i], want[i])
		}
	}
	if got := UniformGroups(rewards, 1e-9); !got[4] {
		t.Errorf("with tol 1e-9 group 4 should be uniform")
	}
	keep := InformativeGroups(rewards, 0)
	if len(keep) != 2 || keep[0] != 1 || keep[1] != 4 {
		t.Errorf("InformativeGroups = %v, want [1 4]", keep)
	}
	// Uniform groups get zero advantage under every estimator (the reason to drop them).
	for _, est := range []Estimator{EstimatorGRPO, EstimatorRLOO} {
		adv, _ := Advantages([][]float64{{0.4, 0.4, 0.4}}, AdvantageConfig{Estimator: est})
		for _, a := range adv[0] {
			if a != 0 {
				t.Errorf("%s: uniform group advantage %v, want 0", est, a)
			}
		}
	}
}
