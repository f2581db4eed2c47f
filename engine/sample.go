package engine

import (
	"math"
	"slices"
	"sync"

	"github.com/prolong-rl/prolong/engine/internal/kern"
)

// Sampling on the host, shared by the CPU backend and by tests as the reference.
//
// Order of operations, as in Hugging Face and vLLM: logits / temperature, then top-k, then top-p
// (the smallest set of most likely tokens whose mass reaches top_p), then renormalise and draw by
// inverse CDF, walking the kept tokens in increasing id order so that the drawn token is a pure
// function of (logits, parameters, U). Ties in probability are broken by the lower id.

type sampleScratch struct {
	z   []float64 // [V] tempered logits minus their max
	p   []float64 // [V] unnormalised probabilities exp(z)
	idx []int32   // [V] candidate ids
}

// expRow fills the scratch with a row's tempered logits minus their maximum m (z) and their
// exponentials (e): math.Exp's values bit for bit, four at a time (kern.Exps), so that the
// sampler's log-probs and LogProbEntropy's stay equal while a 32000-token row takes a fraction
// of the time math.Exp per value took.
func (s *sampleScratch) expRow(logits []float32, inv float64) (z, e []float64, m float64) {
	v := len(logits)
	if cap(s.p) < v {
		s.z, s.p, s.idx = make([]float64, v), make([]float64, v), make([]int32, v)
	}
	z, e = s.z[:v], s.p[:v]
	m = math.Inf(-1)
	for _, l := range logits {
		m = max(m, float64(l)*inv)
	}
	for i, l := range logits {
		z[i] = float64(l)*inv - m
	}
	kern.Exps(e, z)
	return z, e, m
}

var scratchPool = sync.Pool{New: func() any { return new(sampleScratch) }}

// SampleLogits draws one token from a row of logits [V] and returns it with its log-prob under
// the distribution it was drawn from. Greedy rows (Temperature 0) return the argmax and its
// log-prob under the plain softmax.
func SampleLogits(logits []float32, r SampleRow) (int32, float32) {
	if r.Temperature <= 0 {
		best := 0
		for i, v := range logits {
			if v > logits[best] {
				best = i
			}
		}
		lp, _ := LogProbEntropy(logits, best, 1)
		return int32(best), lp
	}
	s := scratchPool.Get().(*sampleScratch)
	defer scratchPool.Put(s)
	ids, zs, p, z := candidates(logits, r, s)
	// Inverse CDF over the kept ids in increasing id order.
	u := r.U * z
	var c float64
	pick := ids[len(ids)-1]
	for _, id := range ids {
		c += p[id]
		if u < c {
			pick = id
			break
		}
	}
	return pick, logProb(zs[pick], z)
}

// logProb is the log-prob of a token whose tempered logit minus the row's maximum is z, in a
// distribution of unnormalised mass mass: z - log(mass), LogProbEntropy's own formula, so that
// without top-k and top-p (the whole row kept, its mass summed in the same order) the sampler's
// log-probs are the trainer's bit for bit. (log(e^z / mass) is the same number in exact
// arithmetic, but its float64 round trip lands on another float32 now and then.)
func logProb(z, mass float64) float32 { return float32(z - math.Log(mass)) }

// candidates applies temperature, top-k and top-p. It returns the kept ids sorted ascending,
// the tempered logits minus their maximum and the unnormalised probabilities of all tokens, and
// the mass of the kept ones.
func candidates(logits []float32, r SampleRow, s *sampleScratch) ([]int32, []float64, []float64, float64) {
	v := len(logits)
	zs, p, _ := s.expRow(logits, 1/float64(r.Temperature))
	idx := s.idx[:v]
	var total float64
	for i, e := range p {
		total += e
		idx[i] = int32(i)
	}
	// before reports whether token a ranks before token b.
	before := func(a, b int32) bool { return p[a] > p[b] || (p[a] == p[b] && a < b) }
	kept := idx
	if r.TopK > 0 && r.TopK < v {
		selectTop(kept, r.TopK, before)
		kept = kept[:r.TopK]
	}
	if r.TopP > 0 && r.TopP < 1 {
		mass := total
		if len(kept) < v {
			mass = 0
			for _, id := range kept {
				mass += p[id]
			}
		}
		kept = nucleus(kept, p, float64(r.TopP)*mass, before)
	}
	var z float64
	if len(kept) == v {
		z = total
	} else {
		slices.Sort(kept)
		for _, id := range kept {
			z += p[id]
		}
	}
	return kept, zs, p, z
}

// partition reorders ids around a median-of-three pivot under the strict order before and
// returns the pivot's final index m: ids[:m] rank before it, ids[m+1:] after.
func partition(ids []int32, before func(a, b int32) bool) int {
	n := len(ids)
	a, b, c := 0, n/2, n-1
	if before(ids[b], ids[a]) {
		a, b = b, a
	}
	if before(ids[c], ids[b]) {
		b, c = c, b
		if before(ids[b], ids[a]) {
			b = a
		}
	}
	ids[b], ids[n-1] = ids[n-1], ids[b]
	piv := ids[n-1]
	m := 0
	for i := 0; i < n-1; i++ {
		if before(ids[i], piv) {
			ids[i], ids[m] = ids[m], ids[i]
			m++
		}
	}
	ids[m], ids[n-1] = ids[n-1], ids[m]
	return m
}

// selectTop moves the k best ids (under before) to ids[:k], in no particular order.
func selectTop(ids []int32, k int, before func(a, b int32) bool) {
	lo, hi := 0, len(ids)
	for hi-lo > 1 {
		m := lo + partition(ids[lo:hi], before)
		switch {
		case m == k || m == k-1:
			return
		case m > k:
			hi = m
		default:
			lo = m + 1
		}
	}
}

// nucleus returns the smallest prefix (under before) of ids whose mass p reaches need,
// rearranging ids in place; expected linear time.
func nucleus(ids []int32, p []float64, need float64, before func(a, b int32) bool) []int32 {
	lo, hi := 0, len(ids)
	for hi-lo > 32 {
		m := lo + partition(ids[lo:hi], before)
		var mass float64
		for _, id := range ids[lo:m] {
			mass += p[id]
		}
		switch {
		case mass >= need:
			hi = m
		case mass+p[ids[m]] >= need:
			return ids[:m+1]
		default:
			need -= mass + p[ids[m]]
			lo = m + 1
		}
	}
	rest := ids[lo:hi]
	slices.SortFunc(rest, func(a, b int32) int {
		if before(a, b) {
			return -1
		}
		if before(b, a) {
			return 1
		}
		return 0
	})
	for i, id := range rest {
		need -= p[id]
		if need <= 0 {
			return ids[:lo+i+1]
		}
	}
	return ids[:hi]
}

// LogProbEntropy returns log softmax(logits/t)[target] and the entropy of softmax(logits/t),
// computed in float64: the host reference for Backend.LogProbs (the CPU backend's LogProbs is
// this function on each row).
func LogProbEntropy(logits []float32, target int, t float32) (float32, float32) {
	inv := 1 / float64(t)
	sc := scratchPool.Get().(*sampleScratch)
	defer scratchPool.Put(sc)
	zs, es, m := sc.expRow(logits, inv)
	var s, sz float64
	for i, e := range es {
		s += e
		sz += e * zs[i]
	}
	lse := math.Log(s)
	lp := float64(logits[target])*inv - m - lse
	ent := lse - sz/s
	return float32(lp), float32(ent)
}
