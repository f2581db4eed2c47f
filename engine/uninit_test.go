package engine_test

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"sort"
	"sync/atomic"
	"testing"

	"github.com/prolong-rl/prolong/engine"
	"github.com/prolong-rl/prolong/engine/cpu"
)

// countUninit is the CPU backend counting its AllocUninit calls (every other method, and so
// every optional interface, is the CPU backend's).
type countUninit struct {
	*cpu.Backend
	n atomic.Int64
}

func (c *countUninit) AllocUninit(shape ...int) *engine.Tensor {
	c.n.Add(1)
	return c.Backend.AllocUninit(shape...)
}

// uninitRun is what one run of the workload of TestAllocUninitPoison produced, each value as
// its bits, by name.
type uninitRun map[string][]uint32

func (r uninitRun) put(name string, v []float32) {
	b := make([]uint32, len(v))
	for i, x := range v {
		b[i] = math.Float32bits(x)
	}
	r[name] = b
}

func (r uninitRun) putInts(name string, v []int32) {
	b := make([]uint32, len(v))
	for i, x := range v {
		b[i] = uint32(x)
	}
	r[name] = b
}

// TestAllocUninitPoison runs scoring, generation (prefill, decode, top log-probs) and training
// (forward, a GRPO-style clipped policy loss with an entropy term in both head paths, the
// backward, AdamW; with and without recomputation; LoRA with dropout) on a CPU backend whose
// AllocUninit buffers are full of NaN (cpu.UninitNaN) and on one whose AllocUninit clears them
// like Alloc (cpu.UninitZero), and requires the same bits everywhere: log-probs, entropies,
// tokens, top log-probs, every gradient, every weight after the steps. A call site that reads an
// uninitialised buffer before writing it, or passes one to an op that adds into its output,
// turns results into NaN (or moves them), and this test fails.
func TestAllocUninitPoison(t *testing.T) {
	for _, name := range []string{"qwen2", "qwen3", "llama3"} {
		g := loadGolden(t, name)
		for _, v := range []struct {
			name      string
			recompute bool
			lora      bool
		}{{"full", false, false}, {"recompute", true, false}, {"lora", false, true}} {
			t.Run(name+"/"+v.name, func(t *testing.T) {
				run := func(fill cpu.UninitFill) (uninitRun, int64) {
					b := &countUninit{Backend: cpu.New(cpu.WithUninitFill(fill))}
					return uninitWorkload(t, g, b, v.recompute, v.lora), b.n.Load()
				}
				want, _ := run(cpu.UninitZero)
				got, n := run(cpu.UninitNaN)
				if n == 0 {
					t.Fatal("the engine made no AllocUninit call")
				}
				names := make([]string, 0, len(want))
				for k := range want {
					names = append(names, k)
				}
				sort.Strings(names)
				bad := 0
				for _, k := range names {
					w, gv := want[k], got[k]
					if len(w) != len(gv) {
						t.Errorf("%s: %d values with NaN-filled buffers, %d with zeroed ones", k, len(gv), len(w))
						bad++
						continue
					}
					for i := range w {
						if w[i] != gv[i] {
							t.Errorf("%s[%d]: %#08x (%g) with NaN-filled buffers, %#08x (%g) with zeroed ones",
								k, i, gv[i], math.Float32frombits(gv[i]), w[i], math.Float32frombits(w[i]))
							bad++
							break
						}
					}
				}
				t.Logf("%d AllocUninit calls; %d outputs compared, %d differ", n, len(names), bad)
			})
		}
	}
}

// uninitWorkload runs the workload of TestAllocUninitPoison on b and returns its results.
func uninitWorkload(t *testing.T, g *golden, b engine.Backend, recompute, lora bool) uninitRun {
	t.Helper()
	ctx := context.Background()
	out := uninitRun{}
	m, err := engine.NewModel(g.cfg, b, g.weights, engine.F32)
	if err != nil {
		t.Fatal(err)
	}
	V := int32(g.cfg.VocabSize)
	r := rand.New(rand.NewPCG(5, 6))
	batch := trainBatch(r, int(V), 9, 17, 5, 12)

	score := func(tag string) {
		res, err := m.Score(ctx, batch, 1.3)
		if err != nil {
			t.Fatal(err)
		}
		for i, s := range res {
			out.put(fmt.Sprintf("%s/score/%d/logp", tag, i), s.LogProbs)
			out.put(fmt.Sprintf("%s/score/%d/entropy", tag, i), s.Entropy)
		}
	}
	generate := func(tag string) {
		gen, err := engine.NewGenerator(m, engine.GeneratorOptions{})
		if err != nil {
			t.Fatal(err)
		}
		defer gen.Close()
		var reqs []engine.Request
		for i, s := range batch {
			// Sampled and greedy rows, some with top log-probs (a decode batch's rows gathered).
			p := engine.SamplingParams{N: 2, MaxNewTokens: 6, Temperature: 0.9, TopP: 0.95, Seed: uint64(i), TopLogProbs: 3 * (i % 2)}
			if i == 2 {
				p.Temperature, p.TopP = 0, 0
			}
			reqs = append(reqs, engine.Request{Prompt: s.Tokens[:s.Start+1], Params: p})
		}
		res, err := gen.Generate(ctx, reqs)
		if err != nil {
			t.Fatal(err)
		}
		for i, rr := range res {
			for j, s := range rr.Samples {
				k := fmt.Sprintf("%s/generate/%d.%d", tag, i, j)
				out.putInts(k+"/tokens", s.Tokens)
				out.put(k+"/logp", s.LogProbs)
				for n := range s.TopIDs {
					out.putInts(fmt.Sprintf("%s/top%d/ids", k, n), s.TopIDs[n])
					out.put(fmt.Sprintf("%s/top%d/logp", k, n), s.TopLogProbs[n])
				}
			}
		}
	}
	score("before")
	generate("before")

	opts := engine.TrainOptions{Recompute: recompute, MaxLogitRows: 7, Temperature: 1.3,
		Optimizer: engine.AdamWConfig{LR: 1e-2, WeightDecay: 0.01, ClipNorm: 1}}
	if lora {
		opts.LoRA = engine.LoRAConfig{Rank: 4, Alpha: 8, Dropout: 0.25, Seed: 3}
	}
	tr, err := engine.NewTrainer(m, opts)
	if err != nil {
		t.Fatal(err)
	}
	// The GRPO surrogate: -min(ρ·A, clip(ρ, 1-ε, 1+ε)·A) per token, ρ = exp(logp - old), with
	// an entropy bonus; through the two-pass head (ForwardBackward) and the one-pass head
	// (ForwardBackwardTokens).
	adv := randomCoefs(r, batch)
	old := randomCoefs(r, batch)
	for s := range old {
		for j := range old[s] {
			old[s][j] = -math.Log(float64(V)) + 0.3*old[s][j]
		}
	}
	loss := engine.TokenLoss{Entropy: true, Term: func(s, j int, logp, ent float64) (float64, float64, float64) {
		a, ratio := adv[s][j], math.Exp(logp-old[s][j])
		clipped := min(max(ratio, 0.8), 1.28) * a
		if clipped < ratio*a { // the clipped term is the min: no gradient through it
			return -clipped - 0.01*ent, 0, -0.01
		}
		return -ratio*a - 0.01*ent, -ratio * a, -0.01
	}}
	for step := range 2 {
		st, err := tr.ForwardBackward(ctx, batch, loss.LossFunc())
		if err != nil {
			t.Fatal(err)
		}
		st2, err := tr.ForwardBackwardTokens(ctx, batch, loss)
		if err != nil {
			t.Fatal(err)
		}
		for i := range st.LogProb {
			out.put(fmt.Sprintf("step%d/fb/%d/logp", step, i), f32s(st.LogProb[i]))
			out.put(fmt.Sprintf("step%d/fb/%d/entropy", step, i), f32s(st.Entropy[i]))
			out.put(fmt.Sprintf("step%d/fbt/%d/logp", step, i), f32s(st2.LogProb[i]))
		}
		out.put(fmt.Sprintf("step%d/loss", step), []float32{float32(st.Loss), float32(st2.Loss)})
		for _, n := range tr.TrainableNames() {
			gr, err := tr.Grad(n)
			if err != nil {
				t.Fatal(err)
			}
			out.put(fmt.Sprintf("step%d/grad/%s", step, n), gr)
		}
		if _, err := tr.Step(); err != nil {
			t.Fatal(err)
		}
	}
	ws := map[string]engine.HostTensor{}
	if lora {
		if ws, err = m.AdapterWeights(); err != nil {
			t.Fatal(err)
		}
	} else if ws, err = m.HostWeights(); err != nil {
		t.Fatal(err)
	}
	for n, w := range ws {
		out.put("weights/"+n, w.Data)
	}
	score("after")
	generate("after")
	return out
}

func f32s(v []float64) []float32 {
	o := make([]float32, len(v))
	for i, x := range v {
		o[i] = float32(x)
	}
	return o
}
