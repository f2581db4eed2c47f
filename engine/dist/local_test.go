package dist

import (
	"errors"
	"math"
	"strings"
	"sync"
	"testing"
	"time"
)

// together runs f on every rank of an in-process group and returns each rank's error.
func together(t *testing.T, n int, timeout time.Duration, f func(c Comm) error) []error {
	t.Helper()
	cs := NewLocalGroup(n, Options{Timeout: timeout})
	errs := make([]error, n)
	var wg sync.WaitGroup
	for r, c := range cs {
		wg.Go(func() { errs[r] = f(c) })
	}
	wg.Wait()
	return errs
}

func noErr(t *testing.T, errs []error) {
	t.Helper()
	for r, err := range errs {
		if err != nil {
			t.Fatalf("rank %d: %v", r, err)
		}
	}
}

func bf(v float32) uint16 { return uint16(math.Float32bits(v) >> 16) } // exact bf16 values only

// Each collective against values worked by hand.
func TestLocalCollectives(t *testing.T) {
	tests := []struct {
		name string
		n    int
		in   func(r int) (send, recv Buffer) // recv nil: in place
		op   func(c Comm, send, recv Buffer) error
		want [][]float32 // per rank; bf16 results are compared as the fp32 they widen to
	}{
		{"all-reduce fp32, 2 ranks", 2,
			func(r int) (Buffer, Buffer) {
				return HostF32{1 + 9*float32(r), 2 + 18*float32(r), 3 + 27*float32(r)}, nil
			},
			func(c Comm, s, _ Buffer) error { return c.AllReduce(s) },
			[][]float32{{11, 22, 33}, {11, 22, 33}}},
		// 1 + 2^-8 lies halfway between bf16 1 and 1+2^-7: ties to even gives 1.
		// (1+2^-7) + 2^-8 lies halfway between 1+2^-7 and 1+2^-6: ties to even gives 1+2^-6.
		// 1+1+1 = 3 exactly. The fp32 sum is rounded once, not after each addition.
		{"all-reduce bf16 rounds the fp32 sum to nearest even, 2 ranks", 2,
			func(r int) (Buffer, Buffer) {
				if r == 0 {
					return HostBF16{bf(1), bf(1 + 1.0/128), bf(1)}, nil
				}
				return HostBF16{bf(1.0 / 256), bf(1.0 / 256), bf(2)}, nil
			},
			func(c Comm, s, _ Buffer) error { return c.AllReduce(s) },
			[][]float32{{1, 1 + 1.0/64, 3}, {1, 1 + 1.0/64, 3}}},
		// Three ranks: 1 + 2^-8 + 2^-7 = 1 + 3·2^-8, halfway between 1+2^-7 (odd mantissa) and
		// 1+2^-6 (even): 1+2^-6. Adding in bf16 step by step would give 1 (tie to even), then 1+2^-7.
		{"all-reduce bf16, 3 ranks", 3,
			func(r int) (Buffer, Buffer) { return HostBF16{[]uint16{bf(1), bf(1.0 / 256), bf(1.0 / 128)}[r]}, nil },
			func(c Comm, s, _ Buffer) error { return c.AllReduce(s) },
			[][]float32{{1 + 1.0/64}, {1 + 1.0/64}, {1 + 1.0/64}}},
		{"reduce-scatter fp32, 2 ranks", 2,
			func(r int) (Buffer, Buffer) {
				k := float32(1 + 9*r)
				return HostF32{1 * k, 2 * k, 3 * k, 4 * k}, make(HostF32, 2)
			},
			func(c Comm, s, rv Buffer) error { return c.ReduceScatter(s, rv) },
			[][]float32{{11, 22}, {33, 44}}},
		{"reduce-scatter bf16, 3 ranks", 3,
			func(r int) (Buffer, Buffer) {
				return HostBF16{bf(float32(r)), bf(1), bf(2), bf(4), bf(0.5), bf(-1)}, make(HostBF16, 2)
			},
			func(c Comm, s, rv Buffer) error { return c.ReduceScatter(s, rv) },
			[][]float32{{3, 3}, {6, 12}, {1.5, -3}}},
		{"all-gather fp32, 3 ranks", 3,
			func(r int) (Buffer, Buffer) { return HostF32{float32(r), float32(10 * r)}, make(HostF32, 6) },
			func(c Comm, s, rv Buffer) error { return c.AllGather(s, rv) },
			[][]float32{{0, 0, 1, 10, 2, 20}, {0, 0, 1, 10, 2, 20}, {0, 0, 1, 10, 2, 20}}},
		{"all-gather bf16, 2 ranks", 2,
			func(r int) (Buffer, Buffer) { return HostBF16{bf(float32(r) + 0.5)}, make(HostBF16, 2) },
			func(c Comm, s, rv Buffer) error { return c.AllGather(s, rv) },
			[][]float32{{0.5, 1.5}, {0.5, 1.5}}},
		{"broadcast from rank 1, 3 ranks", 3,
			func(r int) (Buffer, Buffer) { return HostF32{float32(r), -float32(r)}, nil },
			func(c Comm, s, _ Buffer) error { return c.Broadcast(s, 1) },
			[][]float32{{1, -1}, {1, -1}, {1, -1}}},
		{"size 1 all-reduce is the identity", 1,
			func(r int) (Buffer, Buffer) { return HostF32{7, -2.5}, nil },
			func(c Comm, s, _ Buffer) error { return c.AllReduce(s) },
			[][]float32{{7, -2.5}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := make([]Buffer, tc.n)
			noErr(t, together(t, tc.n, time.Minute, func(c Comm) error {
				s, rv := tc.in(c.Rank())
				if rv == nil {
					rv = s
				}
				got[c.Rank()] = rv
				return tc.op(c, s, rv)
			}))
			for r := range tc.n {
				g := make([]float32, got[r].Len())
				load(g, got[r])
				if len(g) != len(tc.want[r]) {
					t.Fatalf("rank %d: %d elements, want %d", r, len(g), len(tc.want[r]))
				}
				for i := range g {
					if g[i] != tc.want[r][i] {
						t.Errorf("rank %d element %d: got %v, want %v", r, i, g[i], tc.want[r][i])
					}
				}
			}
		})
	}
}

func TestLocalBarrierWaitsForAll(t *testing.T) {
	var mu sync.Mutex
	arrived := 0
	noErr(t, together(t, 3, time.Minute, func(c Comm) error {
		time.Sleep(time.Duration(c.Rank()) * 20 * time.Millisecond)
		mu.Lock()
		arrived++
		mu.Unlock()
		if err := c.Barrier(); err != nil {
			return err
		}
		mu.Lock()
		defer mu.Unlock()
		if arrived != 3 {
			return errors.New("left the barrier before every rank arrived")
		}
		return nil
	}))
}

func TestLocalErrors(t *testing.T) {
	tests := []struct {
		name string
		n    int
		f    func(c Comm) error
		want string // in rank 0's error
	}{
		{"uneven reduce-scatter", 2, func(c Comm) error { return c.ReduceScatter(make(HostF32, 5), make(HostF32, 2)) }, "even split only"},
		{"all-gather recv too small", 2, func(c Comm) error { return c.AllGather(make(HostF32, 3), make(HostF32, 5)) }, "want size 2 × send's 3"},
		{"mixed types", 2, func(c Comm) error { return c.AllGather(make(HostF32, 1), make(HostBF16, 2)) }, "send is fp32, recv is bf16"},
		{"root out of range", 2, func(c Comm) error { return c.Broadcast(make(HostF32, 1), 2) }, "root 2 outside ranks 0..1"},
		{"ranks call different collectives", 2, func(c Comm) error {
			if c.Rank() == 0 {
				return c.AllReduce(make(HostF32, 1))
			}
			return c.Barrier()
		}, "rank 0 called all-reduce, rank 1 called barrier"},
		{"ranks pass different lengths", 2, func(c Comm) error { return c.AllReduce(make(HostF32, 1+c.Rank())) }, "rank 0 passed fp32×1, rank 1 passed fp32×2"},
		{"rank 1 never joins: rank 0 times out", 2, func(c Comm) error {
			if c.Rank() == 1 {
				return nil
			}
			return c.AllReduce(make(HostF32, 1))
		}, "all-reduce on rank 0: dist: collective timed out after"},
		{"rank 1 aborts: rank 0's wait ends", 2, func(c Comm) error {
			if c.Rank() == 1 {
				time.Sleep(20 * time.Millisecond)
				c.Abort("reward server unreachable")
				return nil
			}
			return c.Barrier()
		}, "communicator aborted (rank 1: reward server unreachable)"},
		{"closed", 1, func(c Comm) error { c.Close(); return c.Barrier() }, "communicator closed"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			errs := together(t, tc.n, 200*time.Millisecond, tc.f)
			if errs[0] == nil || !strings.Contains(errs[0].Error(), tc.want) {
				t.Fatalf("rank 0's error %v, want one containing %q", errs[0], tc.want)
			}
		})
	}
}

func TestLocalTimeoutIsErrTimeout(t *testing.T) {
	c := NewLocalGroup(2, Options{Timeout: 10 * time.Millisecond})[0]
	err := c.AllReduce(make(HostF32, 1))
	if !errors.Is(err, ErrTimeout) || !strings.Contains(err.Error(), "1 of 2 ranks joined") {
		t.Fatalf("got %v, want ErrTimeout saying 1 of 2 ranks joined", err)
	}
}

// TestTimeoutDescribe: a timed-out collective's error carries what Options.Describe says (the
// trainer names the rank that is behind and the last step saved there).
func TestTimeoutDescribe(t *testing.T) {
	c := NewLocalGroup(2, Options{Timeout: 10 * time.Millisecond, Describe: func() string { return "rank 1 is gone; last step saved: 4" }})[0]
	err := c.Barrier()
	if !errors.Is(err, ErrTimeout) || !strings.HasSuffix(err.Error(), "; rank 1 is gone; last step saved: 4") {
		t.Fatalf("got %v, want ErrTimeout ending with the description", err)
	}
}

type fakeDev struct{ HostF32 }

func (fakeDev) DevicePtr() uintptr { return 0 }

func TestLocalRejectsDeviceBuffers(t *testing.T) {
	err := NewLocal().AllReduce(fakeDev{make(HostF32, 1)})
	if err == nil || !strings.Contains(err.Error(), "host buffers") {
		t.Fatalf("got %v, want an error saying the local backend takes host buffers", err)
	}
}
