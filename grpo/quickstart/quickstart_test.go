package quickstart

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/prolong-rl/prolong/grpo/tasks"
)

func TestTokenizer(t *testing.T) {
	tok := NewTokenizer()
	if len(tok.Tokens) != ModelConfig().VocabSize {
		t.Fatalf("vocabulary %d, model has %d", len(tok.Tokens), ModelConfig().VocabSize)
	}
	text := BOS + "12+7-5=19-5=14 " + AnswerOn + "14" + AnswerOff + EOS
	ids, err := tok.Encode(text)
	if err != nil {
		t.Fatal(err)
	}
	// 1 BOS + 15 characters + 1 + 2 + 1 + 1 EOS
	if len(ids) != 21 || ids[0] != tok.ID(BOS) || ids[len(ids)-1] != tok.ID(EOS) {
		t.Fatalf("ids %v", ids)
	}
	if got := tok.Decode(ids); got != strings.TrimSuffix(text, EOS) {
		t.Fatalf("decode %q", got)
	}
	if _, err := tok.Encode("12/3"); err == nil || !strings.Contains(err.Error(), `'/'`) {
		t.Fatalf("unknown character: %v", err)
	}
}

func TestWorking(t *testing.T) {
	for _, tc := range []struct{ prompt, want string }{
		{"12+7-5=", "19-5=14 "},
		{"3+4=", ""},
		{"9-9-9=", "0-9=-9 "},
		{"2*3+1=", ""}, // only + and - are worked
	} {
		if got := Working(tc.prompt); got != tc.want {
			t.Errorf("Working(%q) = %q, want %q", tc.prompt, got, tc.want)
		}
	}
}

// TestReward: the default reward reads the answer tags and checks the value exactly.
func TestReward(t *testing.T) {
	tok := NewTokenizer()
	p, err := tok.Prompt(tasks.Task{Family: "arith", Prompt: "8+7-5=", GroundTruth: "10", Key: "8+7-5"})
	if err != nil {
		t.Fatal(err)
	}
	rw := Reward()
	for resp, want := range map[string]float64{
		"<answer>10</answer>":         1,
		"15-5=10 <answer>10</answer>": 1,
		"<answer>11</answer>":         0,
		"10":                          0,
	} {
		got, err := rw(context.Background(), p, resp)
		if err != nil || got != want {
			t.Errorf("reward(%q) = %v, %v; want %v", resp, got, err, want)
		}
	}
}

// TestSFTDeterministic: the same seed gives the same weights, and a short warm start lowers
// the loss.
func TestSFTDeterministic(t *testing.T) {
	cfg := SFTConfig{Seed: 3, Steps: 6, Batch: 8, LR: 3e-3, TrainSize: 100, NoiseFrac: 0.3}
	var losses []float64
	cfg.Progress = func(_ int, l float64) { losses = append(losses, l) }
	a, err := SFT(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Progress = nil
	b, err := SFT(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	wa, _ := a.Model.HostWeights()
	wb, _ := b.Model.HostWeights()
	for n, w := range wa {
		if fmt.Sprint(w.Data) != fmt.Sprint(wb[n].Data) {
			t.Fatalf("%s differs between two warm starts with the same seed", n)
		}
	}
	if !(losses[len(losses)-1] < losses[0]) {
		t.Fatalf("loss %v did not go down", losses)
	}
}

// TestSuiteFits: every suite prompt, at and above the training difficulty, and its worked
// reference answer encode with the default tokenizer and fit the model's context with a
// 48-token response budget (--task suite's --max-response).
func TestSuiteFits(t *testing.T) {
	tok := NewTokenizer()
	_, held, err := tasks.GenerateSuite(Suite(), tasks.SuiteConfig{TrainN: 200, HeldN: 200, TrainSeed: 1, HeldSeed: 2})
	if err != nil {
		t.Fatal(err)
	}
	for i, set := range held {
		f, err := tasks.New(Suite()[i/2].Above) // held sets go in, above per family; same solver knobs
		if err != nil {
			t.Fatal(err)
		}
		for _, task := range set.Tasks {
			ans, err := f.Solve(task.GroundTruth)
			if err != nil {
				t.Fatal(err)
			}
			p, err := tok.Encode(BOS + task.Prompt)
			if err != nil {
				t.Fatalf("%s: %v", set.Kind, err)
			}
			r, err := tok.Encode(Working(task.Prompt) + tasks.Target(ans) + EOS)
			if err != nil {
				t.Fatalf("%s: %v", set.Kind, err)
			}
			if len(r) > 48 || len(p)+48 > ModelConfig().MaxPositionEmbeddings {
				t.Fatalf("%s: %q: prompt %d + answer %d tokens", set.Kind, task.Prompt, len(p), len(r))
			}
		}
	}
	fams, err := SuiteFamilies()
	if err != nil {
		t.Fatal(err)
	}
	seqs, err := sftSequences(tok, SFTConfig{Seed: 1, TrainSize: 400, CoT: true, NoiseFrac: 0.5, Families: fams})
	if err != nil || len(seqs) != 400 {
		t.Fatalf("%d warm-start sequences, %v; want 400", len(seqs), err)
	}
}
