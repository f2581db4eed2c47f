package engine_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	"github.com/prolong-rl/prolong/engine"
)

// TestReduceGrads: every trainable weight's gradient passes through reduce once, in
// TrainableNames order, in buckets of at most the size asked (a bigger weight alone), and
// what reduce leaves is the gradient after (here: doubled); an error names the bucket. A LoRA
// trainer's trainable weights are its adapters (lora_A and lora_B of every target), which the
// buckets then hold.
func TestReduceGrads(t *testing.T) {
	for _, tc := range []struct {
		name string
		opts engine.TrainOptions
	}{
		{"full", engine.TrainOptions{}},
		{"lora", engine.TrainOptions{LoRA: engine.LoRAConfig{Rank: 4, Alpha: 8, Seed: 3}}},
	} {
		t.Run(tc.name, func(t *testing.T) { testReduceGrads(t, tc.opts) })
	}
}

func testReduceGrads(t *testing.T, opts engine.TrainOptions) {
	g := loadGolden(t, "qwen2")
	tr := newTrainer(t, g.cfg, g.weights, opts)
	if opts.LoRA.Rank > 0 {
		specs, err := engine.LoRASpecs(g.cfg, opts.LoRA)
		if err != nil {
			t.Fatal(err)
		}
		names := tr.TrainableNames()
		if len(names) != len(specs) || len(specs) != 2*len(engine.LoRATargets)*g.cfg.NumHiddenLayers {
			t.Fatalf("LoRA trainer: %d trainable weights, %d adapter matrices, want %d", len(names), len(specs), 2*len(engine.LoRATargets)*g.cfg.NumHiddenLayers)
		}
		for i, s := range specs {
			if names[i] != s.Name {
				t.Fatalf("LoRA trainer: trainable weight %d is %q, want the adapter %q", i, names[i], s.Name)
			}
		}
	}
	r := rand.New(rand.NewPCG(5, 5))
	if _, err := tr.ForwardBackward(context.Background(), trainBatch(r, g.cfg.VocabSize, 7, 5), engine.CrossEntropy(0)); err != nil {
		t.Fatal(err)
	}
	before := map[string][]float32{}
	total, largest := 0, 0
	for _, name := range tr.TrainableNames() {
		before[name], _ = tr.Grad(name)
		total += len(before[name])
		largest = max(largest, len(before[name]))
	}
	for _, bucket := range []int{0, 1, largest, total / 3} {
		var seen, calls int
		err := tr.ReduceGrads(bucket, func(b []float32) error {
			if bucket > 0 && len(b) > max(bucket, largest) {
				t.Errorf("bucket %d: %d values", bucket, len(b))
			}
			for i := range b {
				b[i] *= 2
			}
			seen += len(b)
			calls++
			return nil
		})
		if err != nil || seen != total || (bucket == 0 && calls != 1) {
			t.Fatalf("bucket %d: %v, %d values in %d calls, want %d", bucket, err, seen, calls, total)
		}
		for _, name := range tr.TrainableNames() {
			got, _ := tr.Grad(name)
			for i, v := range got {
				if v != 2*before[name][i] {
					t.Fatalf("bucket %d: %s[%d] = %g, want twice %g", bucket, name, i, v, before[name][i])
				}
			}
			before[name] = got
		}
	}
	err := tr.ReduceGrads(0, func([]float32) error { return errors.New("rank 3 is gone") })
	if err == nil || !strings.Contains(err.Error(), "rank 3 is gone") || !strings.Contains(err.Error(), tr.TrainableNames()[0]) {
		t.Fatalf("error: %v", err)
	}
}

// TestGradReady: GradGroups cover the trainable weights once, the last layer's first; during a
// pass with SetGradReady, ready(g) comes for g = 0..L in order, and at that moment group g's
// gradients already hold their values at the end of the pass (read them with ReadGrads), while
// the next layer's do not yet; the hook lasts one pass. Full fine-tuning (a frozen layer too),
// LoRA, and recompute.
func TestGradReady(t *testing.T) {
	for _, tc := range []struct {
		name string
		opts engine.TrainOptions
	}{
		{"full", engine.TrainOptions{}},
		{"frozen layer 0", engine.TrainOptions{Freeze: []string{`^model\.layers\.0\.`}}},
		{"recompute", engine.TrainOptions{Recompute: true}},
		{"lora", engine.TrainOptions{LoRA: engine.LoRAConfig{Rank: 4, Alpha: 8, Seed: 3}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := loadGolden(t, "qwen2")
			tr := newTrainer(t, g.cfg, g.weights, tc.opts)
			L := g.cfg.NumHiddenLayers
			groups := tr.GradGroups()
			if len(groups) != L+1 {
				t.Fatalf("%d groups, want %d", len(groups), L+1)
			}
			var all []string
			for gi, names := range groups {
				for _, name := range names {
					if gi < L && !strings.HasPrefix(name, fmt.Sprintf("model.layers.%d.", L-1-gi)) {
						t.Errorf("group %d holds %s, want layer %d's weights", gi, name, L-1-gi)
					}
					if gi == L && strings.HasPrefix(name, "model.layers.") {
						t.Errorf("the last group holds the layer weight %s", name)
					}
				}
				all = append(all, names...)
			}
			slices.Sort(all)
			want := tr.TrainableNames()
			slices.Sort(want)
			if !slices.Equal(all, want) {
				t.Fatalf("groups hold %d weights, the trainer trains %d", len(all), len(want))
			}
			if strings.Contains(tc.name, "frozen") && len(groups[L-1]) != 0 {
				t.Errorf("frozen layer 0's group holds %v", groups[L-1])
			}
			batch := trainBatch(rand.New(rand.NewPCG(6, 6)), g.cfg.VocabSize, 7, 5)
			read := func(names []string) []float32 {
				n := 0
				for _, name := range names {
					n += tr.GradLen(name)
				}
				buf := make([]float32, n)
				if err := tr.ReadGrads(names, buf); err != nil {
					t.Fatal(err)
				}
				return buf
			}
			if tc.opts.LoRA.Rank > 0 { // B starts at zero: a first step makes A's gradients non-zero
				if _, err := tr.ForwardBackward(context.Background(), batch, engine.CrossEntropy(0)); err != nil {
					t.Fatal(err)
				}
				if _, err := tr.Step(); err != nil {
					t.Fatal(err)
				}
			}
			tr.ZeroGrad()
			var order []int
			seen := map[int][]float32{}
			nextNonZero := map[int]bool{} // group g+1 (a layer) had a gradient when g was ready
			tr.SetGradReady(func(gi int) {
				order = append(order, gi)
				seen[gi] = read(groups[gi])
				if gi+1 < L && len(groups[gi+1]) > 0 {
					nextNonZero[gi] = slices.ContainsFunc(read(groups[gi+1]), func(v float32) bool { return v != 0 })
				}
			})
			if _, err := tr.ForwardBackward(context.Background(), batch, engine.CrossEntropy(0)); err != nil {
				t.Fatal(err)
			}
			for i, gi := range order {
				if gi != i {
					t.Fatalf("ready called with %v, want 0..%d in order", order, L)
				}
			}
			if len(order) != L+1 {
				t.Fatalf("ready called %d times, want %d", len(order), L+1)
			}
			for gi, names := range groups {
				if !slices.Equal(seen[gi], read(names)) {
					t.Errorf("group %d's gradients changed after ready(%d)", gi, gi)
				}
				if len(names) > 0 && !slices.ContainsFunc(seen[gi], func(v float32) bool { return v != 0 }) {
					t.Errorf("group %d's gradients were zero at ready(%d)", gi, gi)
				}
				if nextNonZero[gi] {
					t.Errorf("group %d already had gradients when group %d was ready", gi+1, gi)
				}
			}
			calls := len(order)
			if _, err := tr.ForwardBackward(context.Background(), batch, engine.CrossEntropy(0)); err != nil {
				t.Fatal(err)
			}
			if len(order) != calls {
				t.Errorf("a second pass called ready again")
			}
			if err := tr.ReadGrads(groups[0], make([]float32, 3)); err == nil || !strings.Contains(err.Error(), "values") {
				t.Errorf("ReadGrads with a short buffer: %v", err)
			}
			if err := tr.WriteGrads([]string{"model.nope"}, nil); err == nil || !strings.Contains(err.Error(), "model.nope") {
				t.Errorf("WriteGrads of an unknown weight: %v", err)
			}
		})
	}
}
