package cuda

import (
	"testing"
	"time"
)

// fakeTimeline simulates the host and the GPU for the profiler's test: every C call costs the
// host 1 µs, a launch 4 µs; a kernel starts when its launch call has returned and the GPU is
// free, and runs its scripted duration; an event completes when the host has recorded it and
// the GPU has finished the work before it.
type fakeTimeline struct {
	host, gpuFree time.Duration
	kernels       []time.Duration // durations of the next launches, in order
	events        map[uintptr]time.Duration
	next          uintptr
}

func (f *fakeTimeline) clock() time.Time { return time.Unix(0, 0).Add(f.host) }

func (f *fakeTimeline) call(name string, a []uintptr) (uintptr, bool) {
	f.host += time.Microsecond
	switch name {
	case "eventCreate":
		f.next++
		*at[uintptr](a[0]) = 0xe000 + f.next
	case "eventRecord":
		f.events[a[0]] = max(f.host, f.gpuFree)
	case "eventElapsedTime":
		*at[float32](a[0]) = float32(float64(f.events[a[2]]-f.events[a[1]]) / 1e6)
	case "launchKernel":
		f.host += 3 * time.Microsecond
		k := f.kernels[0]
		f.kernels = f.kernels[1:]
		f.gpuFree = max(f.host, f.gpuFree) + k
	case "streamSynchronize":
		f.host = max(f.host, f.gpuFree)
	default:
		return 0, false
	}
	return 0, true
}

// TestProfileHostGap: five ops, the host enqueuing faster than the GPU runs them except before
// the fourth, which the host delays by 100 µs. Every kernel's time is its scripted duration
// (the launch time the first and the fourth op's spans hold moves to the host gap), the gap is
// the GPU's idle time, and busy + gap = span. With a window of two ops (folds between) the
// kernel times are the same.
func TestProfileHostGap(t *testing.T) {
	for _, window := range []int{100, 2} {
		g := newFakeGPU(t, 90, 1<<30)
		b, err := Open(Options{})
		if err != nil {
			t.Fatal(err)
		}
		x := b.Alloc(1000)
		f := &fakeTimeline{events: map[uintptr]time.Duration{}}
		g.tl = f
		saved := hostClock
		hostClock = f.clock
		durs := []time.Duration{20 * time.Microsecond, 30 * time.Microsecond, 25 * time.Microsecond, 40 * time.Microsecond, 10 * time.Microsecond}
		f.kernels = append(f.kernels, durs...)
		if err := b.StartProfile(window); err != nil {
			t.Fatal(err)
		}
		for i := range durs {
			if i == 3 {
				f.host += 100 * time.Microsecond // the host is busy elsewhere: the GPU drains and waits
			}
			b.Scale(x, 1)
		}
		p, err := b.StopProfile()
		hostClock = saved
		if err != nil {
			t.Fatal(err)
		}
		var want time.Duration
		for _, d := range durs {
			want += d
		}
		near := func(a, b time.Duration) bool { return (a - b).Abs() < 50*time.Nanosecond } // float32 ms
		if p.Ops != 5 || len(p.Kernels) != 1 || p.Kernels[0].Name != "scale" || p.Kernels[0].Calls != 5 {
			t.Fatalf("window %d: profile %+v", window, p)
		}
		if !near(p.Sum, want) || !near(p.Kernels[0].Total, want) {
			t.Errorf("window %d: busy %v (scale %v), want the kernels' %v", window, p.Sum, p.Kernels[0].Total, want)
		}
		if p.LaunchHost != 5*4*time.Microsecond {
			t.Errorf("window %d: launch host time %v, want 5 × 4 µs", window, p.LaunchHost)
		}
		if window == 100 {
			// One window: op 1 starts the profile on an idle GPU (4 µs launch), op 4 comes after
			// the GPU drained: the GPU idled from op 3's end to op 4's start, launch included.
			if p.StarvedOps != 2 {
				t.Errorf("starved ops %d, want 2 (the first, and the one after the host's delay)", p.StarvedOps)
			}
			if !near(p.Sum+p.HostGap, p.Span) {
				t.Errorf("busy %v + gap %v != span %v", p.Sum, p.HostGap, p.Span)
			}
			if p.HostGap < 10*time.Microsecond {
				t.Errorf("host gap %v: the GPU waited for the delayed op", p.HostGap)
			}
			t.Logf("busy %v, host gap %v, span %v", p.Sum, p.HostGap, p.Span)
		}
	}
}
