package dist

import (
	"bytes"
	"errors"
	"net"
	"strings"
	"sync"
	"testing"
	"time"
)

// freePort finds a port no one listens on (a small race with other processes is accepted).
func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// share runs ShareFromRank0 on ranks 0..size-1 as goroutines; rank r's Launch comes from at(r),
// and rank 0 starts after delay0 (the others must retry until it listens).
func share(t *testing.T, size int, delay0, timeout time.Duration, at func(r int) (Launch, string)) ([][]byte, []error) {
	t.Helper()
	port := freePort(t)
	id := bytes.Repeat([]byte{0xA5, 0x5A}, 64)
	out, errs := make([][]byte, size), make([]error, size)
	var wg sync.WaitGroup
	for r := range size {
		wg.Go(func() {
			l, tag := at(r)
			l.MasterAddr, l.MasterPort = "127.0.0.1", port
			blob := []byte(nil)
			if r == 0 {
				time.Sleep(delay0)
				blob = id
			}
			out[r], errs[r] = ShareFromRank0(l, tag, blob, timeout)
		})
	}
	wg.Wait()
	return out, errs
}

func TestRendezvousSharesRank0sID(t *testing.T) {
	const size = 4
	out, errs := share(t, size, 300*time.Millisecond, 20*time.Second, func(r int) (Launch, string) {
		return Launch{Launcher: LaunchTorchrun, Rank: r, Size: size}, ncclIDTag
	})
	noErr(t, errs)
	for r := range size {
		if !bytes.Equal(out[r], out[0]) || len(out[r]) != 128 {
			t.Fatalf("rank %d got %x, want rank 0's 128 bytes %x", r, out[r], out[0])
		}
	}
}

func TestRendezvousErrors(t *testing.T) {
	tests := []struct {
		name     string
		size     int
		at       func(r int) (Launch, string)
		rank     int    // whose error is checked
		want     string // substring
		timeoutO bool   // the error wraps ErrTimeout
	}{
		{"a rank told another world size", 2, func(r int) (Launch, string) {
			return Launch{Rank: r, Size: 2 + r}, ncclIDTag
		}, 1, "rank 0 was told the world has 2 ranks, rank 1 was told 3: check WORLD_SIZE", false},
		{"another tag", 2, func(r int) (Launch, string) {
			if r == 1 {
				return Launch{Rank: r, Size: 2}, "other"
			}
			return Launch{Rank: r, Size: 2}, ncclIDTag
		}, 1, "rank 0 serves the nccl-unique-id, not the other", false},
		{"two processes claim one rank", 3, func(r int) (Launch, string) {
			return Launch{Rank: min(r, 1), Size: 3}, ncclIDTag
		}, 0, "ranks [2] never asked", true},
		{"a rank never comes: rank 0 names it", 3, func(r int) (Launch, string) {
			if r == 2 {
				return Launch{Rank: r, Size: 1}, ncclIDTag // a world of one: never dials
			}
			return Launch{Rank: r, Size: 3}, ncclIDTag
		}, 0, "ranks [2] never asked for the nccl-unique-id", true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, errs := share(t, tc.size, 0, 1500*time.Millisecond, tc.at)
			err := errs[tc.rank]
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("rank %d: error %v, want one containing %q (all: %v)", tc.rank, err, tc.want, errs)
			}
			if tc.timeoutO != errors.Is(err, ErrTimeout) {
				t.Fatalf("rank %d: errors.Is(ErrTimeout) = %v, want %v", tc.rank, !tc.timeoutO, tc.timeoutO)
			}
		})
	}
}

func TestRendezvousRank0NeverComes(t *testing.T) {
	port := freePort(t)
	_, err := ShareFromRank0(Launch{Rank: 1, Size: 2, MasterAddr: "127.0.0.1", MasterPort: port}, ncclIDTag, nil, 500*time.Millisecond)
	if !errors.Is(err, ErrTimeout) || !strings.Contains(err.Error(), "rank 0 did not answer at MASTER_ADDR:MASTER_PORT = 127.0.0.1:") {
		t.Fatalf("got %v, want ErrTimeout naming MASTER_ADDR:MASTER_PORT", err)
	}
}

func TestRendezvousNeedsMaster(t *testing.T) {
	_, err := ShareFromRank0(Launch{Rank: 1, Size: 2}, ncclIDTag, nil, time.Second)
	if err == nil || !strings.Contains(err.Error(), "needs MASTER_ADDR and MASTER_PORT") {
		t.Fatalf("got %v", err)
	}
}
