package grpo

import (
	"fmt"
	"time"

	"github.com/prolong-rl/prolong/engine"
	"github.com/prolong-rl/prolong/engine/dist"
)

// The gradient all-reduce overlapped with the backward (RunConfig.GradOverlap), as PyTorch's
// DistributedDataParallel does it: the gradients are cut into buckets in the order the backward
// finishes them (engine.Trainer.GradGroups: the last layer first), and each bucket is summed
// over the ranks by a collective on a second goroutine as soon as the last micro-batch's
// backward has finished all of its weights, while the backward goes on to the layers below.
// The buckets depend on the model alone and go out in the same order on every rank (a rank
// with no micro-batch in the mini-batch sends them all at the end), so the ranks' collectives
// always match. Each bucket is the same sum as without overlap (the same values added over
// the same ranks), so the weights are those of the all-reduce after the backward. Over NCCL,
// on a backend whose tensors are device buffers (cuda), each bucket's gradient tensors are
// summed in place on the GPU, with no copy through host memory (UNVERIFIED on GPUs).

// maxBucketsInFlight bounds the buckets read out of the gradients and not yet written back.
const maxBucketsInFlight = 4

// gradPlan is the bucket layout of a trainer's gradients, in backward order: bucket k holds
// names[k], and readyAfter[g] is the number of leading buckets whose weights are all final once
// the backward has finished groups 0..g.
type gradPlan struct {
	names      [][]string
	elems      []int
	readyAfter []int
}

func newGradPlan(policy *engine.Trainer, bucketElems int) *gradPlan {
	groups := policy.GradGroups()
	var order []string
	groupEnd := make([]int, len(groups)) // names in groups 0..g
	for g, names := range groups {
		order = append(order, names...)
		groupEnd[g] = len(order)
	}
	p := &gradPlan{names: engine.GradBuckets(order, policy.GradLen, bucketElems), readyAfter: make([]int, len(groups))}
	bucketEnd := make([]int, len(p.names)) // names in buckets 0..k
	n := 0
	for k, names := range p.names {
		n += len(names)
		bucketEnd[k] = n
		e := 0
		for _, name := range names {
			e += policy.GradLen(name)
		}
		p.elems = append(p.elems, e)
	}
	for g := range groups {
		k := 0
		for k < len(bucketEnd) && bucketEnd[k] <= groupEnd[g] {
			k++
		}
		p.readyAfter[g] = k
	}
	return p
}

// gradBucket is one bucket on its way: read out of the gradients, summed, written back; or,
// in place (dev), the gradient tensors themselves, summed where they are.
type gradBucket struct {
	k   int
	buf []float32
	dev []dist.Buffer
	err error
}

// deviceBuffers is a backend whose tensors a device communicator can sum in place
// (cuda.Backend.DistBuffer).
type deviceBuffers interface {
	DistBuffer(t *engine.Tensor) (dist.DeviceBuffer, error)
}

// overlapReduce sums one mini-batch's gradients over the ranks, bucket by bucket, as the
// backward of the last micro-batch finishes them. Its methods run on the trainer's goroutine;
// the collectives run on its own, one at a time, in bucket order.
type overlapReduce struct {
	d        *dataParallel
	policy   *engine.Trainer
	plan     *gradPlan
	launched int // buckets handed to the collective goroutine
	inFlight int // launched, not yet written back
	todo     chan *gradBucket
	done     chan *gradBucket
	free     [][]float32 // host buffers to reuse
	err      error
	busy     time.Duration // the collective goroutine's time in collectives
	finished chan struct{}
	// inPlace sums each gradient tensor where it is, with no copy through host memory: the
	// communicator is NCCL and the backend's tensors are device buffers.
	inPlace deviceBuffers
}

// startGradReduce starts the collective goroutine of one mini-batch's reduction; the caller
// hands ready to the last micro-batch's backward (engine.Trainer.SetGradReady) and calls
// finish after it.
func (d *dataParallel) startGradReduce(policy *engine.Trainer) *overlapReduce {
	if d.plan == nil {
		d.plan = newGradPlan(policy, d.bucketElems)
	}
	o := &overlapReduce{d: d, policy: policy, plan: d.plan, free: d.bucketBufs,
		todo: make(chan *gradBucket, len(d.plan.names)), done: make(chan *gradBucket, len(d.plan.names)), finished: make(chan struct{})}
	if db, ok := policy.Model.Backend.(deviceBuffers); ok && d.comm.Backend() == "nccl" {
		o.inPlace = db
	}
	go o.collectives()
	return o
}

// collectives sums the buckets in the order they come, each over every rank.
func (o *overlapReduce) collectives() {
	defer close(o.finished)
	for b := range o.todo {
		t0 := time.Now()
		o.d.enter(fmt.Sprintf("all-reduce of gradient bucket %d of %d (%d values, %s..%s)", b.k+1, len(o.plan.names), o.plan.elems[b.k], o.plan.names[b.k][0], o.plan.names[b.k][len(o.plan.names[b.k])-1]))
		if b.dev != nil {
			for _, x := range b.dev {
				if b.err = o.d.comm.AllReduce(x); b.err != nil {
					break
				}
			}
		} else {
			b.err = o.d.comm.AllReduce(dist.HostF32(b.buf))
		}
		o.busy += time.Since(t0)
		o.done <- b
	}
}

// ready is engine.Trainer.SetGradReady's callback: it writes back the buckets already summed,
// then reads out and launches those whose weights group g made final.
func (o *overlapReduce) ready(g int) {
	o.writeBack(false)
	for o.err == nil && o.launched < o.plan.readyAfter[g] {
		o.launch()
	}
}

// launch reads out the next bucket's gradients and hands them to the collective goroutine,
// first waiting for a bucket to come back when maxBucketsInFlight are out.
func (o *overlapReduce) launch() {
	for o.inFlight >= maxBucketsInFlight && o.err == nil {
		o.writeOne(<-o.done)
	}
	if o.err != nil {
		return
	}
	k := o.launched
	b := &gradBucket{k: k}
	if o.inPlace != nil {
		for _, name := range o.plan.names[k] {
			x, err := o.inPlace.DistBuffer(o.policy.GradTensor(name))
			if err != nil {
				o.err = fmt.Errorf("gradient of %q: %w", name, err)
				return
			}
			b.dev = append(b.dev, x)
		}
	} else {
		b.buf = o.buffer(o.plan.elems[k])
		if err := o.policy.ReadGrads(o.plan.names[k], b.buf); err != nil {
			o.err = err
			return
		}
	}
	o.launched++
	o.inFlight++
	o.d.gradBytes += 4 * o.plan.elems[k]
	o.todo <- b
}

// buffer is a host buffer of n values, reused from an earlier bucket where one is big enough.
func (o *overlapReduce) buffer(n int) []float32 {
	for i, b := range o.free {
		if cap(b) >= n {
			o.free = append(o.free[:i], o.free[i+1:]...)
			return b[:n]
		}
	}
	return make([]float32, n)
}

// writeBack writes back every bucket that has come back (all of them when wait is set).
func (o *overlapReduce) writeBack(wait bool) {
	for o.inFlight > 0 {
		if wait {
			o.writeOne(<-o.done)
			continue
		}
		select {
		case b := <-o.done:
			o.writeOne(b)
		default:
			return
		}
	}
}

func (o *overlapReduce) writeOne(b *gradBucket) {
	o.inFlight--
	names := o.plan.names[b.k]
	switch {
	case o.err != nil:
	case b.err != nil:
		o.err = fmt.Errorf("gradients of %s..%s: %w", names[0], names[len(names)-1], b.err)
	case b.dev == nil:
		o.err = o.policy.WriteGrads(names, b.buf)
	}
	if b.buf != nil {
		o.free = append(o.free, b.buf)
	}
}

// finish launches the buckets still waiting (all of them on a rank without a micro-batch in
// this mini-batch), waits for every bucket and writes it back. The time it waits is the
// reduction's cost the backward did not hide (perf/grad_wait_seconds); the collective
// goroutine's whole time in collectives is perf/grad_allreduce_seconds.
func (o *overlapReduce) finish() error {
	t0 := time.Now()
	for o.err == nil && o.launched < len(o.plan.names) {
		o.launch()
	}
	o.writeBack(true)
	close(o.todo)
	<-o.finished
	o.d.gradWait += time.Since(t0).Seconds()
	o.d.gradSeconds += o.busy.Seconds()
	o.d.bucketBufs = o.free
	return o.err
}

// abandon stops the reduction of a mini-batch whose backward failed: the buckets handed out
// stay with the collective goroutine (the job ends; the other ranks' collectives time out if
// they are not ending too).
func (o *overlapReduce) abandon() { close(o.todo) }
