package grpo

import "context"

// EvalConfig is the held-out evaluation of a run; its knobs are defined by their tags
// (package grpo/knob).
type EvalConfig struct {
	// Every evaluates every so many steps (and at the start and the end).
	Every int `flag:"eval-every" default:"25" check:">=1" help:"held-out evaluation every so many steps (and at the start and the end)"`
	// Temperature and TopP of the evaluation's sampling (ProRL: 0.6, 0.95).
	Temperature float32 `flag:"eval-temperature" default:"0.6" check:">=0" help:"sampling temperature of held-out evaluation (0: greedy)"`
	TopP        float32 `flag:"eval-top-p" default:"0.95" check:"[0,1]" want:"must be in [0, 1] (0: off)" help:"top-p of held-out evaluation"`
	// Samples per held-out prompt: pass@1 is averaged over them, pass@k goes up to them.
	// Temperature 0 (greedy) takes one.
	Samples int `flag:"eval-samples" default:"16" check:">=1" help:"samples per held-out problem: pass@1 is averaged over them, pass@k up to this k"`
}

// BestEval names the best-scoring held-out evaluation of a run: the contents of best.json.
type BestEval struct {
	Step     int     `json:"step"`
	Accuracy float64 `json:"accuracy"`
}

// savedEvals are the evaluations a run state carries for the summary.
type savedEvals struct {
	First *EvalResult `json:"first"`
	Last  *EvalResult `json:"last"`
	Best  *BestEval   `json:"best,omitempty"`
}

// evaluateStart evaluates the starting model (step 0).
func (r *runSession) evaluateStart(ctx context.Context) error {
	res, err := r.evaluate(ctx, 0)
	r.evals.First, r.evals.Last = res, res
	if res != nil {
		r.evals.Best = &BestEval{Step: 0, Accuracy: res.Accuracy} // the starting model: not exported
	}
	return err
}

// evaluate runs the held-out evaluation (nil without held-out prompts) after step.
func (r *runSession) evaluate(ctx context.Context, step int) (*EvalResult, error) {
	if len(r.job.Held) == 0 {
		return nil, nil
	}
	e := r.cfg.Eval
	n := e.Samples
	if e.Temperature == 0 {
		n = 1
	}
	res, err := r.trainer.Evaluate(ctx, r.job.Held, n, e.Temperature, e.TopP)
	if err == nil && r.cfg.Hooks.Evaluated != nil {
		r.cfg.Hooks.Evaluated(step, res)
	}
	return res, err
}
