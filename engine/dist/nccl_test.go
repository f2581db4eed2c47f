package dist

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
	"unsafe"

	"github.com/ebitengine/purego"
)

// hostDev is a Device whose "device memory" is host memory: enough to drive the stand-in NCCL.
type hostDev struct{ scratch []float32 }

func (*hostDev) Ordinal() int            { return 0 }
func (*hostDev) Stream() uintptr         { return 0xabc }
func (*hostDev) Do(f func() error) error { return f() }
func (*hostDev) Synchronize() error      { return nil }
func (d *hostDev) Scratch(int) (uintptr, error) {
	return uintptr(unsafe.Pointer(&d.scratch[0])), nil
}

type devF32 struct{ HostF32 }

func (b devF32) DevicePtr() uintptr { return uintptr(unsafe.Pointer(&b.HostF32[0])) }

type devBF16 struct{ HostBF16 }

func (b devBF16) DevicePtr() uintptr { return uintptr(unsafe.Pointer(&b.HostBF16[0])) }

// fakeNCCL builds testdata/fakenccl.c into a shared library with gcc.
func fakeNCCL(t *testing.T) string {
	t.Helper()
	gcc, err := exec.LookPath("gcc")
	if err != nil {
		if os.Getenv("PROLONG_REQUIRE_MPI") == "1" {
			t.Fatal("gcc not found: it builds the NCCL stand-in (apt-get install gcc); PROLONG_REQUIRE_MPI=1 makes this a failure")
		}
		t.Skip("gcc not found: it builds the NCCL stand-in (apt-get install gcc)")
	}
	so := filepath.Join(t.TempDir(), "libnccl.so.2")
	if out, err := exec.Command(gcc, "-shared", "-fPIC", "-O1", "-o", so, "testdata/fakenccl.c").CombinedOutput(); err != nil {
		t.Fatalf("gcc: %v\n%s", err, out)
	}
	return so
}

// The nccl backend's calls land in the library with the arguments nccl.h declares: the unique
// id by value, counts per rank, NCCL's type codes (fp32 7, bf16 9), ncclSum 0, the stream.
func TestNCCLCallsMatchNCCLHeader(t *testing.T) {
	so := fakeNCCL(t)
	t.Setenv("PROLONG_NCCL", so)
	dev := &hostDev{scratch: make([]float32, 1)}
	c, err := NewNCCL(Launch{Launcher: LaunchNone, Size: 1}, dev, nil, Options{})
	if err != nil {
		t.Fatal(err)
	}
	h, err := purego.Dlopen(so, purego.RTLD_NOW)
	if err != nil {
		t.Fatal(err)
	}
	lastFn, err := purego.Dlsym(h, "fake_last")
	if err != nil {
		t.Fatal(err)
	}
	last := func() [8]int64 {
		var out [8]int64
		ccall(lastFn, uintptr(unsafe.Pointer(&out[0])))
		return out
	}
	// The id ncclGetUniqueId wrote (bytes 3i+1) reached ncclCommInitRank by value.
	if got, want := last(), [8]int64{1, 1, 0, int64(fakeIDSum()), 1, (127*3 + 1) & 0xff}; got != want {
		t.Fatalf("ncclCommInitRank saw (call, nranks, rank, id checksum, id[0], id[127]) = %v, want %v", got[:6], want[:6])
	}
	send, recv := devF32{HostF32{1, 2, 3}}, devF32{HostF32{0, 0, 0}}
	bsend := devBF16{HostBF16{0x3f80, 0x4000}}
	steps := []struct {
		name string
		do   func() error
		want [6]int64 // call, count, type, op/root, comm ok, stream
	}{
		{"all-reduce fp32", func() error { return c.AllReduce(send) }, [6]int64{2, 3, 7, 0, 1, 0xabc}},
		{"all-reduce bf16", func() error { return c.AllReduce(bsend) }, [6]int64{2, 2, 9, 0, 1, 0xabc}},
		{"reduce-scatter", func() error { return c.ReduceScatter(send, recv) }, [6]int64{3, 3, 7, 0, 1, 0xabc}},
		{"all-gather", func() error { return c.AllGather(send, recv) }, [6]int64{4, 3, 7, -1, 1, 0xabc}},
		{"broadcast", func() error { return c.Broadcast(bsend, 0) }, [6]int64{5, 2, 9, 0, 1, 0xabc}},
		{"barrier", func() error { return c.Barrier() }, [6]int64{2, 1, 7, 0, 1, 0xabc}},
	}
	for _, s := range steps {
		if err := s.do(); err != nil {
			t.Fatalf("%s: %v", s.name, err)
		}
		if got := last(); [6]int64(got[:6]) != s.want {
			t.Errorf("%s: the library saw %v, want %v", s.name, got[:6], s.want)
		}
	}
	if recv.HostF32[2] != 3 {
		t.Errorf("all-gather of one rank: recv %v, want send's values", recv.HostF32)
	}
	if err := c.AllReduce(HostF32{1}); err == nil || !strings.Contains(err.Error(), "takes device buffers") {
		t.Errorf("a host buffer: got %v, want an error saying nccl takes device buffers", err)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if got := last(); got[0] != 7 || got[1] != 1 {
		t.Errorf("Close: the library saw %v, want ncclCommDestroy of the communicator", got[:2])
	}
}

// fakeIDSum is the stand-in's checksum of the id its ncclGetUniqueId writes (bytes 3i+1).
func fakeIDSum() uint64 {
	var sum uint64
	for i := range 128 {
		sum = sum*31 + uint64(byte(i*3+1))
	}
	return sum
}

// TestNCCLUniqueIDOverMPI: under mpirun, rank 0's unique id reaches every rank's
// ncclCommInitRank over MPI (ranks 1 and 2 never call ncclGetUniqueId, so without the broadcast
// their id would be zeros).
func TestNCCLUniqueIDOverMPI(t *testing.T) {
	path := need(t, "mpirun", "PROLONG_REQUIRE_MPI", "apt-get install openmpi-bin libopenmpi-dev")
	so := fakeNCCL(t)
	bin := buildMPITest(t)
	t.Setenv("PROLONG_NCCL", so)
	code, out, _ := runJob(t, 3*time.Minute, path, "--allow-run-as-root", "--oversubscribe", "-x", "PROLONG_NCCL", "-np", "3", bin, "-mode", "ncclinit")
	if code != 0 {
		t.Fatalf("exit %d:\n%s", code, out)
	}
	for r := range 3 {
		want := fmt.Sprintf("rank %d of 3: ncclCommInitRank(nranks 3, rank %d), id checksum %d\n", r, r, fakeIDSum())
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
}

// TestNCCLUniqueIDOverTCP: without MPI (torchrun-style variables), rank 0's unique id reaches
// every rank's ncclCommInitRank over the TCP rendezvous; rank 0 starts last.
func TestNCCLUniqueIDOverTCP(t *testing.T) {
	so := fakeNCCL(t)
	bin := buildMPITest(t)
	port := freePort(t)
	outs, errs := make([][]byte, 3), make([]error, 3)
	var wg sync.WaitGroup
	for r := 2; r >= 0; r-- {
		cmd := exec.Command(bin, "-mode", "ncclinit", "-timeout", "60s")
		cmd.Env = append(os.Environ(), "PROLONG_NCCL="+so, fmt.Sprintf("RANK=%d", r), "WORLD_SIZE=3",
			fmt.Sprintf("LOCAL_RANK=%d", r), "MASTER_ADDR=127.0.0.1", fmt.Sprintf("MASTER_PORT=%d", port))
		wg.Go(func() { outs[r], errs[r] = cmd.CombinedOutput() })
		time.Sleep(50 * time.Millisecond)
	}
	wg.Wait()
	for r := range 3 {
		want := fmt.Sprintf("rank %d of 3: ncclCommInitRank(nranks 3, rank %d), id checksum %d\n", r, r, fakeIDSum())
		if errs[r] != nil || string(outs[r]) != want {
			t.Errorf("rank %d: %v, output %q, want %q", r, errs[r], outs[r], want)
		}
	}
}

func TestNCCLMissingLibraryNamesTheVariable(t *testing.T) {
	t.Setenv("PROLONG_NCCL", "/nonexistent/libnccl.so.2")
	_, err := NewNCCL(Launch{Size: 1}, &hostDev{}, nil, Options{})
	if err == nil || !strings.Contains(err.Error(), "PROLONG_NCCL=/nonexistent/libnccl.so.2") {
		t.Fatalf("got %v, want an error naming PROLONG_NCCL", err)
	}
}
