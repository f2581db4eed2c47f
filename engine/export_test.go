package engine

// Test hooks into unexported parts of the engine for the external tests (package engine_test),
// which need the CPU backend and so cannot be internal tests: engine/cpu imports engine.

// SetBetweenSteps makes s call f after each step with the step count, while its loop waits.
func SetBetweenSteps(s *Scheduler, f func(step uint64)) {
	s.mu.Lock()
	s.betweenSteps = f
	s.mu.Unlock()
}

// ForwardSeq runs the model over tokens appended to seq (through its KV cache) and passes the
// logits of the last token to onLogits.
func ForwardSeq(m *Model, seq *Seq, tokens []int32, onLogits func(logits *Tensor) error) error {
	return m.forward([]step{{seq: seq, tokens: tokens}}, []int32{int32(len(tokens) - 1)}, 8,
		func(_ int, l *Tensor) error { return onLogits(l) })
}

// Reserve is s.reserve: room for k more tokens.
func (s *Seq) Reserve(k int) ([]int32, error) { return s.reserve(k) }

// GenerateChecked is g.Generate, calling check after every step with the KV blocks in use and
// the samples preempted so far.
func GenerateChecked(g *Generator, reqs []Request, check func(used int, preemptions uint64)) ([]Result, error) {
	var all []*genRequest
	for i := range reqs {
		r := reqs[i]
		if _, err := g.validate(i, &r); err != nil {
			return nil, err
		}
		all = append(all, &genRequest{req: r})
	}
	for _, r := range all {
		g.enqueue(r)
	}
	defer g.abort()
	for !allDone(all) {
		if err := g.step(); err != nil {
			return nil, err
		}
		check(g.cache.Used(), g.preemptions)
	}
	out := make([]Result, len(all))
	for i, r := range all {
		out[i] = r.result
	}
	return out, nil
}

// SetSlowDecode, with slow, sends g's decode steps through Model.forward as its prefill steps
// (the path before fixed decode buffers), for tests to compare against.
func SetSlowDecode(g *Generator, slow bool) { g.slowDecode = slow }

// SetPadDecode sets whether g pads its decode batches to their bucket (as for a DecodePadder).
func SetPadDecode(g *Generator, pad bool) { g.padDecode = pad }

// FixedDecodeSteps is the number of decode steps g ran on its fixed buffers.
func FixedDecodeSteps(g *Generator) uint64 { return g.fixedSteps }

// DecodeBucket is the bucket of a decode batch of n rows with MaxSeqs maxSeqs.
func DecodeBucket(n, maxSeqs int) int { return decodeBucket(n, maxSeqs) }
