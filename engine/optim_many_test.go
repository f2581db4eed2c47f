package engine_test

import (
	"context"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/prolong-rl/prolong/engine"
	"github.com/prolong-rl/prolong/engine/cpu"
)

// manySums is the CPU backend with SumSquaresMany (each tensor's SumSquares, counted), as a
// GPU backend that reduces the gradient norm in one round trip has it.
type manySums struct {
	*cpu.Backend
	many, single int
}

func (b *manySums) SumSquaresMany(xs []*engine.Tensor) ([]float64, error) {
	b.many++
	out := make([]float64, len(xs))
	for i, x := range xs {
		s, err := b.Backend.SumSquares(x)
		if err != nil {
			return nil, err
		}
		out[i] = s
	}
	return out, nil
}

func (b *manySums) SumSquares(x *engine.Tensor) (float64, error) {
	b.single++
	return b.Backend.SumSquares(x)
}

// TestStepNormInOneCall: Step takes the gradient norm through SumSquaresMany, once, where the
// backend has it, and the step's norm and weights equal those of a backend without it.
func TestStepNormInOneCall(t *testing.T) {
	g := loadGolden(t, "qwen2")
	run := func(b engine.TrainBackend) (engine.OptStats, map[string]engine.HostTensor) {
		m, err := engine.NewModel(g.cfg, b, g.weights, engine.F32)
		if err != nil {
			t.Fatal(err)
		}
		tr, err := engine.NewTrainer(m, engine.TrainOptions{Optimizer: engine.AdamWConfig{LR: 1e-2, ClipNorm: 0.5}})
		if err != nil {
			t.Fatal(err)
		}
		batch := trainBatch(rand.New(rand.NewPCG(4, 4)), g.cfg.VocabSize, 9, 5)
		if _, err := tr.ForwardBackward(context.Background(), batch, engine.CrossEntropy(0)); err != nil {
			t.Fatal(err)
		}
		st, err := tr.Step()
		if err != nil {
			t.Fatal(err)
		}
		w, err := m.HostWeights()
		if err != nil {
			t.Fatal(err)
		}
		return st, w
	}
	mb := &manySums{Backend: cpu.New()}
	got, gw := run(mb)
	want, ww := run(cpu.New())
	if mb.many != 1 || mb.single != 0 {
		t.Errorf("Step called SumSquaresMany %d times and SumSquares %d times, want 1 and 0", mb.many, mb.single)
	}
	if got.GradNorm != want.GradNorm {
		t.Errorf("gradient norm %v through SumSquaresMany, %v per tensor", got.GradNorm, want.GradNorm)
	}
	for name, w := range ww {
		if !slices.Equal(gw[name].Data, w.Data) {
			t.Errorf("%s differs after the step", name)
		}
	}
}
