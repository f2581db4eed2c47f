//go:build cgo

package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/prolong-rl/prolong/checkpoints"
	"github.com/prolong-rl/prolong/engine"
	"github.com/prolong-rl/prolong/engine/cpu"
	"github.com/prolong-rl/prolong/grpo/quickstart"
	"github.com/prolong-rl/prolong/grpo/tasks"
	"github.com/prolong-rl/prolong/onnx"
	"github.com/prolong-rl/prolong/onnx/ortrun"
)

// TestExportAnswersLikeEngine: the ONNX checkpoint a short default run exports, run greedily
// in ONNX Runtime with its KV cache fed back, answers held-out problems with exactly the
// engine's tokens (and so the same answers).
func TestExportAnswersLikeEngine(t *testing.T) {
	if err := ortrun.Init(); err != nil {
		if os.Getenv("PROLONG_REQUIRE_ORT") == "1" {
			t.Fatal(err)
		}
		t.Skip(err)
	}
	dir := t.TempDir()
	if err := runArgs(t, "--quiet", "--out", dir, "--seed", "2", "--steps", "2", "--sft-steps", "40", "--sft-lr", "3e-3",
		"--eval-every", "2", "--eval-size", "10", "--ref-reset-every", "0", "--prompts", "4", "--n", "4",
		"--train-problems", "200", "--eval-samples", "1", "--cot"); err != nil {
		t.Fatal(err)
	}
	ck := filepath.Join(dir, "checkpoints", fmt.Sprintf("step-%06d", 2))
	cfg, err := engine.LoadConfig(filepath.Join(ck, "config.json"))
	if err != nil {
		t.Fatal(err)
	}
	icfg, w, err := onnx.Import(filepath.Join(ck, "model.onnx"), onnx.ImportOptions{Config: cfg})
	if err != nil {
		t.Fatal(err)
	}
	// The safetensors export holds the same weights, bit for bit.
	_, sw, err := checkpoints.LoadHF(ck)
	if err != nil {
		t.Fatal(err)
	}
	for n, x := range w {
		if fmt.Sprint(x.Data) != fmt.Sprint(sw[n].Data) {
			t.Fatalf("%s differs between the ONNX and safetensors exports", n)
		}
	}
	model, err := engine.NewModel(icfg, cpu.New(), w, engine.F32)
	if err != nil {
		t.Fatal(err)
	}
	sess, err := ortrun.Open(filepath.Join(ck, "model.onnx"), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Close()
	gen, err := engine.NewGenerator(model, engine.GeneratorOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer gen.Close()
	tok := quickstart.NewTokenizer()
	held, err := tasks.Generate(quickstart.Task(), tasks.GenerateConfig{Split: tasks.HeldOut, N: 8, Seed: 77})
	if err != nil {
		t.Fatal(err)
	}
	stop := []int32{tok.ID(quickstart.EOS)}
	for _, h := range held {
		p, err := tok.Prompt(h)
		if err != nil {
			t.Fatal(err)
		}
		res, err := gen.Generate(context.Background(), []engine.Request{{Prompt: p.Tokens, Params: engine.SamplingParams{MaxNewTokens: 24, StopTokens: stop}}})
		if err != nil {
			t.Fatal(err)
		}
		want := res[0].Samples[0].Tokens
		got, err := sess.Greedy(p.Tokens, 24, stop)
		if err != nil {
			t.Fatal(err)
		}
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("%s: ONNX Runtime answers %q, engine %q", h.Prompt, tok.Decode(got), tok.Decode(want))
		}
	}
}
