package enginetest

import (
	"encoding/json"
	"fmt"
	"maps"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	"github.com/prolong-rl/prolong/engine"
	"github.com/prolong-rl/prolong/engine/cpu"
)

// Backends that wrap the CPU backend, to show that the suite catches a broken op and that
// its tolerances leave room for a correct backend that rounds differently.

// wrapped is the CPU backend unchanged behind another type: it must pass everything.
type wrapped struct{ *cpu.Backend }

// rmsnormOff scales RMSNorm's output by 1+1e-3 (a wrong eps or a mean over the wrong count
// does about that).
type rmsnormOff struct{ *cpu.Backend }

func (b rmsnormOff) RMSNorm(out, x, w *engine.Tensor, eps float32) {
	b.Backend.RMSNorm(out, x, w, eps)
	b.Backend.Scale(out, 1+1e-3)
}

// attnMissesSelf is paged attention with the causal mask off by one for sequences that have
// a cached context: every new token ignores its own key and value (a strict "<" for "<=").
// Prefill of a fresh sequence is right.
type attnMissesSelf struct{ *cpu.Backend }

func (b attnMissesSelf) Attention(out, q, k, v *engine.Tensor, kv engine.KVStore, layer int, ab *engine.AttnBatch) {
	bad := *ab
	bad.CtxLen = append([]int32(nil), ab.CtxLen...)
	for s := range bad.CtxLen {
		if n := ab.SeqStart[s+1] - ab.SeqStart[s]; bad.CtxLen[s] > n {
			bad.CtxLen[s]--
		}
	}
	b.Backend.Attention(out, q, k, v, kv, layer, &bad)
}

// qkvSlotsRotated is QKVRoPE writing each token's keys and values to the next token's slot
// (the last token's to the first's): a kernel that indexes the slots off by one.
type qkvSlotsRotated struct{ *cpu.Backend }

func (b qkvSlotsRotated) QKVRoPE(q, k, v, qb, kb, vb *engine.Tensor, headDim int, pos []int32, cos, sin *engine.Tensor, kv engine.KVStore, layer int, slots []int32) {
	if len(slots) > 0 {
		slots = append(slices.Clone(slots[1:]), slots[0])
	}
	b.Backend.QKVRoPE(q, k, v, qb, kb, vb, headDim, pos, cos, sin, kv, layer, slots)
}

// matmulDWOverwrites writes the weight gradient instead of adding to it.
type matmulDWOverwrites struct{ *cpu.Backend }

func (b matmulDWOverwrites) MatMulDW(dw, dy, x *engine.Tensor) {
	b.Backend.Scale(dw, 0)
	b.Backend.MatMulDW(dw, dy, x)
}

// gateUpSwapped runs the fused MLP op with the gate and up weights swapped: silu(x·Wuᵀ)·(x·Wgᵀ),
// a mix-up of two same-shaped weights that an unfused reference does not make.
type gateUpSwapped struct{ *cpu.Backend }

func (b gateUpSwapped) GateUpSwiGLU(out, gate, up, x, wg, wu *engine.Tensor) {
	b.Backend.GateUpSwiGLU(out, up, gate, x, wu, wg)
}

// dropoutIndexOff hashes element i+1 for element i (a counter off by one): every mask is
// another, equally random one.
type dropoutIndexOff struct{ *cpu.Backend }

func (b dropoutIndexOff) Dropout(out, x *engine.Tensor, p float32, seed, stream uint64) {
	xs := make([]float32, x.Len())
	if err := b.Download(x, xs); err != nil {
		panic(err)
	}
	key, thr, s := engine.DropoutKey(seed, stream), engine.DropoutThreshold(p), engine.DropoutScale(p)
	for i, v := range xs {
		xs[i] = 0
		if engine.DropoutBits(key, uint64(i)+1) >= thr {
			xs[i] = v * s
		}
	}
	t, err := b.Upload(engine.F32, xs, false, x.Shape...)
	if err != nil {
		panic(err)
	}
	b.Copy(out, t)
	b.Free(t)
}

// logProbsIntoSwapped writes each row's entropy where its log-prob belongs and the other way
// round (the kernel's two output pointers swapped).
type logProbsIntoSwapped struct{ *cpu.Backend }

func (b logProbsIntoSwapped) LogProbsInto(out *engine.Tensor, row0 int, logits *engine.Tensor, targets []int32, temp float32) {
	b.Backend.LogProbsInto(out, row0, logits, targets, temp)
	n := out.Cols()
	v := make([]float32, 2*n)
	if err := b.Download(out, v); err != nil {
		panic(err)
	}
	for r := row0; r < row0+logits.Rows(); r++ {
		v[r], v[n+r] = v[n+r], v[r]
	}
	t, err := b.Upload(engine.F32, v, false, out.Shape...)
	if err != nil {
		panic(err)
	}
	b.Copy(out, t)
	b.Free(t)
}

// group is the op or model a result belongs to: the first element of its name.
func group(name string) string { return name[:strings.IndexByte(name, '/')] }

// TestPerturbedOpFails runs the suite on a CPU backend with one op perturbed against a clean
// CPU backend: the failing results must be exactly that op's cases (but for the parts the
// perturbation does not touch, listed) and the whole-model cases that go through the op.
func TestPerturbedOpFails(t *testing.T) {
	tests := []struct {
		name    string
		b       engine.TrainBackend
		op      string   // the op's group
		unhit   []string // parts of the op's cases the perturbation leaves exact
		models  []string // model-level cases that must fail (substrings); others of Model/Train may
		untouch []string // model-level cases that must pass
	}{
		{"RMSNorm", rmsnormOff{cpu.New()}, "RMSNorm", nil,
			[]string{"Model/qwen2/logits", "Model/qwen3/logits", "Model/llama/logits", "Train/qwen3/grad/"}, nil},
		{"Attention", attnMissesSelf{cpu.New()}, "Attention", []string{"/step1", "/scratch"}, // fresh prefill only
			[]string{"Model/qwen2/cached", "Model/qwen3/cached", "Model/llama/cached"},
			[]string{"Model/qwen2/logits", "Model/qwen3/logits", "Model/llama/logits", "Model/qwen2/score", "Train/"}},
		// One float32 step off in a sampled log-prob (as log(e^z/mass) in place of z - log(mass)
		// gives now and then): an NMSE of 1e-14, which a tolerance lets through; the suite
		// compares sampled log-probs bit for bit.
		{"SampledLogProb", sampledLogProbStep{cpu.New()}, "Sample", []string{"/ids", "distribution"}, nil, []string{"Model/", "Train/"}},
		{"Dropout", dropoutIndexOff{cpu.New()}, "Dropout", []string{"/p=0/"},
			[]string{"Train/qwen2/lora-dropout/grad/", "Train/llama/lora-dropout/adamw10/"},
			[]string{"Model/", "Train/qwen2/grad/", "Train/qwen2/lora/", "Train/qwen2/fused-head/"}},
		// The engine's layer takes the fused op where the backend fuses (cpu.WithFusedMLP).
		// Swapping both weights leaves the kept products right: only out is hit.
		{"GateUpSwiGLU", gateUpSwapped{cpu.New(cpu.WithFusedMLP(true))}, "GateUpSwiGLU", []string{"/gate", "/up"},
			[]string{"Model/qwen2/logits", "Model/llama/score/", "Train/qwen3/grad/"}, nil},
		{"QKVRoPE", qkvSlotsRotated{cpu.New()}, "QKVRoPE", []string{"/nokv", "/q", "/k", "/v"},
			[]string{"Model/qwen2/logits", "Model/qwen3/logits", "Model/llama/logits"}, []string{"Train/"}},
		// Score and the two-pass training head take LogProbsInto where the backend has it, and
		// so does the one-pass head (fused-head) where the micro-batch's logits fit the logit
		// budget (the suite's do).
		{"LogProbsInto", logProbsIntoSwapped{cpu.New()}, "LogProbsInto", nil,
			[]string{"Model/qwen2/score/", "Model/llama/score-long/", "Train/qwen3/loss", "Train/qwen2/fused-head/loss"},
			[]string{"Model/qwen2/logits"}},
		// Top log-probs are compared bit for bit: one float32 step in every finite log-prob
		// fails the log-probs and leaves the ids; ranks 0 and 1 swapped (ids with their
		// log-probs) fail the ids, and the log-probs of the ids that still match stay exact.
		{"TopLogProbsStep", topLogProbsOff{cpu.New(), false}, "TopLogProbs", []string{"/ids"}, nil, []string{"Model/", "Train/"}},
		{"TopLogProbsSwap", topLogProbsOff{cpu.New(), true}, "TopLogProbs", []string{"/logprobs"}, nil, []string{"Model/", "Train/"}},
		{"MatMulDW", matmulDWOverwrites{cpu.New()}, "MatMulDW", nil,
			[]string{"Train/qwen2/grad/model.layers.0.mlp.up_proj.weight", "Train/llama/grad/lm_head.weight"},
			[]string{"Model/", "Train/qwen2/grad/model.norm.weight"}},
	}
	// Results of other ops' cases that go through a perturbed op and may fail (substrings): the
	// QKVRoPE cases attend over what it wrote.
	through := map[string][]string{"Attention": {"QKVRoPE/"}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			results := Check(tt.b, Options{Short: testing.Short()})
			failed := map[string]bool{}
			var nOp, nFail int
			for _, r := range results {
				if !r.Pass {
					nFail++
					failed[r.Name] = true
				}
				g := group(r.Name)
				switch {
				case g == tt.op:
					nOp++
					want := true
					for _, u := range tt.unhit {
						if strings.Contains(r.Name, u) {
							want = false
						}
					}
					if r.Pass == want {
						t.Errorf("%s: pass = %v, want %v: %s", r.Name, r.Pass, !want, r)
					}
				case g == "Model" || g == "Train":
					for _, u := range tt.untouch {
						if strings.Contains(r.Name, u) && !r.Pass {
							t.Errorf("%s fails, but does not go through the perturbed path: %s", r.Name, r)
						}
					}
				default:
					if !r.Pass && !slices.ContainsFunc(through[tt.name], func(u string) bool { return strings.Contains(r.Name, u) }) {
						t.Errorf("%s fails, but only %s is perturbed: %s", r.Name, tt.op, r)
					}
				}
			}
			for _, m := range tt.models {
				found := false
				for name := range failed {
					found = found || strings.Contains(name, m)
				}
				if !found {
					t.Errorf("no failing result matches %q", m)
				}
			}
			if nOp == 0 {
				t.Fatalf("no case of %s ran", tt.op)
			}
			byGroup := map[string]int{}
			for name := range failed {
				g := group(name)
				if g == "Model" || g == "Train" {
					g = name[:strings.IndexByte(name[len(g)+1:], '/')+len(g)+1]
				}
				byGroup[g]++
			}
			keys := slices.Sorted(maps.Keys(byGroup))
			var parts []string
			for _, k := range keys {
				parts = append(parts, fmt.Sprintf("%s %d", k, byGroup[k]))
			}
			t.Logf("%d of %d results fail (%d results of %s): %s", nFail, len(results), nOp, tt.op, strings.Join(parts, ", "))
		})
	}
}

// TestWrappedCPUPasses: the CPU backend behind another type passes every case (the suite does
// not depend on the concrete type).
func TestWrappedCPUPasses(t *testing.T) {
	for _, r := range Check(wrapped{cpu.New()}, Options{Short: testing.Short()}) {
		if !r.Pass {
			t.Error(r)
		}
	}
}

// noisy is a correct backend that rounds differently: the outputs of its matmuls, attention,
// norms and SwiGLU get a relative error of up to 2⁻²² (a few fp32 ulp, as another summation
// order or a fast exp gives), and its bf16 matmuls round their activations to bf16 first, as
// tensor cores do. It must pass every case at the default tolerances.
type noisy struct {
	*cpu.Backend
	rng *rand.Rand
}

func newNoisy() *noisy { return &noisy{cpu.New(), rand.New(rand.NewPCG(5, 5))} }

// jitter multiplies every element of t by 1 + u·2⁻²², u uniform in [-1, 1].
func (b *noisy) jitter(t *engine.Tensor) {
	d := make([]float32, t.Len())
	if err := b.Backend.Download(t, d); err != nil {
		panic(err)
	}
	for i := range d {
		d[i] *= float32(1 + (2*b.rng.Float64()-1)*math.Ldexp(1, -22))
	}
	tmp, err := b.Backend.Upload(engine.F32, d, false, t.Shape...)
	if err != nil {
		panic(err)
	}
	b.Backend.Copy(t, tmp)
	b.Backend.Free(tmp)
}

func (b *noisy) MatMul(out, x, w *engine.Tensor) {
	if w.DType == engine.BF16 {
		d := make([]float32, x.Len())
		if err := b.Backend.Download(x, d); err != nil {
			panic(err)
		}
		for i, v := range d {
			d[i] = roundBF16(v)
		}
		xr, err := b.Backend.Upload(engine.F32, d, false, x.Shape...)
		if err != nil {
			panic(err)
		}
		defer b.Backend.Free(xr)
		x = xr
	}
	b.Backend.MatMul(out, x, w)
	b.jitter(out)
}

func (b *noisy) MatMulDX(dx, dy, w *engine.Tensor) { b.Backend.MatMulDX(dx, dy, w); b.jitter(dx) }

func (b *noisy) MatMulDW(dw, dy, x *engine.Tensor) { b.Backend.MatMulDW(dw, dy, x); b.jitter(dw) }

func (b *noisy) RMSNorm(out, x, w *engine.Tensor, eps float32) {
	b.Backend.RMSNorm(out, x, w, eps)
	b.jitter(out)
}

func (b *noisy) SwiGLU(out, gate, up *engine.Tensor) { b.Backend.SwiGLU(out, gate, up); b.jitter(out) }

func (b *noisy) Attention(out, q, k, v *engine.Tensor, kv engine.KVStore, layer int, ab *engine.AttnBatch) {
	b.Backend.Attention(out, q, k, v, kv, layer, ab)
	b.jitter(out)
}

func (b *noisy) AttentionTrain(out, lse, q, k, v *engine.Tensor, seqStart []int32) {
	b.Backend.AttentionTrain(out, lse, q, k, v, seqStart)
	b.jitter(out)
	b.jitter(lse)
}

func (b *noisy) AttentionBackward(dq, dk, dv, dout, q, k, v, out, lse *engine.Tensor, seqStart []int32) {
	b.Backend.AttentionBackward(dq, dk, dv, dout, q, k, v, out, lse, seqStart)
	b.jitter(dq)
	b.jitter(dk)
	b.jitter(dv)
}

// roundBF16 rounds to the nearest bf16 value, ties to even.
func roundBF16(v float32) float32 {
	u := math.Float32bits(v)
	u += 0x7fff + (u>>16)&1
	return math.Float32frombits(u &^ 0xffff)
}

// TestNoisyBackendPasses: the default tolerances are not tighter than honest rounding, for
// fp32 and bf16 model weights.
func TestNoisyBackendPasses(t *testing.T) {
	for _, dt := range []engine.DType{engine.F32, engine.BF16} {
		t.Run(dt.String(), func(t *testing.T) {
			worst := map[string]Result{}
			for _, r := range Check(newNoisy(), Options{WeightDType: dt, Short: testing.Short()}) {
				if !r.Pass {
					t.Error(r)
				}
				g := group(r.Name)
				if r.Metric == MetricNMSE && r.Error/r.Tol >= worst[g].Error/math.Max(worst[g].Tol, 1e-300) {
					worst[g] = r
				}
			}
			for _, g := range slices.Sorted(maps.Keys(worst)) {
				r := worst[g]
				t.Logf("%-18s worst %.2g (tol %.0g): %s", g, r.Error, r.Tol, r.Name)
			}
		})
	}
}

// TestResultJSON: results marshal to JSON, non-finite numbers included.
func TestResultJSON(t *testing.T) {
	r := compareNMSE("X/n=2", []float32{1, float32(math.NaN())}, []float32{1, 2}, 1e-9)
	if r.Pass || r.BadIndex != 1 || !math.IsNaN(r.Got) {
		t.Fatalf("NaN result: %+v", r)
	}
	b, err := json.Marshal([]Result{r})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), `"got":"NaN"`) || !strings.Contains(string(b), `"name":"X/n=2"`) {
		t.Errorf("json: %s", b)
	}
	r = compareNMSE("Y", []float32{1, 2.1, 3}, []float32{1, 2, 3}, 1e-6)
	if r.Pass || r.BadIndex != 1 || r.Got != float64(float32(2.1)) || r.Want != 2 {
		t.Errorf("first bad element: %+v", r)
	}
}

// sampledLogProbStep moves the log-prob of every sampled (non-greedy) row one float32 step
// towards zero.
type sampledLogProbStep struct{ *cpu.Backend }

func (b sampledLogProbStep) Sample(logits *engine.Tensor, rows []engine.SampleRow) ([]int32, []float32, error) {
	ids, lps, err := b.Backend.Sample(logits, rows)
	for i, r := range rows {
		if r.Temperature > 0 && lps[i] != 0 {
			lps[i] = math.Nextafter32(lps[i], 0)
		}
	}
	return ids, lps, err
}

// topLogProbsOff moves every finite top log-prob one float32 step towards zero, or (swap)
// exchanges each list's first two entries.
type topLogProbsOff struct {
	*cpu.Backend
	swap bool
}

func (b topLogProbsOff) TopLogProbs(logits *engine.Tensor, rows []int32, sr []engine.SampleRow, k int) ([]int32, []float32, error) {
	ids, lps, err := b.Backend.TopLogProbs(logits, rows, sr, k)
	for i := 0; i < len(ids) && b.swap && k > 1; i += k {
		ids[i], ids[i+1], lps[i], lps[i+1] = ids[i+1], ids[i], lps[i+1], lps[i]
	}
	for i, v := range lps {
		if !b.swap && v != 0 && !math.IsInf(float64(v), 0) {
			lps[i] = math.Nextafter32(v, 0)
		}
	}
	return ids, lps, err
}
