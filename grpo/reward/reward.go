// Package reward scores model responses with verifiable rewards, routed by task kind
// (the data_source of a prompt): math (\boxed answers, exact equivalence), logic puzzles (the
// task families of grpo/tasks, <answer> tags), code (tests run in a sandboxed Python
// subprocess), instruction-following constraints, and a format check. Users plug in their own
// functions with Registry.Register.
//
// Users' programs score too, in batches (docs/reward-programs.md): a Program is a long-lived
// child process, an Endpoint an HTTP reward server. Both speak the same JSON: one request
//
//	{"batch": [{"data_source": ..., "prompt": ..., "response": ..., "ground_truth": ..., "extra_info": {...}}, ...]}
//
// (one line on the program's stdin, or the body of a POST) is answered by
//
//	{"results": [{"score": 0.5, ...other fields, kept in Result.Details}, ...]}
//
// (one line on its stdout, or the body of a 2xx response), one result per row in order, each
// score a number in [0, 1]. A wrong answer is an error naming the row (its index in the batch
// and its data_source) or the batch. A program that crashes, hangs past the timeout or writes
// a line that is not an answer is killed and started again on the next batch; its stderr
// goes to the log. Registry.ScoreBatch gives each BatchReward the rows of its kinds in one call.
//
// A reward is a number in [0, 1]. A wrong or malformed response is a low score, not an error;
// errors are kept for what the user must fix (a malformed ground truth, a sandbox that cannot
// run) and name the kind and field at fault.
package reward

import (
	"context"
	"fmt"
	"math"
	"sort"
	"strings"
	"sync"

	"github.com/prolong-rl/prolong/grpo/tasks"
)

// Result is a scored response.
type Result struct {
	// Score is the reward, in [0, 1].
	Score float64 `json:"score"`
	// Answer is the answer the reward extracted from the response, if any.
	Answer string `json:"answer,omitempty"`
	// Reason says in a few words why the score is not 1 (empty when it is).
	Reason string `json:"reason,omitempty"`
	// Details holds kind-specific facts (tests passed, constraints met).
	Details map[string]any `json:"details,omitempty"`
}

// Reward scores one response against a ground truth and the prompt's metadata
// (the extra_info of a verl row).
type Reward interface {
	Score(ctx context.Context, response, groundTruth string, meta map[string]any) (Result, error)
}

// Func adapts a function to Reward.
type Func func(ctx context.Context, response, groundTruth string, meta map[string]any) (Result, error)

// Score implements Reward.
func (f Func) Score(ctx context.Context, response, groundTruth string, meta map[string]any) (Result, error) {
	return f(ctx, response, groundTruth, meta)
}

// Registry routes a task kind to its Reward. It is safe for concurrent use.
type Registry struct {
	mu    sync.RWMutex
	kinds map[string]Reward
}

// NewRegistry returns an empty registry.
func NewRegistry() *Registry { return &Registry{kinds: map[string]Reward{}} }

// Register routes kind to r, replacing what kind routed to before (so users can override a
// built-in).
func (r *Registry) Register(kind string, rw Reward) error {
	if kind == "" {
		return fmt.Errorf("reward: Register: empty kind")
	}
	if rw == nil {
		return fmt.Errorf("reward: Register %q: nil Reward", kind)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.kinds[kind] = rw
	return nil
}

// Kinds lists the registered kinds, sorted.
func (r *Registry) Kinds() []string {
	r.mu.RLock()
	defer r.mu.RUnlock()
	out := make([]string, 0, len(r.kinds))
	for k := range r.kinds {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// Lookup finds the Reward for a kind: the kind itself, else its longest registered prefix at a
// '/' boundary ("math/gsm8k" falls back to "math"). It returns the kind that matched.
func (r *Registry) Lookup(kind string) (Reward, string, bool) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	for k := kind; k != ""; {
		if rw, ok := r.kinds[k]; ok {
			return rw, k, true
		}
		i := strings.LastIndexByte(k, '/')
		if i < 0 {
			break
		}
		k = k[:i]
	}
	return nil, "", false
}

// Score routes to the kind's Reward and checks what it returns: an unknown kind, an error of the
// reward, or a score outside [0, 1] (or NaN) is an error naming the kind. A BatchReward gets a
// batch of one request, with kind as its data_source.
func (r *Registry) Score(ctx context.Context, kind, response, groundTruth string, meta map[string]any) (Result, error) {
	rw, matched, ok := r.Lookup(kind)
	if !ok {
		return Result{}, fmt.Errorf("reward: no reward for kind %q (registered: %s)", kind, strings.Join(r.Kinds(), ", "))
	}
	res, err := scoreOne(ctx, rw, Request{Kind: kind, Response: response, GroundTruth: groundTruth, Meta: meta})
	if err != nil {
		return res, fmt.Errorf("reward: kind %q: %w", matched, err)
	}
	if !(res.Score >= 0 && res.Score <= 1) {
		return res, fmt.Errorf("reward: kind %q returned score %v, outside [0, 1]", matched, res.Score)
	}
	return res, nil
}

// scoreOne scores q with rw: a BatchReward gets a batch of one, so that a reward program sees
// the data_source.
func scoreOne(ctx context.Context, rw Reward, q Request) (Result, error) {
	br, ok := rw.(BatchReward)
	if !ok {
		return rw.Score(ctx, q.Response, q.GroundTruth, q.Meta)
	}
	rs, err := br.ScoreBatch(ctx, []Request{q})
	if err != nil {
		return Result{}, err
	}
	if len(rs) != 1 {
		return Result{}, fmt.Errorf("%d results for a batch of 1", len(rs))
	}
	return rs[0], nil
}

// Options configures the built-in rewards of NewDefault.
type Options struct {
	// Math configures the math reward.
	Math MathOptions
	// Sandbox runs code for the code reward; nil means NewSandbox(SandboxConfig{}), created on
	// first use.
	Sandbox *Sandbox
	// Code configures the code reward (besides the sandbox).
	Code CodeOptions
}

// Built-in kind names.
const (
	KindMath   = "math"
	KindLogic  = "logic"
	KindCode   = "code"
	KindIFEval = "ifeval"
	KindFormat = "format"
	KindChoice = "choice"
)

// NewDefault returns a registry with the built-in rewards: "math", "code", "ifeval",
// "format", "choice" (also "stem": multiple choice), each grpo/tasks family under its own name ("arith", "countdown", "sort", "count",
// "boolean") and as "logic/<name>", "logic" (which takes the family from meta["family"]), and a few data_source names common in verl
// datasets ("openai/gsm8k", "lighteval/MATH", "DigitalLearningGmbH/MATH-lighteval" -> math).
func NewDefault(opts Options) *Registry {
	r := NewRegistry()
	m := &Math{Options: opts.Math}
	r.kinds[KindMath] = m
	for _, alias := range []string{"openai/gsm8k", "lighteval/MATH", "DigitalLearningGmbH/MATH-lighteval", "math_dapo"} {
		r.kinds[alias] = m
	}
	r.kinds[KindCode] = &Code{Sandbox: opts.Sandbox, Options: opts.Code}
	r.kinds[KindIFEval] = IFEval{}
	r.kinds[KindFormat] = Format{}
	r.kinds[KindChoice] = Choice{}
	r.kinds["stem"] = Choice{}
	r.kinds[KindLogic] = Logic{}
	for _, name := range tasks.Names() {
		f, err := tasks.New(name)
		if err != nil {
			panic("reward: built-in family " + name + ": " + err.Error()) // programmer error
		}
		r.kinds[name] = TaskReward{Family: f}
		r.kinds[KindLogic+"/"+name] = TaskReward{Family: f}
	}
	return r
}

// Part is one weighted term of Sum.
type Part struct {
	Reward Reward
	Weight float64
}

// Sum scores a response as the weighted sum of several rewards, clamped to [0, 1]; for example
// 0.9 x correctness + 0.1 x Format. Details holds each part's result under "part<i>".
func Sum(parts ...Part) Reward {
	return Func(func(ctx context.Context, response, gt string, meta map[string]any) (Result, error) {
		var out Result
		out.Details = map[string]any{}
		var reasons []string
		for i, p := range parts {
			res, err := p.Reward.Score(ctx, response, gt, meta)
			if err != nil {
				return Result{}, fmt.Errorf("part %d: %w", i, err)
			}
			out.Score += p.Weight * res.Score
			if out.Answer == "" {
				out.Answer = res.Answer
			}
			if res.Reason != "" {
				reasons = append(reasons, res.Reason)
			}
			out.Details[fmt.Sprintf("part%d", i)] = res
		}
		out.Score = math.Max(0, math.Min(1, out.Score))
		out.Reason = strings.Join(reasons, "; ")
		return out, nil
	})
}

// OverlongPenalty is DAPO's soft overlong punishment: 0 for a response of at most
// maxLen-cache tokens, falling linearly to -1 at maxLen tokens and beyond. Add it to a reward
// (the trainer clamps or not as it chooses). cache <= 0 gives a hard penalty of -1 for a
// response of maxLen tokens or more.
func OverlongPenalty(length, maxLen, cache int) float64 {
	if cache <= 0 {
		if length >= maxLen {
			return -1
		}
		return 0
	}
	start := maxLen - cache
	switch {
	case length <= start:
		return 0
	case length >= maxLen:
		return -1
	default:
		return float64(start-length) / float64(cache)
	}
}

// Logic routes to the grpo/tasks family named by meta["family"]. Registered as "logic" by
// NewDefault (which also registers every family as "logic/<name>").
type Logic struct{}

// Score implements Reward.
func (Logic) Score(ctx context.Context, response, groundTruth string, meta map[string]any) (Result, error) {
	name, _ := meta["family"].(string)
	if name == "" {
		return Result{}, fmt.Errorf("logic reward needs meta[\"family\"] naming a task family (one of %s)", strings.Join(tasks.Names(), ", "))
	}
	f, err := tasks.New(name)
	if err != nil {
		return Result{}, fmt.Errorf("logic reward: meta[\"family\"]: %w", err)
	}
	return TaskReward{Family: f}.Score(ctx, response, groundTruth, meta)
}

// TaskReward scores a grpo/tasks family: the answer is the content of the last
// <answer>...</answer> (after the thinking, if any), checked by the family's verifier.
type TaskReward struct {
	Family tasks.Family
}

// Score implements Reward.
func (t TaskReward) Score(_ context.Context, response, groundTruth string, _ map[string]any) (Result, error) {
	ans, ok := AnswerTag(FinalPart(response))
	if !ok {
		return Result{Reason: "no <answer>...</answer>"}, nil
	}
	s, err := t.Family.Verify(ans, groundTruth)
	if err != nil {
		return Result{}, err
	}
	res := Result{Score: s, Answer: ans}
	if s < 1 {
		res.Reason = "wrong answer"
		if s > 0 {
			res.Reason = "partly right"
		}
	}
	return res, nil
}
