package grpo

import (
	"context"
	"math"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prolong-rl/prolong/engine"
	"github.com/prolong-rl/prolong/engine/cpu"
	"github.com/prolong-rl/prolong/engine/dist"
)

// devCPU is the CPU backend whose tensors pass for device buffers (as cuda.Backend's do), for
// a communicator that sums them in place.
type devCPU struct{ *cpu.Backend }

func (c devCPU) DistBuffer(t *engine.Tensor) (dist.DeviceBuffer, error) {
	return devBuf{c.Backend, t}, nil
}

type devBuf struct {
	b *cpu.Backend
	t *engine.Tensor
}

func (d devBuf) DType() dist.DType  { return dist.Float32 }
func (d devBuf) Len() int           { return d.t.Len() }
func (d devBuf) DevicePtr() uintptr { return 0 }

// ncclLike is a local communicator that says it is NCCL and sums device buffers (devBuf) in
// place, counting them and the host buffers it sums.
type ncclLike struct {
	dist.Comm
	dev, host *atomic.Int64
}

func (c ncclLike) Backend() string { return "nccl" }

func (c ncclLike) AllReduce(buf dist.Buffer) error {
	d, ok := buf.(devBuf)
	if !ok {
		c.host.Add(1)
		return c.Comm.AllReduce(buf)
	}
	c.dev.Add(1)
	x := make([]float32, d.t.Len())
	if err := d.b.Download(d.t, x); err != nil {
		return err
	}
	if err := c.Comm.AllReduce(dist.HostF32(x)); err != nil {
		return err
	}
	up, err := d.b.Upload(engine.F32, x, false, d.t.Shape...)
	if err != nil {
		return err
	}
	d.b.Copy(d.t, up)
	d.b.Free(up)
	return nil
}

// tinyDevicePolicy is tinyPolicy on devCPU.
func tinyDevicePolicy(t *testing.T) *engine.Trainer {
	ref := tinyPolicy(t, 1e-2)
	w, err := ref.Model.HostWeights()
	if err != nil {
		t.Fatal(err)
	}
	m, err := engine.NewModel(ref.Model.Config, devCPU{cpu.New()}, w, engine.F32)
	if err != nil {
		t.Fatal(err)
	}
	tr, err := engine.NewTrainer(m, engine.TrainOptions{Temperature: 1, Optimizer: engine.AdamWConfig{LR: 1e-2, Beta2: 0.99, ClipNorm: 1}})
	if err != nil {
		t.Fatal(err)
	}
	return tr
}

// TestOverlapReduce: three ranks (the local communicator) sum their gradients bucket by bucket
// during the backward: rank 0 over two micro-batches (the hook on the second), rank 1 over one,
// rank 2 over none (it sends every bucket at the end). Every rank ends with the same gradients,
// equal bit for bit to the all-reduce after the backward (ReduceGrads) and, to rounding, to one
// trainer's gradients over all three micro-batches; some buckets went out before the backward
// reached the first layer, and the plan's buckets cover every weight once. Over a communicator
// that says it is NCCL, on a backend whose tensors are device buffers, the gradient tensors are
// summed in place (no host buffer), to the same bits.
func TestOverlapReduce(t *testing.T) {
	seqs := []engine.ScoreRequest{
		{Tokens: []int32{1, 2, 3, 4, 5}, Start: 2},
		{Tokens: []int32{6, 7, 8}, Start: 1},
		{Tokens: []int32{9, 10, 11, 3, 2, 1}, Start: 3},
	}
	work := [][][]engine.ScoreRequest{{seqs[:1], seqs[1:2]}, {seqs[2:]}, nil} // rank -> micro-batches
	const bucket = 700                                                        // values: many buckets
	var inPlace, host atomic.Int64                                            // the in-place run's all-reduces of tensors, of host buffers
	run := func(overlap, devices bool) ([]map[string][]float32, []int) {
		comms := dist.NewLocalGroup(len(work), dist.Options{Timeout: time.Minute})
		grads := make([]map[string][]float32, len(work))
		early := make([]int, len(work)) // buckets launched before the last layer's backward
		errs := make([]error, len(work))
		var wg sync.WaitGroup
		for r := range work {
			pol, comm := tinyPolicy(t, 1e-2), comms[r]
			if devices {
				pol, comm = tinyDevicePolicy(t), ncclLike{comms[r], &inPlace, &host}
			}
			d := newDataParallel(comm, nil)
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
	serial, _ := run(false, false)
	overlapped, early := run(true, false)
	devices, _ := run(true, true)
	if inPlace.Load() == 0 || host.Load() != 0 {
		t.Errorf("in place: %d all-reduces of gradient tensors, %d of host buffers; want only tensors", inPlace.Load(), host.Load())
	}
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
				if dv := devices[r][name][i]; math.Float32bits(dv) != math.Float32bits(v) {
					t.Fatalf("rank %d %s[%d]: summed in place %g, through host buffers %g", r, name, i, dv, v)
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
