package grpo

import (
	"cmp"
	"math"
)

// The per-token accumulator shared by PolicyLoss (two-pass LM head) and TokenPolicyLoss
// (one-pass head), so both add the same terms in the same order.

// lossAcc accumulates a batch's loss and metrics one valid token at a time, sequence by
// sequence in token order: PolicyLoss and the per-token loss of the one-pass LM head
// (TokenPolicyLoss) both go through it, so that they add the same numbers in the same order.
type lossAcc struct {
	cfg                LossConfig
	agg, pgAgg         AggMode
	est                KLEstimator
	tokenNorm, seqNorm float64
	out                LossOutput // Loss and Metrics set by finish
	nClip              [4]int     // by clipKind
	sumApproxKL        float64
	sumRefKL, sumEnt   float64
}

// newLossAcc counts the valid tokens of in (its shape is OldLogProbs', which check requires
// to be LogProbs') and sets each sequence's sums; hasEnt says whether the entropies will be
// given (SeqEntropy and the entropy metrics).
func newLossAcc(in *LossInput, cfg LossConfig, hasEnt bool) *lossAcc {
	a := &lossAcc{cfg: cfg, agg: cmp.Or(cfg.Agg, AggTokenMean), est: cmp.Or(cfg.KL, KLK3)}
	a.pgAgg = a.agg
	if cmp.Or(cfg.Mode, PolicyGRPO) == PolicyGSPO {
		a.pgAgg = AggSeqMeanTokenMean
	}
	n := len(in.OldLogProbs)
	out, m := &a.out, &a.out.Metrics
	out.SeqTokens = make([]int, n)
	for s := range in.OldLogProbs {
		for t := range in.OldLogProbs[s] {
			if in.valid(s, t) {
				out.SeqTokens[s]++
			}
		}
		m.Tokens += out.SeqTokens[s]
		if out.SeqTokens[s] > 0 {
			m.Seqs++
		}
	}
	if in.RefLogProbs != nil {
		out.SeqRefKL = make([]float64, n)
	}
	if hasEnt {
		out.SeqEntropy = make([]float64, n)
	}
	a.tokenNorm = float64(m.Tokens)
	if cfg.TokenNorm > 0 {
		a.tokenNorm = cfg.TokenNorm
	}
	a.seqNorm = float64(m.Seqs)
	if cfg.SeqNorm > 0 {
		a.seqNorm = cfg.SeqNorm
	}
	if m.Tokens > 0 {
		m.RatioMax = math.Inf(-1)
	}
	return a
}

// weight is the aggregation weight of a valid token of sequence s under mode agg.
func (a *lossAcc) weight(agg AggMode, s int) float64 {
	switch agg {
	case AggSeqMeanTokenSum:
		return 1 / a.seqNorm
	case AggSeqMeanTokenMean:
		return 1 / (a.seqNorm * float64(a.out.SeqTokens[s]))
	default:
		return 1 / a.tokenNorm
	}
}

// token adds valid token t of sequence s, with log-prob logp, entropy h (when the sums have
// SeqEntropy) and pg term p, and returns dLoss/dlogp, dLoss/dentropy and its term of the loss.
func (a *lossAcc) token(in *LossInput, s, t int, logp, h float64, p tokenPG) (dl, de, v float64) {
	cfg, m := &a.cfg, &a.out.Metrics
	w, wt := a.weight(a.agg, s), a.weight(a.pgAgg, s)
	a.nClip[p.clip]++
	m.RatioMax = math.Max(m.RatioMax, p.ratio)
	lr, _ := clampedLogRatio(logp, in.OldLogProbs[s][t])
	a.sumApproxKL -= lr
	if cfg.TISCap > 0 {
		wt *= tisWeight(in.OldLogProbs[s][t], in.RolloutLogProbs[s][t], cfg.TISCap)
	}
	m.PGLoss += wt * p.v
	v = wt * p.v
	dl = wt * p.d
	if in.RefLogProbs != nil {
		kl, dkl := klValueGrad(a.est, logp, in.RefLogProbs[s][t])
		a.sumRefKL += kl
		a.out.SeqRefKL[s] += kl
		m.KLLoss += w * kl
		v += cfg.KLCoef * w * kl
		dl += w * cfg.KLCoef * dkl
	}
	if a.out.SeqEntropy != nil {
		a.sumEnt += h
		a.out.SeqEntropy[s] += h
		m.EntropyLoss += w * h
	}
	if cfg.EntropyCoef != 0 {
		v -= cfg.EntropyCoef * w * h
		de = -cfg.EntropyCoef * w
	}
	return dl, de, v
}

// finish turns the sums into the fractions, the means and the loss.
func (a *lossAcc) finish() {
	m := &a.out.Metrics
	if m.Tokens == 0 {
		return
	}
	n := float64(m.Tokens)
	m.ClipFracLow = float64(a.nClip[clippedLow]) / n
	m.ClipFracHigh = float64(a.nClip[clippedHigh]) / n
	m.DualClipFrac = float64(a.nClip[clippedDual]) / n
	m.ApproxKL = a.sumApproxKL / n
	m.RefKL = a.sumRefKL / n
	m.EntropyMean = a.sumEnt / n
	a.out.Loss = m.PGLoss + a.cfg.KLCoef*m.KLLoss - a.cfg.EntropyCoef*m.EntropyLoss
}
