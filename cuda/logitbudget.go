package cuda

import "github.com/prolong-rl/prolong/engine"

// LogitBudget implements engine.LogitBudgeter: Options.LogitBudget, or engine.DefaultLogitBudget
// when that is 0.
func (b *Backend) LogitBudget() int64 {
	if b.opts.LogitBudget > 0 {
		return b.opts.LogitBudget
	}
	return engine.DefaultLogitBudget
}
