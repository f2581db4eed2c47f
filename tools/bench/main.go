// Command bench prints the engine's speed on this machine next to the references measured in
// the same run: fp32 FMA peak (GFLOP/s) and STREAM-triad DRAM bandwidth (GB/s).
//
//	go run ./tools/bench            # matmul, prefill, decode and training on the ~122M Qwen2-shaped model
//	go run ./tools/bench --quick    # fewer repetitions
//	go run ./tools/bench --torch    # also PyTorch CPU training the same model and batch (Debian python3-torch; bf16 autocast too where the CPU has bf16)
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/pflag"

	"github.com/prolong-rl/prolong/engine"
	"github.com/prolong-rl/prolong/engine/cpu"
	"github.com/prolong-rl/prolong/tools/internal/clilog"
)

func main() {
	clilog.Setup("bench")
	fs := pflag.NewFlagSet("bench", pflag.ContinueOnError)
	fs.SetOutput(io.Discard) // --help is printed on stdout below; errors are logged
	quick := fs.Bool("quick", false, "fewer repetitions (noisier figures)")
	decodeSteps := fs.Int("decode-steps", 64, "tokens generated per sequence in the decode measurement")
	promptLen := fs.Int("prompt", 256, "prompt length of the prefill measurement")
	train := fs.Bool("train", true, "measure a training step (forward, backward, AdamW)")
	torch := fs.Bool("torch", false, "run scripts/bench_torch_train.py with /usr/bin/python3 on the same model and batch and print the ratio (also under bf16 autocast where the CPU has bf16 dot products, beside prolong's bf16 matmuls)")
	trainBatch := fs.Int("train-batch", 4, "sequences per training step")
	trainSeq := fs.Int("train-seq", 128, "tokens per training sequence")
	longSeq := fs.IntSlice("long-seq", nil, "also time one training step on one sequence of each of these lengths (e.g. 2048,4096,8192,16384): seconds, peak memory, attention's share; minutes each on a few cores")
	loraMem := fs.Int("lora-memory", 0, "also measure the training memory (weights, gradients, AdamW, activations) of full fine-tuning against LoRA of this rank, fp32 and bf16 base, at --train-batch x --train-seq; 0: off")
	zeroMem := fs.Bool("zero-memory", false, "also print the training memory per rank of the Qwen2.5-1.5B shape on 1, 2, 4 and 8 data-parallel ranks, AdamW moments replicated and sharded (--shard-optimizer, ZeRO-1), worked out from the shape")
	lmHeadVocab := fs.Int("lm-head-vocab", 0, "also time a training step of the 122M model with this vocabulary (e.g. 151936) on --train-batch x --train-seq tokens through each LM head (two-pass, one-pass): seconds and peak memory, and their ratio")
	lmHeadLoss := fs.String("lm-head-loss", "ce", "--lm-head-vocab: the loss, ce (cross-entropy) or grpo (the GRPO policy loss of the ProRL recipe: grpo.PolicyLoss on the two-pass head, grpo.TokenPolicyLoss on the one-pass head)")
	inference := fs.Bool("inference", true, "measure matmul, prefill and decode")
	longDecode := fs.Bool("long-decode", true, "measure batch-1 decode at 256 and 16k tokens of context with fp32 and bf16 KV caches")
	device := fs.String("device", "cpu", "cpu (the CPU table), cuda (the GPU table on the 1.5B Qwen2 shape: decode, rollouts, training), or auto")
	jsonPath := fs.String("json", "", "with --device cuda: also write the figures as JSON to this file")
	rolloutTokens := fs.Int("rollout-tokens", 1024, "with --device cuda: new tokens per sample in the rollout rows")
	withORT := fs.Bool("ort", false, "also run the engine's ONNX export of the model in ONNX Runtime (fp32, all cores; scripts/setup-ort.sh or $ONNXRUNTIME_LIB) and print the engine's rates as ratios of its")
	usage := func() {
		fmt.Println(`bench prints the engine's speed on this machine as ratios of ceilings measured in the
same run: on the CPU, the fp32 FMA peak and the DRAM triad bandwidth (matmuls, prefill, decode,
training on a ~122M Qwen2-shaped model; --torch adds PyTorch); on a GPU (--device cuda), the
device's copy bandwidth and bf16 GEMM rate (decode, rollouts and training on a 1.5B shape).

Usage: go run ./tools/bench [flags]`)
		fmt.Print(fs.FlagUsages())
	}
	switch err := fs.Parse(os.Args[1:]); {
	case errors.Is(err, pflag.ErrHelp):
		usage() // on stdout
		return
	case err != nil:
		slog.Error(err.Error() + " (see --help)")
		os.Exit(2)
	}
	var err error
	if *device == "auto" {
		d, err := engine.OpenDevice("auto", engine.DeviceOptions{})
		if err != nil {
			slog.Error(err.Error())
			os.Exit(1)
		}
		fmt.Println("device:", d.Chosen)
		*device = d.Info.Kind // the GPU path below opens its own backends (fp32 and bf16 matmuls)
		d.Close()
	}
	if *device == "cuda" {
		if err := runGPU(*quick, *jsonPath, *rolloutTokens); err != nil {
			slog.Error(err.Error())
			os.Exit(1)
		}
		return
	}
	if *device != "cpu" {
		slog.Error("--device must be cpu, cuda or auto", "device", *device)
		os.Exit(2)
	}
	// The ceilings, measured once: every ratio of the run is against the same figures.
	peak := cpu.PeakFMA(time.Second)
	bw := cpu.TriadBandwidth(2 * time.Second)
	fmt.Printf("machine: %s, %d threads, kernels %s\n", runtime.GOARCH, runtime.GOMAXPROCS(0), cpu.KernelISA())
	fmt.Printf("matrix engines: fp32 FMA; bf16 dot products on %s (%s by the automatic choice); AMX: %s\n",
		cpu.BF16DotEngine(), map[bool]string{true: "used", false: "not used"}[cpu.BF16DotPreferred()], cpu.AMXStatus())
	fmt.Printf("reference: fp32 FMA peak %.0f GFLOP/s, triad bandwidth %.1f GB/s\n\n", peak, bw)
	if *inference {
		err = run(*quick, *withORT, *decodeSteps, *promptLen, peak, bw)
	}
	if err == nil && *longDecode {
		reps := 3
		if *quick {
			reps = 1
		}
		err = runLongDecode(reps, max(8, *decodeSteps/4), bw)
	}
	if err == nil && *train {
		err = runTrain(*quick, *torch, *trainBatch, *trainSeq, peak)
	}
	if err == nil && *loraMem > 0 {
		err = runTrainMemory(*trainBatch, *trainSeq, *loraMem)
		if err == nil {
			err = trainMemory15B(*loraMem, 8*1024)
		}
	}
	if err == nil && *zeroMem {
		err = zeroMemory15B()
	}
	if err == nil && *lmHeadVocab > 0 {
		reps := 2
		if *quick {
			reps = 1
		}
		err = runLMHead(*lmHeadVocab, *trainBatch, *trainSeq, reps, *lmHeadLoss)
	}
	if err == nil && len(*longSeq) > 0 {
		err = runLongTrain(*longSeq)
	}
	if err != nil {
		slog.Error(err.Error())
		os.Exit(1)
	}
}

// cacheBytes bounds the weights a matmul row may stream from the caches rather than DRAM
// (the last-level caches of the machines we run on hold 32 MiB): smaller ones get no triad ratio.
const cacheBytes = 24 << 20

func run(quick, withORT bool, decodeSteps, promptLen int, peak, bw float64) error {
	reps := 3
	if quick {
		reps = 1
	}

	w := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(w, "matmul\tengine\tM\tN\tK\tGFLOP/s\t% of peak\tvs f32\tGB/s\t% of triad\t")
	for _, s := range []struct{ m, n, k int }{
		{512, 2048, 768}, {512, 768, 2048}, {256, 768, 768}, {64, 2048, 768},
		{16, 2048, 768}, {1, 2048, 768}, {1, 32000, 768},
	} {
		var f32 float64 // the f32 row's GFLOP/s
		for _, v := range matmulVariants() {
			restore := func() {}
			if v.isa != "" {
				var err error
				if restore, err = cpu.SetKernelISA(v.isa); err != nil {
					return err
				}
			}
			dt := v.dt
			cb := cpu.New(cpu.WithMatMulPrecision(v.prec))
			wd := make([]float32, s.n*s.k)
			for i := range wd {
				wd[i] = float32(i%7) * 0.01
			}
			wt, err := cb.Upload(dt, wd, true, s.n, s.k)
			if err != nil {
				return err
			}
			x, y := cb.Alloc(s.m, s.k), cb.Alloc(s.m, s.n)
			name := v.name
			bytes := float64(s.n * s.k * 4)
			if dt == engine.BF16 {
				bytes /= 2
			}
			iters := max(1, int(2e9/float64(2*s.m*s.n*s.k)))
			best := time.Duration(1 << 62)
			for r := 0; r < reps; r++ {
				t0 := time.Now()
				for i := 0; i < iters; i++ {
					cb.MatMul(y, x, wt)
				}
				best = min(best, time.Since(t0)/time.Duration(iters))
			}
			restore()
			gf := 2 * float64(s.m*s.n*s.k) / best.Seconds() / 1e9
			gb := bytes / best.Seconds() / 1e9
			// A weight that fits in the caches is not streamed from DRAM: a ratio to the
			// triad would read above 100%.
			ofTriad := fmt.Sprintf("%.0f%%", 100*gb/bw)
			if bytes < cacheBytes {
				ofTriad = "in cache"
			}
			if v.name == "f32" {
				f32 = gf
			}
			fmt.Fprintf(w, "%s\t%s\t%d\t%d\t%d\t%.1f\t%.0f%%\t%.2fx\t%.1f\t%s\t\n", name, v.engine, s.m, s.n, s.k, gf, 100*gf/peak, gf/f32, gb, ofTriad)
		}
	}
	w.Flush()
	fmt.Println()

	c := engine.Bench122M()
	fmt.Printf("model: Qwen2-shaped, %.1fM parameters (hidden %d, %d layers, %d/%d heads, vocab %d)\n\n",
		float64(c.NumParams())/1e6, c.HiddenSize, c.NumHiddenLayers, c.NumAttentionHeads, c.NumKeyValueHeads, c.VocabSize)
	w = tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(w, "weights\tengine\tphase\tbatch\ttok/s\tvs F32\tGFLOP/s\t% of peak\tweight GB/s\t% of triad\t")
	weights := engine.RandomWeights(c, 1, 0.02)
	ours := map[engine.DType]map[string]float64{engine.F32: {}, engine.BF16: {}} // tok/s by row
	for _, mv := range modelVariants() {
		dt := mv.dt
		m, err := engine.NewModel(c, cpu.New(cpu.WithMatMulPrecision(mv.prec)), weights, dt)
		if err != nil {
			return err
		}
		label := mv.name
		f32 := ours[engine.F32]
		rate := map[string]float64{} // this variant's tok/s by row
		if mv.prec == cpu.PrecisionAuto {
			rate = ours[dt]
		}
		layerFlops := 2 * float64(c.LayerMatmulParams()) // per token, linear layers only
		for _, batch := range []int{1, 16} {
			sec, err := bestOf(reps, func() (float64, error) { return timeGen(m, batch, promptLen, 1) })
			if err != nil {
				return err
			}
			toks := float64(batch * promptLen)
			gf := layerFlops * toks / sec / 1e9
			row := prefillRow(promptLen, batch)
			rate[row] = toks / sec
			fmt.Fprintf(w, "%v\t%s\tprefill %d\t%d\t%.0f\t%.2fx\t%.1f\t%.0f%%\t\t\t\n", label, mv.engine, promptLen, batch, toks/sec, rate[row]/f32[row], gf, 100*gf/peak)
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
			row := decodeRow(batch)
			rate[row] = toks / sec
			fmt.Fprintf(w, "%v\t%s\tdecode\t%d\t%.1f\t%.2fx\t%.1f\t%.0f%%\t%.1f\t%.0f%%\t\n", label, mv.engine, batch, toks/sec, rate[row]/f32[row], gf, 100*gf/peak, gb, 100*gb/bw)
		}
	}
	w.Flush()
	if !withORT {
		return nil
	}
	theirs, err := ortRates(c, weights, reps, promptLen, decodeSteps)
	if err != nil {
		return err
	}
	fmt.Printf("\nONNX Runtime on the engine's export of the same weights (fp32, all cores), measured in this run:\n\n")
	w = tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(w, "phase\tbatch\tONNX Runtime tok/s\tprolong fp32 / ORT\tprolong %s / ORT\t\n", modelVariants()[1].name)
	for _, row := range []struct {
		phase, key string
		batch      int
	}{{fmt.Sprintf("prefill %d", promptLen), prefillRow(promptLen, 1), 1}, {"decode", decodeRow(1), 1}, {"decode", decodeRow(16), 16}} {
		t := theirs[row.key]
		fmt.Fprintf(w, "%s\t%d\t%.1f\t%.2fx\t%.2fx\t\n", row.phase, row.batch, t, ours[engine.F32][row.key]/t, ours[engine.BF16][row.key]/t)
	}
	w.Flush()
	return nil
}

// longContexts are the contexts of the batch-1 decode rows by KV dtype.
var longContexts = []int{256, 16384}

// runLongDecode prints batch-1 decode at 256 and 16k tokens of context with fp32 and bf16 KV
// caches (fp32 weights), steps tokens each: tok/s and the KV bytes a token reads, as GB/s and a
// share of the triad bandwidth. The context is not prefilled (engine.TimeDecode).
func runLongDecode(reps, steps int, bw float64) error {
	c := *engine.Bench122M()
	c.MaxPositionEmbeddings = longContexts[len(longContexts)-1] + steps + 1
	m, err := engine.NewModel(&c, cpu.New(), engine.RandomWeights(&c, 1, 0.02), engine.F32)
	if err != nil {
		return err
	}
	fmt.Printf("batch-1 decode at long context (fp32 weights; the context's keys and values left zero, not prefilled; attention split over chunks of %d positions, flash-decoding):\n\n", cpu.AttnChunk)
	w := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(w, "KV\tcontext\ttok/s\tms/token\tKV MB/token\tKV GB/s\tweights+KV % of triad\t")
	for _, ctx := range longContexts {
		for _, kv := range []engine.KVDType{engine.KVF32, engine.KVBF16} {
			sec, err := bestOf(reps, func() (float64, error) { return engine.TimeDecode(m, kv, ctx, steps) })
			if err != nil {
				return err
			}
			elem := 4
			if kv == engine.KVBF16 {
				elem = 2
			}
			kvBytes := float64(ctx * c.NumHiddenLayers * 2 * c.KVDim() * elem)
			all := kvBytes + float64(m.LinearBytes())
			fmt.Fprintf(w, "%v\t%d\t%.1f\t%.1f\t%.1f\t%.1f\t%.0f%%\t\n", kv, ctx, 1/sec, 1e3*sec, kvBytes/1e6, kvBytes/sec/1e9, 100*all/sec/1e9/bw)
		}
	}
	w.Flush()
	fmt.Println()
	return nil
}

// matmulVariant is one kind of weight of the matmul table.
type matmulVariant struct {
	name   string
	engine string // the matrix engine that multiplies it
	dt     engine.DType
	prec   cpu.Precision
	isa    string // the kernel path it runs on; "": the one in use
}

// matmulVariants: fp32 weights, bf16 weights widened to fp32, and, on each kernel path whose
// bf16 dot products run in hardware (VDPBF16PS, AMX), bf16 weights as bf16 dot products.
func matmulVariants() []matmulVariant {
	vs := []matmulVariant{{"f32", fp32Engine, engine.F32, cpu.PrecisionFP32, ""}, {"bf16 widened", fp32Engine, engine.BF16, cpu.PrecisionFP32, ""}}
	for _, isa := range dotISAs() {
		vs = append(vs, matmulVariant{"bf16 dot", isa.engine, engine.BF16, cpu.PrecisionBF16, isa.name})
	}
	return vs
}

// fp32Engine names the matrix engine of fp32 matmuls (bf16 weights widened too).
const fp32Engine = "fp32 FMA"

type dotISA struct{ name, engine string }

// dotISAs lists the kernel paths whose bf16 dot products run in hardware, and their engines.
func dotISAs() []dotISA {
	var s []dotISA
	for _, isa := range cpu.KernelISAs() {
		restore, err := cpu.SetKernelISA(isa)
		if err != nil {
			continue
		}
		if cpu.HasBF16Dot() {
			s = append(s, dotISA{isa, cpu.BF16DotEngine()})
		}
		restore()
	}
	return s
}

// modelVariant is one row group of the model table.
type modelVariant struct {
	name, engine string
	dt           engine.DType
	prec         cpu.Precision
}

// modelVariants: fp32 weights, bf16 weights as the automatic choice multiplies them (dot
// products where those beat fp32 here, else widened), and where the CPU has bf16 dot products
// that the automatic choice leaves out (Intel without AMX), bf16 weights as dot products too.
func modelVariants() []modelVariant {
	auto := modelVariant{"bf16 widened", fp32Engine, engine.BF16, cpu.PrecisionAuto}
	if cpu.BF16DotPreferred() {
		auto.name, auto.engine = "bf16 dot", cpu.BF16DotEngine()
	}
	vs := []modelVariant{{"F32", fp32Engine, engine.F32, cpu.PrecisionAuto}, auto}
	if cpu.HasBF16Dot() && !cpu.BF16DotPreferred() {
		vs = append(vs, modelVariant{"bf16 dot (not auto)", cpu.BF16DotEngine(), engine.BF16, cpu.PrecisionBF16})
	}
	return vs
}

// prefillRow and decodeRow name the rows the engine and ONNX Runtime are compared on.
func prefillRow(promptLen, batch int) string { return fmt.Sprintf("prefill %d/%d", promptLen, batch) }
func decodeRow(batch int) string             { return fmt.Sprintf("decode %d", batch) }

// runTrain times training steps of the 122M model on batch x seqLen tokens (cross-entropy on
// every next token, AdamW with clipping), and optionally PyTorch doing the same.
func runTrain(quick, torch bool, batch, seqLen int, peak float64) error {
	c := engine.Bench122M()
	steps := 3
	if quick {
		steps = 1
	}
	fmt.Printf("\ntraining: %d x %d tokens per step, forward + backward + AdamW (fp32 parameters and optimizer; bf16: matmuls as bf16 dot products); MFU = 6 x (layer linear weights + LM head) x tokens/s / FMA peak %.0f GFLOP/s\n\n", batch, seqLen, peak)
	w := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(w, "engine	matmuls on	step s	tok/s	vs fp32	GFLOP/s	MFU	prolong / this	")
	flopsPerTok := 6 * float64(c.LayerMatmulParams()+int64(c.VocabSize*c.HiddenSize))
	var ours, oursBF16 float64 // prolong's fp32 and bf16-matmul tok/s
	type variant struct {
		recompute bool
		prec      cpu.Precision
	}
	variants := []variant{{false, cpu.PrecisionFP32}, {true, cpu.PrecisionFP32}}
	if cpu.HasBF16Dot() {
		variants = append(variants, variant{false, cpu.PrecisionBF16})
	}
	for _, v := range variants {
		recompute := v.recompute
		m, err := engine.NewModel(c, cpu.New(cpu.WithMatMulPrecision(v.prec)), engine.RandomWeights(c, 1, 0.02), engine.F32)
		if err != nil {
			return err
		}
		tr, err := engine.NewTrainer(m, engine.TrainOptions{Recompute: recompute, Optimizer: engine.AdamWConfig{LR: 1e-4, ClipNorm: 1}})
		if err != nil {
			return err
		}
		seqs := trainBatch(c, batch, seqLen)
		step := func() (float64, error) {
			t0 := time.Now()
			if _, err := tr.ForwardBackward(context.Background(), seqs, engine.CrossEntropy(0)); err != nil {
				return 0, err
			}
			_, err := tr.Step()
			return time.Since(t0).Seconds(), err
		}
		if _, err := step(); err != nil { // warm-up
			return err
		}
		sec, err := bestOf(steps, step)
		if err != nil {
			return err
		}
		toks := float64(batch * seqLen)
		gf := flopsPerTok * toks / sec / 1e9
		name, eng := "prolong", fp32Engine
		switch {
		case recompute:
			name += " (recompute)"
		case v.prec == cpu.PrecisionBF16:
			name, eng = name+" (bf16 matmuls)", cpu.BF16DotEngine()
			oursBF16 = toks / sec
		default:
			ours = toks / sec
		}
		fmt.Fprintf(w, "%s\t%s\t%.2f\t%.1f\t%.2fx\t%.1f\t%.0f%%\t\t\n", name, eng, sec, toks/sec, toks/sec/ours, gf, 100*gf/peak)
	}
	if torch {
		// Debian's torch links the system BLAS (the slow reference BLAS unless another is
		// selected); OpenBLAS, when installed (libopenblas0-pthread), is the fair peer.
		type env struct {
			name, libdir string
			bf16         bool // bf16 autocast (matmuls on oneDNN)
		}
		envs := []env{{"system BLAS", "", false}}
		if _, err := os.Stat(openBLASDir); err == nil {
			envs = append(envs, env{"OpenBLAS", openBLASDir, false})
		}
		if cpu.HasBF16Dot() {
			envs = append(envs, env{"bf16 autocast", "", true})
		}
		for _, e := range envs {
			tps, sec, blas, err := torchTrain(c, batch, seqLen, steps, e.libdir, e.bf16)
			if err != nil {
				return err
			}
			gf := flopsPerTok * tps / 1e9
			eng, ratio := fp32Engine, ours/tps
			if e.bf16 {
				eng, blas, ratio = "oneDNN bf16", "oneDNN", oursBF16/tps
			}
			fmt.Fprintf(w, "pytorch, %s (%s)\t%s\t%.2f\t%.1f\t%.2fx\t%.1f\t%.0f%%\t%.2fx\t\n", e.name, blas, eng, sec, tps, tps/ours, gf, 100*gf/peak, ratio)
		}
	}
	w.Flush()
	return nil
}

// trainBatch is the training benchmarks' batch: batch sequences of seqLen fixed pseudo-random
// tokens, every next token a target (Start 1).
func trainBatch(c *engine.Config, batch, seqLen int) []engine.ScoreRequest {
	var seqs []engine.ScoreRequest
	for i := 0; i < batch; i++ {
		toks := make([]int32, seqLen)
		for j := range toks {
			toks[j] = int32((i*131 + j*7919) % c.VocabSize)
		}
		seqs = append(seqs, engine.ScoreRequest{Tokens: toks, Start: 1})
	}
	return seqs
}

// openBLASDir is where Debian's libopenblas0-pthread puts its libblas.so.3.
const openBLASDir = "/usr/lib/x86_64-linux-gnu/openblas-pthread"

// torchTrain runs scripts/bench_torch_train.py on the same model shape and batch and returns
// its tokens/s and seconds per step.
func torchTrain(c *engine.Config, batch, seqLen, steps int, libdir string, bf16 bool) (tps, sec float64, blas string, err error) {
	args := []string{"scripts/bench_torch_train.py",
		"--vocab", fmt.Sprint(c.VocabSize), "--hidden", fmt.Sprint(c.HiddenSize), "--layers", fmt.Sprint(c.NumHiddenLayers),
		"--heads", fmt.Sprint(c.NumAttentionHeads), "--kv-heads", fmt.Sprint(c.NumKeyValueHeads), "--head-dim", fmt.Sprint(c.HeadDim),
		"--intermediate", fmt.Sprint(c.IntermediateSize), "--batch", fmt.Sprint(batch), "--seq", fmt.Sprint(seqLen),
		"--steps", fmt.Sprint(steps), "--warmup", "1", "--threads", fmt.Sprint(runtime.GOMAXPROCS(0))}
	if bf16 {
		args = append(args, "--autocast-bf16")
	}
	cmd := exec.Command("/usr/bin/python3", args...)
	if libdir != "" {
		cmd.Env = append(os.Environ(), "LD_LIBRARY_PATH="+libdir)
	}
	out, err := cmd.Output()
	if err != nil {
		return 0, 0, "", fmt.Errorf("pytorch benchmark (needs Debian python3-torch; run from the repository root): %w", err)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	var r struct {
		TokPerS float64  `json:"tok_per_s"`
		StepS   float64  `json:"step_s"`
		BLAS    []string `json:"blas"`
	}
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &r); err != nil {
		return 0, 0, "", fmt.Errorf("pytorch benchmark output %q: %w", lines[len(lines)-1], err)
	}
	return r.TokPerS, r.StepS, filepath.Base(strings.Join(r.BLAS, ",")), nil
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
	return timeGenerate(m, engine.GeneratorOptions{MaxBatchTokens: batch * promptLen}, benchRequests(m.Config.VocabSize, batch, promptLen, newTokens, 1, 0))
}

// benchRequests are batch prompts of promptLen made-up tokens (of a vocabulary of vocab), each
// asking for newTokens tokens at temperature temp; prompt i samples with seed seed0+i.
func benchRequests(vocab, batch, promptLen, newTokens int, temp float32, seed0 uint64) []engine.Request {
	var rs []engine.Request
	for i := 0; i < batch; i++ {
		p := make([]int32, promptLen)
		for j := range p {
			p[j] = int32((i*131 + j*7) % vocab)
		}
		rs = append(rs, engine.Request{Prompt: p, Params: engine.SamplingParams{MaxNewTokens: newTokens, Temperature: temp, Seed: seed0 + uint64(i)}})
	}
	return rs
}

// timeGenerate generates rs on a generator of m with opts and returns the seconds it took.
func timeGenerate(m *engine.Model, opts engine.GeneratorOptions, rs []engine.Request) (float64, error) {
	gen, err := engine.NewGenerator(m, opts)
	if err != nil {
		return 0, err
	}
	defer gen.Close()
	t0 := time.Now()
	_, err = gen.Generate(context.Background(), rs)
	return time.Since(t0).Seconds(), err
}
