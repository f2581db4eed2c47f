package engine_test

import (
	"context"
	"errors"
	"math/rand/v2"
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
