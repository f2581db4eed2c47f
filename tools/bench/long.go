package main

import (
	"context"
	"fmt"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/prolong-rl/prolong/engine"
	"github.com/prolong-rl/prolong/engine/cpu"
)

// timedAttn is the CPU backend with the time spent in training attention (forward and
// backward) counted.
type timedAttn struct {
	*cpu.Backend
	ns atomic.Int64
}

func (b *timedAttn) AttentionTrain(out, lse, q, k, v *engine.Tensor, seqStart []int32) {
	t0 := time.Now()
	b.Backend.AttentionTrain(out, lse, q, k, v, seqStart)
	b.ns.Add(int64(time.Since(t0)))
}

func (b *timedAttn) AttentionBackward(dq, dk, dv, dout, q, k, v, out, lse *engine.Tensor, seqStart []int32) {
	t0 := time.Now()
	b.Backend.AttentionBackward(dq, dk, dv, dout, q, k, v, out, lse, seqStart)
	b.ns.Add(int64(time.Since(t0)))
}

// heapPeak samples the Go heap in use every 20 ms until stop is called, and returns its peak.
func heapPeak() (stop func() uint64) {
	var peak uint64
	var wg sync.WaitGroup
	done := make(chan struct{})
	sample := func() {
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		peak = max(peak, ms.HeapInuse)
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for {
			sample()
			select {
			case <-done:
				return
			case <-tick.C:
			}
		}
	}()
	return func() uint64 {
		close(done)
		wg.Wait()
		sample()
		return peak
	}
}

// maxRSS is the process's peak resident set so far (getrusage), in bytes.
func maxRSS() int64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return ru.Maxrss << 10
}

// runLongTrain times one training step (forward, backward with recompute, AdamW) of the 122M
// model on one sequence of each length, in the order given: seconds, the Go heap's peak during
// the step, the process's peak RSS so far, and the share of the step spent in attention.
func runLongTrain(lens []int) error {
	c := *engine.Bench122M()
	for _, l := range lens {
		c.MaxPositionEmbeddings = max(c.MaxPositionEmbeddings, l)
	}
	fmt.Printf("\nlong sequences: one training step on one sequence, forward + backward (recompute) + AdamW, fp32; attention tiled from %d tokens\n\n", cpu.DefaultTiledAttentionFrom)
	w := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(w, "tokens\tstep s\tattention s\tattention share\theap peak GiB\tmax RSS GiB\t")
	for _, l := range lens {
		b := &timedAttn{Backend: cpu.New(cpu.WithMatMulPrecision(cpu.PrecisionFP32))}
		m, err := engine.NewModel(&c, b, engine.RandomWeights(&c, 1, 0.02), engine.F32)
		if err != nil {
			return err
		}
		tr, err := engine.NewTrainer(m, engine.TrainOptions{Recompute: true, MaxLogitRows: 1024, Optimizer: engine.AdamWConfig{LR: 1e-4, ClipNorm: 1}})
		if err != nil {
			return err
		}
		seqs := trainBatch(&c, 1, l)
		runtime.GC()
		stop := heapPeak()
		t0 := time.Now()
		if _, err := tr.ForwardBackward(context.Background(), seqs, engine.CrossEntropy(0)); err != nil {
			return fmt.Errorf("long sequence of %d tokens: %w", l, err)
		}
		if _, err := tr.Step(); err != nil {
			return fmt.Errorf("long sequence of %d tokens: %w", l, err)
		}
		sec := time.Since(t0).Seconds()
		peak := stop()
		att := float64(b.ns.Load()) / 1e9
		fmt.Fprintf(w, "%d\t%.1f\t%.1f\t%.0f%%\t%.2f\t%.2f\t\n", l, sec, att, 100*att/sec, float64(peak)/(1<<30), float64(maxRSS())/(1<<30))
		w.Flush()
	}
	return nil
}
