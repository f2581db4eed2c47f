package engine

import (
	"errors"
	"fmt"
	"math"
	"slices"
)

// AdamWConfig holds the optimizer's hyper-parameters, as torch.optim.AdamW names them, plus
// global-norm clipping and the learning-rate schedule.
type AdamWConfig struct {
	// The tags name the knobs' flags in tools/train, their ranges and help (package grpo/knob).
	LR          float64 `flag:"lr" check:">=0" help:"learning rate (AdamW; constant after --warmup)"` // peak learning rate
	Beta1       float64 `flag:"beta1" check:"[0,1)" help:"AdamW beta1"`                               // default 0.9
	Beta2       float64 `flag:"beta2" check:"[0,1)" help:"AdamW beta2"`                               // default 0.999
	Eps         float64 // default 1e-8
	WeightDecay float64 `flag:"weight-decay" check:">=0" help:"AdamW decoupled weight decay (not on norms and biases)"` // decoupled, default 0
	// NoDecay1D exempts 1-D weights (norms, biases) from weight decay.
	NoDecay1D bool
	// ClipNorm clips the global gradient norm to this value before each step; 0 disables.
	ClipNorm float64 `flag:"clip-norm" check:">=0" help:"global gradient-norm clipping; 0: off"`
	// Schedule scales LR at each step; nil means constant.
	Schedule Schedule
}

// Schedule returns the learning-rate multiplier for optimizer step t (0-based).
type Schedule func(t int) float64

// Constant keeps the learning rate fixed.
func Constant() Schedule { return func(int) float64 { return 1 } }

// LinearWarmup ramps the learning rate linearly from 1/warmup to 1 over the first warmup steps
// and then keeps it constant.
func LinearWarmup(warmup int) Schedule {
	return func(t int) float64 {
		if t < warmup {
			return float64(t+1) / float64(warmup)
		}
		return 1
	}
}

// Cosine warms up linearly over warmup steps, then decays along a half cosine from 1 to
// minRatio at step total, and stays at minRatio after.
func Cosine(warmup, total int, minRatio float64) Schedule {
	return func(t int) float64 {
		if t < warmup {
			return float64(t+1) / float64(warmup)
		}
		if t >= total {
			return minRatio
		}
		p := float64(t-warmup) / float64(max(1, total-warmup))
		return minRatio + (1-minRatio)*0.5*(1+math.Cos(math.Pi*p))
	}
}

type adamW struct {
	t    *Trainer
	cfg  AdamWConfig
	step int
	m, v map[string]*Tensor // empty when sharded
	// shard holds this rank's part of a sharded optimizer (ShardOptimizer); nil: unsharded.
	shard    *shardedAdamW
	shardErr error // making shard failed (check returns it)
}

func newAdamW(t *Trainer) *adamW {
	cfg := t.opts.Optimizer
	if cfg.Beta1 == 0 {
		cfg.Beta1 = 0.9
	}
	if cfg.Beta2 == 0 {
		cfg.Beta2 = 0.999
	}
	if cfg.Eps == 0 {
		cfg.Eps = 1e-8
	}
	if cfg.Schedule == nil {
		cfg.Schedule = Constant()
	}
	o := &adamW{t: t, cfg: cfg, m: map[string]*Tensor{}, v: map[string]*Tensor{}}
	if t.opts.Shard != nil { // this rank's moments alone, never the whole
		o.shard, o.shardErr = t.newShard(o, t.opts.Shard)
		return o
	}
	for _, name := range t.names {
		shape := t.params[name].Shape
		o.m[name] = t.b.Alloc(shape...)
		o.v[name] = t.b.Alloc(shape...)
	}
	return o
}

func (o *adamW) check() error {
	c := o.cfg
	switch {
	case o.shardErr != nil:
		return o.shardErr
	case !(c.LR >= 0):
		return fmt.Errorf("adamw: lr must be >= 0, got %g", c.LR)
	case !(c.Beta1 >= 0 && c.Beta1 < 1), !(c.Beta2 >= 0 && c.Beta2 < 1):
		return fmt.Errorf("adamw: betas must be in [0,1), got %g, %g", c.Beta1, c.Beta2)
	case !(c.Eps > 0):
		return fmt.Errorf("adamw: eps must be > 0, got %g", c.Eps)
	case !(c.WeightDecay >= 0):
		return fmt.Errorf("adamw: weight decay must be >= 0, got %g", c.WeightDecay)
	case !(c.ClipNorm >= 0):
		return fmt.Errorf("adamw: clip norm must be >= 0, got %g", c.ClipNorm)
	}
	return nil
}

// OptStats reports one optimizer step.
type OptStats struct {
	Step     int     // steps taken so far, this one included
	LR       float64 // learning rate used
	GradNorm float64 // global gradient norm before clipping
}

// Step clips the accumulated gradients to the global norm, applies one AdamW update to every
// trainable weight and clears the gradients. A non-finite gradient norm leaves the weights
// unchanged and returns an error; so does a device error computing the norm, which leaves the
// gradients as well. The update of all weights is one AdamWMany call where the backend has it
// (AdamWManyBackend). With a sharded optimizer (ShardOptimizer) Step first sums the ranks'
// gradients itself.
func (t *Trainer) Step() (OptStats, error) {
	o := t.opt
	t.dropStep, t.dropMicro = (t.dropStep+1)&(1<<32-1), 0
	if o.shard != nil {
		return t.stepSharded()
	}
	gs := make([]*Tensor, len(t.names))
	for i, name := range t.names {
		gs[i] = t.grads[name]
	}
	sums, err := sumSquaresMany(t.b, gs, t.names)
	if err != nil {
		return OptStats{Step: o.step}, fmt.Errorf("adamw: %w", err)
	}
	var ss float64
	for _, s := range sums { // in the weights' order, as one SumSquares per tensor added up
		ss += s
	}
	norm := math.Sqrt(ss)
	if math.IsNaN(norm) || math.IsInf(norm, 0) {
		t.ZeroGrad()
		return OptStats{Step: o.step, GradNorm: norm}, fmt.Errorf("adamw: gradient norm is %v; step skipped", norm)
	}
	lr := o.cfg.LR * o.cfg.Schedule(o.step)
	o.step++
	h := AdamWStep{LR: lr, Beta1: o.cfg.Beta1, Beta2: o.cfg.Beta2, Eps: o.cfg.Eps, WeightDecay: o.cfg.WeightDecay,
		BC1: 1 - math.Pow(o.cfg.Beta1, float64(o.step)), BC2: 1 - math.Pow(o.cfg.Beta2, float64(o.step)),
		ZeroGrad: true} // every gradient is a weight's: AdamW clears them all (ZeroGrad)
	if c := o.cfg.ClipNorm; c > 0 {
		// torch.nn.utils.clip_grad_norm_: scale by c/(norm+1e-6) when that is below 1, which
		// AdamW does as it reads each gradient (GradScale).
		if s := c / (norm + 1e-6); s < 1 {
			h.GradScale = float64(float32(s))
		}
	}
	ps, ms, vs, hs := make([]*Tensor, len(t.names)), make([]*Tensor, len(t.names)), make([]*Tensor, len(t.names)), make([]AdamWStep, len(t.names))
	for i, name := range t.names {
		hs[i] = h
		ps[i], ms[i], vs[i] = t.params[name], o.m[name], o.v[name]
		if o.cfg.NoDecay1D && len(ps[i].Shape) == 1 {
			hs[i].WeightDecay = 0
		}
	}
	adamWMany(t.b, ps, gs, ms, vs, hs) // one call for all weights where the backend has AdamWMany; it zeroes the gradients
	return OptStats{Step: o.step, LR: lr, GradNorm: norm}, nil
}

// OptimizerState is the AdamW state in host memory: the step count and both moments of every
// trainable weight, by HF name (what a checkpoint stores).
type OptimizerState struct {
	Step int
	M, V map[string]HostTensor
}

// OptimizerState downloads the optimizer's state (of an unsharded optimizer: a sharded one
// has OptimizerShard).
func (t *Trainer) OptimizerState() (*OptimizerState, error) {
	o := t.opt
	if o.shard != nil {
		return nil, errors.New("optimizer state: the optimizer is sharded: each rank saves its OptimizerShard")
	}
	s := &OptimizerState{Step: o.step, M: map[string]HostTensor{}, V: map[string]HostTensor{}}
	for _, name := range t.names {
		for _, mv := range []struct {
			src *Tensor
			dst map[string]HostTensor
		}{{o.m[name], s.M}, {o.v[name], s.V}} {
			d := make([]float32, mv.src.Len())
			if err := t.b.Download(mv.src, d); err != nil {
				return nil, fmt.Errorf("optimizer state %q: %w", name, err)
			}
			mv.dst[name] = HostTensor{Shape: append([]int(nil), mv.src.Shape...), Data: d}
		}
	}
	return s, nil
}

// LoadOptimizerState restores a saved state; every trainable weight must have both moments of
// the right shape, and nothing changes on error. A sharded optimizer keeps this rank's part of
// the state (an OptimizerShard is what it saves).
func (t *Trainer) LoadOptimizerState(s *OptimizerState) error {
	o := t.opt
	if s.Step < 0 {
		return fmt.Errorf("optimizer state: negative step %d", s.Step)
	}
	for _, name := range t.names {
		for _, h := range []map[string]HostTensor{s.M, s.V} {
			w, ok := h[name]
			if !ok {
				return fmt.Errorf("optimizer state: moments of %q are missing", name)
			}
			if p := t.params[name]; len(w.Data) != p.Len() || !slices.Equal(w.Shape, p.Shape) {
				return fmt.Errorf("optimizer state: moments of %q have shape %v, want %v", name, w.Shape, p.Shape)
			}
		}
	}
	if o.shard != nil {
		return t.loadShardFromState(s)
	}
	for _, name := range t.names {
		for _, mv := range []struct {
			dst *Tensor
			src HostTensor
		}{{o.m[name], s.M[name]}, {o.v[name], s.V[name]}} {
			up, err := t.b.Upload(F32, mv.src.Data, false, mv.src.Shape...)
			if err != nil {
				return err
			}
			t.b.Copy(mv.dst, up)
			t.b.Free(up)
		}
	}
	o.step = s.Step
	return nil
}

// ResetOptimizer zeroes both moments and the step count (a reference reset does this).
func (t *Trainer) ResetOptimizer() {
	o := t.opt
	if o.shard != nil {
		for _, pc := range o.shard.pieces {
			t.b.Scale(pc.m, 0)
			t.b.Scale(pc.v, 0)
		}
		o.step = 0
		return
	}
	for _, name := range t.names {
		t.b.Scale(o.m[name], 0)
		t.b.Scale(o.v[name], 0)
	}
	o.step = 0
}

// OptimizerStep is the number of optimizer steps taken since the last reset.
func (t *Trainer) OptimizerStep() int { return t.opt.step }

// SetOptimizer replaces the AdamW configuration (a new phase of training, such as RL after a
// supervised warm start) and resets the optimizer state.
func (t *Trainer) SetOptimizer(cfg AdamWConfig) error {
	t.opts.Optimizer = cfg
	old := t.opt
	if old.shard != nil { // a sharded optimizer stays sharded, over the same ranks
		t.opts.Shard = old.shard.comm
	}
	o := newAdamW(t)
	if err := o.check(); err != nil {
		if o.shard != nil {
			o.shard.free(t.b)
		}
		return err
	}
	for _, name := range t.names {
		if old.shard == nil {
			t.b.Free(old.m[name])
			t.b.Free(old.v[name])
		}
	}
	if old.shard != nil {
		old.shard.free(t.b)
	}
	t.opt = o
	return nil
}
