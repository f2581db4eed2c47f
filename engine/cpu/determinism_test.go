package cpu

import (
	"math"
	"math/rand/v2"
	"runtime"
	"testing"

	"github.com/prolong-rl/prolong/engine"
)

// TestCPUReductionsDeterministic: RMSNormBackward's weight gradient and SumSquares add their
// per-thread partials in a fixed order, so repeated runs give the same bits whichever thread
// finishes first (they used to add in finish order: the qk-norm gradients of a training run
// changed between identical runs under load).
func TestCPUReductionsDeterministic(t *testing.T) {
	if runtime.GOMAXPROCS(0) < 2 {
		t.Skip("one thread: nothing to race")
	}
	c := New()
	rng := rand.New(rand.NewPCG(3, 4))
	const groups, n = 4096, 64
	data := func(k int) []float32 {
		d := make([]float32, k)
		for i := range d {
			d[i] = float32(rng.NormFloat64())
		}
		return d
	}
	// dw starts non-zero, as when micro-batches accumulate: (d + p0) + p1 and (d + p1) + p0
	// differ in the last bits, so even two threads' partials show the order.
	xh, dyh, wh, dwh := data(groups*n), data(groups*n), data(n), data(n)
	var firstDW []float32
	var firstSS float64
	for it := 0; it < 100; it++ {
		x, _ := c.Upload(engine.F32, xh, false, groups, n)
		dy, _ := c.Upload(engine.F32, dyh, false, groups, n)
		w, _ := c.Upload(engine.F32, wh, false, n)
		dx := c.Alloc(groups, n)
		dw, _ := c.UploadParam(dwh, n)
		c.RMSNormBackward(dx, dw, dy, x, w, 1e-6)
		got := make([]float32, n)
		if err := c.Download(dw, got); err != nil {
			t.Fatal(err)
		}
		ss, err := c.SumSquares(x)
		if err != nil {
			t.Fatal(err)
		}
		if it == 0 {
			firstDW, firstSS = got, ss
			continue
		}
		for i := range got {
			if math.Float32bits(got[i]) != math.Float32bits(firstDW[i]) {
				t.Fatalf("run %d: dw[%d] = %g, first run %g", it, i, got[i], firstDW[i])
			}
		}
		if math.Float64bits(ss) != math.Float64bits(firstSS) {
			t.Fatalf("run %d: SumSquares %g, first run %g", it, ss, firstSS)
		}
	}
}
