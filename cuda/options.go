package cuda

// Options configure a CUDA backend.
type Options struct {
	// Device is the GPU ordinal.
	Device int
	// BF16Matmul runs the matmuls of fp32 tensors (trainable parameters and fp32 weights) with
	// bf16 operands and fp32 accumulation, as autocast does; a parameter keeps a bf16 copy that
	// is refreshed after every write. Off: exact fp32 GEMMs (the conformance suite's finite
	// differences need them). Weights uploaded as BF16 always use bf16 GEMMs.
	BF16Matmul bool
	// AttnGEMMMinLen is the sequence length from which training attention runs on batched
	// matmuls (scores, softmax, probabilities times values, and their backward) instead of the
	// row kernels; 0 means 128. The matmuls are fp32, or TF32 on the tensor cores with
	// BF16Matmul.
	AttnGEMMMinLen int
	// FusedAddRMSNorm makes the engine use the add_rmsnorm kernel (the residual add and the next
	// RMSNorm in one pass) in place of add then rmsnorm. Off until a GPU run of the conformance
	// suite (AddRMSNorm cases) and the benchmark shows it passes and wins.
	FusedAddRMSNorm bool
	// MatMuls makes the engine run the projections of one input (Q, K, V; gate, up) through
	// MatMuls (cuda/fused_mlp.go): one op, x converted to bf16 once, and in decoding one
	// matrix-vector launch (gemv3) for up to three weights. Off until a GPU run of the
	// conformance suite (MatMuls cases) and the benchmark shows it passes and wins.
	MatMuls bool
	// FusedMLP makes the engine run the MLP's gate and up projections with SwiGLU as one op
	// (GateUpSwiGLU): in decoding one matrix-vector launch (gemv_swiglu) for both products and
	// the activation, else the two GEMMs and swiglu_out_bf16, which also writes the bf16 copy
	// the down projection reads. Off until a GPU run of the conformance suite (GateUpSwiGLU
	// cases) and the benchmark shows it passes and wins.
	FusedMLP bool
	// TiledAttention runs training attention (forward and backward) and the attention of
	// scoring passes over fresh sequences (engine.AttnBatch.Scratch) on the tiled tensor-core
	// kernels of kernels/flash.cu (FlashAttention-2 style: bf16 operands, fp32 accumulation,
	// O(T) memory, any sequence length) for head dims 64 and 128; other head dims keep the row
	// and matmul paths. Off until a GPU run of the conformance suite (its "tiled-attention"
	// run) and the benchmark show it passes and wins; SetTiledAttention switches it on an open
	// backend, and PROLONG_CUDA_TILED_ATTENTION=1 turns it on for devices opened by name.
	TiledAttention bool
	// FusedQKVRoPE makes the engine use the qkv_rope kernel (the q, k, v biases, RoPE and the KV
	// write in one pass) in place of add_bias, rope and the write inside Attention. Off until a
	// GPU run of the conformance suite (QKVRoPE cases) and the benchmark shows it passes and wins.
	FusedQKVRoPE bool
	// BF16KV lets the KV cache hold bf16 keys and values (engine.KVDTyper lists BF16; KVAuto then
	// picks it for bf16 weights): written rounded to nearest even, as the CPU's bf16 store, and
	// read by the decode_attn kernels (decode_attn.cu). Off: the cache is fp32 only and
	// NewKVStore refuses BF16, as before. Off until a GPU run of the conformance suite (its
	// bf16kv and long-context cases) shows it passes.
	BF16KV bool
	// SplitKVDecode runs the attention over an fp32 cache on the decode_attn kernels too (16-byte
	// loads, 32 keys per warp iteration, all query heads of a KV group per block), and splits
	// a launch that fills too few blocks (a small batch at long context) over the context
	// (flash-decoding: partials, then decode_attn_combine). Without it a bf16 cache runs the
	// same kernels unsplit. Off until a GPU run shows it passes and wins.
	SplitKVDecode bool
	// SplitKVMinPart is the fewest context positions one split covers (rounded up to a multiple
	// of 32); 0 means 128. Tests set it low to split short contexts.
	SplitKVMinPart int
	// MultiTensorAdamW makes the optimizer update all weights through AdamWMany
	// (engine.AdamWManySwitch): one adamw_many launch (kernels/adamw_many.cu) in place of one
	// adamw launch per tensor, which also writes the bf16 copy of each weight that keeps one, so
	// the next forward converts none, and scales (clipping) and clears the gradients; and the
	// gradient norm's SumSquaresMany as one sumsq_many launch, not one per tensor. Off
	// until a GPU run of the conformance suite (AdamWMany cases, and training in its
	// "bf16-matmul-fused" run) and the benchmark shows it passes and wins.
	MultiTensorAdamW bool
	// DecodeGraphs replays the engine's fixed-buffer decode steps as CUDA graphs, one per
	// batch-size bucket (engine.StepGraphBackend, stepgraph.go): the step's metadata goes to a
	// per-bucket arena uploaded by one copy from pinned memory, and the step's launches are
	// captured once and replayed with cuGraphLaunch. It also makes the engine pad decode
	// batches to the buckets (engine.DecodePadder). Off until a GPU run of the conformance
	// suite and the benchmark shows it passes and wins.
	DecodeGraphs bool
	// CublasLt runs the GEMMs (MatMul, MatMulDX, MatMulDW, MatMuls and the unbatched attention
	// matmuls) through cuBLASLt (ltgemm.go) instead of cublasGemmEx: one plan per GEMM
	// descriptor (the heuristic's algorithm, asked once per shape) and one 32 MiB workspace per
	// backend. A shape the heuristic has no algorithm for, and the batched attention matmuls,
	// stay on cublasGemmEx; where cuBLASLt does not load, every GEMM does (the log says why,
	// once). Off until a GPU run (TestGPUCublasLtMatchesGemmEx, the conformance suite's
	// "cublaslt" run and the benchmark's training step) shows it passes and wins;
	// SetCublasLt switches it on an open backend.
	CublasLt bool
	// UninitAlloc makes AllocUninit (engine.UninitAllocator) hand out device memory without the
	// cuMemsetD32Async that Alloc enqueues to zero it: the engine asks for it where the next op
	// overwrites the whole tensor (activations, logits, gradients an op writes), about 65 GB of
	// memsets a training step at the 1.5B shape. Off (AllocUninit zeroes, as Alloc) until a GPU
	// run of the conformance suite (its "uninit-poison" run) shows it passes.
	UninitAlloc bool
	// FoldBF16 makes the kernels that produce the inputs of bf16 GEMMs write their bf16 copies
	// in the same pass (fold_bf16.go, kernels/fold_bf16.cu), in place of one f32_to_bf16_kernel
	// launch per input: the normed inputs of the projections (RMSNorm, AddRMSNorm), the unfused
	// SwiGLU's output, the paged attention's output (attn_paged_gqa), and in training the SwiGLU
	// backward's dgate and dup and qk-norm's backward dq and dk. It acts where the GEMMs
	// multiply in bf16 (BF16Matmul, or bf16 weights uploaded) on rows that a GEMM reads (not
	// the decoding rows of the matrix-vector kernels); the results are bit for bit those of the
	// unfused kernels and conversions. Off until a GPU run of the conformance suite (its
	// "bf16-matmul-fused" run, TestGPUFoldBF16) and the benchmark shows it passes and wins.
	FoldBF16 bool
	// LogitBudget bounds the bytes of fp32 logits the engine's LM head holds at once in training
	// and scoring (engine.LogitBudgeter); 0 means engine.DefaultLogitBudget (64 MiB: chunks of
	// 110 rows at Qwen2's vocabulary, so that every chunk's three GEMMs read the 467 MB bf16
	// LM-head weight for 110 rows of work and the one-pass head waits for the host 75 times in
	// 8192 rows). PROLONG_CUDA_OPTIONS=large-logit-chunks sets 1 GiB (chunks of 1024 rows, the
	// most the engine takes). Stays 0 until a GPU run shows the larger chunks win (the bench's
	// one-pass head rows).
	LogitBudget int64
	// SplitSample splits each row of logits over several blocks when Sample's plain rows
	// (greedy, or temperature only) are too few to fill the GPU (kernels/sample_split.cu: part
	// maxima, part sums, then a pick that walks only the part holding the drawn token), in place
	// of sample_rows' one block a row: that takes about 134 µs a token at batch 1 on Qwen2's
	// vocabulary (one SM's double exp rate). Same rules and arithmetic per token; the mass is
	// summed part by part. Off until a GPU run of the conformance suite (its "split-sample" run)
	// and the benchmark's "decode (split sampler)" row show it passes and wins.
	SplitSample bool
	// SampleSplitMinPart is the fewest ids a part of a split row gets (SplitSample); 0 means
	// 2048. Tests set it low to split the suite's small vocabularies.
	SampleSplitMinPart int
	// DeviceTopLogProbs ranks the tokens of top log-probs (engine.TopLogProbsBackend: sampling
	// with SamplingParams.TopLogProbs, Scheduler.TopLogProbs) on the device
	// (kernels/toplogprobs.cu): k ids and k log-probs a row come back instead of the row's
	// V fp32 logits (600 KB a row at Qwen2's vocabulary). Off (the rows come back and are
	// ranked on the host) until a GPU run of the conformance suite (its "top-logprobs" run,
	// TestGPUTopLogProbs) shows it passes.
	DeviceTopLogProbs bool
	// PoisonUninit fills what AllocUninit hands out with NaN (a cuMemsetD32Async of 0xFFFFFFFF),
	// whatever UninitAlloc says: a read before the write that the contract promises then makes
	// NaN results, which the conformance suite reports. For tests; it costs what Alloc's memset
	// costs.
	PoisonUninit bool
}
