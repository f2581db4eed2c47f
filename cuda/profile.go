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

// Profile is what StopProfile returns. Each op is timed by a CUDA event recorded right before
// its launch and one right after. Where the GPU had been idle when the op's start event was
// reached (it waited for the host), the start fires at once and the op's span also holds the
// host's time to launch it (measured on the host clock): that part is moved from the op to
// HostGap. So Sum is the GPU's busy time by kernel, HostGap the time it waited for the host
// between ops, and Sum + HostGap = Span (up to the events' 0.5 µs resolution).
type Profile struct {
	Kernels []KernelTime  `json:"kernels"`
	Sum     time.Duration `json:"sum_ns"`
	HostGap time.Duration `json:"host_gap_ns"`
	Span    time.Duration `json:"span_ns"`
	Ops     int           `json:"ops"`
	// StarvedOps counts the ops the GPU waited for; LaunchHost is the host time spent in the
	// launch calls (cuLaunchKernel, cuBLAS) of all ops.
	StarvedOps int           `json:"starved_ops"`
	LaunchHost time.Duration `json:"launch_host_ns"`
}

// profiler times ops with a ring of event pairs: when the ring is full, the stream is
// synchronised and the window folded into the totals, so a profile can cover any number of ops
// (one synchronisation per window; the time across it is in no figure).
type profiler struct {
	max     int
	events  []uintptr // 2*max created events
	entries []profEntry
	out     Profile
	byName  map[string]*KernelTime
}

type profEntry struct {
	name       string
	start, end uintptr
	host       time.Duration // host time of the launch call
}

// hostClock is the host's clock for launch times (tests script it).
var hostClock = time.Now

// StartProfile times every op enqueued from now on with a pair of CUDA events, window by window
// of windowOps ops. Events cost host time: profile to see where GPU time goes, not to measure
// throughput.
func (b *Backend) StartProfile(windowOps int) error {
	return b.opErr(desc("StartProfile"), func() error {
		if windowOps < 1 {
			return fmt.Errorf("cuda: StartProfile: window of %d ops", windowOps)
		}
		// From an idle GPU: the first op of every window then waits for the host (profFold).
		if err := b.drv.check("cuStreamSynchronize", call(b.drv.streamSynchronize, b.strm)); err != nil {
			return err
		}
		p := &profiler{max: windowOps, byName: map[string]*KernelTime{}}
		for len(b.events) < 2*windowOps { // events are kept for the next profile
			var ev uintptr
			if err := b.drv.check("cuEventCreate", call(b.drv.eventCreate, uintptr(unsafe.Pointer(&ev)), 0)); err != nil {
				return err
			}
			b.events = append(b.events, ev)
		}
		p.events = b.events
		b.prof = p
		return nil
	})
}

// profStart records the start event of an op and returns it with the host time; profEnd
// records its end. No-ops unless profiling.
func (b *Backend) profStart() (uintptr, time.Time) {
	p := b.prof
	if p == nil {
		return 0, time.Time{}
	}
	if len(p.entries) == p.max {
		if err := b.profFold(); err != nil {
			b.fail(err)
			return 0, time.Time{}
		}
	}
	ev := p.events[2*len(p.entries)]
	call(b.drv.eventRecord, ev, b.strm)
	return ev, hostClock()
}

func (b *Backend) profEnd(name string, start uintptr, t0 time.Time) {
	if start == 0 {
		return
	}
	host := hostClock().Sub(t0)
	p := b.prof
	ev := p.events[2*len(p.entries)+1]
	call(b.drv.eventRecord, ev, b.strm)
	p.entries = append(p.entries, profEntry{name, start, ev, host})
}

// profFold waits for the stream and adds the window's ops to the totals.
func (b *Backend) profFold() error {
	p := b.prof
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
	const resolution = 500 * time.Nanosecond // cuEventElapsedTime's
	for i, e := range p.entries {
		d, gap := elapsed(e.start, e.end), time.Duration(0)
		if i > 0 {
			gap = max(0, elapsed(p.entries[i-1].end, e.start))
		}
		// The GPU waited for this op (a window starts on an idle GPU): its span holds the
		// launch call.
		if i == 0 || gap > resolution {
			moved := min(e.host, d)
			d -= moved
			gap += moved
			p.out.StarvedOps++
		}
		k := p.byName[e.name]
		if k == nil {
			k = &KernelTime{Name: e.name}
			p.byName[e.name] = k
		}
		k.Calls++
		k.Total += d
		p.out.Sum += d
		p.out.HostGap += gap
		p.out.LaunchHost += e.host
	}
	if n := len(p.entries); n > 0 {
		p.out.Span += elapsed(p.entries[0].start, p.entries[n-1].end)
	}
	p.out.Ops += len(p.entries)
	p.entries = p.entries[:0]
	return nil
}

// StopProfile waits for the stream and returns the per-kernel times, largest first.
func (b *Backend) StopProfile() (*Profile, error) {
	var res *Profile // nil unless the op succeeds
	err := b.opErr(desc("StopProfile"), func() error {
		p := b.prof
		if p == nil {
			return fmt.Errorf("cuda: StopProfile without StartProfile")
		}
		err := b.profFold()
		b.prof = nil
		if err != nil {
			return err
		}
		out := p.out
		for _, k := range p.byName {
			out.Kernels = append(out.Kernels, *k)
		}
		sort.Slice(out.Kernels, func(i, j int) bool {
			if out.Kernels[i].Total != out.Kernels[j].Total {
				return out.Kernels[i].Total > out.Kernels[j].Total
			}
			return out.Kernels[i].Name < out.Kernels[j].Name
		})
		res = &out
		return nil
	})
	return res, err
}
