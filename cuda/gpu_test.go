package cuda

import (
	"encoding/json"
	"os"
	"regexp"
	"runtime"
	"slices"
	"testing"
	"time"

	"github.com/prolong-rl/prolong/engine"
	"github.com/prolong-rl/prolong/engine/enginetest"
)

// openGPU opens the backend, skipping without a GPU unless PROLONG_REQUIRE_CUDA=1 (the GPU
// check), where a missing GPU fails.
func openGPU(t *testing.T, o Options) *Backend {
	t.Helper()
	b, err := Open(o)
	if err != nil {
		if os.Getenv("PROLONG_REQUIRE_CUDA") == "1" {
			t.Fatal(err)
		}
		t.Skip("no GPU: ", err)
	}
	t.Logf("backend %s", b.Name())
	return b
}

// TestConformance runs the engine's conformance suite on the GPU against the CPU backend:
// exact fp32 matmuls with fp32 tolerances (and finite differences), then bf16 model weights,
// then bf16 matmuls for parameters too with bf16 tolerances, then the same with the fused
// layer ops that are off by default turned on, then the attention cases on the tiled kernels
// (TiledAttention), then the decode_attn kernels (Options.BF16KV, Options.SplitKVDecode), then
// the cases that run GEMMs on cuBLASLt (Options.CublasLt), and
// the model and training cases with the engine's uninitialised buffers full of NaN
// (Options.UninitAlloc, Options.PoisonUninit), and the top log-probs cases on the device's
// ranking (Options.DeviceTopLogProbs), and the sampling cases on the split sampler
// (Options.SplitSample). With PROLONG_CONFORMANCE_JSON set, every result is written there,
// after each run (so that a check cut off by its time limit keeps the runs it finished).
func TestConformance(t *testing.T) {
	type run struct {
		name string
		opts Options
		eo   enginetest.Options
	}
	// bf16 matmuls for parameters round every activation and gradient operand to bf16 (2⁻⁹
	// relative) in the forward and the backward; the reference computes in fp32. Measured on
	// an H200 (tiny models of the suite): op-level matmuls NMSE <= 4e-6, gradients of every
	// weight 1e-3..4e-3, the change of every weight over ten AdamW steps 1e-3..3e-2 (Adam's
	// m/√v turns small gradient differences into sign flips of small updates). The exact
	// check of the same code paths is the fp32 run above (tolerance 1e-6 there); this run
	// checks the bf16 plumbing (a stale bf16 copy of a parameter fails the Copy and AdamW
	// op cases, which a MatMul follows, at 1e-4).
	bf16Tol := enginetest.DefaultTolerances(engine.BF16)
	bf16Tol.MatMul = 1e-4
	bf16Tol.Train = 5e-2
	// TF32 attention matmuls (10-bit mantissas): NMSE about 1e-7..1e-6.
	bf16Tol.Attention = 1e-5
	// The tiled attention kernels (TiledAttention, kernels/flash.cu) on the attention cases:
	// bf16 operands against the fp32 reference. A Go emulation of the kernels
	// (flash_emu_test.go) gives NMSE up to 8e-6 for the outputs and 2.5e-5 for the gradients.
	tiledTol := enginetest.Tolerances{Attention: 1e-4}
	runs := []run{
		{"fp32", Options{}, enginetest.Options{WeightDType: engine.F32}},
		// Every training sequence on the attention matmul path (by default only those of 128
		// tokens or more), exact fp32.
		{"fp32-attention-matmul", Options{AttnGEMMMinLen: 1}, enginetest.Options{WeightDType: engine.F32}},
		{"bf16-weights", Options{}, enginetest.Options{WeightDType: engine.BF16}},
		{"bf16-matmul", Options{BF16Matmul: true, AttnGEMMMinLen: 1}, enginetest.Options{WeightDType: engine.BF16, Tol: bf16Tol}},
		// The fused paths that are off by default (their op cases run in every setting), here in
		// the engine's layer too: the model and training cases go through them.
		// FoldBF16 too: the RMSNorm, AddRMSNorm, SwiGLU and SwiGLUBackward op cases and the
		// model and training cases on the kernels that write their outputs' bf16 copies.
		{"bf16-matmul-fused", Options{BF16Matmul: true, FusedAddRMSNorm: true, MatMuls: true, FusedMLP: true, FusedQKVRoPE: true, MultiTensorAdamW: true, FoldBF16: true},
			enginetest.Options{WeightDType: engine.BF16, Tol: bf16Tol}},
		{"tiled-attention", Options{TiledAttention: true}, enginetest.Options{WeightDType: engine.F32, Tol: tiledTol, Cases: regexp.MustCompile(`^Attention`)}},
		// The decode_attn kernels (off by default): every paged attention on them, bf16 KV
		// stores in the bf16kv cases (ops and greedy decoding), and the context split wherever a
		// launch leaves SMs idle, down to 32 positions a split (the long cases: 150 positions
		// in 5 splits; the 4k-16k decode cases in 53 to 171 splits), exact fp32 matmuls so that
		// the differences are attention's.
		{"decode-attn", Options{BF16KV: true, SplitKVDecode: true, SplitKVMinPart: 32}, enginetest.Options{WeightDType: engine.F32}},
		// The GEMMs on cuBLASLt (Options.CublasLt, off by default): the cases that run GEMMs,
		// exact fp32 so that a wrong descriptor shows, every training sequence on the attention
		// matmuls (their unbatched dK, dV products start inside tensors: alignments below 256).
		{"cublaslt", Options{CublasLt: true, AttnGEMMMinLen: 1}, enginetest.Options{WeightDType: engine.F32,
			Cases: regexp.MustCompile(`^(MatMul|AttentionTrain|AttentionBackward|Copy|Model/[^/]+/(logits|score)|Train/)`)}},
		// The engine's uninitialised buffers (AllocUninit, off by default: UninitAlloc) filled
		// with NaN (PoisonUninit): whole models (logits, scores, cached and greedy generation)
		// and training (gradients, AdamW steps), exact fp32, where a buffer read before the
		// engine or an op writes it makes NaN, which always fails.
		{"uninit-poison", Options{UninitAlloc: true, PoisonUninit: true}, enginetest.Options{WeightDType: engine.F32, Cases: regexp.MustCompile(`^(Model|Train)/`)}},
		// Top log-probs ranked on the device (Options.DeviceTopLogProbs, off by default: the
		// other runs rank the rows on the host), bit for bit the host's.
		{"top-logprobs", Options{DeviceTopLogProbs: true}, enginetest.Options{WeightDType: engine.F32, Cases: regexp.MustCompile(`^TopLogProbs/`)}},
		// The split sampler (Options.SplitSample, off by default) with parts of 16 ids, so that
		// the suite's vocabulary of 257 splits (96 rows: 3 parts each on 132 SMs): the Sample
		// cases and greedy generation.
		{"split-sample", Options{SplitSample: true, SampleSplitMinPart: 16}, enginetest.Options{WeightDType: engine.F32,
			Cases: regexp.MustCompile(`^(Sample/|Model/[^/]+/greedy/)`)}},
	}
	report := map[string][]enginetest.Result{}
	writeReport := func() {
		if p := os.Getenv("PROLONG_CONFORMANCE_JSON"); p != "" && len(report) > 0 {
			data, _ := json.MarshalIndent(report, "", " ")
			if err := os.WriteFile(p, data, 0o644); err != nil {
				t.Error(err)
			}
		}
	}
	for _, r := range runs {
		t.Run(r.name, func(t *testing.T) {
			b := openGPU(t, r.opts)
			if r.opts.TiledAttention {
				if err := b.StartProfile(4096); err != nil {
					t.Fatal(err)
				}
			}
			res := enginetest.Check(b, r.eo)
			if r.opts.TiledAttention {
				// The tiled kernels must have run (every one of them), not the row kernels alone.
				p, err := b.StopProfile()
				if err != nil {
					t.Fatal(err)
				}
				ran := map[string]int{}
				for _, k := range p.Kernels {
					ran[k.Name] = k.Calls
				}
				for _, k := range []string{"flash_fwd_64", "flash_fwd_128", "flash_bwd_dkv_64", "flash_bwd_dkv_128", "flash_bwd_dq_64", "flash_bwd_dq_128"} {
					if ran[k] == 0 {
						t.Errorf("kernel %s did not run in the tiled-attention run (kernels run: %v)", k, ran)
					}
				}
			}
			if r.opts.CublasLt {
				lt, ex, plans, none := b.CublasLtStats()
				t.Logf("cuBLASLt: %d GEMMs, %d on cublasGemmEx while on (batched, or no algorithm), %d plans, %d shapes without an algorithm", lt, ex, plans, none)
				if lt == 0 {
					t.Error("no GEMM ran on cuBLASLt in the cublaslt run")
				}
			}
			report[r.name] = res
			writeReport() // after every run: a check cut off by its time limit keeps the runs done
			fails := 0
			for _, x := range res {
				if !x.Pass {
					fails++
					t.Error(x.String())
				}
			}
			t.Logf("%d cases, %d failed", len(res), fails)
			if r.name == "fp32" || r.name == "fp32-attention-matmul" {
				t.Run("FiniteDifferences", func(t *testing.T) { enginetest.RunOps(t, b) })
			}
		})
	}
}

// TestDroppedTensorReclaimed: a tensor dropped without Free gives its device memory back once
// the garbage collector has run its cleanup.
func TestDroppedTensorReclaimed(t *testing.T) {
	b := openGPU(t, Options{})
	before, _, _ := b.MemoryStats()
	x := b.Alloc(1<<20, 16) // 64 MiB
	if err := b.Download(x, make([]float32, x.Len())); err != nil {
		t.Fatal(err)
	}
	if in, _, _ := b.MemoryStats(); in < before+64<<20 {
		t.Fatalf("64 MiB tensor not counted: %d -> %d", before, in)
	}
	x = nil
	for i := 0; i < 50; i++ {
		runtime.GC()
		time.Sleep(10 * time.Millisecond)
		if in, _, _ := b.MemoryStats(); in <= before {
			return
		}
	}
	in, _, _ := b.MemoryStats()
	t.Fatalf("dropped tensor not reclaimed: %d bytes in use before, %d after", before, in)
}

// TestGPUDecodeGraphs: generation with Options.DecodeGraphs (decode steps replayed as CUDA
// graphs) gives the same tokens and bit-identical log-probs as eager decoding on the GPU, and
// its buckets were captured and replayed, none switched off. The batches stay at 8 rows or
// fewer, where every op computes a row alone (matrix-vector kernels), so padding changes no bit.
func TestGPUDecodeGraphs(t *testing.T) {
	eager := openGPU(t, Options{})
	graphs := openGPU(t, Options{DecodeGraphs: true})
	want := generateOn(t, eager)
	got := generateOn(t, graphs)
	for i := range want {
		for j := range want[i].Samples {
			w, g := want[i].Samples[j], got[i].Samples[j]
			if !slices.Equal(w.Tokens, g.Tokens) || !slices.Equal(w.LogProbs, g.LogProbs) {
				t.Fatalf("request %d sample %d: with graphs %v %v, eager %v %v", i, j, g.Tokens, g.LogProbs, w.Tokens, w.LogProbs)
			}
		}
	}
	st := graphs.DecodeGraphStats()
	for _, key := range []int{1, 4} {
		if s := st[key]; s.Off != "" || s.Captures == 0 || s.Replays == 0 {
			t.Errorf("bucket %d: %+v; want captures and replays, graphs on", key, s)
		}
	}
	t.Logf("decode graphs: %+v", st)
}
