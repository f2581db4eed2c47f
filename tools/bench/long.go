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
	"github.com/prolong-rl/prolong/grpo"
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

// cpuSeconds is the CPU time (user and system) the process has used so far (getrusage): on a
// shared machine a step's CPU time varies less than its wall time.
func cpuSeconds() float64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()).Seconds()
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
// through the fused LM head) of the 122M model on one sequence of each length, in the order given: seconds, the cores kept busy (CPU seconds
// over seconds), the Go heap's peak during the step, the process's peak RSS so far, and the share of the step spent in attention.
func runLongTrain(lens []int) error {
	c := *engine.Bench122M()
	for _, l := range lens {
		c.MaxPositionEmbeddings = max(c.MaxPositionEmbeddings, l)
	}
	fmt.Printf("\nlong sequences: one training step on one sequence, forward + backward (recompute) + AdamW, fp32; attention tiled from %d tokens\n\n", cpu.DefaultTiledAttentionFrom)
	w := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(w, "tokens\tstep s\tcores busy (of %d)\tattention s\tattention share\theap peak GiB\tmax RSS GiB\t\n", runtime.GOMAXPROCS(0))
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
		t0, c0 := time.Now(), cpuSeconds()
		if _, err := tr.ForwardBackwardTokens(context.Background(), seqs, engine.TokenCrossEntropy(float64(l-1))); err != nil {
			return fmt.Errorf("long sequence of %d tokens: %w", l, err)
		}
		if _, err := tr.Step(); err != nil {
			return fmt.Errorf("long sequence of %d tokens: %w", l, err)
		}
		sec, cpuSec := time.Since(t0).Seconds(), cpuSeconds()-c0
		peak := stop()
		att := float64(b.ns.Load()) / 1e9
		fmt.Fprintf(w, "%d\t%.1f\t%.2f\t%.1f\t%.0f%%\t%.2f\t%.2f\t\n", l, sec, cpuSec/sec, att, 100*att/sec, float64(peak)/(1<<30), float64(maxRSS())/(1<<30))
		w.Flush()
	}
	return nil
}

// runLMHead times one training step (forward, backward, AdamW) of the 122M model with its
// vocabulary set to vocab, on batch × seqLen tokens, through each LM head: the two-pass one
// every loss can take (ForwardBackward: log-probs of all tokens, then the gradients, logits
// recomputed) and the one-pass one of per-token losses (ForwardBackwardTokens): seconds and CPU
// seconds (each the best of reps, the heads' steps alternating on one trainer), the Go heap's
// peak during the step, and the one-pass figures as ratios of the two-pass ones. The loss is
// cross-entropy ("ce") or the GRPO policy loss of the ProRL recipe ("grpo": grpo.PolicyLoss on
// the two-pass head, grpo.TokenPolicyLoss on the one-pass head, as the trainer chooses between
// them) against fixed old and reference log-probs and advantages of ±1.
func runLMHead(vocab, batch, seqLen, reps int, loss string) error {
	c := *engine.Bench122M()
	c.VocabSize = vocab
	seqs := trainBatch(&c, batch, seqLen)
	onePass, twoPass, err := lmHeadLosses(loss, seqs)
	if err != nil {
		return err
	}
	fmt.Printf("\nLM head: one training step of the 122M model with a vocabulary of %d (%.0fM parameters), %d x %d tokens, fp32, loss %s\n\n",
		vocab, float64(c.NumParams())/1e6, batch, seqLen, loss)
	m, err := engine.NewModel(&c, cpu.New(cpu.WithMatMulPrecision(cpu.PrecisionFP32)), engine.RandomWeights(&c, 1, 0.02), engine.F32)
	if err != nil {
		return err
	}
	tr, err := engine.NewTrainer(m, engine.TrainOptions{Optimizer: engine.AdamWConfig{LR: 1e-4, ClipNorm: 1}})
	if err != nil {
		return err
	}
	// One trainer, the heads' steps alternating, so that both see the same memory and, on a
	// shared machine, the same load.
	secs, cpus, peaks := [2]float64{math.Inf(1), math.Inf(1)}, [2]float64{math.Inf(1), math.Inf(1)}, [2]uint64{}
	for r := 0; r < reps+1; r++ { // the first is a warm-up
		for i, fused := range []bool{false, true} {
			runtime.GC()
			stop := heapPeak()
			t0, c0 := time.Now(), cpuSeconds()
			if fused {
				var tl engine.TokenLoss
				if tl, err = onePass(); err == nil {
					_, err = tr.ForwardBackwardTokens(context.Background(), seqs, tl)
				}
			} else {
				_, err = tr.ForwardBackward(context.Background(), seqs, twoPass)
			}
			if err != nil {
				return fmt.Errorf("LM head with vocabulary %d: %w", vocab, err)
			}
			if _, err := tr.Step(); err != nil {
				return fmt.Errorf("LM head with vocabulary %d: %w", vocab, err)
			}
			sec, cpuSec := time.Since(t0).Seconds(), cpuSeconds()-c0
			peaks[i] = max(peaks[i], stop())
			if r > 0 {
				secs[i], cpus[i] = min(secs[i], sec), min(cpus[i], cpuSec)
			}
		}
	}
	w := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(w, "head\tstep s\tstep CPU s\theap peak GiB\t")
	for i, name := range []string{"two-pass (ForwardBackward)", "one-pass (ForwardBackwardTokens)"} {
		fmt.Fprintf(w, "%s\t%.2f\t%.2f\t%.2f\t\n", name, secs[i], cpus[i], float64(peaks[i])/(1<<30))
	}
	w.Flush()
	fmt.Printf("one-pass / two-pass: step time %.2fx, step CPU time %.2fx, heap peak %.2fx; max RSS of the process %.2f GiB\n",
		secs[1]/secs[0], cpus[1]/cpus[0], float64(peaks[1])/float64(peaks[0]), float64(maxRSS())/(1<<30))
	return nil
}

// lmHeadLosses returns the loss of runLMHead for each head: a maker of the one-pass head's
// per-token loss (a fresh one per step) and the two-pass head's loss.
func lmHeadLosses(loss string, seqs []engine.ScoreRequest) (func() (engine.TokenLoss, error), engine.LossFunc, error) {
	scored := 0
	for _, s := range seqs {
		scored += len(s.Tokens) - s.Start
	}
	switch loss {
	case "ce":
		tl := engine.TokenCrossEntropy(float64(scored))
		return func() (engine.TokenLoss, error) { return tl, nil }, engine.CrossEntropy(0), nil
	case "grpo":
	default:
		return nil, nil, fmt.Errorf("--lm-head-loss %q: want ce or grpo", loss)
	}
	cfg := grpo.DefaultLossConfig()
	cfg.TokenNorm, cfg.SeqNorm = float64(scored), float64(len(seqs))
	var in grpo.LossInput
	for i, s := range seqs {
		n := len(s.Tokens) - s.Start
		old, ref, adv := make([]float64, n), make([]float64, n), make([]float64, n)
		for j := range old {
			// About log(1/vocab), the random model's log-probs, so that some ratios clip.
			old[j] = -12 + 0.5*math.Sin(float64(7*i+j))
			ref[j] = -12 + 0.3*math.Cos(float64(5*i+j))
			adv[j] = float64(1 - 2*(i%2))
		}
		in.OldLogProbs, in.RefLogProbs, in.Advantages = append(in.OldLogProbs, old), append(in.RefLogProbs, ref), append(in.Advantages, adv)
	}
	onePass := func() (engine.TokenLoss, error) {
		l, err := grpo.NewTokenPolicyLoss(in, cfg)
		if err != nil {
			return engine.TokenLoss{}, err
		}
		return l.TokenLoss(), nil
	}
	twoPass := func(logp, ent [][]float64) (float64, [][]float64, [][]float64, error) {
		in := in
		in.LogProbs, in.Entropy = logp, ent
		out, err := grpo.PolicyLoss(in, cfg)
		return out.Loss, out.DLogProbs, out.DEntropy, err
	}
	return onePass, twoPass, nil
}
