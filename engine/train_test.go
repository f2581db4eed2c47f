package engine_test

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	"github.com/prolong-rl/prolong/engine"
	"github.com/prolong-rl/prolong/engine/cpu"
)

// trainBatch makes a ragged batch of sequences (lengths lens) with random tokens and starts.
func trainBatch(r *rand.Rand, vocab int, lens ...int) []engine.ScoreRequest {
	var s []engine.ScoreRequest
	for _, n := range lens {
		toks := make([]int32, n)
		for i := range toks {
			toks[i] = int32(r.IntN(vocab))
		}
		s = append(s, engine.ScoreRequest{Tokens: toks, Start: 1 + r.IntN(n-1)})
	}
	return s
}

// refArgs converts a batch into the float64 reference's (seqs, pos, targets) form.
func refArgs(b []engine.ScoreRequest) (seqs [][]int32, pos [][]int, targets [][]int32) {
	for _, s := range b {
		seqs = append(seqs, s.Tokens)
		var p []int
		var tg []int32
		for i := s.Start; i < len(s.Tokens); i++ {
			p = append(p, i-1)
			tg = append(tg, s.Tokens[i])
		}
		pos, targets = append(pos, p), append(targets, tg)
	}
	return
}

// relErr is ‖got-want‖/‖want‖ (absolute when want is zero).
func relErr(got []float32, want []float64) float64 {
	var num, den float64
	for i, w := range want {
		d := float64(got[i]) - w
		num += d * d
		den += w * w
	}
	if den == 0 {
		return math.Sqrt(num)
	}
	return math.Sqrt(num / den)
}

// randomCoefs returns per-token coefficients shaped like the batch's scored tokens.
func randomCoefs(r *rand.Rand, b []engine.ScoreRequest) [][]float64 {
	var c [][]float64
	for _, s := range b {
		row := make([]float64, len(s.Tokens)-s.Start)
		for i := range row {
			row[i] = r.NormFloat64()
		}
		c = append(c, row)
	}
	return c
}

func flat(c [][]float64) []float64 {
	var f []float64
	for _, r := range c {
		f = append(f, r...)
	}
	return f
}

func newTrainer(t testing.TB, c *engine.Config, w map[string]engine.HostTensor, opts engine.TrainOptions) *engine.Trainer {
	t.Helper()
	m, err := engine.NewModel(c, cpu.New(), w, engine.F32)
	if err != nil {
		t.Fatal(err)
	}
	tr, err := engine.NewTrainer(m, opts)
	if err != nil {
		t.Fatal(err)
	}
	return tr
}

// TestTrainGradsVsReference compares the CPU backend's gradient of every weight with the
// float64 reference (itself checked against finite differences and PyTorch), for SFT
// cross-entropy and for a token-weighted log-prob + entropy loss, on every golden config.
// Tolerance: relative norm error 1e-4 per weight tensor (fp32 against float64).
func TestTrainGradsVsReference(t *testing.T) {
	for _, name := range goldenNames(t) {
		g := loadGolden(t, name)
		for _, recompute := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/recompute=%v", name, recompute), func(t *testing.T) {
				r := rand.New(rand.NewPCG(3, 4))
				batch := trainBatch(r, g.cfg.VocabSize, 7, 13, 20, 2)
				ref, err := engine.NewRefModel(g.cfg, g.weights)
				if err != nil {
					t.Fatal(err)
				}
				seqs, pos, targets := refArgs(batch)
				w, e := randomCoefs(r, batch), randomCoefs(r, batch)
				for _, tc := range []struct {
					name string
					loss engine.LossFunc
					ref  engine.RefLoss
				}{
					{"sft", engine.CrossEntropy(0), func(lp, _ []float64) (float64, []float64, []float64) {
						d := make([]float64, len(lp))
						var l float64
						for i, v := range lp {
							l -= v / float64(len(lp))
							d[i] = -1 / float64(len(lp))
						}
						return l, d, make([]float64, len(lp))
					}},
					{"weighted", engine.WeightedLogProb(w, e), weightedLoss(flat(w), flat(e))},
				} {
					tr := newTrainer(t, g.cfg, g.weights, engine.TrainOptions{Recompute: recompute, MaxLogitRows: 5})
					st, err := tr.ForwardBackward(context.Background(), batch, tc.loss)
					if err != nil {
						t.Fatal(err)
					}
					wantLoss, wantGrads := ref.ForwardBackward(seqs, pos, targets, tc.ref)
					if math.Abs(st.Loss-wantLoss) > 1e-5*math.Max(1, math.Abs(wantLoss)) {
						t.Errorf("%s: loss %.8g, reference %.8g", tc.name, st.Loss, wantLoss)
					}
					for _, wn := range tr.TrainableNames() {
						got, err := tr.Grad(wn)
						if err != nil {
							t.Fatal(err)
						}
						if e := relErr(got, wantGrads[wn]); e > 1e-4 || math.IsNaN(e) {
							t.Errorf("%s: grad %s relative error %.3g", tc.name, wn, e)
						}
					}
				}
			})
		}
	}
}

// TestGradAccumulation: k micro-batches with the big batch's normaliser add up to the big
// batch's gradient.
func TestGradAccumulation(t *testing.T) {
	g := loadGolden(t, "qwen2")
	r := rand.New(rand.NewPCG(9, 9))
	batch := trainBatch(r, g.cfg.VocabSize, 9, 4, 17, 6, 11)
	n := 0
	for _, s := range batch {
		n += len(s.Tokens) - s.Start
	}
	big := newTrainer(t, g.cfg, g.weights, engine.TrainOptions{})
	if _, err := big.ForwardBackward(context.Background(), batch, engine.CrossEntropy(0)); err != nil {
		t.Fatal(err)
	}
	small := newTrainer(t, g.cfg, g.weights, engine.TrainOptions{})
	for _, mb := range [][]engine.ScoreRequest{batch[:2], batch[2:3], batch[3:]} {
		if _, err := small.ForwardBackward(context.Background(), mb, engine.CrossEntropy(float64(n))); err != nil {
			t.Fatal(err)
		}
	}
	for _, name := range big.TrainableNames() {
		a, _ := big.Grad(name)
		b, _ := small.Grad(name)
		want := make([]float64, len(a))
		for i, v := range a {
			want[i] = float64(v)
		}
		if e := relErr(b, want); e > 1e-5 {
			t.Errorf("%s: accumulated gradient differs from the big batch's by %.3g", name, e)
		}
	}
}

// TestRecomputeIdentical: recomputing activations runs the same ops on the same inputs, so the
// gradients are bit-identical.
func TestRecomputeIdentical(t *testing.T) {
	g := loadGolden(t, "qwen3")
	batch := trainBatch(rand.New(rand.NewPCG(1, 1)), g.cfg.VocabSize, 12, 30)
	var grads [2]map[string][]float32
	for i, rc := range []bool{false, true} {
		tr := newTrainer(t, g.cfg, g.weights, engine.TrainOptions{Recompute: rc})
		if _, err := tr.ForwardBackward(context.Background(), batch, engine.CrossEntropy(0)); err != nil {
			t.Fatal(err)
		}
		grads[i] = map[string][]float32{}
		for _, n := range tr.TrainableNames() {
			grads[i][n], _ = tr.Grad(n)
		}
	}
	for n, a := range grads[0] {
		for j, v := range a {
			if grads[1][n][j] != v {
				t.Fatalf("%s[%d]: recompute %v, stored %v", n, j, grads[1][n][j], v)
			}
		}
	}
}

// TestOverfit: a tiny model learns a fixed sequence to near-zero loss with AdamW.
func TestOverfit(t *testing.T) {
	c := &engine.Config{ModelType: "qwen2", VocabSize: 32, HiddenSize: 32, NumHiddenLayers: 2, NumAttentionHeads: 4,
		NumKeyValueHeads: 2, HeadDim: 8, IntermediateSize: 64, RMSNormEps: 1e-6, RopeTheta: 10000,
		MaxPositionEmbeddings: 64, AttentionBias: true}
	tr := newTrainer(t, c, engine.RandomWeights(c, 1, 0.1), engine.TrainOptions{Optimizer: engine.AdamWConfig{LR: 1e-2, ClipNorm: 1}})
	seq := []int32{1, 5, 9, 2, 7, 7, 3, 30, 12, 4, 19, 8, 0, 25, 6, 11}
	batch := []engine.ScoreRequest{{Tokens: seq, Start: 1}}
	var first, last float64
	for step := 0; step < 150; step++ {
		st, err := tr.ForwardBackward(context.Background(), batch, engine.CrossEntropy(0))
		if err != nil {
			t.Fatal(err)
		}
		if step == 0 {
			first = st.Loss
		}
		last = st.Loss
		if _, err := tr.Step(); err != nil {
			t.Fatal(err)
		}
	}
	if first < 3 || last > 0.01 {
		t.Fatalf("loss went from %.4g to %.4g; want from ~ln(32)=3.47 to below 0.01", first, last)
	}
	// The trained policy generates the sequence greedily through the KV-cache path.
	gen, err := engine.NewGenerator(tr.Model, engine.GeneratorOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer gen.Close()
	res, err := gen.Generate(context.Background(), []engine.Request{{Prompt: seq[:1], Params: engine.SamplingParams{MaxNewTokens: len(seq) - 1}}})
	if err != nil {
		t.Fatal(err)
	}
	if got := fmt.Sprint(res[0].Samples[0].Tokens); got != fmt.Sprint(seq[1:]) {
		t.Fatalf("greedy continuation %v, want %v", got, seq[1:])
	}
}

// TestFreeze: frozen weights get no gradient and do not move; the others do.
func TestFreeze(t *testing.T) {
	g := loadGolden(t, "llama3")
	tr := newTrainer(t, g.cfg, g.weights, engine.TrainOptions{Freeze: []string{`^model\.layers\.0\.`, `norm`},
		Optimizer: engine.AdamWConfig{LR: 1e-2, WeightDecay: 0.1}})
	for _, n := range tr.TrainableNames() {
		if n == "model.layers.0.mlp.up_proj.weight" || n == "model.norm.weight" {
			t.Fatalf("%s is trainable despite the freeze patterns", n)
		}
	}
	if _, err := tr.Grad("model.layers.0.self_attn.q_proj.weight"); err == nil {
		t.Fatal("frozen weight has a gradient")
	}
	batch := trainBatch(rand.New(rand.NewPCG(2, 2)), g.cfg.VocabSize, 10)
	if _, err := tr.ForwardBackward(context.Background(), batch, engine.CrossEntropy(0)); err != nil {
		t.Fatal(err)
	}
	if _, err := tr.Step(); err != nil {
		t.Fatal(err)
	}
	after, err := tr.Model.HostWeights()
	if err != nil {
		t.Fatal(err)
	}
	moved := func(name string) bool {
		for i, v := range after[name].Data {
			if v != g.weights[name].Data[i] {
				return true
			}
		}
		return false
	}
	for _, name := range engine.WeightNames(g.cfg) {
		frozen := name == "model.norm.weight" || len(name) > 15 && name[:15] == "model.layers.0." ||
			name == "model.layers.1.input_layernorm.weight" || name == "model.layers.1.post_attention_layernorm.weight"
		if moved(name) == frozen {
			t.Errorf("%s: moved=%v, frozen=%v", name, moved(name), frozen)
		}
	}
	if _, err := engine.NewTrainer(g.model(t, engine.F32), engine.TrainOptions{Freeze: []string{"nothing-matches"}}); err == nil {
		t.Error("a freeze pattern matching nothing was accepted")
	}
	if _, err := engine.NewTrainer(g.model(t, engine.F32), engine.TrainOptions{Freeze: []string{"("}}); err == nil {
		t.Error("a bad freeze pattern was accepted")
	}
}

// TestOptimizerState: saving and loading the state resumes bit-exactly; a reset zeroes it.
func TestOptimizerState(t *testing.T) {
	g := loadGolden(t, "qwen2")
	opts := engine.TrainOptions{Optimizer: engine.AdamWConfig{LR: 1e-2, Beta2: 0.95, WeightDecay: 0.1, ClipNorm: 0.5}}
	batch := trainBatch(rand.New(rand.NewPCG(4, 4)), g.cfg.VocabSize, 9, 14)
	step := func(tr *engine.Trainer) {
		if _, err := tr.ForwardBackward(context.Background(), batch, engine.CrossEntropy(0)); err != nil {
			t.Fatal(err)
		}
		if _, err := tr.Step(); err != nil {
			t.Fatal(err)
		}
	}
	a := newTrainer(t, g.cfg, g.weights, opts)
	for i := 0; i < 3; i++ {
		step(a)
	}
	st, err := a.OptimizerState()
	if err != nil {
		t.Fatal(err)
	}
	w, _ := a.Model.HostWeights()
	b := newTrainer(t, g.cfg, w, opts)
	if err := b.LoadOptimizerState(st); err != nil {
		t.Fatal(err)
	}
	step(a)
	step(b)
	wa, _ := a.Model.HostWeights()
	wb, _ := b.Model.HostWeights()
	for n := range wa {
		if fmt.Sprint(wa[n].Data) != fmt.Sprint(wb[n].Data) {
			t.Fatalf("%s differs after resuming from saved optimizer state", n)
		}
	}
	bad := &engine.OptimizerState{Step: 1, M: st.M, V: map[string]engine.HostTensor{}}
	if err := b.LoadOptimizerState(bad); err == nil {
		t.Error("optimizer state without second moments was accepted")
	}
	b.ResetOptimizer()
	st2, _ := b.OptimizerState()
	if st2.Step != 0 {
		t.Errorf("step after reset = %d", st2.Step)
	}
	for n, m := range st2.M {
		for _, v := range append(m.Data, st2.V[n].Data...) {
			if v != 0 {
				t.Fatalf("%s: moment %v after reset", n, v)
			}
		}
	}
}

// TestSchedules checks the learning-rate schedules at hand-worked points.
func TestSchedules(t *testing.T) {
	tests := []struct {
		name string
		s    engine.Schedule
		t    int
		want float64
	}{
		{"constant", engine.Constant(), 7, 1},
		{"warmup first", engine.LinearWarmup(4), 0, 0.25},
		{"warmup mid", engine.LinearWarmup(4), 2, 0.75},
		{"warmup after", engine.LinearWarmup(4), 10, 1},
		{"cosine warmup", engine.Cosine(2, 12, 0.1), 0, 0.5},
		{"cosine start", engine.Cosine(2, 12, 0.1), 2, 1},
		{"cosine middle", engine.Cosine(2, 12, 0.1), 7, 0.55},
		{"cosine end", engine.Cosine(2, 12, 0.1), 12, 0.1},
		{"cosine after", engine.Cosine(2, 12, 0.1), 50, 0.1},
	}
	for _, tc := range tests {
		if got := tc.s(tc.t); math.Abs(got-tc.want) > 1e-12 {
			t.Errorf("%s at %d: %g, want %g", tc.name, tc.t, got, tc.want)
		}
	}
}

// TestTrainErrors: bad batches and losses give errors naming what is wrong.
func TestTrainErrors(t *testing.T) {
	g := loadGolden(t, "qwen2")
	tr := newTrainer(t, g.cfg, g.weights, engine.TrainOptions{})
	ctx := context.Background()
	bad := []struct {
		name  string
		batch []engine.ScoreRequest
		loss  engine.LossFunc
	}{
		{"start 0", []engine.ScoreRequest{{Tokens: []int32{1, 2}, Start: 0}}, engine.CrossEntropy(0)},
		{"token out of vocabulary", []engine.ScoreRequest{{Tokens: []int32{1, 9999}, Start: 1}}, engine.CrossEntropy(0)},
		{"wrong gradient length", []engine.ScoreRequest{{Tokens: []int32{1, 2, 3}, Start: 1}}, engine.WeightedLogProb([][]float64{{1}}, nil)},
		{"NaN gradient", []engine.ScoreRequest{{Tokens: []int32{1, 2}, Start: 1}}, engine.WeightedLogProb([][]float64{{math.NaN()}}, nil)},
	}
	for _, tc := range bad {
		if _, err := tr.ForwardBackward(ctx, tc.batch, tc.loss); err == nil {
			t.Errorf("%s: no error", tc.name)
		} else {
			t.Logf("%s: %v", tc.name, err)
		}
	}
}

// TestSnapshotIsFrozen: a snapshot (the reference policy) keeps its weights and logits while
// the policy it was taken from trains, and starts out scoring exactly like it.
func TestSnapshotIsFrozen(t *testing.T) {
	g := loadGolden(t, "qwen2")
	tr := newTrainer(t, g.cfg, g.weights, engine.TrainOptions{Optimizer: engine.AdamWConfig{LR: 1e-2}})
	ref, err := tr.Model.Snapshot(engine.F32)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	batch := trainBatch(rand.New(rand.NewPCG(6, 6)), g.cfg.VocabSize, 12)
	before, err := ref.Score(ctx, batch, 1)
	if err != nil {
		t.Fatal(err)
	}
	pol, err := tr.Model.Score(ctx, batch, 1)
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(pol) != fmt.Sprint(before) {
		t.Fatal("snapshot scores differ from the policy it was taken from")
	}
	for i := 0; i < 3; i++ {
		if _, err := tr.ForwardBackward(ctx, batch, engine.CrossEntropy(0)); err != nil {
			t.Fatal(err)
		}
		if _, err := tr.Step(); err != nil {
			t.Fatal(err)
		}
	}
	after, _ := ref.Score(ctx, batch, 1)
	pol2, _ := tr.Model.Score(ctx, batch, 1)
	if fmt.Sprint(after) != fmt.Sprint(before) {
		t.Fatal("the snapshot changed while the policy trained")
	}
	if fmt.Sprint(pol2) == fmt.Sprint(before) {
		t.Fatal("the policy did not change")
	}
	// Training scores equal the inference path's: the same log-probs from ForwardBackward.
	st, err := tr.ForwardBackward(ctx, batch, engine.CrossEntropy(0))
	if err != nil {
		t.Fatal(err)
	}
	for j, v := range pol2[0].LogProbs {
		if math.Abs(float64(v)-st.LogProb[0][j]) > 1e-5 {
			t.Fatalf("token %d: Score %g, ForwardBackward %g", j, v, st.LogProb[0][j])
		}
	}
}

// sumSquaresFails is the CPU backend with a device that fails SumSquares.
type sumSquaresFails struct{ *cpu.Backend }

func (sumSquaresFails) SumSquares(*engine.Tensor) (float64, error) {
	return 0, fmt.Errorf("cuda: SumSquares x [4]: cuMemcpyDtoHAsync: CUDA_ERROR_INVALID_VALUE (1) (a test's)")
}

// TestStepReportsDeviceError: a device error while computing the gradient norm is the step's
// error, naming the weight, and the weights do not move (it was a NaN gradient norm before).
func TestStepReportsDeviceError(t *testing.T) {
	g := loadGolden(t, "qwen2")
	m, err := engine.NewModel(g.cfg, sumSquaresFails{cpu.New()}, g.weights, engine.F32)
	if err != nil {
		t.Fatal(err)
	}
	tr, err := engine.NewTrainer(m, engine.TrainOptions{Optimizer: engine.AdamWConfig{LR: 1e-2}})
	if err != nil {
		t.Fatal(err)
	}
	batch := trainBatch(rand.New(rand.NewPCG(2, 2)), g.cfg.VocabSize, 10)
	if _, err := tr.ForwardBackward(context.Background(), batch, engine.CrossEntropy(0)); err != nil {
		t.Fatal(err)
	}
	_, err = tr.Step()
	if err == nil || !strings.Contains(err.Error(), "adamw: gradient norm of ") || !strings.Contains(err.Error(), "CUDA_ERROR_INVALID_VALUE (1) (a test's)") {
		t.Fatalf("step: %v", err)
	}
	after, err := tr.Model.HostWeights()
	if err != nil {
		t.Fatal(err)
	}
	for name, w := range g.weights {
		if !slices.Equal(after[name].Data, w.Data) {
			t.Fatalf("%s moved in a failed step", name)
		}
	}
}
