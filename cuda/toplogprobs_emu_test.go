package cuda

import (
	"fmt"
	"math"
	"math/rand/v2"
	"regexp"
	"slices"
	"testing"
	"time"

	"github.com/prolong-rl/prolong/engine"
)

// A Go emulation of kernels/toplogprobs.cu's top_logprobs and of the helpers of
// kernels/softmax.cu it calls (kept_set, count_ge, mass_ge, MAX_KEY_WHERE, tie_cut) with
// chunk_sums, ProbKey and the candidate collection, line for line, one block of SAMPLE_THREADS
// (1024) threads: the per-thread strided partial sums and block_sum_d's warp butterfly are
// emulated in the kernel's order (so the masses top-p compares are the device's doubles), and
// so are the contiguous per-thread chunks of chunk_sums and of the tie collection at Tk with
// their prefix sums in thread order. Left plain: the block's maximum (fmaxf is
// order-insensitive), atomicMin on low (a minimum), and atomicAdd's order of the candidates
// above Tk (the final rank by counting does not depend on it; the emulation takes them in id
// order). The kernel recomputes key(x_i) and exp(x_i·inv - m) in every pass; the emulation
// computes them once per token (emuRowKeys: pure functions of x_i, the same values). The
// threads' loops over their chunks run one thread after another (they share nothing but the
// prefix sums). exp and log are Go's math.Exp and math.Log (CUDA's double exp and log are faithful,
// not always equal to Go's; docs/cuda.md). It checks the algorithm against the host's
// engine.TopLogProbsRow bit for bit; not what the compiler or the hardware would add, which
// only a GPU run shows.

const (
	emuSampleThreads = 1024 // SAMPLE_THREADS
	emuTopMax        = 32   // TOP_MAX
)

// emuOrderKey is order_key: an order-preserving u32 of a float.
func emuOrderKey(f float32) uint32 {
	u := math.Float32bits(f)
	if u&0x80000000 != 0 {
		return ^u
	}
	return u | 0x80000000
}

// emuKeyFloat is key_float, order_key's inverse.
func emuKeyFloat(k uint32) float32 {
	if k&0x80000000 != 0 {
		return math.Float32frombits(k & 0x7fffffff)
	}
	return math.Float32frombits(^k)
}

// emuTempered is tempered (common.cuh): x·inv - m, the product rounded on its own (the
// conversion keeps Go from fusing on architectures with FMA).
func emuTempered(x float32, inv, m float64) float64 { return float64(float64(x)*inv) - m }

// emuKey is a key functor (LogitKey, ProbKey).
type emuKey func(x float32) uint32

// emuBlockSumD is block_sum_d over the threads' values v[tid]: warp_sum_d's xor butterfly (every
// lane ends with its warp's sum), then thread 0..'s loop over the 32 warp sums in order.
func emuBlockSumD(v *[emuSampleThreads]float64) float64 {
	w := *v
	for o := 16; o > 0; o >>= 1 {
		var n [emuSampleThreads]float64
		for l := range w {
			n[l] = w[l] + w[l^o]
		}
		w = n
	}
	t := 0.0
	for i := 0; i < emuSampleThreads/32; i++ {
		t += w[i*32]
	}
	return t
}

// emuRowKeys holds, per token of a row, key(x_i) and exp(x_i·inv - m): pure functions of x_i
// that the kernel recomputes in every pass, computed once here (speed).
type emuRowKeys struct {
	q []uint32  // key(x_i)
	e []float64 // exp(tempered(x_i, inv, m))
}

// emuCountGE is count_ge: #{i : key(x_i) >= t}, each thread counting its strided ids in double.
func emuCountGE(r *emuRowKeys, t uint32) int {
	var c [emuSampleThreads]float64
	for i, q := range r.q {
		if q >= t {
			c[i%emuSampleThreads] += 1.0
		}
	}
	return int(emuBlockSumD(&c))
}

// emuMassGE is mass_ge: Σ_{key(x_i) >= t} exp(x_i·inv - m).
func emuMassGE(r *emuRowKeys, t uint32) float64 {
	var s [emuSampleThreads]float64
	for i, q := range r.q {
		if q >= t {
			s[i%emuSampleThreads] += r.e[i]
		}
	}
	return emuBlockSumD(&s)
}

// emuMaxKeyWhere is MAX_KEY_WHERE: the largest key t with pred(t), by binary search.
func emuMaxKeyWhere(pred func(mid uint32) bool) uint32 {
	lo, hi := uint32(0), uint32(0xffffffff)
	for lo < hi {
		mid := lo + uint32((uint64(hi)-uint64(lo)+1)/2)
		if pred(mid) {
			lo = mid
		} else {
			hi = mid - 1
		}
	}
	return lo
}

// emuTieCut is tie_cut: thread 0 walks the ids of key t in increasing order.
func emuTieCut(r *emuRowKeys, t uint32, n int, base, need float64) int {
	taken, last := 0, -1
	acc := base
	for i := 0; i < len(r.q) && taken < n; i++ {
		if r.q[i] != t {
			continue
		}
		last = i
		taken++
		acc += r.e[i]
		if acc >= need {
			break
		}
	}
	return last
}

// emuKeptSet is kept_set: the ids top-k K and then top-p P keep are key > T, or key == T and
// id <= tieCut.
func emuKeptSet(r *emuRowKeys, K int, P float32) (uint32, int) {
	V := len(r.q)
	// Top-k: T = largest key with at least K keys >= it; the first K - #(key > T) ties.
	T := uint32(0)
	tieCut := V
	topk := K > 0 && K < V
	if topk {
		T = emuMaxKeyWhere(func(mid uint32) bool { return emuCountGE(r, mid) >= K })
		above := 0
		if T != 0xffffffff {
			above = emuCountGE(r, T+1)
		}
		ties := emuCountGE(r, T) - above
		if above+ties > K {
			tieCut = emuTieCut(r, T, K-above, 0.0, math.Inf(1))
		}
	}
	// Top-p over what top-k kept: need = p · mass(kept).
	if P > 0 && P < 1 {
		var keptMass float64
		if topk {
			keptMass = 0
			if T != 0xffffffff {
				keptMass = emuMassGE(r, T+1)
			}
			var s [emuSampleThreads]float64
			for i, q := range r.q {
				if q == T && i <= tieCut {
					s[i%emuSampleThreads] += r.e[i]
				}
			}
			keptMass += emuBlockSumD(&s)
		} else {
			keptMass = emuMassGE(r, 0)
		}
		need := float64(P) * keptMass
		Tp := emuMaxKeyWhere(func(mid uint32) bool { return emuMassGE(r, mid) >= need })
		if !topk || Tp > T {
			above, na := 0.0, 0
			if Tp != 0xffffffff {
				above, na = emuMassGE(r, Tp+1), emuCountGE(r, Tp+1)
			}
			ties := emuCountGE(r, Tp) - na
			cut := V
			if ties > 1 {
				cut = emuTieCut(r, Tp, ties, above, need)
			}
			if emuMassGE(r, Tp) >= need || !topk {
				T = Tp
				tieCut = cut
			}
		} else if Tp == T {
			above, na := 0.0, 0
			if T != 0xffffffff {
				above, na = emuMassGE(r, T+1), emuCountGE(r, T+1)
			}
			ties := emuCountGE(r, T) - na
			allowed := ties
			if tieCut < V { // top-k kept only some ties: count them
				var c [emuSampleThreads]float64
				for i, q := range r.q {
					if q == T && i <= tieCut {
						c[i%emuSampleThreads] += 1.0
					}
				}
				allowed = int(emuBlockSumD(&c))
			}
			if ties > 1 || allowed < ties {
				tieCut = emuTieCut(r, T, allowed, above, need)
			}
		}
	}
	return T, tieCut
}

// emuChunk is the contiguous chunk [c0, c1) of ids thread tid walks (chunk_sums, the ties at Tk).
func emuChunk(V, tid int) (int, int) {
	chunk := (V + emuSampleThreads - 1) / emuSampleThreads
	c0 := min(V, tid*chunk)
	return c0, min(V, c0+chunk)
}

// emuWalkMass is chunk_sums: each thread sums its chunk in increasing id order, thread 0 the
// chunk sums in thread order.
func emuWalkMass(r *emuRowKeys, keep func(i int) bool) float64 {
	var pre [emuSampleThreads]float64
	for tid := range pre {
		c0, c1 := emuChunk(len(r.q), tid)
		s := 0.0
		for i := c0; i < c1; i++ {
			if keep(i) {
				s += r.e[i]
			}
		}
		pre[tid] = s
	}
	acc := 0.0
	for _, s := range pre {
		acc += s
	}
	return acc
}

// emuVariant picks the kernel the emulation runs: the kernel (zero value) or a variant that
// must disagree with the host somewhere (the test shows that it does).
type emuVariant struct {
	logitKey bool // LogitKey instead of ProbKey: tokens of probability 0 rank by logit
	oldKey   bool // ProbKey before the probability classes: equal probabilities of distinct logits rank by logit
	tiesHigh bool // ties of key ranked to the higher id
}

// emuProbClass is prob_class: the smallest key of the probability class of key k >= low.
func emuProbClass(k, low uint32, inv, m float64) uint32 {
	if k == low {
		return k
	}
	p := 0.0
	lo, hi, mid := low, k, k
	for step := 0; ; step++ {
		e := math.Exp(emuTempered(emuKeyFloat(mid), inv, m))
		if step == 0 {
			p, mid = e, k-1 // first the next float below
			continue
		}
		if e == p {
			hi = mid
		} else if step == 1 {
			return k
		} else {
			lo = mid + 1
		}
		if lo >= hi {
			return lo
		}
		mid = lo + (hi-lo)/2
	}
}

// emuProbKeyBounds computes ProbKey's bounds as thread 0 does: sub, the smallest key of a
// normal probability; z0 and z1, the keys of -t and t.
func emuProbKeyBounds(low uint32, mx float32, inv, m float64) (sub, z0, z1 uint32) {
	lo, hi := low, emuOrderKey(mx)
	for lo < hi {
		mid := lo + (hi-lo)/2
		if emuTempered(emuKeyFloat(mid), inv, m) >= -708.0 {
			hi = mid
		} else {
			lo = mid + 1
		}
	}
	t := max(float32(0x1p-19*(1.0+math.Abs(m))/inv), 0x1p-125)
	return lo, emuOrderKey(-t), emuOrderKey(t)
}

// emuProbKey is ProbKey: key 0 below low; above it, the smallest key of the token's
// probability class (prob_class), computed only below sub and strictly between z0 and z1.
func emuProbKey(low, sub, z0, z1 uint32, inv, m float64) emuKey {
	return func(x float32) uint32 {
		k := emuOrderKey(x)
		if k < low {
			return 0
		}
		if k >= sub && (k <= z0 || k >= z1) {
			return k
		}
		return emuProbClass(k, low, inv, m)
	}
}

// emuTopLogProbs is top_logprobs on one row x with temperature temp, top-k topk and top-p topp:
// the k ids and log-probs it writes.
func emuTopLogProbs(x []float32, temp float32, topk int, topp float32, k int, vr emuVariant) ([]int32, []float32) {
	V := len(x)
	greedy := temp <= 0
	inv := 1.0
	if !greedy {
		inv = 1.0 / float64(temp)
	}
	K, P := 0, float32(0)
	if !greedy {
		K, P = topk, topp
	}
	mx := float32(math.Inf(-1))
	for _, xi := range x {
		mx = max(mx, xi)
	}
	m := float64(mx) * inv

	// low: the smallest key whose probability is positive (the maximum's is 1).
	low := uint32(0xffffffff)
	for _, xi := range x {
		if math.Exp(emuTempered(xi, inv, m)) > 0.0 {
			low = min(low, emuOrderKey(xi))
		}
	}
	// ProbKey's bounds: sub, z0, z1 (thread 0).
	sub, z0, z1 := emuProbKeyBounds(low, mx, inv, m)
	key := emuProbKey(low, sub, z0, z1, inv, m)
	switch {
	case vr.logitKey:
		key = emuOrderKey
	case vr.oldKey:
		key = func(xi float32) uint32 {
			if q := emuOrderKey(xi); q >= low {
				return q
			}
			return 0
		}
	}

	r := &emuRowKeys{q: make([]uint32, V), e: make([]float64, V)}
	for i, xi := range x {
		r.q[i], r.e[i] = key(xi), math.Exp(emuTempered(xi, inv, m))
	}

	T, tieCut := emuKeptSet(r, K, P)
	kept := func(i int) bool {
		q := r.q[i]
		return q > T || (q == T && i <= tieCut)
	}
	lz := math.Log(emuWalkMass(r, kept))

	// The k best: every key above Tk (fewer than k), then the lowest ids of key Tk.
	Tk := emuMaxKeyWhere(func(mid uint32) bool { return emuCountGE(r, mid) >= k })
	var candKey [emuTopMax]uint32
	var candID [emuTopMax]int
	nCand := 0
	for i, q := range r.q {
		if q > Tk { // atomicAdd's order: any; taken here in id order
			candKey[nCand], candID[nCand] = q, i
			nCand++
		}
	}
	above := nCand
	var tiePre [emuSampleThreads]int
	for tid := range tiePre {
		c0, c1 := emuChunk(V, tid)
		n := 0
		for i := c0; i < c1; i++ {
			if r.q[i] == Tk {
				n++
			}
		}
		tiePre[tid] = n
	}
	acc := 0
	for i, v := range tiePre {
		tiePre[i] = acc
		acc += v
	}
	for tid := range tiePre {
		c0, c1 := emuChunk(V, tid)
		for i, at := c0, above+tiePre[tid]; i < c1 && at < k; i++ {
			if r.q[i] == Tk {
				candKey[at], candID[at] = Tk, i
				at++
			}
		}
	}
	// Rank each candidate among the k: probability descending, then id ascending.
	ids, lps := make([]int32, k), make([]float32, k)
	for tid := 0; tid < k; tid++ {
		q, id, r := candKey[tid], candID[tid], 0
		for j := 0; j < k; j++ {
			tieFirst := candID[j] < id
			if vr.tiesHigh {
				tieFirst = candID[j] > id
			}
			if candKey[j] > q || (candKey[j] == q && tieFirst) {
				r++
			}
		}
		ids[r] = int32(id)
		lps[r] = float32(math.Inf(-1))
		if kept(id) {
			lps[r] = float32(emuTempered(x[id], inv, m) - lz)
		}
	}
	return ids, lps
}

// emuRow is a row of logits of the test and what it exercises.
type emuRow struct {
	name string
	x    []float32
	// adversarial: built so that distinct logits have equal probabilities near the top
	// (signed zeros, logits absorbed by the maximum, subnormal probabilities); only the
	// kernel with probability classes ranks them as the host does.
	adversarial bool
}

// emuRows returns the test's rows of logits of V tokens, seeded by V.
func emuRows(V int) []emuRow {
	rng := rand.New(rand.NewPCG(uint64(V), 7))
	normal := func() []float32 {
		x := make([]float32, V)
		for i := range x {
			x[i] = float32(3 * rng.NormFloat64())
		}
		return x
	}
	halves := normal()
	for i := range halves {
		halves[i] = float32(math.Round(float64(halves[i])*2) / 2) // many ties; -0 and +0 among them
	}
	negInf := normal()
	for i := range negInf {
		if rng.IntN(5) == 0 {
			negInf[i] = float32(math.Inf(-1))
		}
	}
	few := make([]float32, V) // fewer finite tokens than k: the rest rank by id at probability 0
	for i := range few {
		few[i] = float32(math.Inf(-1))
	}
	for range 5 {
		few[rng.IntN(V)] = float32(rng.NormFloat64())
	}
	rows := []emuRow{{name: "normal", x: normal()}, {name: "halves", x: halves}, {name: "-Inf", x: negInf}, {name: "few finite", x: few}}
	if V > 4096 {
		return rows // a real vocabulary: the random rows only (speed)
	}
	// Signed zeros near the top: +0 and -0 have the same probability; the host ranks them by id.
	zeros := normal()
	for i := range zeros {
		zeros[i] = -float32(math.Abs(float64(zeros[i]))) - 1
		if rng.IntN(3) == 0 {
			zeros[i] = float32(math.Copysign(0, float64(rng.IntN(2)*2-1)))
		}
	}
	zeros[rng.IntN(V)] = 0.5
	// Logits absorbed by the maximum: x·inv - m rounds to -m for |x| below about 1e-16·m.
	tiny := normal()
	for i := range tiny {
		tiny[i] = -float32(math.Abs(float64(tiny[i]))) - 1
		if rng.IntN(3) == 0 {
			tiny[i] = float32(rng.Float64() * 1e-20)
		}
	}
	tiny[rng.IntN(V)] = 5
	// Subnormal probabilities at temperature 0.01: z = 100·x in (-745.2, -744) for x in
	// (-7.452, -7.44), where exp(z) is 1, 2 or 3 times 2^-1074 (or 0): distinct logits share
	// a probability.
	sub := make([]float32, V)
	for i := range sub {
		sub[i] = -7.44 - 0.012*float32(rng.Float64())
	}
	sub[rng.IntN(V)] = 0
	return append(rows, emuRow{name: "signed zeros", x: zeros, adversarial: true},
		emuRow{name: "absorbed", x: tiny, adversarial: true},
		emuRow{name: "subnormal at T 0.01", x: sub, adversarial: true})
}

// emuSampling lists the sampling rows of the test: every kind top_logprobs branches on.
func emuSampling(V int) []engine.SampleRow {
	return []engine.SampleRow{
		{}, // greedy: the plain softmax
		{Temperature: 1},
		{Temperature: 0.7},
		{Temperature: 1.3, TopK: 5},
		{Temperature: 1, TopK: V / 2},
		{Temperature: 0.8, TopP: 0.9},
		{Temperature: 1, TopP: 0.5},
		{Temperature: 0.9, TopK: 40, TopP: 0.8},
		{Temperature: 1, TopK: 8, TopP: 0.999},
		{Temperature: 1, TopK: 1},
		{Temperature: 1, TopK: V},
		{Temperature: 1, TopK: V + 3},
		{Temperature: 1, TopP: 1},
		{Temperature: 0.01},
		{Temperature: 0.02, TopK: 30},
		{Temperature: 0.03, TopP: 0.99},
		// Lower still: fewer than k tokens of positive probability, the rest rank by id at
		// probability 0 (ProbKey's reason).
		{Temperature: 0.001},
		{Temperature: 0.002, TopK: 50},
		{Temperature: 0.001, TopP: 0.9},
	}
}

func emuSame(aIDs, bIDs []int32, aLps, bLps []float32) bool {
	for j := range aIDs {
		if aIDs[j] != bIDs[j] || math.Float32bits(aLps[j]) != math.Float32bits(bLps[j]) {
			return false
		}
	}
	return true
}

// TestTopLogProbsEmulation: the emulated top_logprobs gives engine.TopLogProbsRow's ids and
// float32 log-probs bit for bit on every row, sampling row and k; the variants without
// ProbKey's zero key, without its probability classes, or with ties to the higher id, do not.
func TestTopLogProbsEmulation(t *testing.T) {
	start := time.Now()
	var cases, values int
	bad := map[string]int{}    // variant (row kind): cases where it disagrees with the host
	badOn := map[string]bool{} // variant/row kind: disagreed there
	variants := []struct {
		name string
		vr   emuVariant
	}{{"LogitKey", emuVariant{logitKey: true}}, {"ProbKey without classes", emuVariant{oldKey: true}}, {"ties to the higher id", emuVariant{tiesHigh: true}}}
	for _, V := range []int{257, 3001, 151936} {
		rows := emuRows(V)
		sampling := emuSampling(V)
		ks := []int{1, 3, 20, 32}
		if V > 4096 { // a real vocabulary: a few rows (speed)
			sampling = []engine.SampleRow{{Temperature: 1}, {Temperature: 0.01}, {Temperature: 0.9, TopK: 40, TopP: 0.8}, {Temperature: 0.001}}
			ks = []int{20}
		}
		for _, row := range rows {
			for _, sr := range sampling {
				if V > 4096 && row.name != "normal" && sr.Temperature != 0.001 {
					continue
				}
				for _, k := range ks {
					k = min(k, V)
					name := fmt.Sprintf("V%d/%s/T%g,K%d,P%g/k%d", V, row.name, sr.Temperature, sr.TopK, sr.TopP, k)
					wantIDs, wantLps := engine.TopLogProbsRow(row.x, sr, k)
					ids, lps := emuTopLogProbs(row.x, sr.Temperature, sr.TopK, sr.TopP, k, emuVariant{})
					cases++
					values += 2 * k
					for j := range k {
						if ids[j] != wantIDs[j] || math.Float32bits(lps[j]) != math.Float32bits(wantLps[j]) {
							t.Errorf("%s: rank %d: emulated (%d, %v), host (%d, %v)", name, j, ids[j], lps[j], wantIDs[j], wantLps[j])
						}
					}
					if V > 4096 {
						continue
					}
					for _, v := range variants {
						vIDs, vLps := emuTopLogProbs(row.x, sr.Temperature, sr.TopK, sr.TopP, k, v.vr)
						if !emuSame(vIDs, wantIDs, vLps, wantLps) {
							kind := "random"
							if row.adversarial {
								kind = "adversarial"
							}
							bad[v.name+" ("+kind+" rows)"]++
							badOn[v.name+"/"+row.name] = true
							if !row.adversarial && sr.Temperature > 0 && sr.Temperature <= 0.002 {
								badOn[v.name+"/low temperature"] = true
							}
						}
					}
				}
			}
		}
	}
	// Each variant must fail where its feature matters: the test can tell.
	for _, must := range []string{
		"LogitKey/low temperature",
		"ProbKey without classes/signed zeros", "ProbKey without classes/absorbed", "ProbKey without classes/subnormal at T 0.01",
		"ties to the higher id/halves",
	} {
		if !badOn[must] {
			t.Errorf("variant %s agrees with the host: the test cannot tell it from the kernel", must)
		}
	}
	t.Logf("%d cases (row, sampling row, k), %d values compared bit for bit; cases where a variant disagrees: %v; %v",
		cases, values, bad, time.Since(start).Round(time.Millisecond))
}

// TestTopLogProbsEmulationProbKey checks ProbKey's definition directly: over every row of the
// test at several temperatures, with the tokens sorted by probability exp(x·inv - m) (the
// host's), keys ascend as probabilities ascend, equal exactly where they are equal, and are 0
// exactly where the probability is 0.
func TestTopLogProbsEmulationProbKey(t *testing.T) {
	for _, V := range []int{257, 3001} {
		for _, row := range emuRows(V) {
			for _, temp := range []float32{0, 1, 0.3, 0.01, 0.002} {
				inv := 1.0
				if temp > 0 {
					inv = 1 / float64(temp)
				}
				m := float64(slices.Max(row.x)) * inv
				low := uint32(0xffffffff)
				for _, xi := range row.x {
					if math.Exp(emuTempered(xi, inv, m)) > 0 {
						low = min(low, emuOrderKey(xi))
					}
				}
				sub, z0, z1 := emuProbKeyBounds(low, slices.Max(row.x), inv, m)
				key := emuProbKey(low, sub, z0, z1, inv, m)
				p, q := make([]float64, V), make([]uint32, V)
				ids := make([]int, V)
				for i, xi := range row.x {
					p[i], q[i], ids[i] = math.Exp(emuTempered(xi, inv, m)), key(xi), i
				}
				slices.SortFunc(ids, func(a, b int) int { return cmpF64(p[a], p[b]) })
				classes := 0
				for j, i := range ids {
					if (p[i] == 0) != (q[i] == 0) {
						t.Fatalf("V%d/%s/T%g: token %d (x %g): p %g, key %#x", V, row.name, temp, i, row.x[i], p[i], q[i])
					}
					if j == 0 {
						continue
					}
					h := ids[j-1]
					if (p[h] < p[i]) != (q[h] < q[i]) || (p[h] == p[i]) != (q[h] == q[i]) {
						t.Fatalf("V%d/%s/T%g: tokens %d (x %g, p %g, key %#x) and %d (x %g, p %g, key %#x) ordered apart",
							V, row.name, temp, h, row.x[h], p[h], q[h], i, row.x[i], p[i], q[i])
					}
					if p[h] == p[i] && math.Float32bits(row.x[h]) != math.Float32bits(row.x[i]) {
						classes++ // distinct logits (+0 and -0 included) of one probability: ProbKey's reason
					}
				}
				if row.adversarial && (temp == 0.01) == (row.name == "subnormal at T 0.01") && temp != 0.3 && temp != 0.002 && classes == 0 {
					t.Errorf("V%d/%s: no distinct logits of equal probability", V, row.name)
				}
			}
		}
	}
}

// TestTopLogProbsEmulationProbKeyBounds checks ProbKey's shortcut, that a key at or above sub
// and outside (z0, z1) is its own probability class (the next float below has another p), on
// rows of maxima from 1e-30 to 1e6 in magnitude at temperatures from 0.001 to 100: on keys at
// the bounds and next to them, and on random floats of every magnitude.
func TestTopLogProbsEmulationProbKeyBounds(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	checked := 0
	for _, mx := range []float32{1e-30, -1e-30, 1e-6, 0.3, 1, -2, 17.25, 300, -4000, 1e6} {
		for _, temp := range []float32{0, 1, 0.5, 0.01, 0.001, 5, 100} {
			inv := 1.0
			if temp > 0 {
				inv = 1 / float64(temp)
			}
			m := float64(mx) * inv
			p := func(k uint32) float64 { return math.Exp(emuTempered(emuKeyFloat(k), inv, m)) }
			top := emuOrderKey(mx)
			low := emuMaxKeyWhere(func(mid uint32) bool { return mid <= top && p(mid) == 0 }) + 1 // the smallest key of p > 0
			sub, z0, z1 := emuProbKeyBounds(low, mx, inv, m)
			check := func(k uint32) {
				if k <= low || k > top || !(k >= sub && (k <= z0 || k >= z1)) {
					return
				}
				checked++
				if p(k-1) == p(k) {
					t.Fatalf("max %g, T %g: key %#x (x %g) and the float below share p %g, yet ProbKey takes the key as its class (sub %#x, z0 %#x, z1 %#x)",
						mx, temp, k, emuKeyFloat(k), p(k), sub, z0, z1)
				}
			}
			for j := range uint32(2000) {
				check(sub + j)
				check(z1 + j)
				check(z0 - j)
				check(top - j)
			}
			for range 20000 {
				x := float32(math.Ldexp(rng.Float64(), rng.IntN(80)-60))
				if rng.IntN(2) == 0 {
					x = -x
				}
				check(emuOrderKey(x))
			}
		}
	}
	t.Logf("%d keys checked", checked)
}

func cmpF64(a, b float64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// TestTopLogProbsEmulationDominant pins down where the kernel and the host differ: a row with
// a dominant token (probability 1 - 1e-9 or closer), whose log-prob z - log(mass) is about
// -(mass - 1) and so shows the mass's last bits in float32. The host sums the kept mass in id
// order one token at a time; chunk_sums sums each thread's chunk of ceil(V/1024) ids, then the
// chunk sums (docs/cuda.md, Figures: the sampler does the same). With one id per thread
// (V <= 1024) the two orders are one and the log-probs agree bit for bit; above, the ids agree
// and each side's log-probs are z - log of its own sum, which differ for such rows.
func TestTopLogProbsEmulationDominant(t *testing.T) {
	for _, V := range []int{257, 1024, 1025, 3001, 151936} {
		rng := rand.New(rand.NewPCG(uint64(V), 9))
		differ, rows := 0, 0
		for range 6 {
			x := make([]float32, V)
			for i := range x {
				x[i] = float32(3*rng.NormFloat64() - 12)
			}
			x[rng.IntN(V)] = 12 + float32(rng.Float64()*10)
			for _, temp := range []float32{1, 0.7} {
				k := 3
				wantIDs, wantLps := engine.TopLogProbsRow(x, engine.SampleRow{Temperature: temp}, k)
				ids, lps := emuTopLogProbs(x, temp, 0, 0, k, emuVariant{})
				inv := 1 / float64(temp)
				m := float64(slices.Max(x)) * inv
				seq, chunked := 0.0, 0.0 // the host's order; chunk_sums's
				for _, xi := range x {
					seq += math.Exp(emuTempered(xi, inv, m))
				}
				for tid := range emuSampleThreads {
					c0, c1 := emuChunk(V, tid)
					s := 0.0
					for i := c0; i < c1; i++ {
						s += math.Exp(emuTempered(x[i], inv, m))
					}
					chunked += s
				}
				rows++
				if !slices.Equal(ids, wantIDs) {
					t.Fatalf("V%d/T%g: emulated ids %v, host %v", V, temp, ids, wantIDs)
				}
				for j, id := range ids {
					z := emuTempered(x[id], inv, m)
					if h, d := float32(z-math.Log(seq)), float32(z-math.Log(chunked)); wantLps[j] != h || lps[j] != d {
						t.Fatalf("V%d/T%g rank %d: host %v (its formula %v), emulated %v (its formula %v)", V, temp, j, wantLps[j], h, lps[j], d)
					}
				}
				if !emuSame(ids, wantIDs, lps, wantLps) {
					differ++
					if V <= emuSampleThreads {
						t.Errorf("V%d/T%g: one id per thread, yet log-probs emulated %v, host %v", V, temp, lps, wantLps)
					}
				}
			}
		}
		t.Logf("V %d: the top log-prob differs from the host's on %d of %d rows with a dominant token", V, differ, rows)
		if V > emuSampleThreads && differ == 0 {
			t.Errorf("V%d: no row shows the summation order; the test no longer pins it down", V)
		}
	}
}

// TestTopLogProbsEmulationMatchesSource: the emulation's constants are the kernel's.
func TestTopLogProbsEmulationMatchesSource(t *testing.T) {
	for file, defs := range map[string]map[string]int{
		"kernels/softmax.cu":     {"SAMPLE_THREADS": emuSampleThreads},
		"kernels/toplogprobs.cu": {"TOP_MAX": emuTopMax},
	} {
		src, err := kernelFS.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		for name, want := range defs {
			m := regexp.MustCompile(`#define ` + name + ` (\d+)`).FindSubmatch(src)
			if m == nil || string(m[1]) != fmt.Sprint(want) {
				t.Errorf("%s: %s is %q, the emulation's %d", file, name, m, want)
			}
		}
	}
}
