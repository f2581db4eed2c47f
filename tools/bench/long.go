package main

import (
	"context"
	"fmt"
	"math"
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

// runLongTrain times one training step (forward, backward with recompute, AdamW; cross-entropy
// through the fused LM head) of the 122M model on one sequence of each length, in the order given: seconds, the Go heap's peak during
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
		if _, err := tr.ForwardBackwardTokens(context.Background(), seqs, engine.TokenCrossEntropy(float64(l-1))); err != nil {
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

// runLMHead times one training step (forward, backward, AdamW) of the 122M model with its
// vocabulary set to vocab, on batch × seqLen tokens scored by cross-entropy, through each LM
// head: the two-pass one every loss takes (ForwardBackward: log-probs of all tokens, then the
// gradients, logits recomputed) and the fused one of per-token losses (ForwardBackwardTokens):
// seconds (best of reps), the Go heap's peak during the step, the process's peak RSS so far.
func runLMHead(vocab, batch, seqLen, reps int) error {
	c := *engine.Bench122M()
	c.VocabSize = vocab
	fmt.Printf("\nLM head: one training step of the 122M model with a vocabulary of %d (%.0fM parameters), %d x %d tokens, fp32\n\n",
		vocab, float64(c.NumParams())/1e6, batch, seqLen)
	w := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(w, "head\tstep s\theap peak GiB\tmax RSS GiB\t")
	seqs := trainBatch(&c, batch, seqLen)
	scored := 0
	for _, s := range seqs {
		scored += len(s.Tokens) - s.Start
	}
	for _, fused := range []bool{false, true} {
		m, err := engine.NewModel(&c, cpu.New(cpu.WithMatMulPrecision(cpu.PrecisionFP32)), engine.RandomWeights(&c, 1, 0.02), engine.F32)
		if err != nil {
			return err
		}
		tr, err := engine.NewTrainer(m, engine.TrainOptions{Optimizer: engine.AdamWConfig{LR: 1e-4, ClipNorm: 1}})
		if err != nil {
			return err
		}
		best, peak := math.Inf(1), uint64(0)
		for r := 0; r < reps+1; r++ { // the first is a warm-up
			runtime.GC()
			stop := heapPeak()
			t0 := time.Now()
			if fused {
				_, err = tr.ForwardBackwardTokens(context.Background(), seqs, engine.TokenCrossEntropy(float64(scored)))
			} else {
				_, err = tr.ForwardBackward(context.Background(), seqs, engine.CrossEntropy(0))
			}
			if err != nil {
				return fmt.Errorf("LM head with vocabulary %d: %w", vocab, err)
			}
			if _, err := tr.Step(); err != nil {
				return fmt.Errorf("LM head with vocabulary %d: %w", vocab, err)
			}
			sec := time.Since(t0).Seconds()
			peak = max(peak, stop())
			if r > 0 {
				best = min(best, sec)
			}
		}
		name := "two-pass (ForwardBackward)"
		if fused {
			name = "fused (ForwardBackwardTokens)"
		}
		fmt.Fprintf(w, "%s\t%.2f\t%.2f\t%.2f\t\n", name, best, float64(peak)/(1<<30), float64(maxRSS())/(1<<30))
		w.Flush()
	}
	return nil
}
