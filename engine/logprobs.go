package engine

import "fmt"

// LogProbsIntoBackend is implemented by a backend that can leave the log-probs of a logits chunk
// on the device: LogProbsInto writes, for each row r of logits [R, V], what LogProbs returns
// for that row, bit for bit, into out [2, N] at column row0+r: out[0, row0+r] = log
// softmax(logits[r]/temperature) at targets[r], out[1, row0+r] = the entropy of that
// distribution. Nothing comes back to the host, so a pass writes all its logits chunks into
// one out and downloads it once (one synchronisation per pass instead of one or two per chunk).
// Columns it does not write keep their values. targets must lie in [0, V), row0+R <= N and
// temperature > 0; a backend reports a violation as the error of its next op that returns one
// (Download), or panics (a programmer error: the engine checks tokens before the pass). The
// engine falls back to LogProbs per chunk on other backends.
type LogProbsIntoBackend interface {
	LogProbsInto(out *Tensor, row0 int, logits *Tensor, targets []int32, temperature float32)
}

// logProbSink gathers the log-probs and entropies of n rows scored chunk by chunk, in order:
// on a LogProbsIntoBackend into one device tensor that values downloads once, elsewhere
// through LogProbs per chunk.
type logProbSink struct {
	b       Backend
	into    LogProbsIntoBackend // nil: LogProbs per chunk
	n       int
	temp    float32
	dev     *Tensor   // [2, n]: log-probs, then entropies (into only)
	lp, ent []float32 // [0..n] each, filled chunk by chunk (LogProbs only)
}

// newLogProbSink returns a sink for n rows at temperature temp.
func newLogProbSink(b Backend, n int, temp float32) *logProbSink {
	s := &logProbSink{b: b, n: n, temp: temp}
	if into, ok := b.(LogProbsIntoBackend); ok && n > 0 {
		s.into, s.dev = into, b.Alloc(2, n)
		return s
	}
	s.lp, s.ent = make([]float32, 0, n), make([]float32, 0, n)
	return s
}

// add scores rows row0..row0+R-1 from logits [R, V] and their targets [R]. Chunks come in row
// order.
func (s *logProbSink) add(row0 int, logits *Tensor, targets []int32) error {
	if s.into != nil {
		s.into.LogProbsInto(s.dev, row0, logits, targets, s.temp)
		return nil
	}
	if row0 != len(s.lp) {
		panic(fmt.Sprintf("engine: log-probs of rows from %d added after %d rows", row0, len(s.lp)))
	}
	l, e, err := s.b.LogProbs(logits, targets, s.temp)
	if err != nil {
		return err
	}
	s.lp, s.ent = append(s.lp, l...), append(s.ent, e...)
	return nil
}

// values returns the n rows' log-probs and entropies: on a LogProbsIntoBackend, one Download.
func (s *logProbSink) values() (lp, ent []float32, err error) {
	if s.into == nil {
		if len(s.lp) != s.n {
			panic(fmt.Sprintf("engine: log-probs of %d rows of %d added", len(s.lp), s.n))
		}
		return s.lp, s.ent, nil
	}
	host := make([]float32, 2*s.n)
	if err := s.b.Download(s.dev, host); err != nil {
		return nil, nil, err
	}
	return host[:s.n:s.n], host[s.n:], nil
}

// free releases the device tensor.
func (s *logProbSink) free() {
	if s.dev != nil {
		s.b.Free(s.dev)
		s.dev = nil
	}
}
