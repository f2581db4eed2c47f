package engine

import (
	"fmt"
	"math"

	"github.com/prolong-rl/prolong/engine/internal/kern"
)

// Top log-probs (OpenAI's top_logprobs): the k most likely tokens of a row's sampling
// distribution. A backend that ranks tokens where its logits are (TopLogProbsBackend) returns
// k ids and k log-probs per row; elsewhere the rows' logits come back to the host whole and
// are ranked there (TopLogProbsRow).

// TopLogProbsBackend is implemented by a backend that computes top log-probs without sending
// the logits to the host. TopLogProbs returns, for each listed row rows[i] of logits [R, V], what
// TopLogProbsRow returns for that row's logits with sr[i] and k: the same ids in
// ids[i*k:(i+1)*k], and their log-probs in lps[i*k:(i+1)*k], bit for bit but for the rounding
// of the kept mass's sum where the backend adds it in another order (the sampler's own caveat:
// it shows in float32 only for a near-certain token's tiny log-prob). 1 <= k <= V; every
// rows[i] lies in [0, R); len(sr) == len(rows).
type TopLogProbsBackend interface {
	TopLogProbs(logits *Tensor, rows []int32, sr []SampleRow, k int) (ids []int32, lps []float32, err error)
}

// CheckTopLogProbs checks TopLogProbs' arguments for logits [R, V]: one sampling row per listed
// row, every listed row in [0, R), and 1 <= k <= min(V, maxK) (maxK <= 0: V). The error names
// the argument at fault.
func CheckTopLogProbs(R, V int, rows []int32, sr []SampleRow, k, maxK int) error {
	if len(sr) != len(rows) {
		return fmt.Errorf("top log-probs: %d rows of parameters for %d rows", len(sr), len(rows))
	}
	if maxK <= 0 {
		maxK = V
	}
	if hi := min(V, maxK); k < 1 || k > hi {
		return fmt.Errorf("top log-probs: k = %d outside [1, %d]", k, hi)
	}
	for i, r := range rows {
		if r < 0 || int(r) >= R {
			return fmt.Errorf("top log-probs: row %d (entry %d) outside the %d rows of logits", r, i, R)
		}
	}
	return nil
}

// TopLogProbsRow returns the k most likely tokens of a row of logits [V] (1 <= k <= V) and their
// log-probs under the distribution SampleLogits draws from with r: the first k tokens of the
// ranking by probability (descending, ties to the lower id), a token's log-prob z - log(mass)
// as the sampler computes a drawn token's (logProb), and -Inf for the tokens top-k or top-p
// leave out (the kept ones are a prefix of the ranking). A greedy row (Temperature <= 0) lists
// the plain softmax's, without top-k and top-p. It is the reference of TopLogProbsBackend and
// what a backend without it runs on the host.
func TopLogProbsRow(logits []float32, r SampleRow, k int) ([]int32, []float32) {
	if r.Temperature <= 0 {
		r = SampleRow{Temperature: 1}
	}
	s := scratchPool.Get().(*sampleScratch)
	defer scratchPool.Put(s)
	kept, zs, p, z := candidates(logits, r, s) // kept: the best len(kept) tokens under before
	before := func(a, b int32) bool { return p[a] > p[b] || (p[a] == p[b] && a < b) }
	// One pass keeping the best k in order: most tokens lose to the k-th at once.
	top := make([]int32, 0, k)
	for id := range int32(len(logits)) {
		if len(top) == k && !before(id, top[k-1]) {
			continue
		}
		if len(top) < k {
			top = append(top, id)
		}
		i := len(top) - 1
		for ; i > 0 && before(id, top[i-1]); i-- {
			top[i] = top[i-1]
		}
		top[i] = id
	}
	lps := make([]float32, k)
	for i, id := range top {
		lps[i] = float32(math.Inf(-1))
		if i < len(kept) {
			lps[i] = logProb(zs[id], z)
		}
	}
	return top, lps
}

// TopLogProbsOnHost is TopLogProbsRow on the listed rows of logits [R, V] of backend b (each with
// its sampling row sr[i]; 1 <= k <= V), their logits downloaded (gathered first unless rows
// are 0..R-1) into *buf (grown as needed; the caller keeps it for the next call) and ranked on
// the host's cores: ids and lps [len(rows)*k], row by row. It is what the engine does on a
// backend without TopLogProbsBackend, and what a backend may do in its TopLogProbs.
func TopLogProbsOnHost(b Backend, logits *Tensor, rows []int32, sr []SampleRow, k int, buf *[]float32) ([]int32, []float32, error) {
	return topLogProbsHost(b, logits, rows, sr, k, buf)
}

// topLogProbs returns the k most likely tokens and their log-probs of the listed rows of
// logits [R, V] (1 <= k <= V), each under its sampling distribution sr[i]: ids and lps
// [len(rows)*k], row by row. On a TopLogProbsBackend the backend computes them; elsewhere the
// listed rows' logits come back to the host, into *buf (grown as needed), and are ranked there.
func topLogProbs(b Backend, logits *Tensor, rows []int32, sr []SampleRow, k int, buf *[]float32) ([]int32, []float32, error) {
	if len(rows) != len(sr) {
		panic(fmt.Sprintf("engine: top log-probs of %d rows with %d sampling rows", len(rows), len(sr)))
	}
	if tb, ok := b.(TopLogProbsBackend); ok {
		ids, lps, err := tb.TopLogProbs(logits, rows, sr, k)
		if err != nil {
			return nil, nil, fmt.Errorf("top log-probs: %w", err)
		}
		return ids, lps, nil
	}
	return topLogProbsHost(b, logits, rows, sr, k, buf)
}

func topLogProbsHost(b Backend, logits *Tensor, rows []int32, sr []SampleRow, k int, buf *[]float32) ([]int32, []float32, error) {
	V := logits.Cols()
	src := logits
	if !isIdentity(rows, logits.Rows()) {
		src = AllocUninit(b, len(rows), V) // [A, V]
		defer b.Free(src)
		b.GatherRows(src, logits, rows)
	}
	if cap(*buf) < len(rows)*V {
		*buf = make([]float32, len(rows)*V)
	}
	host := (*buf)[:len(rows)*V]
	if err := b.Download(src, host); err != nil {
		return nil, nil, fmt.Errorf("top log-probs: %w", err)
	}
	ids, lps := make([]int32, len(rows)*k), make([]float32, len(rows)*k)
	kern.Threads(0).Parallel(len(rows), 1, func(lo, hi int) { // the rows spread over the host's cores
		for a := lo; a < hi; a++ {
			id, lp := TopLogProbsRow(host[a*V:(a+1)*V], sr[a], k)
			copy(ids[a*k:], id)
			copy(lps[a*k:], lp)
		}
	})
	return ids, lps, nil
}

// isIdentity reports whether rows lists 0..n-1 in order.
func isIdentity(rows []int32, n int) bool {
	if len(rows) != n {
		return false
	}
	for i, r := range rows {
		if int(r) != i {
			return false
		}
	}
	return true
}
