package modelio

import (
	"path/filepath"
	"reflect"
	"testing"

	"github.com/prolong-rl/prolong/checkpoints"
	"github.com/prolong-rl/prolong/tools/internal/hffixture"
)

// TestHFFixtures loads every fixture model in both config.json forms (transformers 5 and 4):
// the same config either way, logits within the goldens' tolerance of PyTorch's, and the
// greedy continuations exactly (tied models included: their files hold no lm_head.weight).
func TestHFFixtures(t *testing.T) {
	for _, name := range hffixture.Names {
		t.Run(name, func(t *testing.T) {
			f, err := hffixture.Load(name)
			if err != nil {
				t.Fatal(err)
			}
			var first *Model
			for _, form := range hffixture.Forms {
				dir := filepath.Join(t.TempDir(), name)
				if err := hffixture.WriteDir(dir, name, form); err != nil {
					t.Fatal(err)
				}
				m, err := Load(dir, Options{Step: checkpoints.Latest})
				if err != nil {
					t.Fatalf("%s: %v", form, err)
				}
				if first == nil {
					first = m
				} else if !reflect.DeepEqual(first.Config, m.Config) {
					t.Errorf("tf4 config %+v differs from tf5 config %+v", m.Config, first.Config)
				}
				for i, seq := range f.Seqs {
					got, err := EngineLogits(m.Config, m.Weights, seq)
					if err != nil {
						t.Fatal(err)
					}
					if d := hffixture.MaxAbsDiff(got, f.Logits[i]); d > hffixture.LogitsTolerance {
						t.Errorf("%s: sequence %d: max |logit diff| %.3g", form, i, d)
					}
				}
				for i, p := range f.Prompts {
					seq := append([]int32(nil), p...)
					for range f.MaxNewTokens {
						logits, err := EngineLogits(m.Config, m.Weights, seq)
						if err != nil {
							t.Fatal(err)
						}
						V := m.Config.VocabSize
						last, best := logits[len(logits)-V:], 0
						for j, v := range last {
							if v > last[best] {
								best = j
							}
						}
						seq = append(seq, int32(best))
					}
					if got := seq[len(p):]; !reflect.DeepEqual(got, f.Continuations[i]) {
						t.Errorf("%s: greedy %v, PyTorch %v", form, got, f.Continuations[i])
					}
				}
			}
		})
	}
}
