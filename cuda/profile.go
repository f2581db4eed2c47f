package cuda

import (
	"fmt"
	"sort"
	"time"
	"unsafe"
)

// KernelTime is the GPU time of one kernel (or cuBLAS call) over a profiled window.
type KernelTime struct {
	Name  string        `json:"name"`
	Calls int           `json:"calls"`
	Total time.Duration `json:"total_ns"`
}

// Profile is what StopProfile returns: per-kernel GPU time, their sum, and the span from the
// first op's start to the last op's end (sum / span says how busy the GPU was; the rest is
// waiting for the host).
type Profile struct {
	Kernels []KernelTime  `json:"kernels"`
	Sum     time.Duration `json:"sum_ns"`
	Span    time.Duration `json:"span_ns"`
	Ops     int           `json:"ops"`
}

type profiler struct {
	max     int
	free    []uintptr // created events
	entries []profEntry
}

type profEntry struct {
	name       string
	start, end uintptr
}

// StartProfile times every op enqueued from now on with a pair of CUDA events, up to maxOps.
// Events cost host time: profile to see where GPU time goes, not to measure throughput.
func (b *Backend) StartProfile(maxOps int) error {
	return b.opErr(desc("StartProfile"), func() error {
		p := &profiler{max: maxOps}
		for len(b.events) < 2*maxOps { // events are kept for the next profile
			var ev uintptr
			if err := b.drv.check("cuEventCreate", call(b.drv.eventCreate, uintptr(unsafe.Pointer(&ev)), 0)); err != nil {
				return err
			}
			b.events = append(b.events, ev)
		}
		p.free = b.events
		b.prof = p
		return nil
	})
}

// profStart records the start event of an op; profEnd its end. No-ops unless profiling.
func (b *Backend) profStart() uintptr {
	p := b.prof
	if p == nil || len(p.entries) >= p.max {
		return 0
	}
	ev := p.free[2*len(p.entries)]
	call(b.drv.eventRecord, ev, b.strm)
	return ev
}

func (b *Backend) profEnd(name string, start uintptr) {
	if start == 0 {
		return
	}
	p := b.prof
	ev := p.free[2*len(p.entries)+1]
	call(b.drv.eventRecord, ev, b.strm)
	p.entries = append(p.entries, profEntry{name, start, ev})
}

// StopProfile waits for the stream and returns the per-kernel times, largest first.
func (b *Backend) StopProfile() (*Profile, error) {
	var res *Profile // nil unless the op succeeds
	err := b.opErr(desc("StopProfile"), func() error {
		p := b.prof
		b.prof = nil
		if p == nil {
			return fmt.Errorf("cuda: StopProfile without StartProfile")
		}
		if err := b.drv.check("cuStreamSynchronize", call(b.drv.streamSynchronize, b.strm)); err != nil {
			return err
		}
		elapsed := func(a, c uintptr) time.Duration {
			var ms float32
			if call(b.drv.eventElapsedTime, uintptr(unsafe.Pointer(&ms)), a, c) != 0 {
				return 0
			}
			return time.Duration(float64(ms) * 1e6)
		}
		byName := map[string]*KernelTime{}
		out := &Profile{Ops: len(p.entries)}
		for _, e := range p.entries {
			k := byName[e.name]
			if k == nil {
				k = &KernelTime{Name: e.name}
				byName[e.name] = k
			}
			d := elapsed(e.start, e.end)
			k.Calls++
			k.Total += d
			out.Sum += d
		}
		if n := len(p.entries); n > 0 {
			out.Span = elapsed(p.entries[0].start, p.entries[n-1].end)
		}
		for _, k := range byName {
			out.Kernels = append(out.Kernels, *k)
		}
		sort.Slice(out.Kernels, func(i, j int) bool { return out.Kernels[i].Total > out.Kernels[j].Total })
		res = out
		return nil
	})
	return res, err
}
