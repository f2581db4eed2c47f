package engine

import (
	"math"
	"math/rand/v2"
	"sort"
	"testing"
)

// exactDist is the reference sampling distribution, written the obvious way: softmax at the
// temperature, sort all tokens, keep the top k, then the shortest prefix reaching mass top_p,
// renormalise.
func exactDist(logits []float32, r SampleRow) []float64 {
	v := len(logits)
	p := make([]float64, v)
	var z float64
	for i, l := range logits {
		p[i] = math.Exp(float64(l) / float64(r.Temperature))
		z += p[i]
	}
	order := make([]int, v)
	for i := range order {
		order[i] = i
	}
	sort.SliceStable(order, func(a, b int) bool { return p[order[a]] > p[order[b]] })
	keep := v
	if r.TopK > 0 && r.TopK < v {
		keep = r.TopK
	}
	if r.TopP > 0 && r.TopP < 1 {
		var mass float64
		for _, i := range order[:keep] {
			mass += p[i]
		}
		var c float64
		for j, i := range order[:keep] {
			c += p[i]
			if c >= float64(r.TopP)*mass {
				keep = j + 1
				break
			}
		}
	}
	out := make([]float64, v)
	var s float64
	for _, i := range order[:keep] {
		s += p[i]
	}
	for _, i := range order[:keep] {
		out[i] = p[i] / s
	}
	return out
}

// TestSamplingDistribution draws many tokens with top-k / top-p / temperature and compares the
// frequencies with the exact distribution (chi-square), and each returned log-prob with it.
func TestSamplingDistribution(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	logits := make([]float32, 300)
	for i := range logits {
		logits[i] = float32(rng.NormFloat64() * 2)
	}
	tests := []SampleRow{
		{Temperature: 1},
		{Temperature: 0.7, TopK: 20},
		{Temperature: 1.2, TopP: 0.9},
		{Temperature: 1, TopK: 40, TopP: 0.8},
		{Temperature: 0.5, TopP: 0.5},
		{Temperature: 2, TopK: 1},
	}
	const draws = 200000
	for _, tt := range tests {
		want := exactDist(logits, tt)
		counts := make([]int, len(logits))
		for d := 0; d < draws; d++ {
			tt.U = rng.Float64()
			id, lp := SampleLogits(logits, tt)
			if want[id] == 0 {
				t.Fatalf("%+v: drew token %d outside the kept set", tt, id)
			}
			if math.Abs(float64(lp)-math.Log(want[id])) > 1e-5 {
				t.Fatalf("%+v: log-prob %g, exact %g", tt, lp, math.Log(want[id]))
			}
			counts[id]++
		}
		// chi-square over tokens with expected count >= 5, the rest pooled.
		var chi2, pooledE, pooledO float64
		dof := -1
		for i, p := range want {
			e := p * draws
			if e < 5 {
				pooledE += e
				pooledO += float64(counts[i])
				continue
			}
			chi2 += (float64(counts[i]) - e) * (float64(counts[i]) - e) / e
			dof++
		}
		if pooledE >= 5 {
			chi2 += (pooledO - pooledE) * (pooledO - pooledE) / pooledE
			dof++
		}
		// 99.99th percentile of chi-square ~ dof + 3.72*sqrt(2 dof) + 8 (Wilson-Hilferty bound, loose).
		limit := float64(dof) + 3.72*math.Sqrt(2*float64(max(dof, 1))) + 8
		if chi2 > limit {
			t.Errorf("%+v: chi2 = %.1f over %d dof (limit %.1f)", tt, chi2, dof, limit)
		}
	}
}

// TestGreedyAndLogProbs checks greedy picks and the log-prob/entropy helper against values
// worked by hand for logits [0, ln 2, ln 3]/… : softmax = [1/6, 2/6, 3/6].
func TestGreedyAndLogProbs(t *testing.T) {
	l := []float32{0, float32(math.Log(2)), float32(math.Log(3))}
	id, lp := SampleLogits(l, SampleRow{})
	if id != 2 || math.Abs(float64(lp)-math.Log(0.5)) > 1e-6 {
		t.Errorf("greedy: %d %g", id, lp)
	}
	lp, ent := LogProbEntropy(l, 0, 1)
	wantEnt := -(1.0/6*math.Log(1.0/6) + 2.0/6*math.Log(2.0/6) + 3.0/6*math.Log(3.0/6))
	if math.Abs(float64(lp)-math.Log(1.0/6)) > 1e-6 || math.Abs(float64(ent)-wantEnt) > 1e-6 {
		t.Errorf("logprob %g entropy %g, want %g %g", lp, ent, math.Log(1.0/6), wantEnt)
	}
	// temperature 0.5 squares the probabilities: [1, 4, 9]/14.
	lp, _ = LogProbEntropy(l, 1, 0.5)
	if math.Abs(float64(lp)-math.Log(4.0/14)) > 1e-6 {
		t.Errorf("tempered logprob %g, want %g", lp, math.Log(4.0/14))
	}
	// U picks by inverse CDF in id order: with [1/6, 2/6, 3/6], U=0.4 lands on id 1.
	if id, _ := SampleLogits(l, SampleRow{Temperature: 1, U: 0.4}); id != 1 {
		t.Errorf("inverse CDF picked %d, want 1", id)
	}
}

// TestSamplingExpsBits: with the row's exponentials from kern.Exps, the sampler draws the same
// token with the same log-prob bits as an inverse CDF over math.Exp's values computed here one
// by one, and LogProbEntropy gives the bits of the same formulas over math.Exp (rows with and
// without tokens far below the maximum, where math.Exp leaves its fast path).
func TestSamplingExpsBits(t *testing.T) {
	rng := rand.New(rand.NewPCG(9, 10))
	for row := 0; row < 200; row++ {
		logits := make([]float32, 1+rng.IntN(3000))
		for i := range logits {
			logits[i] = float32(rng.NormFloat64() * 4)
			if row%5 == 0 && i%7 == 0 {
				logits[i] = -1e4 // e^(z - max) underflows
			}
		}
		temp := float32(0.3 + rng.Float64())
		inv := 1 / float64(temp)
		m := math.Inf(-1)
		for _, l := range logits {
			m = max(m, float64(l)*inv)
		}
		p, zs := make([]float64, len(logits)), make([]float64, len(logits))
		var total, sz float64
		for i, l := range logits {
			z := float64(l)*inv - m
			zs[i] = z
			p[i] = math.Exp(z)
			total += p[i]
			sz += p[i] * z
		}
		u := rng.Float64()
		want, c := int32(len(p)-1), 0.0
		for i, e := range p {
			if c += e; u*total < c {
				want = int32(i)
				break
			}
		}
		id, lp := SampleLogits(logits, SampleRow{Temperature: temp, U: u})
		wantLp := float32(zs[want] - math.Log(total))
		if id != want || math.Float32bits(lp) != math.Float32bits(wantLp) {
			t.Fatalf("row %d: drew %d (log-prob %v), math.Exp's inverse CDF %d (%v)", row, id, lp, want, wantLp)
		}
		lse := math.Log(total)
		target := rng.IntN(len(logits))
		gotLp, gotEnt := LogProbEntropy(logits, target, temp)
		if wl, we := float32(float64(logits[target])*inv-m-lse), float32(lse-sz/total); math.Float32bits(gotLp) != math.Float32bits(wl) || math.Float32bits(gotEnt) != math.Float32bits(we) {
			t.Fatalf("row %d: LogProbEntropy %v %v, with math.Exp %v %v", row, gotLp, gotEnt, wl, we)
		}
	}
}

// TestSampledLogProbIsTrainers: without top-k and top-p the sampler's log-prob of the token it
// draws is LogProbEntropy's bits at the same temperature — the value the trainer recomputes —
// so that rollouts on the current weights carry no rollout/trainer mismatch at all. Rows with
// one dominant logit make the drawn token's log-prob small (near 0), where float32's spacing is
// fine enough that a float64 exp-then-log round trip (log(e^z / s) instead of z - log s) lands
// on another float32 in a measurable share of rows.
func TestSampledLogProbIsTrainers(t *testing.T) {
	rng := rand.New(rand.NewPCG(11, 12))
	for row := 0; row < 20000; row++ {
		logits := make([]float32, 2+rng.IntN(64))
		for i := range logits {
			logits[i] = float32(rng.NormFloat64())
		}
		logits[rng.IntN(len(logits))] += float32(6 + 10*rng.Float64()) // p of the top token near 1
		temp := float32(0.5 + rng.Float64())
		for _, r := range []SampleRow{{Temperature: temp, U: rng.Float64()}, {Temperature: temp, TopP: 1, U: rng.Float64()}} {
			id, lp := SampleLogits(logits, r)
			want, _ := LogProbEntropy(logits, int(id), temp)
			if math.Float32bits(lp) != math.Float32bits(want) {
				t.Fatalf("row %d (%d logits, temperature %v): drew %d with log-prob %v (%#x), LogProbEntropy %v (%#x)",
					row, len(logits), temp, id, lp, math.Float32bits(lp), want, math.Float32bits(want))
			}
		}
	}
}
