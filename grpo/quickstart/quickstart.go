// Package quickstart is the project's default job: a small Qwen2-shaped model with its own
// character-level tokenizer, a supervised warm start on the default task (short multi-step
// arithmetic, answers in <answer> tags) that leaves it right sometimes but far from always,
// and the GRPO configuration that improves it within minutes on a laptop CPU. tools/train runs
// it with no arguments.
package quickstart

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strconv"
	"strings"

	"github.com/prolong-rl/prolong/engine"
	"github.com/prolong-rl/prolong/engine/cpu"
	"github.com/prolong-rl/prolong/grpo"
	"github.com/prolong-rl/prolong/grpo/reward"
	"github.com/prolong-rl/prolong/grpo/tasks"
)

// Special tokens of the default tokenizer.
const (
	Pad       = "<pad>"
	BOS       = "<bos>"
	EOS       = "<eos>"
	AnswerOn  = "<answer>"
	AnswerOff = "</answer>"
)

// Tokenizer is the default model's tokenizer: the special tokens, then one token per character
// of the task's alphabet. Encoding matches special tokens first, then single characters.
type Tokenizer struct {
	Tokens []string // id -> token
	ids    map[string]int32
}

// NewTokenizer returns the default tokenizer (vocabulary padded to 32 entries).
func NewTokenizer() *Tokenizer {
	toks := []string{Pad, BOS, EOS, AnswerOn, AnswerOff}
	for _, c := range "0123456789+-*=() " {
		toks = append(toks, string(c))
	}
	for len(toks) < 32 {
		toks = append(toks, fmt.Sprintf("<unused%d>", len(toks)))
	}
	t := &Tokenizer{Tokens: toks, ids: map[string]int32{}}
	for i, s := range toks {
		t.ids[s] = int32(i)
	}
	return t
}

// ID returns a token's id; it panics on an unknown token (programmer error).
func (t *Tokenizer) ID(tok string) int32 {
	id, ok := t.ids[tok]
	if !ok {
		panic("quickstart: unknown token " + tok)
	}
	return id
}

// Encode turns text into ids; an unknown character is an error naming it.
func (t *Tokenizer) Encode(s string) ([]int32, error) {
	var out []int32
	for i := 0; i < len(s); {
		if s[i] == '<' {
			matched := false
			for _, sp := range []string{BOS, EOS, AnswerOn, AnswerOff, Pad} {
				if strings.HasPrefix(s[i:], sp) {
					out = append(out, t.ids[sp])
					i += len(sp)
					matched = true
					break
				}
			}
			if matched {
				continue
			}
		}
		id, ok := t.ids[s[i:i+1]]
		if !ok {
			return nil, fmt.Errorf("quickstart tokenizer: character %q at byte %d of %q is not in the vocabulary", s[i], i, s)
		}
		out = append(out, id)
		i++
	}
	return out, nil
}

// Decode turns ids into text (EOS and padding dropped).
func (t *Tokenizer) Decode(ids []int32) string {
	var b strings.Builder
	for _, id := range ids {
		if id < 0 || int(id) >= len(t.Tokens) {
			b.WriteString("<?>")
			continue
		}
		if tok := t.Tokens[id]; tok != EOS && tok != Pad {
			b.WriteString(tok)
		}
	}
	return b.String()
}

// ModelConfig is the default model: Qwen2-shaped (GQA, q/k/v bias), tied embeddings, about
// 2.4M parameters.
func ModelConfig() *engine.Config {
	return &engine.Config{ModelType: "qwen2", VocabSize: 32, HiddenSize: 192, NumHiddenLayers: 6, NumAttentionHeads: 6,
		NumKeyValueHeads: 2, HeadDim: 32, IntermediateSize: 512, RMSNormEps: 1e-6, RopeTheta: 10000,
		MaxPositionEmbeddings: 64, AttentionBias: true, TieWordEmbeddings: true}
}

// TaskSpec is the default task: tasks.Default (short multi-step arithmetic) with its knobs.
var TaskSpec = "arith:max=9"

// Task is the default task family.
func Task() tasks.Family {
	f, err := tasks.New(TaskSpec)
	if err != nil {
		panic(err) // programmer error
	}
	return f
}

// Prompt turns a task into the model's prompt: BOS then the question ("12+7-5=").
func (t *Tokenizer) Prompt(task tasks.Task) (grpo.Prompt, error) {
	ids, err := t.Encode(BOS + task.Prompt)
	if err != nil {
		return grpo.Prompt{}, fmt.Errorf("task %q: %w", task.Key, err)
	}
	return grpo.Prompt{Tokens: ids, Kind: task.Family, GroundTruth: task.GroundTruth, Meta: task.Meta}, nil
}

// Prompts tokenizes tasks.
func (t *Tokenizer) Prompts(ts []tasks.Task) ([]grpo.Prompt, error) {
	out := make([]grpo.Prompt, len(ts))
	for i, task := range ts {
		p, err := t.Prompt(task)
		if err != nil {
			return nil, err
		}
		out[i] = p
	}
	return out, nil
}

// Reward returns the GRPO reward: the grpo/reward registry's verifier for the prompt's task
// family (the answer inside <answer> tags, checked exactly); a suite's held-out kind
// ("arith/above") is scored as its family.
func Reward() grpo.RewardFunc {
	reg := reward.NewDefault(reward.Options{})
	return func(ctx context.Context, p grpo.Prompt, response string) (float64, error) {
		r, err := reg.Score(ctx, tasks.KindFamily(p.Kind), response, p.GroundTruth, p.Meta)
		return r.Score, err
	}
}

// SFTConfig says how the warm start is trained.
type SFTConfig struct {
	Seed      uint64
	Steps     int     // optimizer steps
	Batch     int     // sequences per step
	LR        float64 // peak learning rate (cosine schedule with warm-up)
	TrainSize int     // distinct training problems
	// NoiseFrac is the share of training problems whose target answer is replaced by a wrong one
	// (off by 1 to 3), as noisy pre-training data would teach: the model learns to put real but
	// far from all of its mass on the right answer, which is what RL then sharpens.
	NoiseFrac float64
	// CoT makes the targets show their work: "12+7-5=" is answered "19-5=14 <answer>14</answer>",
	// one reduction per step, left to right.
	CoT bool
	// Families are the tasks trained on, TrainSize/len(Families) problems each; nil means Task().
	Families []tasks.Family
	// Progress, when set, is called after every step.
	Progress func(step int, loss float64)
	// Backend trains the model; nil means the CPU.
	Backend engine.TrainBackend
}

// DefaultSFT is the warm start of the default model: worked answers, half of them ending in a
// wrong final answer (as noisy data would teach), so that the model formats its answers and
// is right sometimes but far from always (about 40% held-out at temperature 0.6) — the
// situation RL improves on: the right answer is often sampled, and GRPO makes it the likely one.
func DefaultSFT() SFTConfig {
	return SFTConfig{Seed: 1, Steps: 600, Batch: 32, LR: 3e-3, TrainSize: 3000, CoT: true, NoiseFrac: 0.5}
}

// SFT builds the default model from a seeded random initialisation and trains it by
// cross-entropy on reference answers ("<answer>14</answer><eos>" after the prompt) of the
// train split. Same seed, same machine: same weights.
func SFT(ctx context.Context, cfg SFTConfig) (*engine.Trainer, error) {
	tok := NewTokenizer()
	c := ModelConfig()
	var backend engine.Backend = cpu.New()
	if cfg.Backend != nil {
		backend = cfg.Backend
	}
	m, err := engine.NewModel(c, backend, engine.RandomWeights(c, cfg.Seed, 0.02), engine.F32)
	if err != nil {
		return nil, err
	}
	tr, err := engine.NewTrainer(m, engine.TrainOptions{Optimizer: engine.AdamWConfig{LR: cfg.LR, Beta2: 0.99,
		WeightDecay: 0.01, ClipNorm: 1, Schedule: engine.Cosine(cfg.Steps/10, cfg.Steps, 0.1)}})
	if err != nil {
		return nil, err
	}
	seqs, err := sftSequences(tok, cfg)
	if err != nil {
		return nil, err
	}
	rng := rand.New(rand.NewPCG(cfg.Seed, 42))
	for step := 0; step < cfg.Steps; step++ {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		batch := make([]engine.ScoreRequest, cfg.Batch)
		for i := range batch {
			batch[i] = seqs[rng.IntN(len(seqs))]
		}
		st, err := tr.ForwardBackward(ctx, batch, engine.CrossEntropy(0))
		if err != nil {
			return nil, fmt.Errorf("sft step %d: %w", step, err)
		}
		if _, err := tr.Step(); err != nil {
			return nil, fmt.Errorf("sft step %d: %w", step, err)
		}
		if cfg.Progress != nil {
			cfg.Progress(step+1, st.Loss)
		}
	}
	slog.Debug("quickstart: sft done", "steps", cfg.Steps)
	return tr, nil
}

// sftSequences tokenizes the warm start's training sequences: each family's train-split
// problems with their reference answers (worked, with CoT; a NoiseFrac share of the integer
// answers made wrong).
func sftSequences(tok *Tokenizer, cfg SFTConfig) ([]engine.ScoreRequest, error) {
	fams := cfg.Families
	if fams == nil {
		fams = []tasks.Family{Task()}
	}
	var seqs []engine.ScoreRequest
	noise := rand.New(rand.NewPCG(cfg.Seed, 7))
	for _, f := range fams {
		train, err := tasks.Generate(f, tasks.GenerateConfig{Split: tasks.Train, N: cfg.TrainSize / len(fams), Seed: cfg.Seed})
		if err != nil {
			return nil, err
		}
		for _, task := range train {
			ans, err := f.Solve(task.GroundTruth)
			if err != nil {
				return nil, err
			}
			if noise.Float64() < cfg.NoiseFrac {
				ans = noisy(ans, noise)
			}
			p, err := tok.Encode(BOS + task.Prompt)
			if err != nil {
				return nil, err
			}
			target := tasks.Target(ans)
			if cfg.CoT {
				target = Working(task.Prompt) + target
			}
			r, err := tok.Encode(target + EOS)
			if err != nil {
				return nil, err
			}
			seqs = append(seqs, engine.ScoreRequest{Tokens: append(p, r...), Start: len(p)})
		}
	}
	return seqs, nil
}

// noisy returns an integer answer off by 1 to 3; an answer that is not an integer (a countdown
// expression) is kept.
func noisy(ans string, noise *rand.Rand) string {
	v, err := strconv.Atoi(ans)
	if err != nil {
		return ans
	}
	off := 1 + noise.IntN(3)
	if noise.IntN(2) == 0 {
		off = -off
	}
	return strconv.Itoa(v + off)
}

// Suite is the task suite for prolonged RL on the default model (docs/prolonged.md): families
// whose prompts and answers fit the default tokenizer's alphabet, each trained at a difficulty
// the warm start solves sometimes and evaluated there ("/in") and above it ("/above").
func Suite() []tasks.SuiteFamily {
	return []tasks.SuiteFamily{
		{Name: "arith", Train: "arith:max=9,min_terms=3,terms=4", Above: "arith:max=9,min_terms=5,terms=6"},
		{Name: "countdown", Train: "countdown:max=9,max_target=40,numbers=3,ops=+-*,terse=1", Above: "countdown:max=9,max_target=40,numbers=4,ops=+-*,terse=1"},
	}
}

// SuiteFamilies returns the suite's training families, in order.
func SuiteFamilies() ([]tasks.Family, error) {
	var fs []tasks.Family
	for _, sf := range Suite() {
		f, err := tasks.New(sf.Train)
		if err != nil {
			return nil, err
		}
		fs = append(fs, f)
	}
	return fs, nil
}

// SetPrompts tokenizes a suite's sets, each prompt's Kind the set's kind ("arith/in").
func (t *Tokenizer) SetPrompts(sets []tasks.SuiteSet) ([]grpo.Prompt, error) {
	var out []grpo.Prompt
	for _, set := range sets {
		ps, err := t.Prompts(set.Tasks)
		if err != nil {
			return nil, fmt.Errorf("suite set %s: %w", set.Kind, err)
		}
		for i := range ps {
			ps[i].Kind = set.Kind
		}
		out = append(out, ps...)
	}
	return out, nil
}

// Working writes the left-to-right reduction of an arithmetic prompt of + and - ("12+7-5=")
// as "19-5=14 ": each line folds the first two terms. A prompt with one operation, or one it
// cannot parse, gets no working.
func Working(prompt string) string {
	expr := strings.TrimSuffix(prompt, "=")
	var terms []int
	var ops []byte
	cur, have := 0, false
	for i := 0; i < len(expr); i++ {
		c := expr[i]
		switch {
		case c >= '0' && c <= '9':
			cur, have = cur*10+int(c-'0'), true
		case (c == '+' || c == '-') && have:
			terms, ops = append(terms, cur), append(ops, c)
			cur, have = 0, false
		default:
			return ""
		}
	}
	if !have {
		return ""
	}
	terms = append(terms, cur)
	var b strings.Builder
	acc := terms[0]
	for i := 1; i < len(terms)-1; i++ {
		if ops[i-1] == '+' {
			acc += terms[i]
		} else {
			acc -= terms[i]
		}
		fmt.Fprintf(&b, "%d", acc)
		for j := i; j < len(terms)-1; j++ {
			fmt.Fprintf(&b, "%c%d", ops[j], terms[j+1])
		}
		b.WriteString("=")
		// the value after this fold is written at the start of the next line, or is the answer
		last := acc
		for j := i; j < len(terms)-1; j++ {
			if ops[j] == '+' {
				last += terms[j+1]
			} else {
				last -= terms[j+1]
			}
		}
		if i == len(terms)-2 {
			fmt.Fprintf(&b, "%d ", last)
		} else {
			b.WriteString(" ")
		}
	}
	return b.String()
}
