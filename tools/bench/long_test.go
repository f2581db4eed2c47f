package main

import (
	"math"
	"strings"
	"testing"

	"github.com/prolong-rl/prolong/engine"
)

// TestLMHeadLosses: the bench's two heads see the same loss: the one-pass head's per-token
// terms add up to the two-pass head's loss with the same derivatives, for cross-entropy and
// for the GRPO loss; an unknown loss is refused by its flag.
func TestLMHeadLosses(t *testing.T) {
	c := &engine.Config{VocabSize: 151936}
	seqs := trainBatch(c, 3, 20)
	for _, loss := range []string{"ce", "grpo"} {
		onePass, twoPass, err := lmHeadLosses(loss, seqs)
		if err != nil {
			t.Fatal(err)
		}
		var logp, ent [][]float64
		for i, s := range seqs {
			var l, e []float64
			for j := s.Start; j < len(s.Tokens); j++ {
				l = append(l, -12+0.8*math.Sin(float64(3*i+j)))
				e = append(e, 5+math.Cos(float64(j)))
			}
			logp, ent = append(logp, l), append(ent, e)
		}
		want, dl, _, err := twoPass(logp, ent)
		if err != nil {
			t.Fatalf("%s: %v", loss, err)
		}
		tl, err := onePass()
		if err != nil {
			t.Fatalf("%s: %v", loss, err)
		}
		var got float64
		for i := range logp {
			for j := range logp[i] {
				v, d, _ := tl.Term(i, j, logp[i][j], ent[i][j])
				got += v
				if math.Abs(d-dl[i][j]) > 1e-12 {
					t.Errorf("%s: dlogp[%d][%d] = %v, two-pass %v", loss, i, j, d, dl[i][j])
				}
			}
		}
		if math.Abs(got-want) > 1e-9*math.Abs(want) {
			t.Errorf("%s: one-pass loss %v, two-pass %v", loss, got, want)
		}
	}
	if _, _, err := lmHeadLosses("sft", seqs); err == nil || !strings.Contains(err.Error(), "--lm-head-loss") {
		t.Errorf("unknown loss: %v", err)
	}
}
