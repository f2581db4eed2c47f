package engine

import (
	"fmt"
	"math"
)

// DefaultLogitBudget bounds the bytes of fp32 logits the LM head holds at once (in training and
// in Score) on a backend that does not say otherwise (LogitBudgeter): a chunk of rows (unless
// TrainOptions.MaxLogitRows says otherwise; at most 1024), and in training the logits kept from
// the forward pass for the backward, which are kept only when they all fit in it. So the head's
// memory does not grow with tokens × vocabulary. At Qwen2's vocabulary (151,936) it makes
// chunks of 110 rows.
const DefaultLogitBudget = 64 << 20

// LogitBudgeter is implemented by a backend that sets its own bound on the bytes of fp32 logits
// the LM head holds at once (DefaultLogitBudget elsewhere): a GPU, where a chunk of 110 rows
// makes the head's GEMMs read the whole LM-head weight for little work (cuda.Options.LogitBudget).
type LogitBudgeter interface {
	LogitBudget() int64
}

// logitBudget is b's bound on the bytes of fp32 logits held at once.
func logitBudget(b Backend) int64 {
	if lb, ok := b.(LogitBudgeter); ok && lb.LogitBudget() > 0 {
		return lb.LogitBudget()
	}
	return DefaultLogitBudget
}

// logitChunk is how many rows of logits over a vocabulary of v fit b's budget (1 to 1024).
func logitChunk(b Backend, v int) int {
	return int(max(1, min(1024, logitBudget(b)/(4*int64(v)))))
}

// trainHead is the LM head of a training micro-batch: the final norm, then the log-probs and
// entropies of the scored rows and their gradients, chunk rows at a time (a fused linear
// log-prob: logits, log-sum-exp, the target's log-prob, the entropy, and their gradients with
// respect to the normed hidden rows and the LM-head weight, the weight's gradient accumulated
// in place by one MatMulDW per chunk).
type trainHead struct {
	t      *Trainer
	bm     *batchMeta
	xr, hn *Tensor   // [R, D] scored rows of the final residual; after the final norm
	dhn    *Tensor   // [R, D] ∂L/∂hn, filled chunk by chunk
	chunk  int       // logits rows at a time
	keep   bool      // keep the logits chunks for the backward (when they fit in the backend's logit budget)
	kept   []*Tensor // [chunk, V] each
}

// newHead gathers the scored rows of xf [T, D] and applies the final norm.
func (t *Trainer) newHead(xf *Tensor, bm *batchMeta) *trainHead {
	b, c := t.b, t.Model.Config
	R := len(bm.rows)
	h := &trainHead{t: t, bm: bm, chunk: t.opts.MaxLogitRows, keep: 4*int64(R)*int64(c.VocabSize) <= logitBudget(b)}
	if h.chunk <= 0 {
		h.chunk = logitChunk(b, c.VocabSize)
	}
	h.xr = AllocUninit(b, R, c.HiddenSize)
	b.GatherRows(h.xr, xf, bm.rows)
	h.hn = AllocUninit(b, R, c.HiddenSize)
	b.RMSNorm(h.hn, h.xr, t.Model.Norm, float32(c.RMSNormEps))
	return h
}

func (h *trainHead) free() {
	for _, l := range h.kept {
		h.t.b.Free(l)
	}
	h.t.b.Free(h.dhn)
	h.t.b.Free(h.hn)
	h.t.b.Free(h.xr)
}

// forward computes the scored rows' log-probs and entropies, evaluates loss on them and
// returns the stats with the loss's derivatives flattened to rows ([R]; dent may be nil). On a
// LogProbsIntoBackend every chunk's log-probs stay on the device and come back in one download
// (the loss needs them all at once): one synchronisation per micro-batch.
func (h *trainHead) forward(loss LossFunc) (st *StepStats, dlp, dent []float32, err error) {
	t, b, bm := h.t, h.t.b, h.bm
	R := len(bm.rows)
	sink := newLogProbSink(b, R, t.opts.Temperature)
	defer sink.free()
	for r0 := 0; r0 < R; r0 += h.chunk {
		r1 := min(R, r0+h.chunk)
		part, logits := t.chunkLogits(h.hn, r0, r1)
		b.Free(part)
		if err := sink.add(r0, logits, bm.targets[r0:r1]); err != nil {
			b.Free(logits)
			return nil, nil, nil, err
		}
		if h.keep {
			h.kept = append(h.kept, logits)
		} else {
			b.Free(logits)
		}
	}
	lp, ent, err := sink.values()
	if err != nil {
		return nil, nil, nil, err
	}
	st = h.stats(lp, ent)
	dlp, dent, err = st.evalLoss(loss, bm.nScored)
	return st, dlp, dent, err
}

// stats splits the rows' log-probs and entropies by sequence.
func (h *trainHead) stats(lp, ent []float32) *StepStats {
	bm := h.bm
	st := &StepStats{Tokens: len(bm.ids), Scored: len(bm.rows)}
	off := 0
	for _, n := range bm.nScored {
		sl, se := make([]float64, n), make([]float64, n)
		for j := 0; j < n; j++ {
			sl[j], se[j] = float64(lp[off+j]), float64(ent[off+j])
		}
		st.LogProb, st.Entropy = append(st.LogProb, sl), append(st.Entropy, se)
		off += n
	}
	return st
}

// evalLoss evaluates loss on the stats' log-probs and entropies, records it, and returns its
// derivatives flattened over the scored rows.
func (st *StepStats) evalLoss(loss LossFunc, nScored []int) (dlp, dent []float32, err error) {
	lossV, dl, de, err := loss(st.LogProb, st.Entropy)
	if err != nil {
		return nil, nil, fmt.Errorf("train: loss: %w", err)
	}
	if math.IsNaN(lossV) || math.IsInf(lossV, 0) {
		return nil, nil, fmt.Errorf("train: loss is %v", lossV)
	}
	st.Loss = lossV
	if dlp, err = flatten(dl, nScored, "dLogp"); err != nil {
		return nil, nil, err
	}
	if de != nil {
		if dent, err = flatten(de, nScored, "dEntropy"); err != nil {
			return nil, nil, err
		}
	}
	return dlp, dent, nil
}

// backward backpropagates the loss's derivatives through the head, chunk by chunk (the
// logits kept by forward, or recomputed), and returns ∂L/∂(final residual) [T, D].
func (h *trainHead) backward(dlp, dent []float32) *Tensor {
	t, b, bm := h.t, h.t.b, h.bm
	R := len(bm.rows)
	for i, r0 := 0, 0; r0 < R; i, r0 = i+1, r0+h.chunk {
		r1 := min(R, r0+h.chunk)
		var part, logits *Tensor // [r1-r0, D], [r1-r0, V]
		if h.keep {
			logits = h.kept[i]
		} else {
			part, logits = t.chunkLogits(h.hn, r0, r1)
		}
		var de []float32
		if dent != nil {
			de = dent[r0:r1]
		}
		h.chunkBackward(r0, r1, part, logits, dlp[r0:r1], de)
		if !h.keep {
			b.Free(logits)
		}
	}
	return h.finish()
}

// fused runs the head forward and backward in one pass for a loss of per-token terms: each
// chunk's logits give its log-probs and entropies, the loss's derivatives for them, and the
// chunk's gradients, before the next chunk's logits are computed (one LM-head GEMM per chunk
// where backward recomputes it). It returns the stats and ∂L/∂(final residual) [T, D].
func (h *trainHead) fused(loss TokenLoss) (*StepStats, *Tensor, error) {
	t, b, bm := h.t, h.t.b, h.bm
	R := len(bm.rows)
	seq, tok := make([]int, R), make([]int, R) // each row's sequence and scored-token index
	for s, r := 0, 0; s < len(bm.nScored); s++ {
		for j := 0; j < bm.nScored[s]; j, r = j+1, r+1 {
			seq[r], tok[r] = s, j
		}
	}
	lp, ent := make([]float32, 0, R), make([]float32, 0, R)
	dlp := make([]float32, h.chunk)
	var dent []float32
	if loss.Entropy {
		dent = make([]float32, h.chunk)
	}
	var total float64
	for r0 := 0; r0 < R; r0 += h.chunk {
		r1 := min(R, r0+h.chunk)
		part, logits := t.chunkLogits(h.hn, r0, r1)
		l, e, err := b.LogProbs(logits, bm.targets[r0:r1], t.opts.Temperature)
		if err != nil {
			b.Free(part)
			b.Free(logits)
			return nil, nil, err
		}
		for i := range l {
			r := r0 + i
			v, dl, de := loss.Term(seq[r], tok[r], float64(l[i]), float64(e[i]))
			if err := checkTerm(seq[r], tok[r], v, dl, de); err != nil {
				b.Free(part)
				b.Free(logits)
				return nil, nil, err
			}
			total += v
			dlp[i] = float32(dl)
			if dent != nil {
				dent[i] = float32(de)
			}
		}
		lp, ent = append(lp, l...), append(ent, e...)
		var de []float32
		if dent != nil {
			de = dent[:r1-r0]
		}
		h.chunkBackward(r0, r1, part, logits, dlp[:r1-r0], de)
		b.Free(logits)
	}
	st := h.stats(lp, ent)
	st.Loss = total
	return st, h.finish(), nil
}

// fusedKept is fused for a micro-batch whose logits all fit the backend's logit budget (h.keep)
// on a LogProbsIntoBackend: every chunk's logits are kept and its log-probs stay on the device
// until one download (forward), the loss's terms are evaluated in fused's order with fused's
// checks (TokenLoss.LossFunc), and the chunks' backward runs on the kept logits. The same bits
// as fused (the same ops on the same values: each chunk's log-probs, terms and backward; only
// their order between chunks differs), one host wait per micro-batch instead of one per chunk.
func (h *trainHead) fusedKept(loss TokenLoss) (*StepStats, *Tensor, error) {
	st, dlp, dent, err := h.forward(loss.LossFunc())
	if err != nil {
		return nil, nil, err
	}
	return st, h.backward(dlp, dent), nil
}

// checkTerm is the error of a token-loss term (of sequence seq, token tok) or its derivatives
// that is not finite.
func checkTerm(seq, tok int, v, dl, de float64) error {
	if !finite(v) || !finite(dl) || !finite(de) {
		return fmt.Errorf("train: token loss of sequence %d, token %d is %v (dLogp %v, dEntropy %v)", seq, tok, v, dl, de)
	}
	return nil
}

func finite(v float64) bool { return !math.IsNaN(v) && !math.IsInf(v, 0) }

// chunkBackward turns the logits [r1-r0, V] of rows r0..r1-1 into their gradient in place,
// adds ∂L/∂hn of those rows to h.dhn and accumulates the LM-head weight's gradient. part holds
// the rows of hn [r1-r0, D] (nil: gathered here); it is freed.
func (h *trainHead) chunkBackward(r0, r1 int, part, logits *Tensor, dlp, dent []float32) {
	t, b, c := h.t, h.t.b, h.t.Model.Config
	if h.dhn == nil {
		h.dhn = b.Alloc(len(h.bm.rows), c.HiddenSize) // [R, D], zeroed: ScatterAddRows adds into it
	}
	b.LogProbsBackward(logits, logits, h.bm.targets[r0:r1], dlp, dent, t.opts.Temperature)
	dpart := AllocUninit(b, r1-r0, c.HiddenSize) // [r1-r0, D]
	b.MatMulDX(dpart, logits, t.Model.LMHead)
	if g := t.gw.LMHead; g != nil {
		if part == nil {
			part = AllocUninit(b, r1-r0, c.HiddenSize)
			b.GatherRows(part, h.hn, seqRange(r0, r1))
		}
		b.MatMulDW(g, logits, part)
	}
	b.Free(part)
	b.ScatterAddRows(h.dhn, dpart, seqRange(r0, r1))
	b.Free(dpart)
}

// finish backpropagates h.dhn through the final norm and the row gather: ∂L/∂(final residual)
// [T, D].
func (h *trainHead) finish() *Tensor {
	t, b, bm, c := h.t, h.t.b, h.bm, h.t.Model.Config
	R := len(bm.rows)
	if h.dhn == nil {
		h.dhn = b.Alloc(R, c.HiddenSize)
	}
	dxr := AllocUninit(b, R, c.HiddenSize) // [R, D]
	b.RMSNormBackward(dxr, t.gw.Norm, h.dhn, h.xr, t.Model.Norm, float32(c.RMSNormEps))
	dx := b.Alloc(len(bm.ids), c.HiddenSize) // [T, D], zeroed: ScatterAddRows adds into it (unscored rows stay 0)
	b.ScatterAddRows(dx, dxr, bm.rows)
	b.Free(dxr)
	return dx
}

// chunkLogits returns rows r0..r1-1 of hn [r1-r0, D] and their logits [r1-r0, V].
func (t *Trainer) chunkLogits(hn *Tensor, r0, r1 int) (part, logits *Tensor) {
	b, c := t.b, t.Model.Config
	part = AllocUninit(b, r1-r0, c.HiddenSize)
	b.GatherRows(part, hn, seqRange(r0, r1))
	logits = AllocUninit(b, r1-r0, c.VocabSize)
	b.MatMul(logits, part, t.Model.LMHead)
	return part, logits
}

func seqRange(lo, hi int) []int32 {
	s := make([]int32, hi-lo)
	for i := range s {
		s[i] = int32(lo + i)
	}
	return s
}

func flatten(d [][]float64, n []int, what string) ([]float32, error) {
	if len(d) != len(n) {
		return nil, fmt.Errorf("train: loss returned %s for %d sequences, batch has %d", what, len(d), len(n))
	}
	var out []float32
	for i, s := range d {
		if len(s) != n[i] {
			return nil, fmt.Errorf("train: loss returned %d %s values for sequence %d, which has %d scored tokens", len(s), what, i, n[i])
		}
		for _, v := range s {
			if math.IsNaN(v) || math.IsInf(v, 0) {
				return nil, fmt.Errorf("train: loss returned %s = %v for sequence %d", what, v, i)
			}
			out = append(out, float32(v))
		}
	}
	return out, nil
}
