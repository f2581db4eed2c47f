package grpo

import (
	"context"
	"math"
	"sync"
	"testing"
	"time"

	"github.com/prolong-rl/prolong/engine"
	"github.com/prolong-rl/prolong/engine/dist"
)

// TestOverlapReduce: three ranks (the local communicator) sum their gradients bucket by bucket
// during the backward: rank 0 over two micro-batches (the hook on the second), rank 1 over one,
// rank 2 over none (it sends every bucket at the end). Every rank ends with the same gradients,
// equal bit for bit to the all-reduce after the backward (ReduceGrads) and, to rounding, to one
// trainer's gradients over all three micro-batches; some buckets went out before the backward
// reached the first layer, and the plan's buckets cover every weight once.
func TestOverlapReduce(t *testing.T) {
	seqs := []engine.ScoreRequest{
		{Tokens: []int32{1, 2, 3, 4, 5}, Start: 2},
		{Tokens: []int32{6, 7, 8}, Start: 1},
		{Tokens: []int32{9, 10, 11, 3, 2, 1}, Start: 3},
	}
	work := [][][]engine.ScoreRequest{{seqs[:1], seqs[1:2]}, {seqs[2:]}, nil} // rank -> micro-batches
	const bucket = 700                                                        // values: many buckets
	run := func(overlap bool) ([]map[string][]float32, []int) {
		comms := dist.NewLocalGroup(len(work), dist.Options{Timeout: time.Minute})
		grads := make([]map[string][]float32, len(work))
		early := make([]int, len(work)) // buckets launched before the last layer's backward
		errs := make([]error, len(work))
		var wg sync.WaitGroup
		for r := range work {
			pol := tinyPolicy(t, 1e-2)
			d := newDataParallel(comms[r], nil)
			d.bucketElems = bucket
			wg.Add(1)
			go func() {
				defer wg.Done()
				var red *overlapReduce
				if overlap {
					red = d.startGradReduce(pol)
				}
				L := len(pol.Model.Layers)
				for i, mb := range work[r] {
					if red != nil && i == len(work[r])-1 {
						pol.SetGradReady(func(g int) {
							if g == L-1 {
								early[r] = red.launched
							}
							red.ready(g)
						})
					}
					if _, err := pol.ForwardBackward(context.Background(), mb, engine.CrossEntropy(0)); err != nil {
						errs[r] = err
						return
					}
				}
				if red != nil {
					errs[r] = red.finish()
				} else {
					errs[r] = d.allReduceGrads(pol)
				}
				grads[r] = map[string][]float32{}
				for _, name := range pol.TrainableNames() {
					grads[r][name], _ = pol.Grad(name)
				}
				if overlap && r == 0 {
					n := 0
					for _, names := range d.plan.names {
						n += len(names)
					}
					if n != len(pol.TrainableNames()) || len(d.plan.names) < 4 {
						t.Errorf("%d buckets hold %d weights; the trainer has %d", len(d.plan.names), n, len(pol.TrainableNames()))
					}
				}
			}()
		}
		wg.Wait()
		for r, err := range errs {
			if err != nil {
				t.Fatalf("overlap %v: rank %d: %v", overlap, r, err)
			}
		}
		return grads, early
	}
	serial, _ := run(false)
	overlapped, early := run(true)
	ref := tinyPolicy(t, 1e-2)
	for _, mb := range [][]engine.ScoreRequest{seqs[:1], seqs[1:2], seqs[2:]} {
		if _, err := ref.ForwardBackward(context.Background(), mb, engine.CrossEntropy(0)); err != nil {
			t.Fatal(err)
		}
	}
	for r := range work {
		for _, name := range ref.TrainableNames() {
			want, _ := ref.Grad(name)
			for i, v := range overlapped[r][name] {
				if math.Float32bits(v) != math.Float32bits(serial[r][name][i]) {
					t.Fatalf("rank %d %s[%d]: overlapped %g, after the backward %g", r, name, i, v, serial[r][name][i])
				}
				if math.Abs(float64(v-want[i])) > 1e-5*(1+math.Abs(float64(want[i]))) {
					t.Fatalf("rank %d %s[%d]: summed %g, one trainer %g", r, name, i, v, want[i])
				}
			}
		}
	}
	for r := range 2 { // the ranks that ran a backward
		if early[r] == 0 {
			t.Errorf("rank %d: no bucket went out before the backward reached layer 0", r)
		}
	}
	if early[2] != 0 {
		t.Errorf("rank 2 has no backward, yet %d buckets went out early", early[2])
	}
}
