package cuda

import (
	"errors"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
	"unsafe"

	"github.com/ebitengine/purego"
	"github.com/prolong-rl/prolong/engine"
	"github.com/prolong-rl/prolong/engine/dist"
)

// hostMem makes the fake GPU's device memory real host memory: cuMemAlloc hands out Go byte
// slices, and copies and memsets act on them. Then a library that works on host pointers (the
// stand-in NCCL of engine/dist/testdata) reads and writes what the backend uploaded. The stream
// gets a handle of its own (0x5a; the fake gives the context 0xc0), and cuCtxSetCurrent's
// argument is kept.
type hostMem struct {
	g      *fakeGPU
	blocks map[uintptr][]byte  // address -> memory
	fake   map[uintptr]uintptr // address -> the fake's own address (its accounting)
	ctx    uintptr             // the context the last cuCtxSetCurrent made current
}

const fakeStream = 0x5a

func withHostMemory(g *fakeGPU) *hostMem {
	m := &hostMem{g: g, blocks: map[uintptr][]byte{}, fake: map[uintptr]uintptr{}}
	callHook = m.call // newFakeGPU's cleanup resets it
	return m
}

// mem is the n bytes at device address p.
func (m *hostMem) mem(p, n uintptr) []byte {
	for base, b := range m.blocks {
		if p >= base && p+n <= base+uintptr(len(b)) {
			return b[p-base : p-base+n]
		}
	}
	panic("fake GPU: an access outside the allocated memory")
}

func (m *hostMem) call(fn uintptr, a []uintptr) uintptr {
	name := m.g.names[fn]
	if name == "memFree" {
		f := m.fake[a[0]]
		delete(m.blocks, a[0])
		delete(m.fake, a[0])
		return m.g.call(fn, []uintptr{f})
	}
	if r := m.g.call(fn, a); r != 0 {
		return r
	}
	switch name {
	case "memAlloc":
		b := make([]byte, a[1])
		p := uintptr(unsafe.Pointer(&b[0]))
		m.blocks[p], m.fake[p] = b, uintptr(*at[uint64](a[0]))
		*at[uint64](a[0]) = uint64(p)
	case "streamCreate":
		*at[uintptr](a[0]) = fakeStream
	case "ctxSetCurrent":
		m.ctx = a[0]
	case "memcpyHtoDAsync":
		copy(m.mem(a[0], a[2]), unsafe.Slice(at[byte](a[1]), a[2]))
	case "memcpyDtoHAsync":
		copy(unsafe.Slice(at[byte](a[0]), a[2]), m.mem(a[1], a[2]))
	case "memcpyDtoDAsync":
		copy(m.mem(a[0], a[2]), m.mem(a[1], a[2]))
	case "memsetD32Async":
		d := m.mem(a[0], 4*a[2])
		for i := range int(a[2]) {
			*(*uint32)(unsafe.Pointer(&d[4*i])) = uint32(a[1])
		}
	}
	return 0
}

// TestCommDevice: the cuda package registers "cuda" and "cuda-fp32" as dist devices; the
// device is the backend already open on the GPU (else the name's default options), its stream
// is the backend's, Do runs as an op (lock held, context current) and returns what an earlier
// op left pending, and Scratch keeps its memory.
func TestCommDevice(t *testing.T) {
	if got := dist.Devices(); !slices.Contains(got, "cuda") || !slices.Contains(got, "cuda-fp32") {
		t.Fatalf("dist.Devices() = %v, want cuda and cuda-fp32 among them", got)
	}
	g := newFakeGPU(t, 90, 1<<30)
	m := withHostMemory(g)

	// Which backend a device name gets: none open, one open (of other options), two open.
	bf, err := openCommDevice(Options{BF16Matmul: true}) // nothing open: opens the default
	if err != nil {
		t.Fatal(err)
	}
	bfBackend := bf.(*commDevice).b
	if !bfBackend.opts.BF16Matmul {
		t.Fatalf("cuda with no backend open got options %+v, want BF16Matmul", bfBackend.opts)
	}
	for _, tc := range []struct {
		name string
		want *Backend
	}{{"cuda", bfBackend}, {"cuda-fp32", bfBackend}} { // the only backend open on GPU 0
		d, err := dist.OpenCommDevice(tc.name, 0)
		if err != nil {
			t.Fatal(err)
		}
		if d.(*commDevice).b != tc.want {
			t.Errorf("%s with one backend open: got %+v", tc.name, d.(*commDevice).b.opts)
		}
	}
	exact, err := Open(Options{})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		want *Backend
	}{{"cuda", bfBackend}, {"cuda-fp32", exact}} { // two open: the name's own
		d, err := dist.OpenCommDevice(tc.name, 0)
		if err != nil {
			t.Fatal(err)
		}
		if d.(*commDevice).b != tc.want {
			t.Errorf("%s with two backends open: got %+v", tc.name, d.(*commDevice).b.opts)
		}
	}
	if _, err := dist.OpenCommDevice("cuda", 3); err == nil {
		t.Error("GPU 3 of a one-GPU machine opened")
	}

	d := bf
	b := bfBackend
	if d.Ordinal() != 0 || d.Stream() != fakeStream || d.Stream() != b.strm {
		t.Errorf("Ordinal, Stream = %d, %#x; want 0 and the backend's stream %#x", d.Ordinal(), d.Stream(), b.strm)
	}

	// Do: f runs with the backend's lock held (no op interleaves) and its context made current
	// just before, on this OS thread; f's error comes back.
	ran := false
	errF := errors.New("f failed")
	err = d.Do(func() error {
		ran = true
		if b.mu.TryLock() {
			b.mu.Unlock()
			t.Error("Do's f runs without the backend's lock")
		}
		if last := g.calls[len(g.calls)-1]; last != "ctxSetCurrent" || m.ctx != b.ctx {
			t.Errorf("the call before f was %s with context %#x, want cuCtxSetCurrent of %#x", last, m.ctx, b.ctx)
		}
		return errF
	})
	if !ran || !errors.Is(err, errF) {
		t.Errorf("Do: ran %v, error %v; want f run and its error", ran, err)
	}
	// An op that failed without returning an error (Alloc's memset) stops the next Do.
	g.fail("memsetD32Async", 1)
	b.Alloc(4)
	ran = false
	err = d.Do(func() error { ran = true; return nil })
	wantIn(t, err, "Alloc", "cuMemsetD32Async")
	if ran {
		t.Error("Do ran f after an op's error")
	}
	if err := d.Do(func() error { return nil }); err != nil {
		t.Errorf("Do after the error was returned: %v", err)
	}

	// Synchronize waits for the backend's stream, inside Do as well as outside.
	n := g.count("streamSynchronize")
	if err := d.Synchronize(); err != nil {
		t.Fatal(err)
	}
	if err := d.Do(d.Synchronize); err != nil {
		t.Fatal(err)
	}
	if got := g.count("streamSynchronize") - n; got != 2 {
		t.Errorf("two Synchronize calls made %d cuStreamSynchronize", got)
	}

	// Scratch: the same memory while it is big enough, a larger block when asked for more.
	p4, err := d.Scratch(4)
	if err != nil {
		t.Fatal(err)
	}
	inUse, _, _ := b.MemoryStats()
	if p, _ := d.Scratch(4); p != p4 {
		t.Errorf("Scratch(4) twice: %#x then %#x", p4, p)
	}
	big, err := d.Scratch(1 << 20)
	if err != nil {
		t.Fatal(err)
	}
	if p, _ := d.Scratch(8); p != big || big == p4 {
		t.Errorf("Scratch(4), (1 MiB), (8) = %#x, %#x, %#x: want a new block for 1 MiB, kept for 8 bytes", p4, big, p)
	}
	if after, _, _ := b.MemoryStats(); after != inUse-512+(1<<20) {
		t.Errorf("in use %d bytes after growing the scratch from 512 B to 1 MiB, want %d (the small block given back)", after, inUse-512+(1<<20))
	}
	if len(m.mem(big, 1<<20)) != 1<<20 {
		t.Error("the scratch is not device memory")
	}
	if _, err := d.Scratch(2 << 30); err == nil { // more than the fake GPU's 1 GiB
		t.Error("Scratch without memory returned no error")
	} else {
		wantIn(t, err, "scratch memory for nccl", "allocate")
	}
}

// TestDistBuffer: an F32 or BF16 tensor of the backend is a dist.DeviceBuffer at its device
// address; a collective may write it, so its bf16 matmul copy goes stale; tensors the
// backend does not own are refused.
func TestDistBuffer(t *testing.T) {
	newFakeGPU(t, 90, 1<<30)
	b, err := Open(Options{BF16Matmul: true})
	if err != nil {
		t.Fatal(err)
	}
	other, err := Open(Options{})
	if err != nil {
		t.Fatal(err)
	}
	f32, err := b.Upload(engine.F32, make([]float32, 12), false, 3, 4)
	if err != nil {
		t.Fatal(err)
	}
	bf16, err := b.Upload(engine.BF16, make([]float32, 12), true, 4, 3)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		x  *engine.Tensor
		dt dist.DType
	}{{f32, dist.Float32}, {bf16, dist.BFloat16}} {
		d, err := b.DistBuffer(tc.x)
		if err != nil {
			t.Fatal(err)
		}
		bf := devBuf(tc.x)
		bf.bfVer = bf.ver
		if d.DType() != tc.dt || d.Len() != 12 || d.DevicePtr() != uintptr(bf.ptr) || bf.ptr == 0 {
			t.Errorf("%v tensor: DType %v, Len %d, DevicePtr %#x; want %v, 12, %#x", tc.x.DType, d.DType(), d.Len(), d.DevicePtr(), tc.dt, bf.ptr)
		}
		if bf.bfVer == bf.ver {
			t.Errorf("%v tensor: DevicePtr left its bf16 copy current; a collective may write the tensor", tc.x.DType)
		}
	}
	freed, _ := b.Upload(engine.F32, make([]float32, 4), false, 4)
	d, _ := b.DistBuffer(freed)
	b.Free(freed)
	if d.DevicePtr() != 0 {
		t.Error("DevicePtr of a freed tensor is not 0")
	}
	ofOther, _ := other.Upload(engine.F32, make([]float32, 4), false, 4)
	for _, tc := range []struct {
		name string
		x    *engine.Tensor
		want string
	}{
		{"nil", nil, "nil tensor"},
		{"CPU tensor", &engine.Tensor{Shape: []int{2}, Buf: []float32{1, 2}}, "tensor [2] is not on the CUDA backend ([]float32)"},
		{"freed", freed, "not on the CUDA backend"},
		{"no memory", &engine.Tensor{Shape: []int{2}, Buf: &buf{devMem: &devMem{}, bytes: 8}}, "tensor [2] has no device memory"},
		{"other dtype", &engine.Tensor{Shape: []int{2}, DType: 7, Buf: devBuf(f32)}, "collectives move F32 and BF16"},
		{"another backend's", ofOther, "belongs to another CUDA backend"},
	} {
		if _, err := b.DistBuffer(tc.x); err == nil {
			t.Errorf("%s: no error", tc.name)
		} else {
			wantIn(t, err, "DistBuffer", tc.want)
		}
	}
}

// fakeNCCL builds engine/dist's stand-in NCCL (nccl.h's signatures over host memory, one
// rank) with gcc and returns its path and its fake_last, the arguments of its last call.
func fakeNCCL(t *testing.T) (string, func() [6]int64) {
	t.Helper()
	gcc, err := exec.LookPath("gcc")
	if err != nil {
		if os.Getenv("PROLONG_REQUIRE_MPI") == "1" {
			t.Fatal("gcc not found: it builds the NCCL stand-in (apt-get install gcc); PROLONG_REQUIRE_MPI=1 makes this a failure")
		}
		t.Skip("gcc not found: it builds the NCCL stand-in (apt-get install gcc)")
	}
	so := filepath.Join(t.TempDir(), "libnccl.so.2")
	if out, err := exec.Command(gcc, "-shared", "-fPIC", "-O1", "-o", so, "../engine/dist/testdata/fakenccl.c").CombinedOutput(); err != nil {
		t.Fatalf("gcc: %v\n%s", err, out)
	}
	h, err := purego.Dlopen(so, purego.RTLD_NOW|purego.RTLD_GLOBAL)
	if err != nil {
		t.Fatal(err)
	}
	fn, err := purego.Dlsym(h, "fake_last")
	if err != nil {
		t.Fatal(err)
	}
	return so, func() [6]int64 {
		var out [8]int64
		purego.SyscallN(fn, uintptr(unsafe.Pointer(&out[0])))
		return [6]int64(out[:6])
	}
}

// TestNCCLOverFakeDriver runs engine/dist's nccl backend end to end on the backend's tensors:
// dist.Open(nccl, "cuda") takes the registered device, the stand-in NCCL copies between the
// tensors' memory (the fake driver's device memory is host memory here) on the backend's
// stream, and an op's pending error stops a collective before NCCL is called.
func TestNCCLOverFakeDriver(t *testing.T) {
	so, last := fakeNCCL(t)
	t.Setenv("PROLONG_NCCL", so)
	g := newFakeGPU(t, 90, 1<<30)
	withHostMemory(g)
	b, err := Open(Options{BF16Matmul: true})
	if err != nil {
		t.Fatal(err)
	}
	c, err := dist.Open(dist.ModeNCCL, dist.Launch{Launcher: dist.LaunchNone, Size: 1}, "cuda", dist.Options{Timeout: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	if c.Backend() != "nccl" || c.Size() != 1 {
		t.Fatalf("dist.Open gave %s of size %d, want nccl of 1", c.Backend(), c.Size())
	}
	upload := func(v ...float32) *engine.Tensor {
		x, err := b.Upload(engine.F32, v, false, len(v))
		if err != nil {
			t.Fatal(err)
		}
		return x
	}
	dbuf := func(x *engine.Tensor) dist.DeviceBuffer {
		d, err := b.DistBuffer(x)
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	values := []float32{1, -2, 3.5, 4e7, 5, 6}
	x := upload(values...)
	bx, _ := b.Upload(engine.BF16, values, true, 2, 3)
	gathered, scattered := b.Alloc(6), b.Alloc(6)
	steps := []struct {
		name string
		do   func() error
		want [6]int64 // NCCL saw: call, count, type, op/root, its comm, the stream
		out  *engine.Tensor
	}{
		{"all-reduce fp32", func() error { return c.AllReduce(dbuf(x)) }, [6]int64{2, 6, 7, 0, 1, fakeStream}, x},
		{"all-reduce bf16", func() error { return c.AllReduce(dbuf(bx)) }, [6]int64{2, 6, 9, 0, 1, fakeStream}, nil},
		{"all-gather", func() error { return c.AllGather(dbuf(x), dbuf(gathered)) }, [6]int64{4, 6, 7, -1, 1, fakeStream}, gathered},
		{"reduce-scatter", func() error { return c.ReduceScatter(dbuf(x), dbuf(scattered)) }, [6]int64{3, 6, 7, 0, 1, fakeStream}, scattered},
		{"broadcast", func() error { return c.Broadcast(dbuf(bx), 0) }, [6]int64{5, 6, 9, 0, 1, fakeStream}, nil},
		{"barrier", c.Barrier, [6]int64{2, 1, 7, 0, 1, fakeStream}, nil},
	}
	for _, s := range steps {
		syncs := g.count("streamSynchronize")
		if err := s.do(); err != nil {
			t.Fatalf("%s: %v", s.name, err)
		}
		if got := last(); got != s.want {
			t.Errorf("%s: NCCL saw %v, want %v", s.name, got, s.want)
		}
		if g.count("streamSynchronize") == syncs {
			t.Errorf("%s: returned without synchronising the stream", s.name)
		}
		if s.out != nil {
			got := make([]float32, 6)
			if err := b.Download(s.out, got); err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(got, values) { // one rank: each collective is a copy
				t.Errorf("%s: the tensor holds %v, want %v", s.name, got, values)
			}
		}
	}
	// Host buffers are staged through the device's scratch memory (dist.HostCopier): copied
	// in, through NCCL (which saw the same call as for device buffers), copied out.
	var _ dist.HostCopier = (*commDevice)(nil)
	sentinel := func() dist.HostF32 { return dist.HostF32{9, 9, 9, 9, 9, 9} }
	hrecv, hscat, hbuf := sentinel(), sentinel(), dist.HostF32(slices.Clone(values))
	bits := dist.HostBF16{0x3f80, 0xc000, 0x4060, 0x4b18, 0x40a0, 0x40c0}
	hb := slices.Clone(bits)
	hsteps := []struct {
		name       string
		do         func() error
		want       [6]int64
		got, want2 any
	}{
		{"host all-reduce fp32", func() error { return c.AllReduce(hbuf) }, [6]int64{2, 6, 7, 0, 1, fakeStream}, &hbuf, values},
		{"host all-gather", func() error { return c.AllGather(dist.HostF32(values), hrecv) }, [6]int64{4, 6, 7, -1, 1, fakeStream}, &hrecv, values},
		{"host reduce-scatter", func() error { return c.ReduceScatter(dist.HostF32(values), hscat) }, [6]int64{3, 6, 7, 0, 1, fakeStream}, &hscat, values},
		{"host broadcast bf16", func() error { return c.Broadcast(hb, 0) }, [6]int64{5, 6, 9, 0, 1, fakeStream}, &hb, bits},
	}
	for _, s := range hsteps {
		copies := g.count("memcpyHtoDAsync") + g.count("memcpyDtoHAsync")
		if err := s.do(); err != nil {
			t.Fatalf("%s: %v", s.name, err)
		}
		if got := last(); got != s.want {
			t.Errorf("%s: NCCL saw %v, want %v", s.name, got, s.want)
		}
		if n := g.count("memcpyHtoDAsync") + g.count("memcpyDtoHAsync") - copies; n != 2 {
			t.Errorf("%s: %d copies between host and device, want 2 (in, out)", s.name, n)
		}
		switch got := s.got.(type) {
		case *dist.HostF32:
			if !slices.Equal([]float32(*got), s.want2.([]float32)) {
				t.Errorf("%s: the host buffer holds %v, want %v", s.name, *got, s.want2)
			}
		case *dist.HostBF16:
			if !slices.Equal([]uint16(*got), []uint16(s.want2.(dist.HostBF16))) {
				t.Errorf("%s: the host buffer holds %v, want %v", s.name, *got, s.want2)
			}
		}
	}
	// An op's error not yet returned (a failed memset in Alloc) stops the collective before
	// NCCL sees it, and the collective returns that error.
	prev := last()
	g.fail("memsetD32Async", 1)
	b.Alloc(4)
	err = c.AllGather(dbuf(x), dbuf(gathered))
	wantIn(t, err, "Alloc", "cuMemsetD32Async")
	if got := last(); got != prev {
		t.Errorf("NCCL saw call %d after the op's error, want none (call %d still last)", got[0], prev[0])
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if got := last(); got[0] != 7 || got[1] != 1 {
		t.Errorf("Close: NCCL saw %v, want ncclCommDestroy of its communicator", got)
	}
}

// skipAllReduce is a communicator whose all-reduce does nothing.
type skipAllReduce struct{ dist.Comm }

func (skipAllReduce) AllReduce(dist.Buffer) error { return nil }

// TestCheckCollectivesOnHost runs TestGPUNCCL's checks on host buffers over engine/dist's
// local backend (the reference the other backends are tested against) for 1, 3 and 8 ranks:
// the values the GPU test expects are right, and a wrong all-reduce is caught.
func TestCheckCollectivesOnHost(t *testing.T) {
	put := func(dt engine.DType, v []float32) (dist.Buffer, error) {
		if dt == engine.F32 {
			return dist.HostF32(slices.Clone(v)), nil
		}
		h := make(dist.HostBF16, len(v))
		for i, x := range v {
			h[i] = uint16(math.Float32bits(x) >> 16) // the values are small integers: exact
		}
		return h, nil
	}
	get := func(b dist.Buffer) ([]float32, error) {
		switch h := b.(type) {
		case dist.HostF32:
			return h, nil
		case dist.HostBF16:
			v := make([]float32, len(h))
			for i, x := range h {
				v[i] = bf16ToF32(x)
			}
			return v, nil
		}
		return nil, fmt.Errorf("a %T", b)
	}
	for _, tc := range []struct {
		ranks  int
		broken bool
	}{{1, false}, {3, false}, {8, false}, {3, true}} {
		comms := dist.NewLocalGroup(tc.ranks, dist.Options{Timeout: time.Minute})
		results := make([]map[string]string, tc.ranks)
		errs := make([]error, tc.ranks)
		var wg sync.WaitGroup
		for r, c := range comms {
			if tc.broken {
				c = skipAllReduce{c}
			}
			wg.Go(func() { results[r], errs[r] = checkCollectives(c, put, get) })
		}
		wg.Wait()
		for r := range comms {
			if errs[r] != nil {
				t.Fatalf("%d ranks: rank %d: %v", tc.ranks, r, errs[r])
			}
			if len(results[r]) != 8 {
				t.Errorf("%d ranks: rank %d checked %d cases, want 8", tc.ranks, r, len(results[r]))
			}
			for what, res := range results[r] {
				wrong := tc.broken && strings.HasPrefix(what, "all-reduce")
				if (res == "ok") == wrong {
					t.Errorf("%d ranks (all-reduce broken: %v): rank %d: %s: %s", tc.ranks, tc.broken, r, what, res)
				}
			}
		}
	}
}
