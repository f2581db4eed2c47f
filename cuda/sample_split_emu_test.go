package cuda

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/prolong-rl/prolong/engine"
)

// A Go emulation of kernels/sample_split.cu (Options.SplitSample), line for line where the
// arithmetic's order matters: the part maxima, each part's sum as chunk_sums takes it (SPLIT_THREADS
// contiguous chunks, then the chunk sums in thread order), Z as the parts' sums in part order,
// the part holding u·Z and the walk of its chunks. Block-wide maxima and argmaxima are plain
// loops (their results do not depend on the order).

const splitThreadsEmu = 256

// splitPartEmu is split_part.
func splitPartEmu(V, S, j int) (lo, hi int) {
	P := (V + S - 1) / S
	lo = min(V, j*P)
	return lo, min(V, lo+P)
}

// partMassEmu is chunk_sums over a part (keeping every id): the part's sum, the chunks'
// exclusive prefix sums (pre), each thread's own chunk sum (mine) and its chunk [c0[t], c1[t]).
func partMassEmu(x []float32, lo, hi int, inv, m float64) (total float64, pre, mine []float64, c0, c1 []int) {
	pre, mine = make([]float64, splitThreadsEmu), make([]float64, splitThreadsEmu)
	c0, c1 = make([]int, splitThreadsEmu), make([]int, splitThreadsEmu)
	chunk := (hi - lo + splitThreadsEmu - 1) / splitThreadsEmu
	for tid := range splitThreadsEmu {
		c0[tid] = min(hi, lo+tid*chunk)
		c1[tid] = min(hi, c0[tid]+chunk)
		for i := c0[tid]; i < c1[tid]; i++ {
			mine[tid] += math.Exp(float64(x[i])*inv - m)
		}
	}
	for i, v := range mine {
		pre[i] = total
		total += v
	}
	return total, pre, mine, c0, c1
}

// sampleSplitEmu draws one token from x as the three kernels do with S parts; walkNext, a
// planted bug for the test's own check, walks a neighbour of the right part (the next one; the
// one before for the last).
func sampleSplitEmu(x []float32, temp float32, u01 float64, S int, walkNext bool) (int32, float32) {
	V := len(x)
	pmax := make([]float32, S)
	for j := range S {
		lo, hi := splitPartEmu(V, S, j)
		mx := float32(math.Inf(-1))
		for _, v := range x[lo:hi] {
			if v > mx { // fmaxf: NaN never wins
				mx = v
			}
		}
		pmax[j] = mx
	}
	mx := float32(math.Inf(-1))
	for _, v := range pmax {
		mx = max(mx, v)
	}
	inv := 1.0
	if temp > 0 {
		inv = 1 / float64(temp)
	}
	m := float64(mx) * inv
	pmass := make([]float64, S)
	parg := make([]int, S)
	for j := range S {
		lo, hi := splitPartEmu(V, S, j)
		pmass[j], _, _, _, _ = partMassEmu(x, lo, hi, inv, m)
		best, bi := float32(math.Inf(-1)), math.MaxInt32
		for i := lo; i < hi; i++ {
			if x[i] > best {
				best, bi = x[i], i
			}
		}
		parg[j] = bi
	}
	var z float64
	for _, s := range pmass {
		z += s
	}
	lp := func(i int) float32 { return float32((float64(x[i])*inv - m) - math.Log(z)) }
	if temp <= 0 {
		bi, best := math.MaxInt32, float32(0)
		for _, a := range parg {
			if a != math.MaxInt32 && (bi == math.MaxInt32 || x[a] > best) {
				best, bi = x[a], a
			}
		}
		if bi == math.MaxInt32 {
			bi = 0
		}
		return int32(bi), lp(bi)
	}
	u, c := u01*z, 0.0
	part := -1
	for p, s := range pmass {
		if s > 0 && u < c+s {
			part = p
			break
		}
		c += s
	}
	if part < 0 {
		return int32(V - 1), lp(V - 1)
	}
	if walkNext && part+1 < S {
		c += pmass[part]
		part++
	} else if walkNext && part > 0 {
		part--
		c -= pmass[part]
	}
	lo, hi := splitPartEmu(V, S, part)
	_, pre, mine, c0s, c1s := partMassEmu(x, lo, hi, inv, m)
	pick := hi - 1
	ul := u - c
	for tid := range splitThreadsEmu {
		c0, c1, cs := c0s[tid], c1s[tid], mine[tid]
		if c0 < c1 && cs > 0 && pre[tid] <= ul && ul < pre[tid]+cs {
			acc, p := pre[tid], c1-1
			for i := c0; i < c1; i++ {
				acc += math.Exp(float64(x[i])*inv - m)
				if ul < acc {
					p = i
					break
				}
			}
			pick = p
		}
	}
	return int32(pick), lp(pick)
}

// TestSampleSplitEmulation: the split sampler's algorithm draws engine.SampleLogits' token with
// its log-prob bit for bit, over vocabularies of 257 (the suite's), 3001 and 151,936 (Qwen2's)
// split in 2 to 75 parts, greedy and tempered rows, logits rounded to halves (ties) or not, with
// -Inf entries: greedy rows always, sampled rows but for U within rounding of a CDF boundary
// (none here). Walking a neighbour of the right part (a planted bug) fails most rows.
func TestSampleSplitEmulation(t *testing.T) {
	rng := rand.New(rand.NewPCG(11, 12))
	for _, tc := range []struct {
		V, S, rows int
		ties       bool
	}{{257, 2, 200, false}, {257, 3, 200, true}, {257, 17, 200, false}, {3001, 7, 100, true}, {3001, 2, 100, false},
		{151936, 75, 6, false}, {151936, 8, 6, true}} {
		t.Run(fmt.Sprintf("V=%d,S=%d,ties=%v", tc.V, tc.S, tc.ties), func(t *testing.T) {
			var sampled, bad, planted int
			for r := range tc.rows {
				x := make([]float32, tc.V)
				for i := range x {
					v := rng.NormFloat64() * 3
					if tc.ties {
						v = math.Round(v*2) / 2
					}
					if rng.IntN(20) == 0 {
						v = math.Inf(-1)
					}
					x[i] = float32(v)
				}
				temp := []float32{0, 1, 0.7, 1.3}[r%4]
				u := rng.Float64()
				wid, wlp := engine.SampleLogits(x, engine.SampleRow{Temperature: temp, U: u})
				gid, glp := sampleSplitEmu(x, temp, u, tc.S, false)
				switch {
				case gid != wid && temp <= 0:
					t.Fatalf("greedy row %d: token %d, SampleLogits %d", r, gid, wid)
				case gid != wid:
					bad++
				case math.Float32bits(glp) != math.Float32bits(wlp):
					t.Errorf("row %d (temperature %g): token %d log-prob %v, SampleLogits %v", r, temp, gid, glp, wlp)
				}
				if temp > 0 {
					sampled++
					if pid, _ := sampleSplitEmu(x, temp, u, tc.S, true); pid != wid {
						planted++
					}
				}
			}
			if bad > 0 {
				t.Errorf("%d of %d sampled rows drew another token", bad, sampled)
			}
			if planted < sampled/2 {
				t.Errorf("walking the next part drew another token in %d of %d sampled rows; the test should catch it in most", planted, sampled)
			}
		})
	}
}
