package grpo

import (
	"fmt"
	"math"
)

// Advantage estimators for outcome rewards. Every function here is pure: it reads rewards grouped
// per prompt (rewards[g][i] is the scalar reward of response i of prompt g) and returns a new
// slice of the same shape holding one advantage per response, which the trainer gives to every
// token of that response. The formulas follow verl's core_algos.py (compute_grpo_outcome_advantage,
// compute_rloo_outcome_advantage, compute_reinforce_plus_plus_baseline_outcome_advantage),
// including its conventions for groups of one response.

// Estimator names an advantage estimator; the strings are the ones verl's
// algorithm.adv_estimator uses.
type Estimator string

// The estimators Advantages knows.
const (
	// EstimatorGRPO is GRPO's group normalisation: (r - mean) / (std + eps), or r - mean
	// when AdvantageConfig.NoStdNorm is set (Dr. GRPO).
	EstimatorGRPO Estimator = "grpo"
	// EstimatorRLOO is the REINFORCE leave-one-out baseline: r_i - mean of the others.
	EstimatorRLOO Estimator = "rloo"
	// EstimatorReinforcePPBaseline is REINFORCE++ with a group-mean baseline followed by
	// whitening over the whole batch (ProRL v2).
	EstimatorReinforcePPBaseline Estimator = "reinforce_plus_plus_baseline"
)

// DefaultAdvantageEps is the epsilon added to the group standard deviation (verl's 1e-6).
const DefaultAdvantageEps = 1e-6

// whitenEps is the epsilon verl's masked_whiten adds to the variance.
const whitenEps = 1e-8

// AdvantageConfig selects and tunes an estimator for Advantages.
//
// Its knobs' flag names (tools/train), defaults and help are their tags (package grpo/knob).
type AdvantageConfig struct {
	// Estimator is the estimator to use; empty means EstimatorGRPO.
	Estimator Estimator `flag:"adv-estimator" default:"grpo" help:"advantage estimator: grpo, rloo or reinforce_plus_plus_baseline"`
	// Eps is added to the group standard deviation in GRPO; 0 means DefaultAdvantageEps.
	Eps float64
	// NoStdNorm drops the division by the group standard deviation in GRPO (Dr. GRPO).
	NoStdNorm bool `flag:"no-std-norm" help:"GRPO advantages without the division by the group's standard deviation (Dr. GRPO)"`
	// TokenCounts, used only by EstimatorReinforcePPBaseline, weights each response by its
	// number of response tokens in the batch whitening, as verl's token-level masked_whiten
	// does. Same shape as the rewards; nil weighs every response once.
	TokenCounts [][]int
}

// CheckKnobs reports an unknown Estimator, naming its flag (knob.Checker).
func (c *AdvantageConfig) CheckKnobs() error {
	switch c.Estimator {
	case "", EstimatorGRPO, EstimatorRLOO, EstimatorReinforcePPBaseline:
		return nil
	}
	return fmt.Errorf("--adv-estimator %q: want grpo, rloo or reinforce_plus_plus_baseline", c.Estimator)
}

// UnmarshalText sets e from an estimator's name.
func (e *Estimator) UnmarshalText(b []byte) error {
	switch v := Estimator(b); v {
	case EstimatorGRPO, EstimatorRLOO, EstimatorReinforcePPBaseline:
		*e = v
		return nil
	}
	return fmt.Errorf("grpo: unknown advantage estimator %q (want grpo, rloo or reinforce_plus_plus_baseline)", b)
}

// Advantages computes one advantage per response with the estimator cfg selects.
// It returns an error for an unknown estimator, a non-finite reward, or a TokenCounts
// slice whose shape differs from rewards.
func Advantages(rewards [][]float64, cfg AdvantageConfig) ([][]float64, error) {
	if err := checkRewards(rewards); err != nil {
		return nil, err
	}
	switch cfg.Estimator {
	case "", EstimatorGRPO:
		eps := cfg.Eps
		if eps == 0 {
			eps = DefaultAdvantageEps
		}
		return GRPOAdvantages(rewards, eps, !cfg.NoStdNorm), nil
	case EstimatorRLOO:
		return RLOOAdvantages(rewards), nil
	case EstimatorReinforcePPBaseline:
		return ReinforcePPBaselineAdvantages(rewards, cfg.TokenCounts)
	default:
		return nil, fmt.Errorf("grpo: unknown advantage estimator %q (want %q, %q or %q)",
			cfg.Estimator, EstimatorGRPO, EstimatorRLOO, EstimatorReinforcePPBaseline)
	}
}

func checkRewards(rewards [][]float64) error {
	for g, grp := range rewards {
		for i, r := range grp {
			if math.IsNaN(r) || math.IsInf(r, 0) {
				return fmt.Errorf("grpo: reward of group %d response %d is %v", g, i, r)
			}
		}
	}
	return nil
}

// groupMeanStd returns the mean and the unbiased (Bessel-corrected, as torch.std) standard
// deviation of xs, with verl's convention mean 0, std 1 for a group of one.
func groupMeanStd(xs []float64) (mean, std float64) {
	n := len(xs)
	if n <= 1 {
		return 0, 1
	}
	// Summing deviations from xs[0] makes the mean of equal values exact, so a uniform group
	// gets an advantage of exactly 0 rather than rounding noise divided by eps.
	for _, x := range xs {
		mean += x - xs[0]
	}
	mean = xs[0] + mean/float64(n)
	var ss float64
	for _, x := range xs {
		ss += (x - mean) * (x - mean)
	}
	return mean, math.Sqrt(ss / float64(n-1))
}

// GRPOAdvantages returns (r - mean(group)) / (std(group) + eps) for each response, std being
// the unbiased standard deviation; with normStd false it returns r - mean(group) (Dr. GRPO).
// A group of one response keeps its reward as its advantage (verl: mean 0, std 1).
func GRPOAdvantages(rewards [][]float64, eps float64, normStd bool) [][]float64 {
	out := make([][]float64, len(rewards))
	for g, grp := range rewards {
		mean, std := groupMeanStd(grp)
		out[g] = make([]float64, len(grp))
		for i, r := range grp {
			a := r - mean
			if normStd {
				a /= std + eps
			}
			out[g][i] = a
		}
	}
	return out
}

// RLOOAdvantages returns r_i minus the mean reward of the other responses of its group
// (the leave-one-out baseline). A group of one keeps its reward (verl's convention).
func RLOOAdvantages(rewards [][]float64) [][]float64 {
	out := make([][]float64, len(rewards))
	for g, grp := range rewards {
		n := len(grp)
		out[g] = make([]float64, n)
		if n == 1 {
			out[g][0] = grp[0]
			continue
		}
		// Deviations from grp[0] keep equal rewards exactly equal to their baseline.
		var sum float64
		for _, r := range grp {
			sum += r - grp[0]
		}
		for i, r := range grp {
			d := r - grp[0]
			out[g][i] = d - (sum-d)/float64(n-1)
		}
	}
	return out
}

// ReinforcePPBaselineAdvantages subtracts each group's mean reward (0 for a group of one), then
// whitens the results over the whole batch: (x - mean) / sqrt(var + 1e-8) with the unbiased
// variance. tokenCounts, when not nil, weights every response by its number of response tokens,
// which is what verl's masked_whiten over the token mask computes; a response with 0 tokens
// takes no part in the statistics and gets advantage 0. It returns an error when tokenCounts
// does not have the shape of rewards or holds a negative count.
func ReinforcePPBaselineAdvantages(rewards [][]float64, tokenCounts [][]int) ([][]float64, error) {
	if tokenCounts != nil {
		if len(tokenCounts) != len(rewards) {
			return nil, fmt.Errorf("grpo: TokenCounts has %d groups, rewards %d", len(tokenCounts), len(rewards))
		}
		for g := range rewards {
			if len(tokenCounts[g]) != len(rewards[g]) {
				return nil, fmt.Errorf("grpo: TokenCounts group %d has %d responses, rewards %d",
					g, len(tokenCounts[g]), len(rewards[g]))
			}
			for i, c := range tokenCounts[g] {
				if c < 0 {
					return nil, fmt.Errorf("grpo: TokenCounts group %d response %d is negative (%d)", g, i, c)
				}
			}
		}
	}
	weight := func(g, i int) float64 {
		if tokenCounts == nil {
			return 1
		}
		return float64(tokenCounts[g][i])
	}
	out := make([][]float64, len(rewards))
	var wsum, sum float64
	for g, grp := range rewards {
		mean, _ := groupMeanStd(grp)
		out[g] = make([]float64, len(grp))
		for i, r := range grp {
			out[g][i] = r - mean
			w := weight(g, i)
			wsum += w
			sum += w * out[g][i]
		}
	}
	if wsum == 0 {
		return out, nil
	}
	mean := sum / wsum
	var ss float64
	for g, grp := range out {
		for i, x := range grp {
			ss += weight(g, i) * (x - mean) * (x - mean)
		}
	}
	variance := ss / wsum
	if wsum > 1 {
		variance *= wsum / (wsum - 1) // Bessel's correction, as verl's masked_var
	}
	inv := 1 / math.Sqrt(variance+whitenEps)
	for g, grp := range out {
		for i, x := range grp {
			if weight(g, i) == 0 {
				grp[i] = 0
				continue
			}
			grp[i] = (x - mean) * inv
		}
		out[g] = grp
	}
	return out, nil
}

// UniformGroups reports, for each group, whether all its rewards are equal within tol (tol 0
// asks for exact equality). Such groups have zero advantage under every estimator here and
// carry no learning signal; dynamic sampling (DAPO, ProRL) drops them. An empty group counts
// as uniform.
func UniformGroups(rewards [][]float64, tol float64) []bool {
	out := make([]bool, len(rewards))
	for g, grp := range rewards {
		out[g] = true
		for _, r := range grp {
			if math.Abs(r-grp[0]) > tol {
				out[g] = false
				break
			}
		}
	}
	return out
}

// InformativeGroups returns the indices of the groups whose rewards are not all equal within
// tol: the groups dynamic sampling keeps.
func InformativeGroups(rewards [][]float64, tol float64) []int {
	var keep []int
	for g, uniform := range UniformGroups(rewards, tol) {
		if !uniform {
			keep = append(keep, g)
		}
	}
	return keep
}
