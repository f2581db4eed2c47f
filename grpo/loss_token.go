package grpo

import (
	"cmp"
	"errors"
	"fmt"
	"math"

	"github.com/prolong-rl/prolong/engine"
)

// PerToken reports whether the policy loss of c is a sum of terms each of which depends only
// on its own token's log-prob and entropy, the weights of the aggregation being known before
// the forward pass (the token and sequence counts of the batch): then TokenPolicyLoss computes
// it as an engine.TokenLoss, and the trainer's LM head runs once (ForwardBackwardTokens).
// That holds for PolicyGRPO under every aggregation, KL estimator, entropy coefficient and TIS
// cap. It does not hold for PolicyGSPO (a token's ratio is its sequence's mean log ratio),
// PolicyClipCov and PolicyKLCov (their choice of tokens depends on the mean log-prob of the
// whole micro-batch): those take every log-prob at once (PolicyLoss).
func (c LossConfig) PerToken() bool { return cmp.Or(c.Mode, PolicyGRPO) == PolicyGRPO }

// TokenPolicyLoss is PolicyLoss as a loss of per-token terms for the one-pass LM head
// (engine.Trainer.ForwardBackwardTokens): made from a LossInput without log-probs and
// entropies, it gets them token by token from the engine, gives back each token's
// derivatives at once, and sums the loss and the metrics as PolicyLoss does, in the same
// order, so that Output equals PolicyLoss's output on the same log-probs and entropies (but for
// DLogProbs and DEntropy, which went to the engine). One TokenPolicyLoss serves one
// forward-backward.
type TokenPolicyLoss struct {
	in   LossInput
	cfg  LossConfig
	acc  *lossAcc
	seen int // valid tokens given so far
	bad  error
}

// NewTokenPolicyLoss checks cfg (it must be PerToken) and in, whose OldLogProbs give the
// batch's shape (sequences, scored tokens of each); in.LogProbs and in.Entropy must be nil:
// the engine computes them.
func NewTokenPolicyLoss(in LossInput, cfg LossConfig) (*TokenPolicyLoss, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if !cfg.PerToken() {
		return nil, fmt.Errorf("grpo: --policy-loss %s is not a sum of per-token terms (use PolicyLoss)", cfg.Mode)
	}
	if in.LogProbs != nil || in.Entropy != nil {
		return nil, errors.New("grpo: TokenPolicyLoss: LossInput.LogProbs and Entropy must be nil (the engine computes them)")
	}
	if in.OldLogProbs == nil {
		return nil, errors.New("grpo: LossInput.OldLogProbs is nil but required by the config")
	}
	// check compares every field with LogProbs (and Entropy): stand zeros of OldLogProbs' shape
	// in for them.
	shape := make([][]float64, len(in.OldLogProbs))
	for s, o := range in.OldLogProbs {
		shape[s] = make([]float64, len(o))
	}
	chk := in
	chk.LogProbs, chk.Entropy = shape, shape
	if err := chk.check(cfg); err != nil {
		return nil, err
	}
	return &TokenPolicyLoss{in: in, cfg: cfg, acc: newLossAcc(&in, cfg, true)}, nil
}

// TokenLoss is the engine's view of the loss. Its Term must be called once for every scored
// token, in order (sequence by sequence, token by token), as ForwardBackwardTokens does; a
// token outside the input's shape gets a NaN term, which the engine reports as an error.
func (l *TokenPolicyLoss) TokenLoss() engine.TokenLoss {
	return engine.TokenLoss{Entropy: l.cfg.EntropyCoef != 0, Term: l.term}
}

func (l *TokenPolicyLoss) term(s, t int, logp, ent float64) (v, dl, de float64) {
	in := &l.in
	if s < 0 || s >= len(in.OldLogProbs) || t < 0 || t >= len(in.OldLogProbs[s]) {
		l.bad = fmt.Errorf("grpo: the engine scored token %d of sequence %d, outside the loss input's shape", t, s)
		return math.NaN(), 0, 0
	}
	if !in.valid(s, t) {
		return 0, 0, 0
	}
	l.seen++
	p := grpoToken(logp, in.OldLogProbs[s][t], in.Advantages[s][t], l.cfg)
	dl, de, v = l.acc.token(in, s, t, logp, ent, p)
	return v, dl, de
}

// Output returns the loss, the metrics and the per-sequence sums of the forward-backward
// (LossOutput without DLogProbs and DEntropy). It is an error if the engine did not give
// every valid token of the input.
func (l *TokenPolicyLoss) Output() (LossOutput, error) {
	if l.bad != nil {
		return LossOutput{}, l.bad
	}
	if n := l.acc.out.Metrics.Tokens; l.seen != n {
		return LossOutput{}, fmt.Errorf("grpo: the engine gave %d of the loss input's %d valid tokens", l.seen, n)
	}
	l.acc.finish()
	return l.acc.out, nil
}
