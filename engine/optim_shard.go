package engine

import (
	"errors"
	"fmt"
	"math"
)

// ZeRO-1: the AdamW moments sharded over the ranks of a data-parallel run.
//
// The trainable weights, in TrainableNames order, are one flat vector of Total elements. It is
// split evenly into Size() shards of n = ceil(Total/Size()) elements (the last one padded with
// zeros), and rank r owns elements [r·n, min((r+1)·n, Total)). Each optimizer step:
//
//  1. every rank's accumulated gradients, staged into host memory as the flat vector, are
//     reduce-scattered: rank r receives the sum over ranks of its shard;
//  2. the global norm is the square root of the sum over ranks (in rank order, float64) of each
//     rank's sum of squares of its shard, so every rank clips by the same factor, with
//     torch.nn.utils.clip_grad_norm_'s formula as Step does;
//  3. each rank applies the backend's AdamW to its shard only, piece by piece (a piece is the
//     part of one weight inside the shard, with that weight's weight decay), with moments that
//     exist only for its shard: 8 bytes per owned element instead of per weight;
//  4. the updated shards are all-gathered and every rank uploads the whole flat vector, so the
//     ranks hold bit-identical weights.
//
// The gradients themselves and the fp32 weights stay whole on every rank (the forward and
// backward need them): the saving is the moments', (Size()-1)/Size() of 8 bytes per weight.

// ShardComm is what a sharded optimizer step needs of a data-parallel communicator: fp32
// collectives over host memory, with engine/dist's semantics (package grpo adapts a dist.Comm).
// Every rank calls them in the same order.
type ShardComm interface {
	Rank() int
	Size() int
	// ReduceScatter sums send (Size()·n elements) over the ranks; this rank receives shard
	// Rank() of the sum (n elements) in recv.
	ReduceScatter(send, recv []float32) error
	// AllGather concatenates every rank's send (n elements) in rank order into recv (Size()·n).
	AllGather(send, recv []float32) error
}

// shardedAdamW is a rank's part of a sharded AdamW: its pieces' moments and host staging.
type shardedAdamW struct {
	comm       ShardComm
	rank, size int
	total      int // elements of every trainable weight
	n          int // shard length: ceil(total/size)
	lo, hi     int // this rank's elements [lo, hi) of the flat vector
	pieces     []shardPiece
	flat       []float32 // [size·n] the flat gradient, then the gathered weights (host)
	g, w       []float32 // [n] this rank's gradient and weight shard (host)
}

// shardPiece is the part of one trainable weight inside this rank's shard.
type shardPiece struct {
	name   string
	off, n int     // elements [off, off+n) of the weight (row-major)
	at     int     // where they start in the shard
	decay  bool    // weight decay applies (not a 1-D weight under NoDecay1D)
	m, v   *Tensor // [n] the piece's moments
}

// ShardPlan is how Total elements split over Ranks: shard length N (the last shard padded),
// rank r owning [r·N, min((r+1)·N, Total)).
type ShardPlan struct {
	Total, Ranks, N int
}

// NewShardPlan splits total elements evenly over ranks.
func NewShardPlan(total, ranks int) ShardPlan {
	return ShardPlan{Total: total, Ranks: ranks, N: (total + ranks - 1) / ranks}
}

// Range is rank r's elements [lo, hi) of the flat vector (empty for a rank past the end).
func (p ShardPlan) Range(r int) (lo, hi int) {
	lo = min(r*p.N, p.Total)
	return lo, min(lo+p.N, p.Total)
}

// ShardOptimizer makes the optimizer's state sharded over c's ranks: from now on this rank
// holds the AdamW moments of its shard alone (what it held of them so far is kept, the rest
// freed), and Step sums the ranks' gradients itself (a reduce-scatter: do not all-reduce them
// before), updates the shard and all-gathers the weights. Every rank calls it, with the same
// trainable weights. It is an error to shard twice. TrainOptions.Shard does the same from the
// start, without ever allocating the whole moments.
func (t *Trainer) ShardOptimizer(c ShardComm) error {
	o := t.opt
	if o.shard != nil {
		return errors.New("adamw: the optimizer is already sharded")
	}
	s, err := t.newShard(o, c)
	if err != nil {
		return err
	}
	for _, name := range t.names {
		t.b.Free(o.m[name])
		t.b.Free(o.v[name])
	}
	o.m, o.v = map[string]*Tensor{}, map[string]*Tensor{}
	o.shard = s
	return nil
}

// newShard makes this rank's part of a sharded optimizer over c: each piece's moments are
// copied from o's whole moments where o has them, else zero.
func (t *Trainer) newShard(o *adamW, c ShardComm) (*shardedAdamW, error) {
	if c == nil || c.Size() < 1 || c.Rank() < 0 || c.Rank() >= c.Size() {
		return nil, errors.New("adamw: shard: no communicator, or a rank outside 0..size-1")
	}
	total := 0
	for _, name := range t.names {
		total += t.params[name].Len()
	}
	plan := NewShardPlan(total, c.Size())
	s := &shardedAdamW{comm: c, rank: c.Rank(), size: c.Size(), total: total, n: plan.N,
		flat: make([]float32, plan.Ranks*plan.N), g: make([]float32, plan.N), w: make([]float32, plan.N)}
	s.lo, s.hi = plan.Range(s.rank)
	off := 0 // the weight's start in the flat vector
	for _, name := range t.names {
		p := t.params[name]
		a, b := max(off, s.lo), min(off+p.Len(), s.hi)
		if a < b {
			pc := shardPiece{name: name, off: a - off, n: b - a, at: a - s.lo, decay: !(o.cfg.NoDecay1D && len(p.Shape) == 1)}
			for _, mv := range []struct {
				src *Tensor
				dst **Tensor
			}{{o.m[name], &pc.m}, {o.v[name], &pc.v}} {
				if mv.src == nil {
					*mv.dst = t.b.Alloc(pc.n)
					continue
				}
				full := make([]float32, mv.src.Len())
				if err := t.b.Download(mv.src, full); err != nil {
					s.free(t.b)
					return nil, fmt.Errorf("adamw: shard: moments of %q: %w", name, err)
				}
				up, err := t.b.Upload(F32, full[pc.off:pc.off+pc.n], false, pc.n)
				if err != nil {
					s.free(t.b)
					return nil, fmt.Errorf("adamw: shard: moments of %q: %w", name, err)
				}
				*mv.dst = up
			}
			s.pieces = append(s.pieces, pc)
		}
		off += p.Len()
	}
	return s, nil
}

// loadShardFromState loads this rank's part of a whole optimizer state (checked by
// LoadOptimizerState) into a sharded optimizer.
func (t *Trainer) loadShardFromState(st *OptimizerState) error {
	for _, pc := range t.opt.shard.pieces {
		for _, mv := range []struct {
			dst *Tensor
			src []float32
		}{{pc.m, st.M[pc.name].Data[pc.off : pc.off+pc.n]}, {pc.v, st.V[pc.name].Data[pc.off : pc.off+pc.n]}} {
			up, err := t.b.Upload(F32, mv.src, false, pc.n)
			if err != nil {
				return fmt.Errorf("optimizer state: moments of %q: %w", pc.name, err)
			}
			t.b.Copy(mv.dst, up)
			t.b.Free(up)
		}
	}
	t.opt.step = st.Step
	return nil
}

// free releases the pieces' moments.
func (s *shardedAdamW) free(b TrainBackend) {
	for _, pc := range s.pieces {
		if pc.m != nil {
			b.Free(pc.m)
		}
		if pc.v != nil {
			b.Free(pc.v)
		}
	}
}

// OptimizerSharded reports whether ShardOptimizer sharded the optimizer.
func (t *Trainer) OptimizerSharded() bool { return t.opt.shard != nil }

// stepSharded is Step for a sharded optimizer (see ShardOptimizer and the comment at the top
// of this file).
func (t *Trainer) stepSharded() (OptStats, error) {
	o, s := t.opt, t.opt.shard
	off := 0
	for _, name := range t.names {
		g := t.grads[name]
		if err := t.b.Download(g, s.flat[off:off+g.Len()]); err != nil {
			return OptStats{Step: o.step}, fmt.Errorf("adamw: gradient of %q: %w", name, err)
		}
		off += g.Len()
	}
	clear(s.flat[off:]) // the last shard's padding
	if err := s.comm.ReduceScatter(s.flat, s.g); err != nil {
		return OptStats{Step: o.step}, fmt.Errorf("adamw: reduce-scatter of the gradients: %w", err)
	}
	// The global norm: every rank's sum of squares of its shard, gathered bit for bit (each
	// float64 as two fp32 bit patterns) and added in rank order, the same on every rank.
	var ss float64
	for _, g := range s.g[:s.hi-s.lo] {
		ss += float64(g) * float64(g)
	}
	bits := math.Float64bits(ss)
	sums := make([]float32, 2*s.size)
	if err := s.comm.AllGather([]float32{math.Float32frombits(uint32(bits >> 32)), math.Float32frombits(uint32(bits))}, sums); err != nil {
		return OptStats{Step: o.step}, fmt.Errorf("adamw: all-gather of the gradient norm: %w", err)
	}
	ss = 0
	for r := range s.size {
		ss += math.Float64frombits(uint64(math.Float32bits(sums[2*r]))<<32 | uint64(math.Float32bits(sums[2*r+1])))
	}
	norm := math.Sqrt(ss)
	if math.IsNaN(norm) || math.IsInf(norm, 0) {
		t.ZeroGrad()
		return OptStats{Step: o.step, GradNorm: norm}, fmt.Errorf("adamw: gradient norm is %v; step skipped", norm)
	}
	if c := o.cfg.ClipNorm; c > 0 {
		// torch.nn.utils.clip_grad_norm_: scale by c/(norm+1e-6) when that is below 1.
		if sc := c / (norm + 1e-6); sc < 1 {
			f := float32(sc)
			for i := range s.g {
				s.g[i] *= f
			}
		}
	}
	// This rank's weights: the part of each weight that a piece covers, downloaded through
	// the weight's place in flat (free until the all-gather).
	for _, pc := range s.pieces {
		p := t.params[pc.name]
		start := s.lo + pc.at - pc.off // the weight's first element in the flat vector
		full := s.flat[start : start+p.Len()]
		if err := t.b.Download(p, full); err != nil {
			return OptStats{Step: o.step}, fmt.Errorf("adamw: weight %q: %w", pc.name, err)
		}
		copy(s.w[pc.at:pc.at+pc.n], full[pc.off:pc.off+pc.n])
	}
	clear(s.w[s.hi-s.lo:])
	lr := o.cfg.LR * o.cfg.Schedule(o.step)
	o.step++
	h := AdamWStep{LR: lr, Beta1: o.cfg.Beta1, Beta2: o.cfg.Beta2, Eps: o.cfg.Eps, WeightDecay: o.cfg.WeightDecay,
		BC1: 1 - math.Pow(o.cfg.Beta1, float64(o.step)), BC2: 1 - math.Pow(o.cfg.Beta2, float64(o.step))}
	for _, pc := range s.pieces {
		hp := h
		if !pc.decay {
			hp.WeightDecay = 0
		}
		w, err := t.b.Upload(F32, s.w[pc.at:pc.at+pc.n], false, pc.n)
		if err != nil {
			return OptStats{Step: o.step}, fmt.Errorf("adamw: weight %q: %w", pc.name, err)
		}
		g, err := t.b.Upload(F32, s.g[pc.at:pc.at+pc.n], false, pc.n)
		if err != nil {
			t.b.Free(w)
			return OptStats{Step: o.step}, fmt.Errorf("adamw: gradient of %q: %w", pc.name, err)
		}
		t.b.AdamW(w, g, pc.m, pc.v, hp)
		err = t.b.Download(w, s.w[pc.at:pc.at+pc.n])
		t.b.Free(w)
		t.b.Free(g)
		if err != nil {
			return OptStats{Step: o.step}, fmt.Errorf("adamw: weight %q: %w", pc.name, err)
		}
	}
	if err := s.comm.AllGather(s.w, s.flat); err != nil {
		return OptStats{Step: o.step}, fmt.Errorf("adamw: all-gather of the updated weights: %w", err)
	}
	off = 0
	for _, name := range t.names {
		p := t.params[name]
		up, err := t.b.Upload(F32, s.flat[off:off+p.Len()], false, p.Shape...)
		if err != nil {
			return OptStats{Step: o.step}, fmt.Errorf("adamw: weight %q: %w", name, err)
		}
		t.b.Copy(p, up)
		t.b.Free(up)
		off += p.Len()
	}
	t.ZeroGrad()
	return OptStats{Step: o.step, LR: lr, GradNorm: norm}, nil
}

// OptimizerShard is one rank's part of a sharded AdamW state (what its checkpoint file holds):
// the step count and both moments of elements [Lo, Hi) of the flat vector of every trainable
// weight (TrainableNames order; Total elements in all) split over Ranks ranks (ShardPlan).
type OptimizerShard struct {
	Step          int
	Rank, Ranks   int
	Lo, Hi, Total int
	M, V          []float32 // [Hi-Lo]
}

// OptimizerShard downloads this rank's part of a sharded optimizer's state.
func (t *Trainer) OptimizerShard() (*OptimizerShard, error) {
	o := t.opt
	s := o.shard
	if s == nil {
		return nil, errors.New("adamw: the optimizer is not sharded")
	}
	out := &OptimizerShard{Step: o.step, Rank: s.rank, Ranks: s.size, Lo: s.lo, Hi: s.hi, Total: s.total,
		M: make([]float32, s.hi-s.lo), V: make([]float32, s.hi-s.lo)}
	for _, pc := range s.pieces {
		if err := t.b.Download(pc.m, out.M[pc.at:pc.at+pc.n]); err != nil {
			return nil, fmt.Errorf("optimizer shard: moments of %q: %w", pc.name, err)
		}
		if err := t.b.Download(pc.v, out.V[pc.at:pc.at+pc.n]); err != nil {
			return nil, fmt.Errorf("optimizer shard: moments of %q: %w", pc.name, err)
		}
	}
	return out, nil
}

// LoadOptimizerShard restores this rank's part of a sharded state saved by a run of as many
// ranks (another number of ranks is an error naming both); nothing changes on error.
func (t *Trainer) LoadOptimizerShard(sh *OptimizerShard) error {
	o := t.opt
	s := o.shard
	switch {
	case s == nil:
		return errors.New("optimizer shard: the optimizer is not sharded")
	case sh.Ranks != s.size:
		return fmt.Errorf("optimizer shard: saved by a run of %d ranks, this run has %d: resume on %d ranks", sh.Ranks, s.size, sh.Ranks)
	case sh.Rank != s.rank:
		return fmt.Errorf("optimizer shard: rank %d's, loaded by rank %d", sh.Rank, s.rank)
	case sh.Total != s.total:
		return fmt.Errorf("optimizer shard: covers %d trainable elements, the model has %d", sh.Total, s.total)
	case sh.Lo != s.lo || sh.Hi != s.hi || len(sh.M) != s.hi-s.lo || len(sh.V) != s.hi-s.lo:
		return fmt.Errorf("optimizer shard: elements [%d, %d) with %d and %d moments, want [%d, %d)", sh.Lo, sh.Hi, len(sh.M), len(sh.V), s.lo, s.hi)
	case sh.Step < 0:
		return fmt.Errorf("optimizer shard: negative step %d", sh.Step)
	}
	for _, pc := range s.pieces {
		for _, mv := range []struct {
			dst *Tensor
			src []float32
		}{{pc.m, sh.M[pc.at : pc.at+pc.n]}, {pc.v, sh.V[pc.at : pc.at+pc.n]}} {
			up, err := t.b.Upload(F32, mv.src, false, pc.n)
			if err != nil {
				return fmt.Errorf("optimizer shard: moments of %q: %w", pc.name, err)
			}
			t.b.Copy(mv.dst, up)
			t.b.Free(up)
		}
	}
	o.step = sh.Step
	return nil
}
