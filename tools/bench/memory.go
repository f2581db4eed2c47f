package main

import (
	"context"
	"fmt"
	"os"
	"runtime"
	"text/tabwriter"

	"github.com/prolong-rl/prolong/engine"
	"github.com/prolong-rl/prolong/engine/cpu"
)

// heapInUse is the Go heap in use after a collection (the CPU backend keeps every tensor there).
func heapInUse() uint64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapInuse
}

// runTrainMemory measures the training memory of the 122M model on batch x seqLen tokens,
// full fine-tuning against LoRA of the given rank (every linear layer of the decoder, fp32
// and bf16 base): weights (with the packed matmul copies the CPU backend keeps), gradients
// and AdamW moments (4 and 8 bytes per trainable parameter), and the activations of a step
// (the Go heap's peak during ForwardBackward above what the model, gradients and optimizer
// hold).
func runTrainMemory(batch, seqLen, rank int) error {
	c := engine.Bench122M()
	fmt.Printf("\ntraining memory: 122M model, %d x %d tokens per step, fp32 matmuls; LoRA rank %d alpha %d on every linear layer of the decoder\n\n", batch, seqLen, rank, 2*rank)
	w := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(w, "training\ttrainable params\tweights MiB\tgradients MiB\tAdamW MiB\tactivations MiB\tbackend caches MiB\tpeak MiB\t")
	type variant struct {
		name string
		rank int
		base engine.DType
	}
	mib := func(b float64) float64 { return b / (1 << 20) }
	for _, v := range []variant{{"full fine-tuning", 0, engine.F32}, {fmt.Sprintf("LoRA r%d, fp32 base", rank), rank, engine.F32},
		{fmt.Sprintf("LoRA r%d, bf16 base", rank), rank, engine.BF16}} {
		h0 := heapInUse()
		weights := engine.RandomWeights(c, 1, 0.02) // host copies, kept to the end and subtracted
		host := 4 * float64(c.NumParams())
		b := cpu.New(cpu.WithMatMulPrecision(cpu.PrecisionFP32))
		m, err := engine.NewModel(c, b, weights, v.base)
		if err != nil {
			return err
		}
		opts := engine.TrainOptions{Optimizer: engine.AdamWConfig{LR: 1e-4, ClipNorm: 1}}
		if v.rank > 0 {
			opts.LoRA = engine.LoRAConfig{Rank: v.rank, Alpha: float64(2 * v.rank), Seed: 1}
		}
		tr, err := engine.NewTrainer(m, opts)
		if err != nil {
			return err
		}
		var n int64
		for _, name := range tr.TrainableNames() {
			g, err := tr.Grad(name)
			if err != nil {
				return err
			}
			n += int64(len(g))
		}
		seqs := trainBatch(c, batch, seqLen)
		step := func() (uint64, error) {
			stop := heapPeak()
			if _, err := tr.ForwardBackward(context.Background(), seqs, engine.CrossEntropy(0)); err != nil {
				stop()
				return 0, err
			}
			peak := stop()
			_, err := tr.Step()
			return peak, err
		}
		if _, err := step(); err != nil { // builds the packed copies the steps keep
			return err
		}
		static := heapInUse()
		peak, err := step()
		if err != nil {
			return err
		}
		grads, opt := float64(4*n), float64(8*n)
		// The model's tensors: its linear weights as stored (fp32 parameters, or the frozen
		// base as uploaded), the embedding, norms and biases in fp32, and the adapters.
		other := c.NumParams() - c.LayerMatmulParams() - int64(c.VocabSize*c.HiddenSize)
		if c.TieWordEmbeddings {
			other += int64(c.VocabSize * c.HiddenSize)
		}
		wts := float64(m.LinearBytes() + 4*other)
		if v.rank > 0 {
			wts += float64(4 * n)
		}
		caches := float64(static-h0) - host - wts - grads - opt
		act := float64(peak) - float64(static)
		fmt.Fprintf(w, "%s\t%d\t%.0f\t%.1f\t%.1f\t%.0f\t%.0f\t%.0f\t\n", v.name, n, mib(wts), mib(grads), mib(opt), mib(act), mib(caches), mib(float64(peak-h0)-host))
		runtime.KeepAlive(tr)
		runtime.KeepAlive(weights)
	}
	w.Flush()
	fmt.Println("\nweights: the model's tensors as stored (fp32 parameters; a LoRA run's frozen base as uploaded, bf16 or fp32, and its fp32 adapters); backend caches: what the CPU backend holds besides after a step (the packed W and Wᵀ copies of every fp32 parameter that its matmuls read, pooled scratch buffers and transposes); activations: the Go heap's peak during forward + backward above all that; peak: the heap's peak during the step, the host copy of the weights left out")
	return nil
}

// trainMemory15B prints the training memory of the 1.5B shape (Qwen15B), full fine-tuning
// against LoRA of the given rank on every linear layer of the decoder, worked out from the
// shapes (this machine does not hold it): weights, gradients, AdamW moments and the layer
// inputs --recompute keeps for tokens tokens. Full fine-tuning keeps fp32 parameters and, on
// CUDA, a bf16 copy of each matmul weight; LoRA a bf16 base and fp32 adapters.
func trainMemory15B(rank, tokens int) error {
	c := Qwen15B()
	specs, err := engine.LoRASpecs(c, engine.LoRAConfig{Rank: rank, Alpha: float64(2 * rank), Targets: []string{"all-linear"}})
	if err != nil {
		return err
	}
	var l int64 // adapter parameters
	for _, s := range specs {
		l += int64(engine.NumElements(s.Shape))
	}
	p := c.NumParams()
	acts := float64(tokens) * float64(c.HiddenSize) * 4 * float64(c.NumHiddenLayers)
	gib := func(b float64) float64 { return b / (1 << 30) }
	fmt.Printf("\ntraining memory: 1.5B shape (%d parameters), worked out from the shape, not measured; LoRA rank %d on every linear layer of the decoder (%d parameters); --recompute's layer inputs for %d tokens\n\n", p, rank, l, tokens)
	w := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(w, "training\ttrainable params\tweights GiB\tgradients GiB\tAdamW GiB\tlayer inputs GiB\tsum GiB\t")
	row := func(name string, n int64, weights, g, o float64) {
		fmt.Fprintf(w, "%s\t%d\t%.2f\t%.2f\t%.2f\t%.2f\t%.2f\t\n", name, n, gib(weights), gib(g), gib(o), gib(acts), gib(weights+g+o+acts))
	}
	full := fullTrainBytes(c, 1, false)
	row("full fine-tuning (fp32 + bf16 matmul copies)", p, full.master+full.copies, full.grads, full.moments)
	row(fmt.Sprintf("LoRA r%d, bf16 base", rank), l, float64(2*p+4*l), float64(4*l), float64(8*l))
	w.Flush()
	fmt.Println("\nnot counted: the logits chunk (64 MiB), one layer's activations during its recomputation, the KV cache of the rollouts, the allocator's slack")
	return nil
}

// trainBytes is the memory one rank holds to train every weight of a model (bytes): the fp32
// master weights (the parameters the optimizer updates; the CPU backend's forward reads them
// too), the bf16 copies of the decoder layers' matmul weights that the CUDA backend's forward
// reads, the fp32 gradients, and AdamW's two fp32 moments.
type trainBytes struct {
	master, copies, grads, moments float64
}

func (b trainBytes) sum() float64 { return b.master + b.copies + b.grads + b.moments }

// fullTrainBytes is trainBytes of full fine-tuning of c on one of ranks data-parallel ranks:
// every rank holds the whole weights and gradients; the moments whole, or with shard (ZeRO-1,
// --shard-optimizer) those of its shard of the flat parameter vector alone (engine.ShardPlan:
// ceil(params/ranks) elements). trainMemory15B and zeroMemory15B print it.
func fullTrainBytes(c *engine.Config, ranks int, shard bool) trainBytes {
	p, lin := c.NumParams(), c.LayerMatmulParams()
	own := p
	if shard {
		own = int64(engine.NewShardPlan(int(p), ranks).N)
	}
	return trainBytes{master: float64(4 * p), copies: float64(2 * lin), grads: float64(4 * p), moments: float64(8 * own)}
}

// Qwen25_15B is the Qwen2.5-1.5B shape: Qwen15B with tied embeddings (one vocab × hidden
// matrix for the embedding and the LM head).
func Qwen25_15B() *engine.Config {
	c := Qwen15B()
	c.TieWordEmbeddings = true
	return c
}

// zeroMemory15B prints the training memory per rank of full fine-tuning of the Qwen2.5-1.5B
// shape on 1, 2, 4 and 8 data-parallel ranks, with the AdamW moments replicated and sharded
// (ZeRO-1), worked out from the shape (fullTrainBytes).
func zeroMemory15B() error {
	c := Qwen25_15B()
	gib := func(b float64) float64 { return b / (1 << 30) }
	fmt.Printf("\ntraining memory per rank: Qwen2.5-1.5B shape (%d parameters, tied embeddings), full fine-tuning, data-parallel, worked out from the shape, not measured\n\n", c.NumParams())
	w := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(w, "ranks\tAdamW moments\tbf16 matmul weights GiB\tfp32 master weights GiB\tgradients GiB\tmoments GiB\tsum GiB\t")
	for _, n := range []int{1, 2, 4, 8} {
		for _, shard := range []bool{false, true} {
			b := fullTrainBytes(c, n, shard)
			how := "replicated"
			if shard {
				how = "sharded (--shard-optimizer)"
			}
			fmt.Fprintf(w, "%d\t%s\t%.2f\t%.2f\t%.2f\t%.2f\t%.2f\t\n", n, how, gib(b.copies), gib(b.master), gib(b.grads), gib(b.moments), gib(b.sum()))
		}
	}
	w.Flush()
	fmt.Println("\nbf16 matmul weights: the copies the CUDA backend's forward reads (none on the CPU); fp32 master weights and gradients stay whole on every rank (the forward and backward use them); not counted: activations (the same with or without sharding), the KV cache of the rollouts, the host buffers the optimizer step stages through")
	return nil
}
