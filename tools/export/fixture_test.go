package main

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"testing"

	"github.com/prolong-rl/prolong/checkpoints"
	"github.com/prolong-rl/prolong/checkpoints/tokenizer"
	"github.com/prolong-rl/prolong/engine"
)

var update = flag.Bool("update", false, "rewrite testdata/run (the committed training run the tests and docs/export.md use)")

// fixtureRun is a committed training run laid out as tools/train leaves it: RUN/state/ with the
// run states of steps 2 and 4 (policy and reference weights) and RUN/tokenizer/. Regenerate it
// with `go test ./tools/export -run TestFixture -update`.
const fixtureRun = "testdata/run"

// fixtureSteps are the steps saved in fixtureRun, oldest first.
var fixtureSteps = []int64{2, 4}

// fixtureConfig is a tiny Qwen2 (q/k/v biases, untied lm_head) over a 40-token vocabulary.
func fixtureConfig() *engine.Config {
	return &engine.Config{ModelType: "qwen2", VocabSize: 40, HiddenSize: 16, NumHiddenLayers: 2, NumAttentionHeads: 2,
		NumKeyValueHeads: 1, HeadDim: 8, IntermediateSize: 32, RMSNormEps: 1e-6, RopeTheta: 10000,
		MaxPositionEmbeddings: 64, AttentionBias: true, EOSTokenIDs: []int{0}}
}

// fixturePolicy and fixtureReference are the weights fixtureRun stores at step: seeded random
// weights, the oracle the exports are compared with.
func fixturePolicy(step int64) map[string]engine.HostTensor {
	return engine.RandomWeights(fixtureConfig(), uint64(step), 0.2)
}

func fixtureReference(step int64) map[string]engine.HostTensor {
	return engine.RandomWeights(fixtureConfig(), 1000+uint64(step), 0.2)
}

// writeFixture writes the training run into dir.
func writeFixture(dir string) error {
	for _, step := range fixtureSteps {
		st := &checkpoints.RunState{Step: step, Config: fixtureConfig(), Weights: fixturePolicy(step), Reference: fixtureReference(step),
			DataPosition: json.RawMessage(fmt.Sprintf(`{"index":%d}`, 8*step)), Metrics: json.RawMessage(`[]`)}
		if err := checkpoints.SaveRunState(filepath.Join(dir, "state"), st, checkpoints.SaveRunOptions{}); err != nil {
			return err
		}
	}
	tokens := []string{"<eos>"}
	for _, r := range "0123456789abcdefghijklmnopqrstuvwxyz +=" {
		tokens = append(tokens, string(r))
	}
	tok, err := tokenizer.NewCharLevel(tokens, []string{"<eos>"}, "<eos>")
	if err != nil {
		return err
	}
	return tok.Save(filepath.Join(dir, "tokenizer"))
}

// TestFixture: the committed run is exactly what writeFixture makes (so the oracle weights the
// tests use are the ones stored), file for file, byte for byte.
func TestFixture(t *testing.T) {
	if *update {
		if err := os.RemoveAll(fixtureRun); err != nil {
			t.Fatal(err)
		}
		if err := writeFixture(fixtureRun); err != nil {
			t.Fatal(err)
		}
	}
	fresh := t.TempDir()
	if err := writeFixture(fresh); err != nil {
		t.Fatal(err)
	}
	files := func(root string) map[string][]byte {
		m := map[string][]byte{}
		err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
			if err != nil || d.IsDir() {
				return err
			}
			b, err := os.ReadFile(path)
			rel, _ := filepath.Rel(root, path)
			m[rel] = b
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	got, want := files(fixtureRun), files(fresh)
	for name, b := range want {
		if !bytes.Equal(got[name], b) {
			t.Errorf("%s/%s differs from what writeFixture makes (regenerate: go test ./tools/export -run TestFixture -update)", fixtureRun, name)
		}
	}
	if len(got) != len(want) {
		t.Errorf("%s has %d files, writeFixture makes %d", fixtureRun, len(got), len(want))
	}
}
