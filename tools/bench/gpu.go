package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"runtime"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/prolong-rl/prolong/cuda"
	"github.com/prolong-rl/prolong/engine"
)

// Qwen15B is the DeepSeek-R1-Distill-Qwen-1.5B shape (Qwen2.5-Math-1.5B): the model the GPU
// figures of issue 16 and its transformers peers are measured on.
func Qwen15B() *engine.Config {
	return &engine.Config{ModelType: "qwen2", VocabSize: 151936, HiddenSize: 1536, NumHiddenLayers: 28,
		NumAttentionHeads: 12, NumKeyValueHeads: 2, HeadDim: 128, IntermediateSize: 8960,
		RMSNormEps: 1e-6, RopeTheta: 10000, MaxPositionEmbeddings: 131072, AttentionBias: true}
}

// gpuReport is what --device cuda measures, written as JSON by --json.
type gpuReport struct {
	Device            string                   `json:"device"`
	CopyGBs           float64                  `json:"copy_gb_s"`                              // device-to-device copy, read+write
	GemmTFLOPs        float64                  `json:"gemm_bf16_tflop_s"`                      // cublasGemmEx bf16 8192³
	Model             string                   `json:"model"`                                  // shape
	Params            int64                    `json:"params"`                                 //
	WeightBytes       int64                    `json:"weight_bytes"`                           // bf16 linear weights streamed per decode step
	Decode1TokS       float64                  `json:"decode_b1_tok_s"`                        // batch 1, 32-token prompt, greedy
	Decode1Roofline   float64                  `json:"decode_b1_roofline"`                     // fraction of copy-bandwidth floor
	Graph1TokS        float64                  `json:"decode_b1_graphs_tok_s,omitempty"`       // the same with cuda.Options.DecodeGraphs
	Graph1Stats       string                   `json:"decode_b1_graphs,omitempty"`             // its DecodeGraphStats per bucket
	Split1TokS        float64                  `json:"decode_b1_split_sample_tok_s,omitempty"` // the same with cuda.Options.SplitSample
	Rollout           []roll                   `json:"rollout"`                                //
	TrainTokS         float64                  `json:"train_tok_s"`                            // 8 x 1024 tokens, CE, AdamW
	TrainStepS        float64                  `json:"train_step_s"`                           //
	TrainMFU          float64                  `json:"train_mfu"`                              // vs 989 TFLOP/s dense bf16 (datasheet)
	TrainMFUMeas      float64                  `json:"train_mfu_measured"`                     // vs the GEMM rate measured above
	PeakMemGiB        float64                  `json:"peak_mem_gib"`                           // allocator peak in use
	TiledTrainTokS    float64                  `json:"train_tiled_attention_tok_s,omitempty"`  // the same step with cuda.Options.TiledAttention
	TiledTrainStepS   float64                  `json:"train_tiled_attention_step_s,omitempty"` //
	LtTrainTokS       float64                  `json:"train_cublaslt_tok_s,omitempty"`         // the same step with cuda.Options.CublasLt
	LtTrainStepS      float64                  `json:"train_cublaslt_step_s,omitempty"`        //
	LtGemmTFLOPs      float64                  `json:"gemm_bf16_cublaslt_tflop_s,omitempty"`   // the 8192³ GEMM on cuBLASLt
	LtStats           string                   `json:"train_cublaslt_gemms,omitempty"`         // cuda.Backend.CublasLtStats after it
	HostOpUs          float64                  `json:"host_us_per_op"`                         // enqueue cost of one tiny op (Scale of 1 element)
	LongDecode        []longDecodeRow          `json:"decode_b1_long"`                         // batch 1 at 4k and 16k of context by attention path
	TopLogProbs       []topRoll                `json:"rollout_top_logprobs,omitempty"`         // 64 × 256 with 20 top log-probs a token, by where rows are ranked
	ScoreDefaultS     float64                  `json:"score_8x1024_s,omitempty"`               // Score of 8 × 1024 tokens, default logit budget
	ScoreLargeChunksS float64                  `json:"score_8x1024_large_chunks_s,omitempty"`  // the same with cuda.Options.LogitBudget 1 GiB
	Profiles          map[string]*cuda.Profile `json:"profiles,omitempty"`                     // GPU time per kernel
	Errors            []string                 `json:"errors,omitempty"`
}

type roll struct {
	Batch     int     `json:"batch"`
	NewTokens int     `json:"new_tokens"`
	Seconds   float64 `json:"seconds"`
	TokS      float64 `json:"tok_s"`
	Roofline  float64 `json:"roofline_fraction"` // HBM floor (weights + KV read per step at the measured copy rate) / time
}

// topRoll is one rollout of gpuTopLogProbs.
type topRoll struct {
	Ranked  string  `json:"ranked"` // none (no top log-probs), host or device
	Seconds float64 `json:"seconds"`
}

// longDecodeRow is one batch-1 decode row at long context (gpuLongDecode).
type longDecodeRow struct {
	KV       string  `json:"kv"`        // fp32 or bf16
	Kernel   string  `json:"kernel"`    // the attention kernel: attn_paged_gqa or decode_attn (split or not)
	Context  int     `json:"context"`   // positions already cached
	TokS     float64 `json:"tok_s"`     // whole decode steps
	AttnUs   float64 `json:"attn_us"`   // attention's GPU time (KV write included) per layer and token, profiled
	AttnGBs  float64 `json:"attn_gb_s"` // the KV bytes a layer reads over that time
	AttnRoof float64 `json:"attn_roof"` // that rate over the measured copy rate (read+write)
}

// randomWeights fills the model's weights as engine.RandomWeights does (normal 0.02 for
// matrices, 1±0.1 for norms, 0.1 for biases), in parallel chunks: 1.8B values in seconds.
func randomWeights(c *engine.Config, seed uint64) map[string]engine.HostTensor {
	out := map[string]engine.HostTensor{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	sem := make(chan struct{}, runtime.GOMAXPROCS(0))
	for ti, name := range engine.WeightNames(c) {
		shape, _ := engine.WeightShape(c, name)
		n := 1
		for _, d := range shape {
			n *= d
		}
		d := make([]float32, n)
		mu.Lock()
		out[name] = engine.HostTensor{Shape: shape, Data: d}
		mu.Unlock()
		const chunk = 1 << 20
		for lo := 0; lo < n; lo += chunk {
			wg.Add(1)
			sem <- struct{}{}
			go func(ti, lo int) {
				defer wg.Done()
				defer func() { <-sem }()
				r := rand.New(rand.NewPCG(seed, uint64(ti)<<32|uint64(lo/chunk)))
				hi := min(n, lo+chunk)
				for i := lo; i < hi; i++ {
					switch {
					case len(shape) == 2:
						d[i] = float32(r.NormFloat64()) * 0.02
					case len(name) > 5 && name[len(name)-5:] == ".bias":
						d[i] = float32(r.NormFloat64()) * 0.1
					default:
						d[i] = 1 + float32(r.NormFloat64())*0.1
					}
				}
			}(ti, lo)
		}
	}
	wg.Wait()
	return out
}

// genTime runs batch prompts of promptLen tokens for newTokens tokens each and returns seconds.
func genTime(m *engine.Model, batch, promptLen, newTokens int, temp float32, kvBytes int64) (float64, error) {
	return timeGenerate(m, engine.GeneratorOptions{KVBudgetBytes: kvBytes, MaxBatchTokens: max(4096, batch*promptLen), MaxSeqs: max(256, batch)},
		benchRequests(m.Config.VocabSize, batch, promptLen, newTokens, temp, 1))
}

// profile runs f with every op timed by CUDA events and prints the kernels that took most of
// the GPU's time.
func profile(b *cuda.Backend, rep *gpuReport, name string, f func() error) error {
	if err := b.StartProfile(60000); err != nil {
		return err
	}
	t0 := time.Now()
	ferr := f()
	p, err := b.StopProfile()
	wall := time.Since(t0)
	if ferr != nil {
		return ferr
	}
	if err != nil {
		return err
	}
	if rep.Profiles == nil {
		rep.Profiles = map[string]*cuda.Profile{}
	}
	rep.Profiles[name] = p
	fmt.Printf("\nprofile %s: %d ops, GPU busy %.1f ms + waiting for the host %.1f ms (%d ops waited) of a %.1f ms span; launch calls %.1f ms of host time (wall %.1f ms, events included)\n",
		name, p.Ops, float64(p.Sum)/1e6, float64(p.HostGap)/1e6, p.StarvedOps, float64(p.Span)/1e6, float64(p.LaunchHost)/1e6, float64(wall)/1e6)
	for i, k := range p.Kernels {
		if i == 8 {
			break
		}
		fmt.Printf("  %-28s %7d calls %9.2f ms %5.1f%%\n", k.Name, k.Calls, float64(k.Total)/1e6, 100*float64(k.Total)/float64(max(p.Sum, 1)))
	}
	return nil
}

// runGPU measures the CUDA backend on the 1.5B shape: the device's copy bandwidth and bf16 GEMM
// rate as references, batch-1 decode, rollouts at batch 64 and 256, and a training step.
func runGPU(quick bool, jsonPath string, rolloutTokens int) error {
	b, err := cuda.Open(cuda.Options{BF16Matmul: true})
	if err != nil {
		return err
	}
	rep := &gpuReport{Device: b.Name()}
	defer func() {
		if jsonPath != "" {
			data, _ := json.MarshalIndent(rep, "", " ")
			_ = os.WriteFile(jsonPath, data, 0o644)
		}
	}()
	if err := gpuReferences(b, rep); err != nil {
		return err
	}
	c := Qwen15B()
	rep.Model = fmt.Sprintf("qwen2 1.5B shape: hidden %d, %d layers, %d/%d heads, head_dim %d, ffn %d, vocab %d",
		c.HiddenSize, c.NumHiddenLayers, c.NumAttentionHeads, c.NumKeyValueHeads, c.HeadDim, c.IntermediateSize, c.VocabSize)
	rep.Params = c.NumParams()
	t0 := time.Now()
	weights := randomWeights(c, 1)
	fmt.Printf("model: %s, %.2fB parameters (random weights in %.1fs)\n\n", rep.Model, float64(rep.Params)/1e9, time.Since(t0).Seconds())
	if err := gpuGeneration(b, rep, c, weights, quick, rolloutTokens); err != nil {
		return err
	}
	if err := gpuLongDecode(b, rep, c, weights); err != nil {
		return err
	}
	if err := gpuTraining(b, rep, c, weights, quick); err != nil {
		return err
	}
	if !quick {
		if err := gpuTopLogProbs(b, rep, c, weights); err != nil {
			rep.Errors = append(rep.Errors, fmt.Sprintf("rollouts with top log-probs: %v", err))
		}
		if err := gpuScoreChunks(b, rep, c, weights); err != nil {
			rep.Errors = append(rep.Errors, fmt.Sprintf("scoring by logit budget: %v", err))
		}
	}
	return nil
}

// gpuScoreChunks times a scoring pass over 8 × 1024 tokens (the GRPO trainer's old and
// reference log-probs; its training head chunks the same way) with the engine's default logit
// budget (64 MiB: chunks of 110 rows at the 1.5B shape's vocabulary, each reading the whole
// LM-head weight) on b, and with cuda.Options.LogitBudget 1 GiB (large-logit-chunks: chunks of
// 1024 rows) on a backend opened beside it, and prints both with their ratio.
func gpuScoreChunks(b *cuda.Backend, rep *gpuReport, c *engine.Config, weights map[string]engine.HostTensor) error {
	seqs := trainBatch(c, 8, 1024)
	score := func(be *cuda.Backend) (float64, error) {
		m, err := engine.NewModel(c, be, weights, engine.BF16)
		if err != nil {
			return 0, err
		}
		defer freeWeights(m)
		if _, err := m.Score(context.Background(), seqs, 1); err != nil { // warm-up
			return 0, err
		}
		return bestOf(3, func() (float64, error) {
			t0 := time.Now()
			_, err := m.Score(context.Background(), seqs, 1)
			return time.Since(t0).Seconds(), err
		})
	}
	small, err := score(b)
	if err != nil {
		return err
	}
	bl, err := cuda.Open(cuda.Options{BF16Matmul: true, LogitBudget: 1 << 30})
	if err != nil {
		return err
	}
	large, err := score(bl)
	if err != nil {
		return err
	}
	rep.ScoreDefaultS, rep.ScoreLargeChunksS = small, large
	fmt.Printf("\nscoring 8 x 1024 tokens: %.1f ms with the default logit budget (chunks of %d rows), %.1f ms with 1 GiB (chunks of %d): %.2fx\n",
		1e3*small, min(1024, engine.DefaultLogitBudget/(4*c.VocabSize)), 1e3*large, min(1024, (1<<30)/(4*c.VocabSize)), small/large)
	return nil
}

// gpuReferences measures the ceilings the table is read against: copy bandwidth, the bf16
// GEMM rate, and the host's cost of one op (lock, context, argument packing, cuLaunchKernel),
// which bounds batch-1 decoding (about 20 kernels per layer).
func gpuReferences(b *cuda.Backend, rep *gpuReport) error {
	bw, err := b.CopyBandwidth(4<<30, 5)
	if err != nil {
		return err
	}
	peak, err := b.GemmPeak(8192, 5)
	if err != nil {
		return err
	}
	rep.CopyGBs, rep.GemmTFLOPs = bw/1e9, peak/1e12
	tiny := b.Alloc(1)
	const nops = 20000
	t0 := time.Now()
	for i := 0; i < nops; i++ {
		b.Scale(tiny, 1)
	}
	if err := b.Sync(); err != nil {
		return err
	}
	rep.HostOpUs = time.Since(t0).Seconds() / nops * 1e6
	b.Free(tiny)
	fmt.Printf("device: %s\nreference: copy %.0f GB/s (read+write), bf16 GEMM 8192³ %.0f TFLOP/s; %.2f µs host time per op\n\n", b.Name(), bw/1e9, peak/1e12, rep.HostOpUs)
	return nil
}

// gpuGeneration times batch-1 decoding and rollouts with bf16 weights, with their fraction of
// the HBM roofline (weights plus the KV cache read once per step at the measured copy rate),
// and profiles both.
func gpuGeneration(b *cuda.Backend, rep *gpuReport, c *engine.Config, weights map[string]engine.HostTensor, quick bool, rolloutTokens int) error {
	m, err := engine.NewModel(c, b, weights, engine.BF16)
	if err != nil {
		return err
	}
	rep.WeightBytes = m.LinearBytes()
	bw := rep.CopyGBs * 1e9
	kvPerTok := float64(c.NumHiddenLayers * 2 * c.KVDim() * 4)
	floor := func(batch, steps int) float64 { // seconds the HBM roofline allows
		f := 0.0
		for s := 0; s < steps; s++ {
			f += (float64(rep.WeightBytes) + float64(batch)*float64(32+s)*kvPerTok) / bw
		}
		return f
	}
	w := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(w, "phase\tbatch\tnew tokens\tseconds\ttok/s\t% of HBM roofline\t")
	// Batch-1 decode: the difference of 1+N and 1 new tokens removes prefill.
	n1 := 256
	if quick {
		n1 = 64
	}
	if _, err := genTime(m, 1, 32, 8, 0, 1<<30); err != nil { // warm-up
		return err
	}
	ta, err := genTime(m, 1, 32, 1, 0, 1<<30)
	if err != nil {
		return err
	}
	tb, err := genTime(m, 1, 32, n1+1, 0, 1<<30)
	if err != nil {
		return err
	}
	sec := tb - ta
	rep.Decode1TokS, rep.Decode1Roofline = float64(n1)/sec, floor(1, n1)/sec
	fmt.Fprintf(w, "decode\t1\t%d\t%.2f\t%.1f\t%.1f%%\t\n", n1, sec, rep.Decode1TokS, 100*rep.Decode1Roofline)
	if err := gpuGraphDecode(rep, c, weights, n1, floor(1, n1), w); err != nil {
		rep.Errors = append(rep.Errors, fmt.Sprintf("decode with graphs: %v", err))
	}
	if err := gpuSplitSampleDecode(rep, c, weights, n1, floor(1, n1), rep.Decode1TokS, w); err != nil {
		rep.Errors = append(rep.Errors, fmt.Sprintf("decode with the split sampler: %v", err))
	}
	for _, batch := range []int{64, 256} {
		kv := int64(float64(batch)*float64(32+rolloutTokens+32)*kvPerTok) + 1<<30
		sec, err := genTime(m, batch, 32, rolloutTokens, 1, kv)
		if err != nil {
			return fmt.Errorf("rollout batch %d: %w", batch, err)
		}
		r := roll{Batch: batch, NewTokens: rolloutTokens, Seconds: sec, TokS: float64(batch*rolloutTokens) / sec, Roofline: floor(batch, rolloutTokens) / sec}
		rep.Rollout = append(rep.Rollout, r)
		fmt.Fprintf(w, "rollout\t%d\t%d\t%.2f\t%.0f\t%.1f%%\t\n", batch, rolloutTokens, sec, r.TokS, 100*r.Roofline)
	}
	w.Flush()
	if err := profile(b, rep, "decode b1 x 32", func() error { _, err := genTime(m, 1, 32, 32, 0, 1<<30); return err }); err != nil {
		return err
	}
	// The whole rollout of the table's length, not a short one: its late steps (long KV reads)
	// are where the time goes. The profiler folds its events window by window.
	kv := int64(float64(256)*float64(32+rolloutTokens+32)*kvPerTok) + 1<<30
	return profile(b, rep, fmt.Sprintf("rollout b256 x %d", rolloutTokens), func() error {
		_, err := genTime(m, 256, 32, rolloutTokens, 1, kv)
		return err
	})
}

// gpuGraphDecode times batch-1 decoding as gpuGeneration does on a backend opened beside it
// with cuda.Options.DecodeGraphs (each decode step replayed as a CUDA graph), and records how
// many steps were captured, replayed and run eagerly. floor is the HBM roofline's seconds.
func gpuGraphDecode(rep *gpuReport, c *engine.Config, weights map[string]engine.HostTensor, n int, floor float64, w io.Writer) error {
	sec, bg, err := decodeBeside(cuda.Options{BF16Matmul: true, DecodeGraphs: true}, c, weights, n)
	if err != nil {
		return err
	}
	rep.Graph1TokS = float64(n) / sec
	rep.Graph1Stats = fmt.Sprintf("%+v", bg.DecodeGraphStats())
	fmt.Fprintf(w, "decode (graphs)\t1\t%d\t%.2f\t%.1f\t%.1f%%\t\n", n, sec, rep.Graph1TokS, 100*floor/sec)
	fmt.Fprintf(w, "decode graphs per bucket: %s\t\t\t\t\t\t\n", rep.Graph1Stats)
	return nil
}

// gpuSplitSampleDecode times batch-1 decoding on a backend opened beside b with
// cuda.Options.SplitSample (each row's sampling split over several blocks) and prints the row
// with its rate as a ratio of the default's (base tok/s).
func gpuSplitSampleDecode(rep *gpuReport, c *engine.Config, weights map[string]engine.HostTensor, n int, floor, base float64, w io.Writer) error {
	sec, _, err := decodeBeside(cuda.Options{BF16Matmul: true, SplitSample: true}, c, weights, n)
	if err != nil {
		return err
	}
	rep.Split1TokS = float64(n) / sec
	fmt.Fprintf(w, "decode (split sampler)\t1\t%d\t%.2f\t%.1f\t%.1f%%\t%.2fx decode\n", n, sec, rep.Split1TokS, 100*floor/sec, rep.Split1TokS/base)
	return nil
}

// decodeBeside opens a backend with o beside the bench's own, loads the model on it, and times
// n batch-1 decode steps as gpuGeneration does (the difference of 1+n and 1 new tokens, after
// a warm-up). The model's weights are freed on return (the training step after needs the
// memory on an 80 GB GPU).
func decodeBeside(o cuda.Options, c *engine.Config, weights map[string]engine.HostTensor, n int) (float64, *cuda.Backend, error) {
	bg, err := cuda.Open(o)
	if err != nil {
		return 0, nil, err
	}
	m, err := engine.NewModel(c, bg, weights, engine.BF16)
	if err != nil {
		return 0, nil, err
	}
	defer freeWeights(m)
	if _, err := genTime(m, 1, 32, 8, 0, 1<<30); err != nil { // warm-up
		return 0, nil, err
	}
	ta, err := genTime(m, 1, 32, 1, 0, 1<<30)
	if err != nil {
		return 0, nil, err
	}
	tb, err := genTime(m, 1, 32, n+1, 0, 1<<30)
	if err != nil {
		return 0, nil, err
	}
	return tb - ta, bg, nil
}

// gpuTopLogProbs times a rollout of 64 × 256 tokens that asks for 20 top log-probs a token
// (OpenAI's top_logprobs), the rows ranked on the host (b, the default: each step downloads
// the 64 rows of logits) and on the device (cuda.Options.DeviceTopLogProbs, a backend opened
// beside b), and the same rollout without top log-probs on b, and prints each one's tok/s and
// its rate as a fraction of the plain rollout's. It runs last (tools/bench without --quick):
// the table before it keeps its time budget.
func gpuTopLogProbs(b *cuda.Backend, rep *gpuReport, c *engine.Config, weights map[string]engine.HostTensor) error {
	const batch, steps, k = 64, 256, 20
	m, err := engine.NewModel(c, b, weights, engine.BF16)
	if err != nil {
		return err
	}
	defer freeWeights(m)
	kvPerTok := float64(c.NumHiddenLayers * 2 * c.KVDim() * 4)
	kv := int64(float64(batch)*float64(32+steps+32)*kvPerTok) + 1<<30
	opts := engine.GeneratorOptions{KVBudgetBytes: kv, MaxBatchTokens: max(4096, batch*32), MaxSeqs: 256}
	run := func(m *engine.Model, top int) (float64, error) {
		rs := benchRequests(c.VocabSize, batch, 32, steps, 1, 1)
		for i := range rs {
			rs[i].Params.TopLogProbs = top
		}
		return timeGenerate(m, opts, rs)
	}
	if _, err := run(m, 0); err != nil { // warm-up
		return err
	}
	plain, err := run(m, 0)
	if err != nil {
		return err
	}
	onHost, err := run(m, k)
	if err != nil {
		return err
	}
	bd, err := cuda.Open(cuda.Options{BF16Matmul: true, DeviceTopLogProbs: true})
	if err != nil {
		return err
	}
	md, err := engine.NewModel(c, bd, weights, engine.BF16)
	if err != nil {
		return err
	}
	defer freeWeights(md)
	onDev, err := run(md, k)
	if err != nil {
		return err
	}
	rep.TopLogProbs = []topRoll{{"none", plain}, {"host", onHost}, {"device", onDev}}
	fmt.Printf("\nrollout %d x %d tokens asking for %d top log-probs a token:\n", batch, steps, k)
	for _, r := range rep.TopLogProbs {
		fmt.Printf("  ranked %-7s %6.2f s %8.0f tok/s  %.2fx the plain rollout's rate\n", r.Ranked, r.Seconds,
			float64(batch*steps)/r.Seconds, plain/r.Seconds)
	}
	return nil
}

// gpuLongDecode times batch-1 decode at 4k and 16k positions of context (engine.TimeDecode: the
// context not prefilled) with bf16 weights, for the attention paths: the verified fp32 cache
// (attn_paged_gqa, b's own), and on backends opened beside b, the decode_attn kernels over an
// fp32 and a bf16 cache (cuda.Options.BF16KV), unsplit and split over the context
// (cuda.Options.SplitKVDecode). A second, profiled run gives attention's GPU time per layer and
// token, and the KV bytes it reads per second.
func gpuLongDecode(b *cuda.Backend, rep *gpuReport, c *engine.Config, weights map[string]engine.HostTensor) error {
	const steps, profSteps = 32, 8
	variants := []struct {
		kv     engine.KVDType
		opts   cuda.Options
		kernel string
	}{
		{engine.KVF32, cuda.Options{BF16Matmul: true}, "attn_paged_gqa"},
		{engine.KVF32, cuda.Options{BF16Matmul: true, SplitKVDecode: true}, "decode_attn split"},
		{engine.KVBF16, cuda.Options{BF16Matmul: true, BF16KV: true}, "decode_attn"},
		{engine.KVBF16, cuda.Options{BF16Matmul: true, BF16KV: true, SplitKVDecode: true}, "decode_attn split"},
	}
	attention := map[string]bool{"attn_paged_gqa": true, "attn_paged": true, "kv_write": true, "kv_write_bf16": true,
		"decode_attn_f32": true, "decode_attn_bf16": true, "decode_attn_combine": true}
	w := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Println()
	fmt.Fprintln(w, "decode b1\tKV\tattention\tcontext\ttok/s\tattention µs/layer\tKV GB/s\t% of copy rate\t")
	for _, v := range variants {
		bv := b
		if v.opts != (cuda.Options{BF16Matmul: true}) {
			var err error
			if bv, err = cuda.Open(v.opts); err != nil {
				return err
			}
		}
		m, err := engine.NewModel(c, bv, weights, engine.BF16)
		if err != nil {
			return err
		}
		for _, ctx := range []int{4096, 16384} {
			sec, err := engine.TimeDecode(m, v.kv, ctx, steps)
			if err != nil {
				return fmt.Errorf("decode at %d of context, %v KV, %s: %w", ctx, v.kv, v.kernel, err)
			}
			if err := bv.StartProfile(60000); err != nil {
				return err
			}
			_, terr := engine.TimeDecode(m, v.kv, ctx, profSteps)
			p, perr := bv.StopProfile()
			if terr != nil || perr != nil {
				return fmt.Errorf("profiled decode at %d of context: %v %v", ctx, terr, perr)
			}
			var attn time.Duration
			for _, k := range p.Kernels {
				if attention[k.Name] {
					attn += k.Total
				}
			}
			elem := 4
			if v.kv == engine.KVBF16 {
				elem = 2
			}
			us := attn.Seconds() * 1e6 / float64((profSteps+1)*c.NumHiddenLayers) // the warm-up step is profiled too
			gbs := float64(2*c.KVDim()*ctx*elem) / (us * 1e-6) / 1e9
			r := longDecodeRow{KV: v.kv.String(), Kernel: v.kernel, Context: ctx, TokS: 1 / sec, AttnUs: us, AttnGBs: gbs, AttnRoof: gbs / rep.CopyGBs}
			rep.LongDecode = append(rep.LongDecode, r)
			fmt.Fprintf(w, "\t%s\t%s\t%d\t%.1f\t%.1f\t%.0f\t%.0f%%\t\n", r.KV, r.Kernel, ctx, r.TokS, r.AttnUs, r.AttnGBs, 100*r.AttnRoof)
		}
		freeWeights(m)
	}
	return w.Flush()
}

// freeWeights gives a model's device memory back.
func freeWeights(m *engine.Model) {
	seen := map[*engine.Tensor]bool{}
	for _, name := range engine.WeightNames(m.Config) {
		if w := m.Weight(name); w != nil && !seen[w] {
			seen[w] = true
			m.Backend.Free(w)
		}
	}
	if m.LMHead != nil && !seen[m.LMHead] {
		m.Backend.Free(m.LMHead)
	}
}

// gpuTraining times a training step of 8 x 1024 tokens (cross-entropy on every next token,
// AdamW with clipping; fp32 master weights, bf16 matmuls) and profiles one.
func gpuTraining(b *cuda.Backend, rep *gpuReport, c *engine.Config, weights map[string]engine.HostTensor, quick bool) error {
	mt, err := engine.NewModel(c, b, weights, engine.F32)
	if err != nil {
		return err
	}
	tr, err := engine.NewTrainer(mt, engine.TrainOptions{Optimizer: engine.AdamWConfig{LR: 1e-5, ClipNorm: 1}, MaxLogitRows: 1024})
	if err != nil {
		return err
	}
	batch, seqLen := 8, 1024
	seqs := trainBatch(c, batch, seqLen)
	step := func() (float64, error) {
		t0 := time.Now()
		if _, err := tr.ForwardBackward(context.Background(), seqs, engine.CrossEntropy(0)); err != nil {
			return 0, err
		}
		if _, err := tr.Step(); err != nil {
			return 0, err
		}
		if err := b.Sync(); err != nil {
			return 0, err
		}
		return time.Since(t0).Seconds(), nil
	}
	if _, err := step(); err != nil {
		return fmt.Errorf("training warm-up: %w", err)
	}
	steps := 3
	if quick {
		steps = 1
	}
	sec, err := bestOf(steps, step)
	if err != nil {
		return err
	}
	toks := float64(batch * seqLen)
	flops := 6 * float64(c.LayerMatmulParams()+int64(c.VocabSize*c.HiddenSize)) * toks / sec
	rep.TrainStepS, rep.TrainTokS = sec, toks/sec
	rep.TrainMFU, rep.TrainMFUMeas = flops/989e12, flops/(rep.GemmTFLOPs*1e12)
	if err := profile(b, rep, "train step 8x1024", func() error { _, err := step(); return err }); err != nil {
		return err
	}
	_, _, pk := b.MemoryStats()
	rep.PeakMemGiB = float64(pk) / (1 << 30)
	fmt.Printf("\ntraining %dx%d tokens: %.2f s/step, %.0f tok/s, %.1f TFLOP/s = %.1f%% MFU of 989 (%.1f%% of the measured GEMM rate); allocator peak %.1f GiB\n",
		batch, seqLen, sec, toks/sec, flops/1e12, 100*rep.TrainMFU, 100*rep.TrainMFUMeas, rep.PeakMemGiB)
	// The same step on the tiled tensor-core attention kernels (off by default until a GPU run
	// shows them right and faster); a failure there is reported, not fatal to the table.
	if err := tiledTraining(b, rep, step, steps, sec, toks); err != nil {
		rep.Errors = append(rep.Errors, "tiled attention training step: "+err.Error())
		fmt.Println("tiled attention training step:", err)
	}
	// And with the GEMMs on cuBLASLt (off by default until a GPU run shows it right and faster).
	if err := ltTraining(b, rep, step, steps, sec, toks); err != nil {
		rep.Errors = append(rep.Errors, "cuBLASLt training step: "+err.Error())
		fmt.Println("cuBLASLt training step:", err)
	}
	return nil
}

// ltTraining times step with cuda.Options.CublasLt switched on (the GEMMs on cublasLtMatmul
// with a 32 MiB workspace; one warm-up step, which makes the plans, then the best of steps),
// prints it beside base (seconds of the default step) with the 8192³ GEMM rate on cuBLASLt and
// the GEMMs' GPU time in both steps' profiles, and profiles one step.
func ltTraining(b *cuda.Backend, rep *gpuReport, step func() (float64, error), steps int, base, toks float64) error {
	if err := b.SetCublasLt(true); err != nil {
		return err
	}
	defer b.SetCublasLt(false)
	peak, err := b.GemmPeak(8192, 5)
	if err != nil {
		return fmt.Errorf("GEMM 8192³: %w", err)
	}
	rep.LtGemmTFLOPs = peak / 1e12
	if _, err := step(); err != nil {
		return fmt.Errorf("warm-up: %w", err)
	}
	sec, err := bestOf(steps, step)
	if err != nil {
		return err
	}
	rep.LtTrainStepS, rep.LtTrainTokS = sec, toks/sec
	const name = "train step 8x1024 cublaslt"
	if err := profile(b, rep, name, func() error { _, err := step(); return err }); err != nil {
		return err
	}
	lt, ex, plans, none := b.CublasLtStats()
	rep.LtStats = fmt.Sprintf("%d GEMMs on cuBLASLt, %d on cublasGemmEx (batched, or no algorithm), %d plans, %d shapes without an algorithm", lt, ex, plans, none)
	fmt.Printf("\ntraining with the GEMMs on cuBLASLt: %.3f s/step, %.0f tok/s: %.2fx the default step's rate; bf16 GEMM 8192³ %.0f TFLOP/s (cublasGemmEx %.0f)\n",
		sec, toks/sec, base/sec, rep.LtGemmTFLOPs, rep.GemmTFLOPs)
	fmt.Printf("GEMM GPU time per step (profiles): cublasGemmEx %.1f ms, with cuBLASLt %.1f ms; %s\n",
		gemmMs(rep.Profiles["train step 8x1024"]), gemmMs(rep.Profiles[name]), rep.LtStats)
	return nil
}

// gemmMs is the GPU time of a profile's cuBLAS and cuBLASLt GEMMs in milliseconds.
func gemmMs(p *cuda.Profile) float64 {
	if p == nil {
		return 0
	}
	var d time.Duration
	for _, k := range p.Kernels {
		if strings.HasPrefix(k.Name, "cublas") {
			d += k.Total
		}
	}
	return float64(d) / 1e6
}

// tiledTraining times step with cuda.Options.TiledAttention switched on (one warm-up step,
// the best of steps), prints it beside base (seconds of the default step) and profiles one.
func tiledTraining(b *cuda.Backend, rep *gpuReport, step func() (float64, error), steps int, base, toks float64) error {
	b.SetTiledAttention(true)
	defer b.SetTiledAttention(false)
	if _, err := step(); err != nil {
		return fmt.Errorf("warm-up: %w", err)
	}
	sec, err := bestOf(steps, step)
	if err != nil {
		return err
	}
	rep.TiledTrainStepS, rep.TiledTrainTokS = sec, toks/sec
	if err := profile(b, rep, "train step 8x1024 tiled attention", func() error { _, err := step(); return err }); err != nil {
		return err
	}
	fmt.Printf("\ntraining with tiled attention (flash.cu): %.3f s/step, %.0f tok/s: %.2fx the default step's rate\n", sec, toks/sec, base/sec)
	return nil
}
