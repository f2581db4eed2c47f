package engine_test

import (
	"fmt"
	"math"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"

	"github.com/prolong-rl/prolong/engine"
	"github.com/prolong-rl/prolong/engine/dist"
)

// f32Comm adapts a dist.Comm to engine.ShardComm (host fp32 buffers).
type f32Comm struct{ dist.Comm }

func (c f32Comm) ReduceScatter(send, recv []float32) error {
	return c.Comm.ReduceScatter(dist.HostF32(send), dist.HostF32(recv))
}

func (c f32Comm) AllGather(send, recv []float32) error {
	return c.Comm.AllGather(dist.HostF32(send), dist.HostF32(recv))
}

// TestShardPlan: an even split, the last shard short (padded) or empty.
func TestShardPlan(t *testing.T) {
	for _, c := range []struct {
		total, ranks, n int
		ranges          [][2]int
	}{
		{10, 1, 10, [][2]int{{0, 10}}},
		{10, 2, 5, [][2]int{{0, 5}, {5, 10}}},
		{10, 3, 4, [][2]int{{0, 4}, {4, 8}, {8, 10}}},
		{10, 4, 3, [][2]int{{0, 3}, {3, 6}, {6, 9}, {9, 10}}},
		{2, 3, 1, [][2]int{{0, 1}, {1, 2}, {2, 2}}},
	} {
		p := engine.NewShardPlan(c.total, c.ranks)
		if p.N != c.n {
			t.Errorf("%d over %d: shard length %d, want %d", c.total, c.ranks, p.N, c.n)
		}
		for r, want := range c.ranges {
			if lo, hi := p.Range(r); lo != want[0] || hi != want[1] {
				t.Errorf("%d over %d: rank %d owns [%d, %d), want %v", c.total, c.ranks, r, lo, hi, want)
			}
		}
	}
}

// TestShardedAdamW runs two AdamW steps (the first unclipped, the second clipped, weight decay
// off the 1-D weights) on N = 1, 2, 3 ranks of the local communicator, each rank with its own
// gradients, the optimizer sharded, against
//   - the unsharded Step of one trainer given the ranks' gradients summed (in rank order, as
//     the communicator sums them): weights and moments equal to 1e-7 relative (each weight's
//     elements are updated by the same AdamW kernel on the same values, so in practice
//     exactly), the same gradient norm to 1e-12;
//   - AdamW worked in float64 in the test (torch's formulas: clip_grad_norm_, then decoupled
//     decay, bias-corrected moments): every weight to 2e-6 absolute.
//
// Every rank ends with the same weights, bit for bit; each holds only its shard's moments.
func TestShardedAdamW(t *testing.T) {
	g := loadGolden(t, "qwen2")
	opts := engine.TrainOptions{Optimizer: engine.AdamWConfig{LR: 1e-2, Beta1: 0.9, Beta2: 0.95, Eps: 1e-8, WeightDecay: 0.1, NoDecay1D: true, ClipNorm: 3}}
	for _, ranks := range []int{1, 2, 3} {
		t.Run(fmt.Sprintf("ranks=%d", ranks), func(t *testing.T) {
			ref := newTrainer(t, g.cfg, g.weights, opts)
			names := ref.TrainableNames()
			shape := map[string][]int{}
			total := 0
			for _, n := range names {
				shape[n] = g.weights[n].Shape
				total += len(g.weights[n].Data)
			}
			comms := dist.NewLocalGroup(ranks, dist.Options{})
			trs := make([]*engine.Trainer, ranks)
			for r := range trs {
				if r%2 == 1 { // sharded from the start
					o := opts
					o.Shard = f32Comm{comms[r]}
					trs[r] = newTrainer(t, g.cfg, g.weights, o)
					continue
				}
				trs[r] = newTrainer(t, g.cfg, g.weights, opts) // sharded after
				if err := trs[r].ShardOptimizer(f32Comm{comms[r]}); err != nil {
					t.Fatal(err)
				}
			}
			// The float64 oracle's state, flat in TrainableNames order.
			p64, m64, v64 := make([]float64, 0, total), make([]float64, total), make([]float64, total)
			decay := make([]bool, 0, total)
			for _, n := range names {
				for _, x := range g.weights[n].Data {
					p64 = append(p64, float64(x))
					decay = append(decay, len(shape[n]) != 1)
				}
			}
			rng := rand.New(rand.NewPCG(32, 4))
			for step, scale := range []float64{1e-3, 1} { // step 1: norm below the clip, step 2: above
				grads := make([][]float32, ranks) // flat, per rank
				sum := make([]float32, total)
				for r := range grads {
					grads[r] = make([]float32, total)
					for i := range grads[r] {
						grads[r][i] = float32(rng.NormFloat64() * scale)
						sum[i] += grads[r][i]
					}
				}
				setGrads(t, ref, sum)
				for r := range trs {
					setGrads(t, trs[r], grads[r])
				}
				want, err := ref.Step()
				if err != nil {
					t.Fatal(err)
				}
				got := make([]engine.OptStats, ranks)
				errs := make([]error, ranks)
				var wg sync.WaitGroup
				for r := range trs {
					wg.Add(1)
					go func() { defer wg.Done(); got[r], errs[r] = trs[r].Step() }()
				}
				wg.Wait()
				for r := range trs {
					if errs[r] != nil {
						t.Fatalf("rank %d: %v", r, errs[r])
					}
					if got[r].Step != want.Step || got[r].LR != want.LR || math.Abs(got[r].GradNorm-want.GradNorm) > 1e-12*want.GradNorm {
						t.Errorf("step %d rank %d: %+v, unsharded %+v", step+1, r, got[r], want)
					}
				}
				// The oracle.
				var ss float64
				for _, x := range sum {
					ss += float64(x) * float64(x)
				}
				norm := math.Sqrt(ss)
				if math.Abs(norm-want.GradNorm) > 1e-9*norm {
					t.Errorf("step %d: gradient norm %.12g, worked %.12g", step+1, want.GradNorm, norm)
				}
				clip := 1.0
				if c := opts.Optimizer.ClipNorm / (norm + 1e-6); c < 1 {
					clip = c
				}
				if (step == 0) != (clip == 1) {
					t.Fatalf("step %d: clip factor %g: the test meant step 1 unclipped, step 2 clipped", step+1, clip)
				}
				o := opts.Optimizer
				bc1, bc2 := 1-math.Pow(o.Beta1, float64(step+1)), 1-math.Pow(o.Beta2, float64(step+1))
				for i := range p64 {
					gi := float64(sum[i]) * clip
					m64[i] = o.Beta1*m64[i] + (1-o.Beta1)*gi
					v64[i] = o.Beta2*v64[i] + (1-o.Beta2)*gi*gi
					if decay[i] {
						p64[i] *= 1 - o.LR*o.WeightDecay
					}
					p64[i] -= o.LR * (m64[i] / bc1) / (math.Sqrt(v64[i]/bc2) + o.Eps)
				}
				refW := flatWeights(t, ref, names)
				var exact, worst int
				var worstRel float64
				for r := range trs {
					w := flatWeights(t, trs[r], names)
					for i := range w {
						if w[i] == refW[i] {
							exact++
						} else if rel := math.Abs(float64(w[i]-refW[i])) / math.Abs(float64(refW[i])); rel > worstRel {
							worst, worstRel = i, rel
						}
						if d := math.Abs(float64(w[i]) - p64[i]); d > 2e-6 {
							t.Fatalf("step %d rank %d: weight %d = %.9g, float64 AdamW %.9g", step+1, r, i, w[i], p64[i])
						}
					}
					if worstRel > 1e-7 {
						t.Errorf("step %d rank %d: weight %d = %.9g, unsharded %.9g (relative %.2g)", step+1, r, worst, w[worst], refW[worst], worstRel)
					}
					if r > 0 {
						w0 := flatWeights(t, trs[0], names)
						for i := range w {
							if math.Float32bits(w[i]) != math.Float32bits(w0[i]) {
								t.Fatalf("step %d: rank %d's weight %d %v differs from rank 0's %v", step+1, r, i, w[i], w0[i])
							}
						}
					}
				}
				t.Logf("step %d: %d of %d weights (all ranks) equal to the unsharded step's bit for bit; gradient norm %.6g, clip factor %.6g", step+1, exact, ranks*total, norm, clip)
			}
			// Moments: each rank's shard is its slice of the unsharded state.
			full, err := ref.OptimizerState()
			if err != nil {
				t.Fatal(err)
			}
			var fm, fv []float32
			for _, n := range names {
				fm = append(fm, full.M[n].Data...)
				fv = append(fv, full.V[n].Data...)
			}
			plan := engine.NewShardPlan(total, ranks)
			for r, tr := range trs {
				sh, err := tr.OptimizerShard()
				if err != nil {
					t.Fatal(err)
				}
				lo, hi := plan.Range(r)
				if sh.Lo != lo || sh.Hi != hi || sh.Total != total || sh.Ranks != ranks || sh.Rank != r || sh.Step != 2 || len(sh.M) != hi-lo {
					t.Fatalf("rank %d's shard: [%d, %d) of %d, %d of %d ranks, step %d, %d moments; want [%d, %d) of %d", r, sh.Lo, sh.Hi, sh.Total, sh.Rank, sh.Ranks, sh.Step, len(sh.M), lo, hi, total)
				}
				for i := range sh.M {
					if !close32(sh.M[i], fm[lo+i]) || !close32(sh.V[i], fv[lo+i]) {
						t.Fatalf("rank %d: moments of element %d: %g, %g; unsharded %g, %g", r, lo+i, sh.M[i], sh.V[i], fm[lo+i], fv[lo+i])
					}
				}
				// Loading it back is the identity; a shard of another world size is refused,
				// naming both sizes.
				if err := tr.LoadOptimizerShard(sh); err != nil {
					t.Fatal(err)
				}
				bad := *sh
				bad.Ranks = ranks + 1
				if err := tr.LoadOptimizerShard(&bad); err == nil || !strings.Contains(err.Error(), fmt.Sprintf("%d ranks, this run has %d", ranks+1, ranks)) {
					t.Errorf("rank %d: a shard of %d ranks: %v", r, ranks+1, err)
				}
				if _, err := tr.OptimizerState(); err == nil {
					t.Error("OptimizerState of a sharded optimizer: no error")
				}
			}
		})
	}
}

// TestShardKeepsLoadedState: sharding an optimizer that holds a state (loaded whole), or
// loading a whole state into a sharded one (a resume from an unsharded run), keeps each rank's
// slice of it.
func TestShardKeepsLoadedState(t *testing.T) {
	g := loadGolden(t, "qwen2")
	opts := engine.TrainOptions{Optimizer: engine.AdamWConfig{LR: 1e-2}}
	src := newTrainer(t, g.cfg, g.weights, opts)
	names := src.TrainableNames()
	total := 0
	for _, n := range names {
		total += len(g.weights[n].Data)
	}
	rng := rand.New(rand.NewPCG(1, 2))
	gr := make([]float32, total)
	for i := range gr {
		gr[i] = float32(rng.NormFloat64())
	}
	setGrads(t, src, gr)
	if _, err := src.Step(); err != nil {
		t.Fatal(err)
	}
	st, err := src.OptimizerState()
	if err != nil {
		t.Fatal(err)
	}
	comms := dist.NewLocalGroup(2, dist.Options{})
	plan := engine.NewShardPlan(total, 2)
	var fm []float32
	for _, n := range names {
		fm = append(fm, st.M[n].Data...)
	}
	for i := range 2 * len(comms) {
		r, c := i%2, comms[i%2]
		var tr *engine.Trainer
		if i < 2 {
			tr = newTrainer(t, g.cfg, g.weights, opts)
			if err := tr.LoadOptimizerState(st); err != nil {
				t.Fatal(err)
			}
			if err := tr.ShardOptimizer(f32Comm{c}); err != nil {
				t.Fatal(err)
			}
		} else {
			o := opts
			o.Shard = f32Comm{c}
			tr = newTrainer(t, g.cfg, g.weights, o)
			if err := tr.LoadOptimizerState(st); err != nil {
				t.Fatal(err)
			}
		}
		sh, err := tr.OptimizerShard()
		if err != nil {
			t.Fatal(err)
		}
		lo, hi := plan.Range(r)
		if sh.Step != 1 || sh.Lo != lo || sh.Hi != hi {
			t.Fatalf("rank %d: step %d, [%d, %d), want 1, [%d, %d)", r, sh.Step, sh.Lo, sh.Hi, lo, hi)
		}
		for i, m := range sh.M {
			if m != fm[lo+i] {
				t.Fatalf("rank %d: m[%d] = %g, loaded %g", r, lo+i, m, fm[lo+i])
			}
		}
	}
}

func close32(a, b float32) bool {
	return a == b || math.Abs(float64(a-b)) <= 1e-7*math.Max(math.Abs(float64(a)), math.Abs(float64(b)))
}

// setGrads makes tr's accumulated gradients flat (TrainableNames order).
func setGrads(t *testing.T, tr *engine.Trainer, flat []float32) {
	t.Helper()
	tr.ZeroGrad()
	if err := tr.ReduceGrads(0, func(b []float32) error { copy(b, flat); return nil }); err != nil {
		t.Fatal(err)
	}
}

// flatWeights are tr's trainable weights, flat in names order.
func flatWeights(t *testing.T, tr *engine.Trainer, names []string) []float32 {
	t.Helper()
	w, err := tr.Model.HostWeights()
	if err != nil {
		t.Fatal(err)
	}
	var out []float32
	for _, n := range names {
		out = append(out, w[n].Data...)
	}
	return out
}

// TestShardResetAndSetOptimizer: ResetOptimizer zeroes a sharded optimizer's moments and step
// (a reference reset); SetOptimizer keeps it sharded over the same ranks, its state reset.
func TestShardResetAndSetOptimizer(t *testing.T) {
	g := loadGolden(t, "qwen2")
	opts := engine.TrainOptions{Optimizer: engine.AdamWConfig{LR: 1e-2}}
	tr := newTrainer(t, g.cfg, g.weights, opts)
	total := 0
	for _, n := range tr.TrainableNames() {
		total += len(g.weights[n].Data)
	}
	if err := tr.ShardOptimizer(f32Comm{dist.NewLocal()}); err != nil {
		t.Fatal(err)
	}
	if err := tr.ShardOptimizer(f32Comm{dist.NewLocal()}); err == nil {
		t.Error("sharding twice: no error")
	}
	gr := make([]float32, total)
	for i := range gr {
		gr[i] = float32(i%7) - 3
	}
	setGrads(t, tr, gr)
	if _, err := tr.Step(); err != nil {
		t.Fatal(err)
	}
	nonzero := func() (n int) {
		sh, err := tr.OptimizerShard()
		if err != nil {
			t.Fatal(err)
		}
		for i := range sh.M {
			if sh.M[i] != 0 || sh.V[i] != 0 {
				n++
			}
		}
		return n
	}
	if nonzero() == 0 || tr.OptimizerStep() != 1 {
		t.Fatalf("after a step: %d moments set, step %d", nonzero(), tr.OptimizerStep())
	}
	tr.ResetOptimizer()
	if n := nonzero(); n != 0 || tr.OptimizerStep() != 0 {
		t.Fatalf("after ResetOptimizer: %d moments set, step %d", n, tr.OptimizerStep())
	}
	setGrads(t, tr, gr)
	if _, err := tr.Step(); err != nil {
		t.Fatal(err)
	}
	if err := tr.SetOptimizer(engine.AdamWConfig{LR: 1e-3}); err != nil {
		t.Fatal(err)
	}
	if !tr.OptimizerSharded() || nonzero() != 0 || tr.OptimizerStep() != 0 {
		t.Fatalf("after SetOptimizer: sharded %v, %d moments set, step %d", tr.OptimizerSharded(), nonzero(), tr.OptimizerStep())
	}
}
