package enginetest

import (
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/prolong-rl/prolong/engine"
	"github.com/prolong-rl/prolong/engine/cpu"
)

// TestCPU runs the conformance suite on the CPU backend against the CPU backend with fp32
// matmuls, with fp32 and with bf16 model weights: with the default precision (bf16 weights as
// bf16 dot products where the CPU has AVX512_BF16) it passes the default tolerances, and with
// fp32 matmuls on both sides, exactly; it shows the plumbing works.
func TestCPU(t *testing.T) {
	for _, dt := range []engine.DType{engine.F32, engine.BF16} {
		t.Run(dt.String(), func(t *testing.T) {
			Run(t, cpu.New(), Options{WeightDType: dt, Short: testing.Short()})
		})
	}
}

// TestCPUBF16Training: the CPU backend with bf16 training matmuls (cpu.PrecisionBF16: every
// matmul's operands rounded to bf16, products summed in fp32, like autocast) against fp32
// matmuls. Its tolerances are those of bf16 arithmetic (see bf16Tol); finite differences of its
// own forward do not apply (rounding x to bf16 makes the forward a step function of x).
func TestCPUBF16Training(t *testing.T) {
	worst := map[string]float64{}
	for _, r := range Check(cpu.New(cpu.WithMatMulPrecision(cpu.PrecisionBF16)), Options{Tol: bf16Tol, Short: testing.Short()}) {
		class := r.Name[:strings.IndexByte(r.Name+"/", '/')]
		if strings.HasPrefix(r.Name, "Train/") {
			class = "Train/" + strings.Split(r.Name, "/")[2]
		}
		worst[class] = max(worst[class], r.Error)
		if !r.Pass || (class == "Train/grad" && r.Error > bf16GradTol) {
			t.Error(r.String())
		}
	}
	t.Logf("largest error by case: %v", worst)
}

// bf16Tol: 2⁻⁹ relative per operand is an NMSE of about 1e-5 per matmul (measured up to 7e-6
// here), compounding through the layers: model logits and the loss 1e-4, every weight's
// gradient up to 4e-3 (bf16GradTol: 2e-2). Ten AdamW steps amplify the relative error of small
// gradients (Adam's m/√v is about ±1 whatever their size): updates differ by up to 0.03 NMSE
// (Train: 0.1). A dropped term or a wrong transpose is an NMSE of order 1.
var bf16Tol = Tolerances{MatMul: 1e-4, Model: 1e-3, Train: 0.1}

const bf16GradTol = 2e-2

// TestCPUTiledAttention runs the conformance suite with every training attention call and
// every scoring pass's attention (Score, Logits) on the tiled path (cpu.WithTiledAttentionFrom(1),
// cpu.WithTiledPrefillFrom(1)): its forward and backward against the per-row CPU path and the
// finite differences of its own forward, and scored log-probs against the row path's.
func TestCPUTiledAttention(t *testing.T) {
	Run(t, cpu.New(cpu.WithTiledAttentionFrom(1), cpu.WithTiledPrefillFrom(1)), Options{Short: testing.Short()})
}

// TestCPUFusedMLP: the CPU backend with the fused gate/up+SwiGLU op in the engine's layer
// (cpu.WithFusedMLP) against the CPU backend without it: whole-model logits, scores, cached
// generation, training gradients and AdamW steps are the same bits (the op is MatMuls then
// SwiGLU bit for bit, and the training forward keeps the products the backward reads).
func TestCPUFusedMLP(t *testing.T) {
	sameModelAndTrain(t, cpu.New(cpu.WithFusedMLP(true)), cpu.New(cpu.WithFusedMLP(false)))
}

// sameModelAndTrain checks that every model and training case of the short suite gives b the
// same bits as ref.
func sameModelAndTrain(t *testing.T, b, ref engine.TrainBackend) {
	t.Helper()
	n := 0
	for _, r := range Check(b, Options{Reference: ref, Short: true}) {
		if !strings.HasPrefix(r.Name, "Model/") && !strings.HasPrefix(r.Name, "Train/") {
			continue
		}
		n++
		if r.Error != 0 || !r.Pass {
			t.Errorf("%s: not exact: %s", r.Name, r)
		}
	}
	if n == 0 {
		t.Fatal("no model or training case ran")
	}
	t.Logf("%d model and training results, all exact", n)
}

// TestCPUUninitPoison: the CPU backend with AllocUninit's buffers full of NaN (cpu.UninitNaN)
// against one whose AllocUninit clears them (cpu.UninitZero): whole-model logits, scores, cached
// generation, training gradients and AdamW steps are the same bits, so the engine writes every
// uninitialised buffer before reading it. (engine's TestAllocUninitPoison runs more paths:
// generation with top log-probs, both LM-head paths, recomputation, LoRA.)
func TestCPUUninitPoison(t *testing.T) {
	sameModelAndTrain(t, cpu.New(cpu.WithUninitFill(cpu.UninitNaN)), cpu.New(cpu.WithUninitFill(cpu.UninitZero)))
}

// TestCasesFilter: Options.Cases runs only the cases it matches, here the (short) attention
// cases of head dims 64 and 128 (the GPU's tiled kernels' shapes), on the CPU's tiled paths
// against its row paths. TestCPU and TestCPUTiledAttention run the long ones.
func TestCasesFilter(t *testing.T) {
	re := regexp.MustCompile(`^Attention.*Dh=(64|128)[,/]`)
	res := Check(cpu.New(cpu.WithTiledAttentionFrom(1), cpu.WithTiledPrefillFrom(1)), Options{Cases: re, Short: true})
	for _, r := range res {
		if !re.MatchString(r.Name) {
			t.Errorf("case %s ran, Cases is %v", r.Name, re)
		}
		if !r.Pass {
			t.Error(r.String())
		}
	}
	for _, w := range []string{"Attention/H=6,KV=1,Dh=64/ragged", "Attention/H=6,KV=1,Dh=64/scratch,lens=[1 130 67]",
		"AttentionTrain/H=6,KV=1,Dh=64,lens=[1 7 20]", "AttentionBackward/H=6,KV=1,Dh=64,lens=[1 7 20]"} {
		if !slices.ContainsFunc(res, func(r Result) bool { return strings.HasPrefix(r.Name, w) }) {
			t.Errorf("no case %s among the %d results", w, len(res))
		}
	}
	if len(res) != 2+2+1+2+3 { // ragged and bf16kv: step 1, step 2; scratch; out, lse; dq, dk, dv
		t.Errorf("%d results, want 10", len(res))
	}
}
