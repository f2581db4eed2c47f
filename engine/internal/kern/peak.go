package kern

import (
	"runtime"
	"sync"
	"time"
)

// PeakFMA measures the fp32 FMA peak in GFLOP/s (an FMA counts 2 flops) on all cores with the
// active ISA: one goroutine locked to its OS thread per GOMAXPROCS, each running a loop of
// independent register FMAs, for about d.
func PeakFMA(d time.Duration) float64 {
	p := runtime.GOMAXPROCS(0)
	im := cur
	const iters = 1 << 16
	im.fmaLoop(iters) // warm up
	var mu sync.Mutex
	var total float64
	var wg sync.WaitGroup
	start := make(chan struct{})
	for t := 0; t < p; t++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			runtime.LockOSThread()
			defer runtime.UnlockOSThread()
			<-start
			var flops float64
			t0 := time.Now()
			var el time.Duration
			for el < d {
				flops += float64(im.fmaLoop(iters)) * iters
				el = time.Since(t0)
			}
			mu.Lock()
			total += flops / el.Seconds()
			mu.Unlock()
		}()
	}
	close(start)
	wg.Wait()
	return total / 1e9
}

// TriadBandwidth measures DRAM bandwidth in GB/s with the STREAM triad a[i] = b[i] + s·c[i] on
// three 128 MiB arrays split across all cores, counting 12 bytes per element like STREAM
// (ordinary stores), best of repeated passes over about d.
func TriadBandwidth(d time.Duration) float64 {
	const n = 32 << 20 // floats per array: 128 MiB
	a := make([]float32, n)
	b := make([]float32, n)
	c := make([]float32, n)
	im := cur
	Parallel(n, 1<<16, func(lo, hi int) { // first touch, all cores
		for i := lo; i < hi; i++ {
			a[i], b[i], c[i] = 0, 1, 2
		}
	})
	best := 0.0
	t0 := time.Now()
	for pass := 0; pass < 2 || time.Since(t0) < d; pass++ {
		t := time.Now()
		Parallel(n, 1<<16, func(lo, hi int) {
			im.triad(a[lo:hi], b[lo:hi], c[lo:hi], 3)
		})
		if bw := 12 * n / time.Since(t).Seconds() / 1e9; bw > best {
			best = bw
		}
	}
	runtime.KeepAlive(a)
	return best
}
