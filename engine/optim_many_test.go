package engine_test

import (
	"context"
	"fmt"
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

// adamWCall is one tensor's update as a backend was asked for it: the parameter's shape and
// the hyper-parameters.
type adamWCall struct {
	shape string
	h     engine.AdamWStep
}

// manyAdamW is the CPU backend with AdamWMany (AdamW per tensor, recorded), as the CUDA
// backend's one-launch update has it; perTensor records AdamW calls.
type manyAdamW struct {
	*cpu.Backend
	many   [][]adamWCall // per AdamWMany call
	single []adamWCall
}

func (b *manyAdamW) AdamWMany(ps, gs, ms, vs []*engine.Tensor, hs []engine.AdamWStep) {
	var calls []adamWCall
	for i, p := range ps {
		calls = append(calls, adamWCall{fmt.Sprint(p.Shape), hs[i]})
		b.Backend.AdamW(p, gs[i], ms[i], vs[i], hs[i])
	}
	b.many = append(b.many, calls)
}

func (b *manyAdamW) AdamW(p, g, m, v *engine.Tensor, h engine.AdamWStep) {
	b.single = append(b.single, adamWCall{fmt.Sprint(p.Shape), h})
	b.Backend.AdamW(p, g, m, v, h)
}

// perTensorAdamW is the CPU backend recording its AdamW calls (it has no AdamWMany).
type perTensorAdamW struct {
	*cpu.Backend
	single []adamWCall
}

func (b *perTensorAdamW) AdamW(p, g, m, v *engine.Tensor, h engine.AdamWStep) {
	b.single = append(b.single, adamWCall{fmt.Sprint(p.Shape), h})
	b.Backend.AdamW(p, g, m, v, h)
}

// manyAdamWOff is manyAdamW whose AdamWManySwitch keeps AdamWMany off.
type manyAdamWOff struct{ *manyAdamW }

func (manyAdamWOff) FusesAdamWMany() bool { return false }

// TestStepAdamWInOneCall: where the backend has AdamWMany (and its switch, if any, is on), each Step updates every trainable
// weight through one AdamWMany call and no AdamW, with the tensors and per-tensor
// hyper-parameters (no decay on 1-D weights) that AdamW per tensor gets on a backend without
// it, and the weights after two steps equal that backend's bit for bit. A switch that is off
// keeps AdamW per tensor.
func TestStepAdamWInOneCall(t *testing.T) {
	g := loadGolden(t, "qwen2")
	run := func(b engine.TrainBackend) map[string]engine.HostTensor {
		m, err := engine.NewModel(g.cfg, b, g.weights, engine.F32)
		if err != nil {
			t.Fatal(err)
		}
		tr, err := engine.NewTrainer(m, engine.TrainOptions{Optimizer: engine.AdamWConfig{LR: 1e-2, WeightDecay: 0.1, NoDecay1D: true, ClipNorm: 0.5}})
		if err != nil {
			t.Fatal(err)
		}
		r := rand.New(rand.NewPCG(5, 5))
		for range 2 {
			if _, err := tr.ForwardBackward(context.Background(), trainBatch(r, g.cfg.VocabSize, 9, 5), engine.CrossEntropy(0)); err != nil {
				t.Fatal(err)
			}
			if _, err := tr.Step(); err != nil {
				t.Fatal(err)
			}
		}
		w, err := m.HostWeights()
		if err != nil {
			t.Fatal(err)
		}
		return w
	}
	mb, pb := &manyAdamW{Backend: cpu.New()}, &perTensorAdamW{Backend: cpu.New()}
	gw, ww := run(mb), run(pb)
	if len(mb.many) != 2 || len(mb.single) != 0 {
		t.Fatalf("two steps called AdamWMany %d times and AdamW %d times, want 2 and 0", len(mb.many), len(mb.single))
	}
	if n := len(pb.single) / 2; len(mb.many[0]) != n || len(mb.many[1]) != n || n == 0 {
		t.Fatalf("AdamWMany calls of %d and %d tensors, want %d (AdamW calls per step without it)", len(mb.many[0]), len(mb.many[1]), n)
	}
	decayed, undecayed := 0, 0
	for i, c := range slices.Concat(mb.many...) {
		if c != pb.single[i] {
			t.Errorf("update %d: AdamWMany got %+v, AdamW per tensor %+v", i, c, pb.single[i])
		}
		if c.h.WeightDecay == 0 {
			undecayed++
		} else {
			decayed++
		}
	}
	if decayed == 0 || undecayed == 0 {
		t.Errorf("%d updates with weight decay, %d without: want both (the per-tensor decay must reach AdamWMany)", decayed, undecayed)
	}
	for name, w := range ww {
		if !slices.Equal(gw[name].Data, w.Data) {
			t.Errorf("%s differs after two steps through AdamWMany", name)
		}
	}
	off := manyAdamWOff{&manyAdamW{Backend: cpu.New()}}
	run(off)
	if len(off.many) != 0 || !slices.Equal(off.single, pb.single) {
		t.Errorf("with FusesAdamWMany false: %d AdamWMany calls and %d AdamW calls, want 0 and AdamW per tensor as without AdamWMany (%d)",
			len(off.many), len(off.single), len(pb.single))
	}
}
