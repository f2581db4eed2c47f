package engine

import (
	"fmt"
	"time"
)

// TimeDecode measures batch-1 decode at long context: steps greedy decode steps (forward pass
// of one token and sampling) of one sequence whose KV cache of dtype kv already holds ctxLen
// positions, and returns the seconds per step. The first ctxLen positions are not prefilled
// but left zero (attention costs the same whatever the keys and values hold), so a row of
// tools/bench at 16k tokens of context does not spend minutes prefilling it. m's
// max_position_embeddings must cover ctxLen+steps.
func TimeDecode(m *Model, kv KVDType, ctxLen, steps int) (float64, error) {
	dt, err := kv.Resolve(m)
	if err != nil {
		return 0, err
	}
	blocks := (ctxLen+steps+DefaultBlockSize-1)/DefaultBlockSize + 1
	cache, err := NewKVCacheOf(m, dt, int64(blocks)*kvBlockBytes(m.Config, dt))
	if err != nil {
		return 0, err
	}
	defer cache.Free()
	seq := cache.NewSeq()
	defer seq.Release()
	if ctxLen > 0 {
		if _, err := seq.reserve(ctxLen); err != nil {
			return 0, fmt.Errorf("time decode: %w", err)
		}
	}
	tok := int32(1)
	one := func() error {
		return m.forward([]step{{seq: seq, tokens: []int32{tok}}}, []int32{0}, 1, func(_ int, logits *Tensor) error {
			ids, _, err := m.Backend.Sample(logits, []SampleRow{{}})
			if err == nil {
				tok = ids[0]
			}
			return err
		})
	}
	if err := one(); err != nil { // warm-up: buffers, RoPE tables
		return 0, err
	}
	t0 := time.Now()
	for range steps {
		if err := one(); err != nil {
			return 0, err
		}
	}
	return time.Since(t0).Seconds() / float64(steps), nil
}
