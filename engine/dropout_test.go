package engine_test

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/prolong-rl/prolong/engine"
	"github.com/prolong-rl/prolong/engine/cpu"
)

// splitMix64 is the finaliser of SplitMix64 (Steele, Lea, Flood 2014; Vigna's splitmix64.c),
// written here from the published algorithm, apart from engine/dropout.go.
func splitMix64(z uint64) uint64 {
	z ^= z >> 30
	z *= 0xbf58476d1ce4e5b9
	z ^= z >> 27
	z *= 0x94d049bb133111eb
	return z ^ z>>31
}

// specKeep is the dropout spec's keep bit of element i: SplitMix64 seeded with
// mix(seed ^ mix(stream)), its (i+1)-th output's top 24 bits against round(p·2²⁴).
func specKeep(p float64, seed, stream, i uint64) bool {
	state := splitMix64(seed^splitMix64(stream)) + (i+1)*0x9e3779b97f4a7c15 // stepped i+1 times by γ
	return splitMix64(state)>>40 >= uint64(math.Floor(p*(1<<24)+0.5))
}

// TestDropoutBitsSplitMix64 pins the hash to SplitMix64's published outputs for seed 1234567
// (those of Vigna's reference splitmix64.c and Java's SplittableRandom): DropoutBits(key, i)
// is the top 24 bits of output i+1 from state key.
func TestDropoutBitsSplitMix64(t *testing.T) {
	want := []uint64{6457827717110365317, 3203168211198807973, 9817491932198370423, 4593380528125082431, 16408922859458223821}
	for i, w := range want {
		if got := engine.DropoutBits(1234567, uint64(i)); got != uint32(w>>40) {
			t.Errorf("DropoutBits(1234567, %d) = %#x, want %#x (SplitMix64 output %d: %d)", i, got, w>>40, i+1, w)
		}
	}
}

// TestDropoutCPU checks the CPU backend's Dropout on 10⁵ elements against the spec worked in
// the test (every keep bit, and each kept value x·float32(1/(1-p)) exactly), the kept fraction
// against binomial bounds (within 5 standard deviations of 1-p), in place against out of
// place, another stream or seed giving another mask, and p = 0 leaving x as it is.
func TestDropoutCPU(t *testing.T) {
	const n = 100_000
	r := rand.New(rand.NewPCG(3, 4))
	x := make([]float32, n)
	for i := range x {
		x[i] = float32(r.NormFloat64()) + 4 // never 0: a 0 output means dropped
	}
	b := cpu.New()
	run := func(p float32, seed, stream uint64, inPlace bool) []float32 {
		xt, err := b.Upload(engine.F32, x, false, 100, n/100)
		if err != nil {
			t.Fatal(err)
		}
		defer b.Free(xt)
		out := xt
		if !inPlace {
			out = b.Alloc(100, n/100)
			defer b.Free(out)
		}
		b.Dropout(out, xt, p, seed, stream)
		got := make([]float32, n)
		if err := b.Download(out, got); err != nil {
			t.Fatal(err)
		}
		return got
	}
	for _, tc := range []struct {
		p            float32
		seed, stream uint64
	}{{0.1, 0, 0}, {0.5, 42, 1<<32 | 7<<16 | 3<<4 | 2}, {0.9, math.MaxUint64, 99}, {0.01, 5, 5}} {
		t.Run(fmt.Sprintf("p=%g/seed=%d/stream=%#x", tc.p, tc.seed, tc.stream), func(t *testing.T) {
			got := run(tc.p, tc.seed, tc.stream, false)
			scale := float32(1 / (1 - float64(tc.p)))
			kept, bad := 0, 0
			for i, v := range got {
				want := float32(0)
				if specKeep(float64(tc.p), tc.seed, tc.stream, uint64(i)) {
					want = x[i] * scale
				}
				if v != want && bad < 5 {
					bad++
					t.Errorf("element %d: %g, the spec gives %g", i, v, want)
				}
				if v != 0 {
					kept++
				}
			}
			q := 1 - float64(tc.p)
			mean, sd := n*q, math.Sqrt(n*q*(1-q))
			t.Logf("kept %d of %d (expected %.0f ± %.0f)", kept, n, mean, sd)
			if math.Abs(float64(kept)-mean) > 5*sd {
				t.Errorf("kept %d of %d, outside %.0f ± 5·%.0f", kept, n, mean, sd)
			}
			if in := run(tc.p, tc.seed, tc.stream, true); !slices.Equal(in, got) {
				t.Error("in place differs from out of place")
			}
			for _, other := range [][2]uint64{{tc.seed, tc.stream + 1}, {tc.seed + 1, tc.stream}, {tc.seed, tc.stream ^ 1<<32}} {
				o, same := run(tc.p, other[0], other[1], false), 0
				for i := range o {
					if (o[i] == 0) == (got[i] == 0) {
						same++
					}
				}
				// Independent masks agree on p²+(1-p)² of the elements.
				pa := float64(tc.p)*float64(tc.p) + q*q
				if e := math.Abs(float64(same)/n - pa); e > 5*math.Sqrt(pa*(1-pa)/n) {
					t.Errorf("seed %d stream %#x: masks agree on %d of %d elements, want about %.0f (independent)", other[0], other[1], same, n, pa*n)
				}
			}
		})
	}
	if got := run(0, 1, 2, false); !slices.Equal(got, x) {
		t.Error("p = 0 changed x")
	}
}

// dropoutGolden is the LoRA fixture with lora.json's dropout and seed (not used otherwise).
func dropoutConfig(g *loraGolden) engine.LoRAConfig {
	lc := g.config()
	lc.Dropout, lc.Seed = g.Dropout, g.DropoutSeed
	return lc
}

// TestLoRADropoutGradsPyTorch checks a LoRA training pass with dropout (PEFT's lora_dropout on
// every adapter's input, the engine's masks of step 0, micro-batch 0) against PyTorch's
// float64 autograd through PEFT's formula with the same masks, which the script rebuilds from
// the spec (scripts/make_lora_goldens.py, dropout.safetensors): the loss (1e-5 relative) and
// every A and B gradient (1e-4), with and without recomputation; and that the dropout moves
// them (the fixture would pass a trainer that ignored the masks otherwise).
func TestLoRADropoutGradsPyTorch(t *testing.T) {
	for _, name := range []string{"qwen2", "llama3"} {
		for _, recompute := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/recompute=%v", name, recompute), func(t *testing.T) {
				base := loadGolden(t, name)
				g := loadLoRAGolden(t, name)
				if g.Dropout == 0 {
					t.Fatal("lora.json has no lora_dropout (regenerate with /usr/bin/python3 scripts/make_lora_goldens.py)")
				}
				ref, nodrop := g.file(t, "dropout.safetensors"), g.file(t, "forward.safetensors")
				for _, tc := range []struct {
					tag  string
					loss engine.LossFunc
				}{
					{"sft", engine.CrossEntropy(0)},
					{"weighted", engine.WeightedLogProb(g.TokenWeights, g.EntropyWeights)},
				} {
					tr := newTrainer(t, base.cfg, base.weights, engine.TrainOptions{Recompute: recompute, LoRA: dropoutConfig(g), LoRAInit: g.adapter})
					st, err := tr.ForwardBackward(context.Background(), g.batch(), tc.loss)
					if err != nil {
						t.Fatal(err)
					}
					wl, l0 := float64(ref[tc.tag+".loss"].Data[0]), float64(nodrop[tc.tag+".loss"].Data[0])
					t.Logf("%s: loss %.7g, PyTorch %.7g (without dropout %.7g)", tc.tag, st.Loss, wl, l0)
					worst, grads := checkLoRAGrads(t, tr, ref, tc.tag, st.Loss)
					var moved float64
					for n, got := range grads {
						moved = max(moved, relErr(got, f64(nodrop[tc.tag+".grad."+n].Data)))
					}
					t.Logf("%s: largest relative gradient error %.3g (dropout moves the gradients by up to %.3g)", tc.tag, worst, moved)
					if moved < 1e-2 {
						t.Errorf("%s: dropout moves the gradients by %.3g only", tc.tag, moved)
					}
				}
			})
		}
	}
}

// TestLoRADropoutGradsFiniteDifferences checks gradients of A and B entries of the first and
// last adapted layers under dropout 0.3 against central differences of the engine's own loss
// with the same masks (a fresh Trainer's first pass: step 0, micro-batch 0; step 1e-2, 2% of
// the gradient or 1e-4).
func TestLoRADropoutGradsFiniteDifferences(t *testing.T) {
	base := loadGolden(t, "qwen2")
	g := loadLoRAGolden(t, "qwen2")
	lc := g.config()
	lc.Dropout, lc.Seed = 0.3, 77
	checkLoRAGradsFD(t, base, g, lc)
}

// TestLoRADropoutKeys checks the trainer's keys: every ForwardBackward draws new masks (the
// same batch twice gives two losses), SetDropoutKey(0, 0) draws the first pass's again, so
// does a fresh Trainer, an out-of-range key is refused (only with dropout); and
// that scoring (PEFT's eval mode) never drops: the trained model's log-probs equal those of the
// same adapters attached without dropout.
func TestLoRADropoutKeys(t *testing.T) {
	base := loadGolden(t, "qwen2")
	g := loadLoRAGolden(t, "qwen2")
	lc := dropoutConfig(g)
	loss := engine.CrossEntropy(0)
	ctx := context.Background()
	pass := func(tr *engine.Trainer) float64 {
		st, err := tr.ForwardBackward(ctx, g.batch(), loss)
		if err != nil {
			t.Fatal(err)
		}
		return st.Loss
	}
	tr := newTrainer(t, base.cfg, base.weights, engine.TrainOptions{LoRA: lc, LoRAInit: g.adapter})
	l00, l01 := pass(tr), pass(tr)
	if err := tr.SetDropoutKey(0, 0); err != nil {
		t.Fatal(err)
	}
	again := pass(tr)
	fresh := pass(newTrainer(t, base.cfg, base.weights, engine.TrainOptions{LoRA: lc, LoRAInit: g.adapter}))
	if err := tr.SetDropoutKey(3, 1); err != nil {
		t.Fatal(err)
	}
	l31 := pass(tr)
	t.Logf("losses: step 0 micro 0 %.9g, micro 1 %.9g, reset %.9g, fresh trainer %.9g, step 3 micro 1 %.9g", l00, l01, again, fresh, l31)
	if l00 == l01 || l31 == l00 || l31 == l01 {
		t.Error("two keys gave the same loss: the masks did not change")
	}
	if again != l00 || fresh != l00 {
		t.Error("the same key gave another loss")
	}
	plainTr := newTrainer(t, base.cfg, base.weights, engine.TrainOptions{LoRA: g.config(), LoRAInit: g.adapter})
	for _, k := range [][2]uint64{{1 << 32, 0}, {0, 1 << 16}} {
		if err := tr.SetDropoutKey(k[0], k[1]); err == nil {
			t.Errorf("SetDropoutKey(%d, %d) accepted", k[0], k[1])
		}
		if err := plainTr.SetDropoutKey(k[0], k[1]); err != nil { // no dropout: the key is unused
			t.Errorf("without dropout: %v", err)
		}
	}
	// Scoring the trained model: no dropout.
	plain, err := engine.NewModel(base.cfg, cpu.New(), base.weights, engine.F32)
	if err != nil {
		t.Fatal(err)
	}
	if err := plain.AttachLoRA(g.config(), g.adapter, false); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 2; i++ {
		got, err := tr.Model.Logits(ctx, g.Seqs)
		if err != nil {
			t.Fatal(err)
		}
		want, err := plain.Logits(ctx, g.Seqs)
		if err != nil {
			t.Fatal(err)
		}
		for s := range got {
			if e := relErr(got[s], f64(want[s])); e > 1e-6 {
				t.Errorf("sequence %d: the dropout model's logits differ from dropout 0's by %.3g", s, e)
			}
		}
	}
}
