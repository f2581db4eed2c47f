package engine_test

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/prolong-rl/prolong/engine"
)

// weightedLoss is sum_i c_i logp_i + e_i H_i with fixed coefficients: a token-weighted
// log-prob objective with an entropy term.
func weightedLoss(c, e []float64) engine.RefLoss {
	return func(logp, ent []float64) (float64, []float64, []float64) {
		var l float64
		for i := range logp {
			l += c[i]*logp[i] + e[i]*ent[i]
		}
		return l, c, e
	}
}

// TestRefModelFiniteDifferences checks every weight tensor's gradient (a few entries each) of
// the float64 reference against central finite differences, for configs covering GQA, q/k/v
// bias, qk-norm, tied and untied heads and both RoPE scalings.
func TestRefModelFiniteDifferences(t *testing.T) {
	tests := []*engine.Config{
		{ModelType: "qwen2", VocabSize: 11, HiddenSize: 8, NumHiddenLayers: 2, NumAttentionHeads: 4, NumKeyValueHeads: 2,
			HeadDim: 2, IntermediateSize: 12, RMSNormEps: 1e-6, RopeTheta: 10000, MaxPositionEmbeddings: 64, AttentionBias: true},
		{ModelType: "qwen3", VocabSize: 9, HiddenSize: 8, NumHiddenLayers: 1, NumAttentionHeads: 2, NumKeyValueHeads: 1,
			HeadDim: 6, IntermediateSize: 10, RMSNormEps: 1e-6, RopeTheta: 1e6, MaxPositionEmbeddings: 64, QKNorm: true,
			TieWordEmbeddings: true, RopeScaling: &engine.RopeScaling{Type: "linear", Factor: 2}},
		{ModelType: "llama", VocabSize: 10, HiddenSize: 8, NumHiddenLayers: 1, NumAttentionHeads: 2, NumKeyValueHeads: 2,
			HeadDim: 4, IntermediateSize: 6, RMSNormEps: 1e-5, RopeTheta: 500000, MaxPositionEmbeddings: 64, TieWordEmbeddings: true,
			RopeScaling: &engine.RopeScaling{Type: "llama3", Factor: 8, LowFreqFactor: 1, HighFreqFactor: 4, OriginalMaxPositionEmbeddings: 8}},
		// yarn: its attention factor (0.1·ln 4 + 1) scales the rotation, forward and backward.
		{ModelType: "qwen2", VocabSize: 11, HiddenSize: 8, NumHiddenLayers: 1, NumAttentionHeads: 2, NumKeyValueHeads: 1,
			HeadDim: 8, IntermediateSize: 12, RMSNormEps: 1e-6, RopeTheta: 10000, MaxPositionEmbeddings: 64, AttentionBias: true,
			RopeScaling: &engine.RopeScaling{Type: "yarn", Factor: 4, OriginalMaxPositionEmbeddings: 16}},
	}
	for i, c := range tests {
		t.Run(fmt.Sprintf("%d-%s", i, c.ModelType), func(t *testing.T) {
			r, err := engine.NewRefModel(c, engine.RandomWeights(c, 5, 0.5))
			if err != nil {
				t.Fatal(err)
			}
			rng := rand.New(rand.NewPCG(7, 8))
			seqs := [][]int32{{1, 4, 2, 7, 3}, {5, 0}}
			pos := [][]int{{0, 2, 3}, {0, 1}}
			targets := [][]int32{{4, 7, 3}, {0, 8}}
			coef, ecoef := make([]float64, 5), make([]float64, 5)
			for i := range coef {
				coef[i], ecoef[i] = rng.NormFloat64(), rng.NormFloat64()
			}
			loss := weightedLoss(coef, ecoef)
			_, grads := r.ForwardBackward(seqs, pos, targets, loss)
			for _, name := range engine.WeightNames(c) {
				w := r.W[name]
				for trial := 0; trial < 3; trial++ {
					i := rng.IntN(len(w))
					if name == "model.embed_tokens.weight" {
						i = (1+trial)*c.HiddenSize + rng.IntN(c.HiddenSize) // a row that is used
					}
					old := w[i]
					const h = 1e-5
					w[i] = old + h
					lp, _ := r.ForwardBackward(seqs, pos, targets, loss)
					w[i] = old - h
					lm, _ := r.ForwardBackward(seqs, pos, targets, loss)
					w[i] = old
					fd := (lp - lm) / (2 * h)
					got := grads[name][i]
					if math.Abs(fd-got) > 1e-6*math.Max(1, math.Abs(fd)) {
						t.Errorf("%s[%d]: backward %.9g, finite difference %.9g", name, i, got, fd)
					}
				}
			}
		})
	}
}

// TestRefModelGolden checks the float64 reference itself against the PyTorch fixtures.
func TestRefModelGolden(t *testing.T) {
	for _, name := range goldenNames(t) {
		g := loadGolden(t, name)
		r, err := engine.NewRefModel(g.cfg, g.weights)
		if err != nil {
			t.Fatal(err)
		}
		for i, s := range g.seqs {
			got := r.Logits(s)
			for j, v := range got {
				if d := math.Abs(v - float64(g.logits[i][j])); d > 2e-5 {
					t.Fatalf("%s sequence %d logit %d: reference %g, PyTorch %g", name, i, j, v, g.logits[i][j])
				}
			}
		}
	}
}
