// Package enginetest is the conformance suite every engine backend runs, in the spirit of
// ggml's test-backend-ops: one call runs every op of engine.Backend and engine.TrainBackend,
// whole tiny models (logits, cached against uncached generation, greedy tokens, the sampling
// distribution) and training (every weight's gradient, ten AdamW steps) on the backend under
// test and on a reference backend (the CPU backend unless told otherwise), with the same
// random inputs, and compares the two.
//
//	results := enginetest.Check(b, enginetest.Options{WeightDType: engine.BF16}) // any program
//	enginetest.Run(t, b, enginetest.Options{})                                 // a test
//
// Check returns one Result per comparison (a plain binary can write them as JSON); Run turns
// them into subtests and adds RunOps, which checks every backward op against finite
// differences of the backend's own forward.
//
// # Metric
//
// Outputs are compared by the normalised mean squared error
//
//	NMSE = Σ(got-want)² / Σwant²
//
// over all elements of an output (Σ(got-want)² alone when want is all zeros, as after
// Scale by 0). A NaN or Inf in got always fails. A few comparisons are not NMSE and say so in
// Result.Metric: SumSquares uses the relative error, Sample the fraction of rows whose ids
// differ, the sampling distribution a chi-square statistic, greedy generation the number of
// differing tokens.
//
// Inputs are fresh random normal values (never zeros, so that a kernel that skips work or
// reads an unwritten buffer shows), and every op's inputs are made on the host or by the
// reference, so that a broken op fails its own cases and not those of the ops around it;
// only the model and training cases chain ops.
//
// # Tolerances
//
// Two correct fp32 implementations differ by rounding: a relative error per element of a few
// ulp (2⁻²⁴ ≈ 6e-8) times √K for a K-term sum in another order, or a fast exp/rsqrt (about
// 2⁻²¹), which is an NMSE of 1e-14..1e-11. A real bug (a dropped term, an off-by-one position,
// a wrong scale, an overwrite instead of an accumulation) moves the output by far more than
// 1e-3 relative, an NMSE above 1e-6. The defaults sit between, with room for a GPU's
// reduction order:
//
//   - elementwise and row ops, log-probs, AdamW: 1e-9;
//   - matmuls with fp32 weights or parameters, attention, other backward ops: 1e-8 (TF32
//     tensor cores, about 2⁻¹¹ relative, give 1e-7..1e-6 and fail on purpose: fp32 means fp32);
//   - matmuls with bf16 weights: 1e-4. Both backends get the same bf16-rounded weights, but a
//     GPU also rounds the activations to bf16 for the tensor cores: 2⁻⁹ relative per
//     element, an NMSE of about 3e-6, and a margin of 30;
//   - whole-model logits and log-probs: 1e-7 with fp32 weights (errors grow through the
//     layers and the final norm), 1e-3 with bf16 weights (the bf16 activation rounding of
//     every matmul compounds over the layers);
//   - model gradients and AdamW weight updates: 1e-6 (the backward passes through twice the
//     ops; Adam's update m/√v amplifies the relative error of small gradients);
//   - SumSquares: relative error 1e-5;
//   - Sample: at most 2% of the sampled rows may pick another id (only rows whose U lies
//     within rounding of a CDF boundary may), greedy rows none.
//
// The package's own tests check both sides of that choice: a CPU backend whose matmul,
// attention and norm outputs are jittered by fp32 rounding noise (and whose bf16 matmuls
// round their activations to bf16) passes every case, and a CPU backend with one op
// perturbed by 1e-3 fails exactly the cases of that op (and the model cases that use it).
// Measured on that noisy backend: ops up to 3e-14, bf16 matmuls 4e-6, fp32 model logits
// 3e-12, bf16 model logits 1.2e-4, model gradients and updates 2e-8; the whole suite takes
// under a second on the CPU.
package enginetest

import (
	"encoding/json"
	"fmt"
	"hash/fnv"
	"math"
	"math/rand/v2"
	"regexp"
	"runtime/debug"
	"testing"
	"time"

	"github.com/prolong-rl/prolong/engine"
	"github.com/prolong-rl/prolong/engine/cpu"
)

// Options configure a conformance run.
type Options struct {
	// Reference is the backend compared against; nil means the CPU backend with fp32 matmuls
	// (bf16 weights widened to fp32) and the row paths of attention.
	Reference engine.TrainBackend
	// WeightDType is the dtype of inference (linear) weights uploaded to both backends for
	// the model tests (F32 or BF16). The MatMul cases run both dtypes whatever it says.
	WeightDType engine.DType
	// Tol holds the thresholds; zero fields take the defaults for WeightDType
	// (DefaultTolerances).
	Tol Tolerances
	// Short runs fewer and smaller cases.
	Short bool
	// Cases, when set, runs only the cases whose names it matches (e.g. `^Attention` for the
	// attention ops, the run of a backend option that changes only them).
	Cases *regexp.Regexp
}

// Tolerances are the thresholds of the comparisons, NMSE unless said otherwise. The package
// doc explains the defaults.
type Tolerances struct {
	// Elementwise covers Embedding, AddBias, RMSNorm, RoPE, SwiGLU, Add, GatherRows, Copy,
	// Scale, ScatterAddRows, EmbeddingBackward, BiasDW, QKVRoPE's q, k and v, and the values of
	// Dropout (its mask must equal the reference's exactly: a mismatch count, tolerance 0).
	Elementwise float64
	// MatMul covers MatMul with fp32 weights or parameters, MatMulDX and MatMulDW.
	MatMul float64
	// MatMulBF16 covers MatMul with bf16 weights.
	MatMulBF16 float64
	// Attention covers Attention, AttentionTrain, AttentionBackward and the attention over
	// what QKVRoPE wrote to the KV cache.
	Attention float64
	// Backward covers RMSNormBackward, SwiGLUBackward and LogProbsBackward.
	Backward float64
	// LogProbs covers LogProbs and the log-probs Sample returns.
	LogProbs float64
	// AdamW covers the parameter and moments after ten AdamW steps.
	AdamW float64
	// SumSquares is a relative error.
	SumSquares float64
	// Model covers whole-model logits and log-probs (prefill against the reference, cached
	// against uncached on the backend under test).
	Model float64
	// Train covers the gradient of every weight of a tiny model and the change of every
	// weight over ten AdamW steps.
	Train float64
	// SampleMismatch is the fraction of sampled (non-greedy) rows allowed to pick another id
	// than the reference for the same U.
	SampleMismatch float64
}

// DefaultTolerances returns the thresholds for models with weights of dtype dt.
func DefaultTolerances(dt engine.DType) Tolerances {
	t := Tolerances{
		Elementwise: 1e-9, MatMul: 1e-8, MatMulBF16: 1e-4, Attention: 1e-8, Backward: 1e-8,
		LogProbs: 1e-9, AdamW: 1e-9, SumSquares: 1e-5, Model: 1e-7, Train: 1e-6, SampleMismatch: 0.02,
	}
	if dt == engine.BF16 {
		t.Model = 1e-3
	}
	return t
}

// withDefaults fills the zero fields of t from d.
func (t Tolerances) withDefaults(d Tolerances) Tolerances {
	fill := func(v *float64, def float64) {
		if *v == 0 {
			*v = def
		}
	}
	fill(&t.Elementwise, d.Elementwise)
	fill(&t.MatMul, d.MatMul)
	fill(&t.MatMulBF16, d.MatMulBF16)
	fill(&t.Attention, d.Attention)
	fill(&t.Backward, d.Backward)
	fill(&t.LogProbs, d.LogProbs)
	fill(&t.AdamW, d.AdamW)
	fill(&t.SumSquares, d.SumSquares)
	fill(&t.Model, d.Model)
	fill(&t.Train, d.Train)
	fill(&t.SampleMismatch, d.SampleMismatch)
	return t
}

// Metrics of a Result.
const (
	MetricNMSE     = "nmse"     // Σ(got-want)²/Σwant²
	MetricRelErr   = "relerr"   // |got-want|/|want| of a scalar
	MetricMismatch = "mismatch" // fraction of rows (or tokens) that differ
	MetricChi2     = "chi2"     // chi-square statistic of sampled counts against the probabilities
)

// Result is one comparison of the backend under test against the reference.
type Result struct {
	// Name is the op (or model), the shape and the variant, e.g.
	// "MatMul/M=3,K=67,N=129/bf16" or "Train/qwen3/grad/model.norm.weight".
	Name string `json:"name"`
	// Metric is how Error is measured (MetricNMSE unless the case says otherwise).
	Metric string `json:"metric"`
	// Error is the measured error; Tol the threshold it must not exceed.
	Error float64 `json:"error"`
	Tol   float64 `json:"tol"`
	// Pass reports Error <= Tol with every value finite.
	Pass bool `json:"pass"`
	// BadIndex is, for a failing comparison, the first element that is not finite or whose
	// squared error alone exceeds Tol·mean(want²); -1 when there is none. Got and Want are
	// its values.
	BadIndex int     `json:"bad_index"`
	Got      float64 `json:"got"`
	Want     float64 `json:"want"`
	// Detail says more: a panic of the backend, a mismatch count, a near tie.
	Detail string `json:"detail,omitempty"`
	// Duration is the time of the case that produced the result (both backends).
	Duration time.Duration `json:"duration_ns"`
}

// MarshalJSON writes non-finite numbers (a NaN result is what a report must show) as the
// strings "NaN", "+Inf" and "-Inf", which encoding/json refuses as numbers.
func (r Result) MarshalJSON() ([]byte, error) {
	num := func(v float64) any {
		switch {
		case math.IsNaN(v):
			return "NaN"
		case math.IsInf(v, 1):
			return "+Inf"
		case math.IsInf(v, -1):
			return "-Inf"
		}
		return v
	}
	return json.Marshal(struct {
		Name     string `json:"name"`
		Metric   string `json:"metric"`
		Error    any    `json:"error"`
		Tol      any    `json:"tol"`
		Pass     bool   `json:"pass"`
		BadIndex int    `json:"bad_index"`
		Got      any    `json:"got"`
		Want     any    `json:"want"`
		Detail   string `json:"detail,omitempty"`
		Duration int64  `json:"duration_ns"`
	}{r.Name, r.Metric, num(r.Error), num(r.Tol), r.Pass, r.BadIndex, num(r.Got), num(r.Want), r.Detail, int64(r.Duration)})
}

func (r Result) String() string {
	s := fmt.Sprintf("%s: %s %.3g (tol %.3g)", r.Name, r.Metric, r.Error, r.Tol)
	if r.BadIndex >= 0 {
		s += fmt.Sprintf("; first bad element %d: got %.9g, want %.9g", r.BadIndex, r.Got, r.Want)
	}
	if r.Detail != "" {
		s += "; " + r.Detail
	}
	return s
}

// Check runs every case on b and on o.Reference and returns the results. It never stops
// early: a case whose backend panics gives a failing Result naming the panic, and the run goes
// on. Usable from a plain binary.
func Check(b engine.TrainBackend, o Options) []Result {
	if o.Reference == nil {
		o.Reference = cpu.New(cpu.WithMatMulPrecision(cpu.PrecisionFP32), cpu.WithTiledAttentionFrom(math.MaxInt), cpu.WithTiledPrefillFrom(math.MaxInt))
	}
	o.Tol = o.Tol.withDefaults(DefaultTolerances(o.WeightDType))
	var out []Result
	for _, tc := range cases(o) {
		if o.Cases != nil && !o.Cases.MatchString(tc.name) {
			continue
		}
		out = append(out, runCase(b, o, tc)...)
	}
	return out
}

// Run calls Check and reports every failing Result with t.Errorf, each result as a subtest
// named after it, and then runs RunOps (finite differences) on b.
func Run(t *testing.T, b engine.TrainBackend, o Options) {
	t.Helper()
	results := Check(b, o)
	for _, r := range results {
		t.Run(r.Name, func(t *testing.T) {
			if !r.Pass {
				t.Error(r.String())
			}
		})
	}
	t.Run("FiniteDifferences", func(t *testing.T) { RunOps(t, b) })
}

// testCase is one case of the suite: a name (op and shape) and a body that compares the two
// backends through its caseCtx.
type testCase struct {
	name string
	run  func(c *caseCtx)
}

// caseCtx is what a case body sees: both backends, the tolerances, a random source seeded
// by the case's name (so a case's inputs do not depend on which cases ran before), and the
// results so far.
type caseCtx struct {
	name    string
	b, ref  engine.TrainBackend
	o       Options
	tol     Tolerances
	rng     *rand.Rand
	results []Result
}

func runCase(b engine.TrainBackend, o Options, tc testCase) (res []Result) {
	h := fnv.New64a()
	h.Write([]byte(tc.name))
	c := &caseCtx{name: tc.name, b: b, ref: o.Reference, o: o, tol: o.Tol, rng: rand.New(rand.NewPCG(h.Sum64(), 7))}
	start := time.Now()
	defer func() {
		if p := recover(); p != nil {
			c.results = append(c.results, Result{Name: tc.name, Metric: MetricNMSE, Error: math.Inf(1), BadIndex: -1,
				Detail: fmt.Sprintf("panic: %v\n%s", p, debug.Stack())})
		}
		d := time.Since(start)
		for i := range c.results {
			c.results[i].Duration = d
		}
		res = c.results
	}()
	tc.run(c)
	return
}

// sub returns the name of a part of the case.
func (c *caseCtx) sub(part string) string {
	if part == "" {
		return c.name
	}
	return c.name + "/" + part
}

// nmse appends the NMSE comparison of got against want.
func (c *caseCtx) nmse(part string, got, want []float32, tol float64) {
	c.results = append(c.results, compareNMSE(c.sub(part), got, want, tol))
}

// add appends a result made by the case itself.
func (c *caseCtx) add(r Result) {
	r.Name = c.sub(r.Name)
	c.results = append(c.results, r)
}

// compareNMSE is the suite's metric; see the package doc.
func compareNMSE(name string, got, want []float32, tol float64) Result {
	r := Result{Name: name, Metric: MetricNMSE, Tol: tol, BadIndex: -1}
	if len(got) != len(want) {
		r.Error = math.Inf(1)
		r.Detail = fmt.Sprintf("got %d values, want %d", len(got), len(want))
		return r
	}
	var num, den float64
	bad := -1
	for i := range want {
		g, w := float64(got[i]), float64(want[i])
		if math.IsNaN(g) || math.IsInf(g, 0) {
			if bad < 0 {
				bad = i
			}
			continue
		}
		num += (g - w) * (g - w)
		den += w * w
	}
	switch {
	case bad >= 0:
		r.Error = math.NaN()
	case den == 0:
		r.Error = num
	default:
		r.Error = num / den
	}
	r.Pass = bad < 0 && r.Error <= tol
	if !r.Pass && bad < 0 && len(want) > 0 {
		lim := tol * den / float64(len(want))
		if den == 0 {
			lim = tol
		}
		for i := range want {
			d := float64(got[i]) - float64(want[i])
			if d*d > lim {
				bad = i
				break
			}
		}
	}
	if !r.Pass && bad >= 0 {
		r.BadIndex, r.Got, r.Want = bad, float64(got[bad]), float64(want[bad])
	}
	return r
}

// output is one named output of an op, downloaded to the host.
type output struct {
	name string
	data []float32
}

// both runs f on the backend under test and on the reference, each with its own env (freed
// afterwards), and compares every output by NMSE with tolerance tol.
func (c *caseCtx) both(tol float64, f func(e *env) []output) {
	got, want := c.pair(f)
	for i := range want {
		c.nmse(want[i].name, got[i].data, want[i].data, tol)
	}
}

// pair runs f on both backends and returns the outputs of each.
func (c *caseCtx) pair(f func(e *env) []output) (got, want []output) {
	want = withEnv(c.ref, f)
	got = withEnv(c.b, f)
	if len(got) != len(want) {
		panic(fmt.Sprintf("case %s: %d outputs on the backend, %d on the reference", c.name, len(got), len(want)))
	}
	return got, want
}

func withEnv(b engine.TrainBackend, f func(e *env) []output) []output {
	e := &env{b: b}
	defer e.free()
	return f(e)
}

// env wraps a backend for one run of a case: tensors it makes are freed at the end.
type env struct {
	b     engine.TrainBackend
	owned []*engine.Tensor
	kvs   []engine.KVStore
}

func (e *env) free() {
	for _, t := range e.owned {
		e.b.Free(t)
	}
	for _, s := range e.kvs {
		s.Free()
	}
}

func (e *env) keep(t *engine.Tensor, err error) *engine.Tensor {
	if err != nil {
		panic(err)
	}
	e.owned = append(e.owned, t)
	return t
}

// up uploads an fp32 activation.
func (e *env) up(data []float32, shape ...int) *engine.Tensor {
	return e.keep(e.b.Upload(engine.F32, data, false, shape...))
}

// weight uploads a linear weight [N, K] of dtype dt.
func (e *env) weight(dt engine.DType, data []float32, shape ...int) *engine.Tensor {
	return e.keep(e.b.Upload(dt, data, true, shape...))
}

// param uploads a trainable parameter.
func (e *env) param(data []float32, shape ...int) *engine.Tensor {
	return e.keep(e.b.UploadParam(data, shape...))
}

// alloc returns a zeroed fp32 tensor.
func (e *env) alloc(shape ...int) *engine.Tensor { return e.keep(e.b.Alloc(shape...), nil) }

// down downloads a tensor.
func (e *env) down(t *engine.Tensor) []float32 {
	out := make([]float32, t.Len())
	if err := e.b.Download(t, out); err != nil {
		panic(err)
	}
	return out
}

// kv makes an fp32 KV store freed at the end.
func (e *env) kv(layers, kvHeads, blockSize, headDim, blocks int) engine.KVStore {
	return e.kvOf(engine.F32, layers, kvHeads, blockSize, headDim, blocks)
}

// kvOf makes a KV store of dtype dt freed at the end.
func (e *env) kvOf(dt engine.DType, layers, kvHeads, blockSize, headDim, blocks int) engine.KVStore {
	s, err := e.b.NewKVStore(layers, kvHeads, blockSize, headDim, blocks, dt)
	if err != nil {
		panic(err)
	}
	e.kvs = append(e.kvs, s)
	return s
}

// randn returns n values ~ N(0, scale²), none of them zero.
func randn(r *rand.Rand, n int, scale float64) []float32 {
	out := make([]float32, n)
	for i := range out {
		for out[i] == 0 {
			out[i] = float32(r.NormFloat64() * scale)
		}
	}
	return out
}

// ids returns n token ids below v, with repeats when n is large enough.
func randIDs(r *rand.Rand, n, v int) []int32 {
	out := make([]int32, n)
	for i := range out {
		out[i] = int32(r.IntN(v))
	}
	return out
}

// cases lists the suite.
func cases(o Options) []testCase {
	var cs []testCase
	cs = append(cs, forwardCases(o)...)
	cs = append(cs, trainOpCases(o)...)
	cs = append(cs, modelCases(o)...)
	cs = append(cs, trainCases(o)...)
	return cs
}
