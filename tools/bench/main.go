// Command bench prints the engine's speed on this machine next to the references measured in
// the same run: fp32 FMA peak (GFLOP/s) and STREAM-triad DRAM bandwidth (GB/s).
//
//	go run ./tools/bench            # matmul, prefill and decode on the ~122M Qwen2-shaped model
//	go run ./tools/bench --quick    # fewer repetitions
package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"runtime"
	"text/tabwriter"
	"time"

	"github.com/spf13/pflag"

	"github.com/prolong-rl/prolong/engine"
)

func main() {
	quick := pflag.Bool("quick", false, "fewer repetitions (noisier figures)")
	decodeSteps := pflag.Int("decode-steps", 64, "tokens generated per sequence in the decode measurement")
	promptLen := pflag.Int("prompt", 256, "prompt length of the prefill measurement")
	pflag.Parse()
	if err := run(*quick, *decodeSteps, *promptLen); err != nil {
		slog.Error("bench failed", "err", err)
		os.Exit(1)
	}
}

func run(quick bool, decodeSteps, promptLen int) error {
	reps := 3
	if quick {
		reps = 1
	}
	peak := engine.PeakFMA(time.Second)
	bw := engine.TriadBandwidth(2 * time.Second)
	fmt.Printf("machine: %s, %d threads, kernels %s\n", runtime.GOARCH, runtime.GOMAXPROCS(0), engine.KernelISA())
	fmt.Printf("reference: fp32 FMA peak %.0f GFLOP/s, triad bandwidth %.1f GB/s\n\n", peak, bw)

	w := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(w, "matmul\tM\tN\tK\tGFLOP/s\t% of peak\tGB/s\t% of triad\t")
	for _, s := range []struct{ m, n, k int }{
		{512, 2048, 768}, {512, 768, 2048}, {256, 768, 768}, {64, 2048, 768},
		{16, 2048, 768}, {1, 2048, 768}, {1, 32000, 768},
	} {
		for _, dt := range []engine.DType{engine.F32, engine.BF16} {
			cpu := engine.NewCPU()
			wd := make([]float32, s.n*s.k)
			for i := range wd {
				wd[i] = float32(i%7) * 0.01
			}
			wt, err := cpu.Upload(dt, wd, true, s.n, s.k)
			if err != nil {
				return err
			}
			x, y := cpu.Alloc(s.m, s.k), cpu.Alloc(s.m, s.n)
			name := dt.String()
			bytes := float64(s.n * s.k * 4)
			if dt == engine.BF16 {
				bytes /= 2
			}
			iters := max(1, int(2e9/float64(2*s.m*s.n*s.k)))
			best := time.Duration(1 << 62)
			for r := 0; r < reps; r++ {
				t0 := time.Now()
				for i := 0; i < iters; i++ {
					cpu.MatMul(y, x, wt)
				}
				best = min(best, time.Since(t0)/time.Duration(iters))
			}
			gf := 2 * float64(s.m*s.n*s.k) / best.Seconds() / 1e9
			gb := bytes / best.Seconds() / 1e9
			fmt.Fprintf(w, "%s\t%d\t%d\t%d\t%.1f\t%.0f%%\t%.1f\t%.0f%%\t\n", name, s.m, s.n, s.k, gf, 100*gf/peak, gb, 100*gb/bw)
		}
	}
	w.Flush()
	fmt.Println()

	c := engine.Bench122M()
	fmt.Printf("model: Qwen2-shaped, %.1fM parameters (hidden %d, %d layers, %d/%d heads, vocab %d)\n\n",
		float64(c.NumParams())/1e6, c.HiddenSize, c.NumHiddenLayers, c.NumAttentionHeads, c.NumKeyValueHeads, c.VocabSize)
	w = tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(w, "weights\tphase\tbatch\ttok/s\tGFLOP/s\t% of peak\tweight GB/s\t% of triad\t")
	for _, dt := range []engine.DType{engine.F32, engine.BF16} {
		m, err := engine.NewModel(c, engine.NewCPU(), engine.RandomWeights(c, 1, 0.02), dt)
		if err != nil {
			return err
		}
		layerFlops := 2 * float64(c.LayerMatmulParams()) // per token, linear layers only
		for _, batch := range []int{1, 16} {
			sec, err := bestOf(reps, func() (float64, error) { return timeGen(m, batch, promptLen, 1) })
			if err != nil {
				return err
			}
			toks := float64(batch * promptLen)
			gf := layerFlops * toks / sec / 1e9
			fmt.Fprintf(w, "%v\tprefill %d\t%d\t%.0f\t%.1f\t%.0f%%\t\t\t\n", dt, promptLen, batch, toks/sec, gf, 100*gf/peak)
		}
		for _, batch := range []int{1, 16} {
			sec, err := bestOf(reps, func() (float64, error) {
				t1, err := timeGen(m, batch, 32, 1)
				if err != nil {
					return 0, err
				}
				t2, err := timeGen(m, batch, 32, decodeSteps+1)
				return t2 - t1, err
			})
			if err != nil {
				return err
			}
			toks := float64(batch * decodeSteps)
			gb := float64(m.LinearBytes()) * float64(decodeSteps) / sec / 1e9
			gf := (layerFlops + 2*float64(c.VocabSize*c.HiddenSize)) * toks / sec / 1e9
			fmt.Fprintf(w, "%v\tdecode\t%d\t%.1f\t%.1f\t%.0f%%\t%.1f\t%.0f%%\t\n", dt, batch, toks/sec, gf, 100*gf/peak, gb, 100*gb/bw)
		}
	}
	w.Flush()
	return nil
}

func bestOf(n int, f func() (float64, error)) (float64, error) {
	best := 1e300
	for i := 0; i < n; i++ {
		s, err := f()
		if err != nil {
			return 0, err
		}
		best = min(best, s)
	}
	return best, nil
}

// timeGen generates newTokens tokens for batch prompts of promptLen tokens and returns seconds.
func timeGen(m *engine.Model, batch, promptLen, newTokens int) (float64, error) {
	gen, err := engine.NewGenerator(m, engine.GeneratorOptions{MaxBatchTokens: batch * promptLen})
	if err != nil {
		return 0, err
	}
	defer gen.Close()
	var rs []engine.Request
	for i := 0; i < batch; i++ {
		p := make([]int32, promptLen)
		for j := range p {
			p[j] = int32((i*131 + j*7) % m.Config.VocabSize)
		}
		rs = append(rs, engine.Request{Prompt: p, Params: engine.SamplingParams{MaxNewTokens: newTokens, Temperature: 1, Seed: uint64(i)}})
	}
	t0 := time.Now()
	_, err = gen.Generate(context.Background(), rs)
	return time.Since(t0).Seconds(), err
}
