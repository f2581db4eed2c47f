package engine_test

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/prolong-rl/prolong/engine"
	"github.com/prolong-rl/prolong/engine/cpu"
)

// loraGolden is one model's LoRA fixture (scripts/make_lora_goldens.py).
type loraGolden struct {
	R              int         `json:"r"`
	Alpha          float64     `json:"lora_alpha"`
	RSLoRA         bool        `json:"use_rslora"`
	Targets        []string    `json:"target_modules"`
	Scaling        float64     `json:"scaling"`
	Dropout        float64     `json:"lora_dropout"`
	DropoutSeed    uint64      `json:"dropout_seed"`
	Seqs           [][]int32   `json:"seqs"`
	Starts         []int       `json:"starts"`
	TokenWeights   [][]float64 `json:"token_weights"`
	EntropyWeights [][]float64 `json:"entropy_weights"`
	Optimizer      struct {
		LR, Beta1, Beta2, Eps float64
		WeightDecay           float64 `json:"weight_decay"`
		MaxGradNorm           float64 `json:"max_grad_norm"`
	} `json:"optimizer"`

	dir     string
	adapter map[string]engine.HostTensor
}

func loadLoRAGolden(t *testing.T, name string) *loraGolden {
	t.Helper()
	g := &loraGolden{dir: filepath.Join("testdata/loragolden", name)}
	data, err := os.ReadFile(filepath.Join(g.dir, "lora.json"))
	if err != nil {
		t.Fatalf("%v (regenerate with /usr/bin/python3 scripts/make_lora_goldens.py)", err)
	}
	if err := json.Unmarshal(data, g); err != nil {
		t.Fatal(err)
	}
	if g.adapter, _, err = readSafetensors(filepath.Join(g.dir, "adapter.safetensors")); err != nil {
		t.Fatal(err)
	}
	return g
}

func (g *loraGolden) config() engine.LoRAConfig {
	return engine.LoRAConfig{Rank: g.R, Alpha: g.Alpha, RSLoRA: g.RSLoRA, Targets: g.Targets}
}

func (g *loraGolden) batch() []engine.ScoreRequest {
	var b []engine.ScoreRequest
	for i, s := range g.Seqs {
		b = append(b, engine.ScoreRequest{Tokens: s, Start: g.Starts[i]})
	}
	return b
}

func (g *loraGolden) file(t *testing.T, name string) map[string]engine.HostTensor {
	t.Helper()
	w, _, err := readSafetensors(filepath.Join(g.dir, name))
	if err != nil {
		t.Fatal(err)
	}
	return w
}

// f64 widens a float32 slice.
func f64(x []float32) []float64 {
	out := make([]float64, len(x))
	for i, v := range x {
		out[i] = float64(v)
	}
	return out
}

// TestLoRAForward checks, for the tiny Qwen2 (every linear layer adapted, alpha/r) and
// Llama 3 (q, v, down; rsLoRA alpha/sqrt(r)) models with nonzero adapters, that the adapted
// forward pass equals the forward pass of the merged weights W + s·B·A (relative norm error
// <= 1e-6 per sequence, fp32 both) and PyTorch's float64 forward of PEFT's unmerged formula
// (<= 1e-5), and that the scaling is PEFT's.
func TestLoRAForward(t *testing.T) {
	for _, name := range []string{"qwen2", "llama3"} {
		t.Run(name, func(t *testing.T) {
			base := loadGolden(t, name)
			g := loadLoRAGolden(t, name)
			lc := g.config()
			if s := lc.Scaling(); math.Abs(s-g.Scaling) > 1e-12 {
				t.Fatalf("scaling %g, PEFT's %g", s, g.Scaling)
			}
			m, err := engine.NewModel(base.cfg, cpu.New(), base.weights, engine.F32)
			if err != nil {
				t.Fatal(err)
			}
			if err := m.AttachLoRA(lc, g.adapter, false); err != nil {
				t.Fatal(err)
			}
			merged, err := engine.MergeLoRA(base.cfg, lc, base.weights, g.adapter)
			if err != nil {
				t.Fatal(err)
			}
			mm, err := engine.NewModel(base.cfg, cpu.New(), merged, engine.F32)
			if err != nil {
				t.Fatal(err)
			}
			plain := base.model(t, engine.F32)
			got, err := m.Logits(context.Background(), g.Seqs)
			if err != nil {
				t.Fatal(err)
			}
			want, err := mm.Logits(context.Background(), g.Seqs)
			if err != nil {
				t.Fatal(err)
			}
			unadapted, err := plain.Logits(context.Background(), g.Seqs)
			if err != nil {
				t.Fatal(err)
			}
			ref := g.file(t, "forward.safetensors")
			var all, allWant []float32
			for i := range g.Seqs {
				all, allWant = append(all, got[i]...), append(allWant, want[i]...)
				e := relErr(got[i], f64(want[i]))
				et := relErr(got[i], f64(ref[fmt.Sprintf("logits.%d", i)].Data))
				moved := relErr(unadapted[i], f64(want[i]))
				t.Logf("sequence %d: adapted vs merged %.3g, vs PyTorch %.3g (the adapters move the logits by %.3g)", i, e, et, moved)
				if et > 1e-5 || math.IsNaN(et) {
					t.Errorf("sequence %d: adapted forward differs from PyTorch's by %.3g", i, et)
				}
				if moved < 1e-3 {
					t.Errorf("sequence %d: the adapters hardly change the logits (%.3g): the fixture tests nothing", i, moved)
				}
			}
			if e := relErr(all, f64(allWant)); e > 1e-6 || math.IsNaN(e) {
				t.Errorf("the adapted forward differs from the merged weights' by %.3g over the batch", e)
			} else {
				t.Logf("adapted vs merged over the batch: %.3g", e)
			}
		})
	}
}

// TestLoRAGrads checks the gradients of every A and B against PyTorch autograd through PEFT's
// formula (relative norm error <= 1e-4 per tensor) for SFT cross-entropy and a token-weighted
// log-prob + entropy loss, with and without recomputation, and that the base weights get none.
func TestLoRAGrads(t *testing.T) {
	for _, name := range []string{"qwen2", "llama3"} {
		for _, recompute := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/recompute=%v", name, recompute), func(t *testing.T) {
				base := loadGolden(t, name)
				g := loadLoRAGolden(t, name)
				ref := g.file(t, "forward.safetensors")
				for _, tc := range []struct {
					tag  string
					loss engine.LossFunc
				}{
					{"sft", engine.CrossEntropy(0)},
					{"weighted", engine.WeightedLogProb(g.TokenWeights, g.EntropyWeights)},
				} {
					tr := newTrainer(t, base.cfg, base.weights, engine.TrainOptions{Recompute: recompute, LoRA: g.config(), LoRAInit: g.adapter})
					names := tr.TrainableNames()
					if len(names) != len(g.adapter) {
						t.Fatalf("trainable: %d tensors, want the %d adapter tensors", len(names), len(g.adapter))
					}
					for _, n := range names {
						if !strings.Contains(n, ".lora_") {
							t.Fatalf("base weight %s is trainable", n)
						}
					}
					if _, err := tr.Grad(engine.LayerWeight(0, engine.QProjWeight)); err == nil {
						t.Error("the base q_proj has a gradient")
					}
					st, err := tr.ForwardBackward(context.Background(), g.batch(), tc.loss)
					if err != nil {
						t.Fatal(err)
					}
					worst, _ := checkLoRAGrads(t, tr, ref, tc.tag, st.Loss)
					t.Logf("%s: largest relative gradient error %.3g", tc.tag, worst)
				}
			})
		}
	}
}

// checkLoRAGrads checks a pass's loss against ref's "<tag>.loss" (1e-5 relative) and the
// gradient of every trainable tensor of tr against ref's "<tag>.grad.<name>" (relative norm
// error <= 1e-4); it returns the largest gradient error and the gradients by name.
func checkLoRAGrads(t *testing.T, tr *engine.Trainer, ref map[string]engine.HostTensor, tag string, loss float64) (worst float64, grads map[string][]float32) {
	t.Helper()
	if wl := float64(ref[tag+".loss"].Data[0]); math.Abs(loss-wl) > 1e-5*math.Max(1, math.Abs(wl)) {
		t.Errorf("%s: loss %.7g, PyTorch %.7g", tag, loss, wl)
	}
	grads = map[string][]float32{}
	for _, n := range tr.TrainableNames() {
		got, err := tr.Grad(n)
		if err != nil {
			t.Fatal(err)
		}
		e := relErr(got, f64(ref[tag+".grad."+n].Data))
		if e > 1e-4 || math.IsNaN(e) {
			t.Errorf("%s: grad %s relative error %.3g", tag, n, e)
		}
		worst = max(worst, e)
		grads[n] = got
	}
	return worst, grads
}

// TestLoRAGradsFiniteDifferences checks the gradient of A and B entries of the first and
// last adapted layers against central differences of the engine's own loss (fp32 forward,
// step 1e-2 on the entry; 2% of the gradient or 1e-4).
func TestLoRAGradsFiniteDifferences(t *testing.T) {
	base := loadGolden(t, "qwen2")
	g := loadLoRAGolden(t, "qwen2")
	if checked := checkLoRAGradsFD(t, base, g, g.config()); checked != 4 {
		t.Fatal("checked", checked)
	}
}

// checkLoRAGradsFD checks the gradients of the largest A and B entries of the first and last
// adapted layers of the fixture's first pass (a fresh Trainer with lc: step 0, micro-batch 0;
// the token-weighted loss) against central differences of the engine's own loss (step 1e-2
// on the entry; 2% of the gradient or 1e-4); it returns how many entries it checked.
func checkLoRAGradsFD(t *testing.T, base *golden, g *loraGolden, lc engine.LoRAConfig) (checked int) {
	t.Helper()
	loss := engine.WeightedLogProb(g.TokenWeights, g.EntropyWeights)
	tr := newTrainer(t, base.cfg, base.weights, engine.TrainOptions{LoRA: lc, LoRAInit: g.adapter})
	if _, err := tr.ForwardBackward(context.Background(), g.batch(), loss); err != nil {
		t.Fatal(err)
	}
	lossAt := func(w map[string]engine.HostTensor) float64 {
		t2 := newTrainer(t, base.cfg, base.weights, engine.TrainOptions{LoRA: lc, LoRAInit: w})
		st, err := t2.ForwardBackward(context.Background(), g.batch(), loss)
		if err != nil {
			t.Fatal(err)
		}
		return st.Loss
	}
	names := tr.TrainableNames()
	for _, n := range []string{names[0], names[1], names[len(names)-2], names[len(names)-1]} {
		grad, err := tr.Grad(n)
		if err != nil {
			t.Fatal(err)
		}
		j := 0
		for i, v := range grad {
			if math.Abs(float64(v)) > math.Abs(float64(grad[j])) {
				j = i
			}
		}
		const h = 1e-2
		w := map[string]engine.HostTensor{}
		for k, v := range g.adapter {
			w[k] = engine.HostTensor{Shape: v.Shape, Data: slices.Clone(v.Data)}
		}
		old := w[n].Data[j]
		w[n].Data[j] = old + h
		up := lossAt(w)
		w[n].Data[j] = old - h
		dn := lossAt(w)
		fd := (up - dn) / (2 * h)
		an := float64(grad[j])
		t.Logf("%s[%d]: gradient %.6g, finite difference %.6g", n, j, an, fd)
		if math.Abs(fd-an) > max(0.02*math.Abs(an), 1e-4) {
			t.Errorf("%s[%d]: gradient %.6g, finite difference %.6g", n, j, an, fd)
		}
		checked++
	}
	return checked
}

// TestLoRAAdamWGolden runs ten AdamW steps of a LoRA run (PEFT's initialisation: B = 0; lr
// 1e-2, clip 0.5, weight decay 0.1) and compares the losses, gradient norms and final adapters
// with torch.optim.AdamW over PEFT's formula in float64. Tolerance of the adapters: 1e-3
// absolute (10% of lr: AdamW normalises each update, so fp32 noise on near-zero gradients
// moves entries by a fraction of lr; see TestTrainGoldenPyTorch).
func TestLoRAAdamWGolden(t *testing.T) {
	for _, name := range []string{"qwen2", "llama3"} {
		t.Run(name, func(t *testing.T) {
			base := loadGolden(t, name)
			g := loadLoRAGolden(t, name)
			want := g.file(t, "adamw.safetensors")
			init := map[string]engine.HostTensor{}
			for k, v := range want {
				if n, ok := strings.CutPrefix(k, "init."); ok {
					init[n] = v
				}
			}
			o := g.Optimizer
			tr := newTrainer(t, base.cfg, base.weights, engine.TrainOptions{LoRA: g.config(), LoRAInit: init,
				Optimizer: engine.AdamWConfig{LR: o.LR, Beta1: o.Beta1, Beta2: o.Beta2, Eps: o.Eps, WeightDecay: o.WeightDecay, ClipNorm: o.MaxGradNorm}})
			adamWStepsGolden(t, tr, g.batch(), want, "step")
			got, err := tr.Model.AdapterWeights()
			if err != nil {
				t.Fatal(err)
			}
			worst, at := largestDiff(got, want, slices.Sorted(maps.Keys(init)))
			t.Logf("largest adapter difference after 10 AdamW steps: %.3g at %s", worst, at)
			if worst > 1e-3 || math.IsNaN(worst) {
				t.Errorf("adapters after 10 AdamW steps differ from PyTorch by %.3g at %s", worst, at)
			}
			// The base is untouched.
			bw, err := tr.Model.HostWeights()
			if err != nil {
				t.Fatal(err)
			}
			for n, w := range base.weights {
				if !slices.Equal(bw[n].Data, w.Data) {
					t.Fatalf("base weight %s changed", n)
				}
			}
		})
	}
}

// TestInitLoRA checks PEFT's initialisation: every A uniform in ±1/sqrt(in) (kaiming_uniform_
// with a = sqrt(5)) with that law's variance, every B zero, the same draw for the same seed
// and another for another seed; and the errors for unknown targets and bad shapes.
func TestInitLoRA(t *testing.T) {
	c := engine.Bench122M()
	c.NumHiddenLayers = 2
	lc := engine.LoRAConfig{Rank: 8, Alpha: 16, Seed: 1}
	w, err := engine.InitLoRA(c, lc)
	if err != nil {
		t.Fatal(err)
	}
	if len(w) != 2*7*2 {
		t.Fatalf("%d adapter tensors, want 28 (all-linear, 2 layers)", len(w))
	}
	for n, h := range w {
		if strings.HasSuffix(n, "lora_B.weight") {
			for _, v := range h.Data {
				if v != 0 {
					t.Fatalf("%s is not zero", n)
				}
			}
			continue
		}
		bound := 1 / math.Sqrt(float64(h.Shape[1]))
		var ss float64
		for _, v := range h.Data {
			if math.Abs(float64(v)) > bound {
				t.Fatalf("%s: %g outside ±%g", n, v, bound)
			}
			ss += float64(v) * float64(v)
		}
		if v, want := ss/float64(len(h.Data)), bound*bound/3; math.Abs(v-want) > 0.1*want {
			t.Errorf("%s: variance %.4g, kaiming_uniform(a=sqrt(5)) gives %.4g", n, v, want)
		}
	}
	q := "model.layers.1.mlp.down_proj.lora_A.weight"
	if s := w[q].Shape; !slices.Equal(s, []int{8, c.IntermediateSize}) {
		t.Errorf("%s shape %v", q, s)
	}
	again, _ := engine.InitLoRA(c, lc)
	if !slices.Equal(again[q].Data, w[q].Data) {
		t.Error("same seed, different A")
	}
	lc.Seed = 2
	other, _ := engine.InitLoRA(c, lc)
	if slices.Equal(other[q].Data, w[q].Data) {
		t.Error("another seed, same A")
	}
	for _, tc := range []struct {
		lc   engine.LoRAConfig
		w    map[string]engine.HostTensor
		want string
	}{
		{engine.LoRAConfig{Rank: 8, Alpha: 16, Targets: []string{"qkv_proj"}}, nil, `"qkv_proj" is not a linear layer`},
		{engine.LoRAConfig{Rank: 4, Alpha: 16}, w, `has shape [8 768], want [4 768]`},
		{engine.LoRAConfig{Rank: 8, Alpha: 16, Targets: []string{"q_proj"}}, w, "unexpected adapter tensor"},
	} {
		err := engine.CheckLoRA(c, tc.lc, tc.w)
		if tc.w == nil {
			_, err = engine.InitLoRA(c, tc.lc)
		}
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: error %v, want %q", tc.lc, err, tc.want)
		}
	}
}
