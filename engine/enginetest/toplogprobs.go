package enginetest

import (
	"fmt"
	"math"

	"github.com/prolong-rl/prolong/engine"
)

// topLogProbsCases: where the backend ranks tokens itself (engine.TopLogProbsBackend), its top
// log-probs equal engine.TopLogProbsRow's on the same logits, bit for bit (ids and log-probs,
// -Inf included), on rows of every sampling kind: greedy, temperature, top-k, top-p, both,
// top-k 1, and temperatures low enough that most probabilities underflow to 0 (those tokens
// rank by id, as on the host). The listed rows are a shuffled subset with a repeat. The
// variants round the logits to halves (ties to the lower id), mask some tokens with -Inf, and
// use a vocabulary of several elements per thread of a 1024-thread block. Backends without it
// pass trivially.
func topLogProbsCases() []testCase {
	var cs []testCase
	for _, v := range []struct {
		V, k       int
		ties, mask bool
	}{{257, 20, false, false}, {257, 20, true, false}, {257, 3, false, true}, {3001, 20, true, true}} {
		name := fmt.Sprintf("TopLogProbs/R=24,V=%d,k=%d", v.V, v.k)
		if v.ties {
			name += "/ties"
		}
		if v.mask {
			name += "/masked"
		}
		cs = append(cs, testCase{name, func(c *caseCtx) { topLogProbsCase(c, v.V, v.k, v.ties, v.mask) }})
	}
	return cs
}

func topLogProbsCase(c *caseCtx, V, k int, ties, mask bool) {
	const R = 24
	logits := randn(c.rng, R*V, 3)
	for i, x := range logits {
		if ties {
			x = float32(math.Round(float64(x)*2) / 2)
		}
		if mask && c.rng.IntN(8) == 0 {
			x = float32(math.Inf(-1))
		}
		logits[i] = x
	}
	kinds := []engine.SampleRow{{}, {Temperature: 1}, {Temperature: 0.7, TopK: 20}, {Temperature: 1.3, TopP: 0.9},
		{Temperature: 0.9, TopK: 50, TopP: 0.8}, {Temperature: 1, TopK: 1}, {Temperature: 0.01},
		{Temperature: 0.02, TopK: 30}, {Temperature: 1, TopP: 0.3}, {Temperature: 0.03, TopP: 0.99}}
	var rows []int32
	for r := R - 1; r >= 0; r -= 2 { // odd rows, last first
		rows = append(rows, int32(r))
	}
	rows = append(rows, 4, 0, 4)
	sr := make([]engine.SampleRow, len(rows))
	for i := range sr {
		sr[i] = kinds[i%len(kinds)]
	}
	tb, ok := c.b.(engine.TopLogProbsBackend)
	if !ok {
		c.add(Result{Name: "absent", Metric: MetricMismatch, Pass: true, BadIndex: -1})
		return
	}
	var ids []int32
	var lps []float32
	withEnv(c.b, func(e *env) []output {
		var err error
		ids, lps, err = tb.TopLogProbs(e.up(logits, R, V), rows, sr, k)
		if err != nil {
			panic(err)
		}
		return nil
	})
	if len(ids) != len(rows)*k || len(lps) != len(rows)*k {
		c.add(Result{Name: "shape", Metric: MetricMismatch, Error: 1, BadIndex: -1,
			Detail: fmt.Sprintf("%d ids and %d log-probs for %d rows of k = %d", len(ids), len(lps), len(rows), k)})
		return
	}
	idr := Result{Name: "ids", Metric: MetricMismatch, BadIndex: -1}
	lpr := Result{Name: "logprobs", Metric: MetricMismatch, BadIndex: -1}
	var badIDs, badLps, same int
	for i, r := range rows {
		wid, wlp := engine.TopLogProbsRow(logits[int(r)*V:(int(r)+1)*V], sr[i], k)
		for j := range k {
			at := i*k + j
			if ids[at] != wid[j] {
				if badIDs == 0 {
					idr.BadIndex, idr.Got, idr.Want = at, float64(ids[at]), float64(wid[j])
					idr.Detail = fmt.Sprintf("row %d (%+v), rank %d", r, sr[i], j)
				}
				badIDs++
				continue
			}
			same++
			if math.Float32bits(lps[at]) != math.Float32bits(wlp[j]) {
				if badLps == 0 {
					lpr.BadIndex, lpr.Got, lpr.Want = at, float64(lps[at]), float64(wlp[j])
					lpr.Detail = fmt.Sprintf("row %d (%+v), rank %d, token %d", r, sr[i], j, wid[j])
				}
				badLps++
			}
		}
	}
	idr.Error, idr.Pass = float64(badIDs)/float64(len(ids)), badIDs == 0
	lpr.Error, lpr.Pass = float64(badLps)/float64(max(1, same)), badLps == 0
	if badIDs > 0 {
		idr.Detail = fmt.Sprintf("%d of %d ids differ; first at %s", badIDs, len(ids), idr.Detail)
	}
	if badLps > 0 {
		lpr.Detail = fmt.Sprintf("%d of %d log-probs of equal ids differ; first at %s", badLps, same, lpr.Detail)
	}
	c.add(idr)
	c.add(lpr)
}
