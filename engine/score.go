package engine

import (
	"context"
	"fmt"
)

// ScoreRequest asks for the log-probs of Tokens[Start:] given everything before them (a
// prompt of Start tokens followed by a response).
type ScoreRequest struct {
	Tokens []int32
	Start  int
}

// ScoreResult holds, for each scored token, its log-prob and the entropy of the distribution
// at its position.
type ScoreResult struct {
	LogProbs []float32 // [len(Tokens)-Start]
	Entropy  []float32 // [len(Tokens)-Start]
}

// Score computes per-token log-probs and entropies of softmax(logits/temperature) for all
// requests in one batched forward pass over a scratch KV cache (the trainer's old and
// reference log-probs). Logits are produced in chunks so that long batches with large
// vocabularies stay within memory.
func (m *Model) Score(ctx context.Context, reqs []ScoreRequest, temperature float32) ([]ScoreResult, error) {
	if !(temperature > 0) {
		return nil, fmt.Errorf("score: temperature must be positive, got %g", temperature)
	}
	var total int
	for i, r := range reqs {
		if r.Start < 1 || r.Start > len(r.Tokens) {
			return nil, fmt.Errorf("score request %d: start %d outside [1,%d]", i, r.Start, len(r.Tokens))
		}
		total += len(r.Tokens)
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	probe := &KVCache{blockSize: DefaultBlockSize}
	blocks := 0
	for _, r := range reqs {
		blocks += probe.BlocksFor(len(r.Tokens))
	}
	c := m.Config
	cache, err := scratchCache(m, blocks)
	if err != nil {
		return nil, err
	}
	defer cache.Free()

	steps := make([]step, len(reqs))
	out := make([]ScoreResult, len(reqs))
	var rows, targets []int32
	var owner []int32 // request of each logits row
	off := int32(0)
	for i, r := range reqs {
		steps[i] = step{seq: cache.NewSeq(), tokens: r.Tokens}
		n := len(r.Tokens) - r.Start
		out[i] = ScoreResult{LogProbs: make([]float32, 0, n), Entropy: make([]float32, 0, n)}
		for t := r.Start; t < len(r.Tokens); t++ {
			rows = append(rows, off+int32(t-1))
			targets = append(targets, r.Tokens[t])
			owner = append(owner, int32(i))
		}
		off += int32(len(r.Tokens))
	}
	chunk := logitChunk(m.Backend, c.VocabSize) // the backend's logit budget (DefaultLogitBudget: 64 MiB)
	// On a LogProbsIntoBackend the chunks' log-probs stay on the device until the pass ends:
	// one download for the whole call.
	sink := newLogProbSink(m.Backend, len(rows), temperature)
	defer sink.free()
	err = m.forward(steps, rows, chunk, func(first int, logits *Tensor) error {
		if err := sink.add(first, logits, targets[first:first+logits.Rows()]); err != nil {
			return err
		}
		return ctx.Err()
	})
	if err != nil {
		return nil, err
	}
	lp, ent, err := sink.values()
	if err != nil {
		return nil, err
	}
	for i := range lp {
		o := &out[owner[i]]
		o.LogProbs = append(o.LogProbs, lp[i])
		o.Entropy = append(o.Entropy, ent[i])
	}
	return out, nil
}

// Logits runs each sequence through the model from position 0, all in one ragged batch, and
// returns its logits [len(seq)*vocab_size] row-major (no KV cache is kept).
func (m *Model) Logits(ctx context.Context, seqs [][]int32) ([][]float32, error) {
	var blocks int
	for i, s := range seqs {
		if len(s) == 0 {
			return nil, fmt.Errorf("logits: sequence %d is empty", i)
		}
		blocks += (len(s) + DefaultBlockSize - 1) / DefaultBlockSize
	}
	c := m.Config
	cache, err := scratchCache(m, blocks)
	if err != nil {
		return nil, err
	}
	defer cache.Free()
	steps := make([]step, len(seqs))
	out := make([][]float32, len(seqs))
	var rows, owner []int32
	for i, s := range seqs {
		steps[i] = step{seq: cache.NewSeq(), tokens: s}
		out[i] = make([]float32, 0, len(s)*c.VocabSize)
		for range s {
			owner = append(owner, int32(i))
			rows = append(rows, int32(len(rows)))
		}
	}
	chunk := max(1, min(1024, (64<<20)/(4*c.VocabSize)))
	err = m.forward(steps, rows, chunk, func(first int, logits *Tensor) error {
		buf := make([]float32, logits.Len())
		if err := m.Backend.Download(logits, buf); err != nil {
			return err
		}
		v := c.VocabSize
		for r := 0; r < logits.Rows(); r++ {
			o := &out[owner[first+r]]
			*o = append(*o, buf[r*v:(r+1)*v]...)
		}
		return ctx.Err()
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// scratchCache is a KV cache of its own for one scoring call: room for blocks blocks, and one
// more. Its passes are marked AttnBatch.Scratch: nothing decodes from it.
func scratchCache(m *Model, blocks int) (*KVCache, error) {
	kc, err := NewKVCache(m, int64(blocks+1)*kvBlockBytes(m.Config, F32))
	if err != nil {
		return nil, err
	}
	kc.scratch = true
	return kc, nil
}
