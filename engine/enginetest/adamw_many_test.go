package enginetest

import (
	"regexp"
	"slices"
	"testing"

	"github.com/prolong-rl/prolong/engine"
	"github.com/prolong-rl/prolong/engine/cpu"
)

// adamWManyLoop is the CPU backend with AdamWMany as AdamW per tensor: right by construction.
type adamWManyLoop struct{ *cpu.Backend }

func (b adamWManyLoop) AdamWMany(ps, gs, ms, vs []*engine.Tensor, hs []engine.AdamWStep) {
	for i := range ps {
		b.AdamW(ps[i], gs[i], ms[i], vs[i], hs[i])
	}
}

// adamWManyRotated gives each tensor the next one's hyper-parameters (a descriptor table off by
// one).
type adamWManyRotated struct{ *cpu.Backend }

func (b adamWManyRotated) AdamWMany(ps, gs, ms, vs []*engine.Tensor, hs []engine.AdamWStep) {
	for i := range ps {
		b.AdamW(ps[i], gs[i], ms[i], vs[i], hs[(i+1)%len(hs)])
	}
}

// adamWManySkipsLast leaves the last tensor alone (a chunk count one short).
type adamWManySkipsLast struct{ *cpu.Backend }

func (b adamWManySkipsLast) AdamWMany(ps, gs, ms, vs []*engine.Tensor, hs []engine.AdamWStep) {
	for i := range ps[:len(ps)-1] {
		b.AdamW(ps[i], gs[i], ms[i], vs[i], hs[i])
	}
}

// TestAdamWManyCase: the AdamWMany case passes a backend whose AdamWMany is AdamW per tensor,
// and catches one that mixes up the tensors' hyper-parameters (every part fails but the zeroed
// gradients) or skips the last tensor (its parts, its gradient left unzeroed, and the matmul
// with it fail); a backend without AdamWMany passes as
// "absent".
func TestAdamWManyCase(t *testing.T) {
	re := regexp.MustCompile(`^AdamWMany/`)
	for _, tc := range []struct {
		name string
		b    engine.TrainBackend
		fail []string // the failing results' names after the case's
	}{
		{"loop", adamWManyLoop{cpu.New()}, nil},
		{"rotated", adamWManyRotated{cpu.New()}, []string{"dp0", "dp0/as-AdamW", "m0", "m0/as-AdamW", "v0", "v0/as-AdamW",
			"dp1", "dp1/as-AdamW", "m1", "m1/as-AdamW", "v1", "v1/as-AdamW", "dp2", "dp2/as-AdamW", "m2", "m2/as-AdamW", "v2", "v2/as-AdamW",
			"dp3", "dp3/as-AdamW", "m3", "m3/as-AdamW", "v3", "v3/as-AdamW", "matmul", "matmul/as-AdamW"}},
		{"skips-last", adamWManySkipsLast{cpu.New()}, []string{"dp3", "dp3/as-AdamW", "m3", "m3/as-AdamW", "v3", "v3/as-AdamW",
			"g3", "g3/as-AdamW", "matmul", "matmul/as-AdamW"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res := Check(tc.b, Options{Cases: re, Short: true})
			if len(res) != 34 {
				t.Fatalf("%d results, want 34 (parameter change, m, v and the zeroed gradient of 4 tensors and a matmul; each against the reference and against AdamW per tensor): %v", len(res), res)
			}
			var failed []string
			for _, r := range res {
				if !r.Pass {
					failed = append(failed, r.Name[len("AdamWMany/n=[1,1000,70001,129x67]/3steps/"):])
				}
			}
			if !slices.Equal(failed, tc.fail) {
				t.Errorf("failing results %v, want %v", failed, tc.fail)
			}
		})
	}
	res := Check(cpu.New(), Options{Cases: re, Short: true})
	if len(res) != 1 || !res[0].Pass || res[0].Name != "AdamWMany/n=[1,1000,70001,129x67]/3steps/absent" {
		t.Errorf("without AdamWMany: %v, want one passing absent result", res)
	}
}
