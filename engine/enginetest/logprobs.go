package enginetest

import (
	"fmt"
	"math"

	"github.com/prolong-rl/prolong/engine"
)

// logProbsIntoCase: where the backend leaves log-probs on the device (engine.LogProbsIntoBackend),
// 13 rows scored in chunks of 5 rows (each its own logits tensor, as the engine's LM head makes
// them) into columns 2..14 of one [2, 16] tensor give, bit for bit, the log-probs (first row)
// and entropies (second row) the backend's LogProbs gives for all 13 rows at once (the engine
// switches between the two paths by backend, and the trainer's numbers must not depend on it),
// and leave the other columns as they were; and they are within the LogProbs tolerance of the
// reference's. Backends without it pass trivially.
func logProbsIntoCase(c *caseCtx) {
	const R, V, N, row0, chunk = 13, 257, 16, 2, 5
	const temp = 0.6
	logits, targets := randn(c.rng, R*V, 3), randIDs(c.rng, R, V)
	sentinel := make([]float32, 2*N)
	for i := range sentinel {
		sentinel[i] = -7 - float32(i)
	}
	var want []float32 // [2R]: the reference's LogProbs
	withEnv(c.ref, func(e *env) []output {
		lp, ent, err := e.b.LogProbs(e.up(logits, R, V), targets, temp)
		if err != nil {
			panic(err)
		}
		want = append(lp, ent...)
		return nil
	})
	into, ok := c.b.(engine.LogProbsIntoBackend)
	if !ok {
		c.add(Result{Name: "absent", Metric: MetricMismatch, Pass: true, BadIndex: -1})
		return
	}
	var got, single []float32 // [2, N] after LogProbsInto; [2R] of LogProbs
	withEnv(c.b, func(e *env) []output {
		out := e.up(sentinel, 2, N)
		for r0 := 0; r0 < R; r0 += chunk {
			r1 := min(R, r0+chunk)
			into.LogProbsInto(out, row0+r0, e.up(logits[r0*V:r1*V], r1-r0, V), targets[r0:r1], temp)
		}
		got = e.down(out)
		lp, ent, err := e.b.LogProbs(e.up(logits, R, V), targets, temp)
		if err != nil {
			panic(err)
		}
		single = append(lp, ent...)
		return nil
	})
	placed := make([]float32, 2*N) // single at the columns LogProbsInto wrote, sentinel elsewhere
	copy(placed, sentinel)
	copy(placed[row0:], single[:R])
	copy(placed[N+row0:], single[R:])
	r := Result{Name: "vs-LogProbs", Metric: MetricMismatch, BadIndex: -1}
	bad := 0
	for i := range placed {
		if math.Float32bits(got[i]) != math.Float32bits(placed[i]) {
			if bad == 0 {
				r.BadIndex, r.Got, r.Want = i, float64(got[i]), float64(placed[i])
			}
			bad++
		}
	}
	r.Error, r.Pass = float64(bad)/float64(len(placed)), bad == 0
	if bad > 0 {
		r.Detail = fmt.Sprintf("%d of %d values of out [2, %d] differ from LogProbs at columns %d..%d and the untouched sentinel elsewhere", bad, len(placed), N, row0, row0+R-1)
	}
	c.add(r)
	c.nmse("logp", got[row0:row0+R], want[:R], c.tol.LogProbs)
	c.nmse("entropy", got[N+row0:N+row0+R], want[R:], c.tol.LogProbs)
}
