package cuda

import (
	"maps"
	"os"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"
	"unsafe"
)

// The bindings of graph.go and cublaslt.go against the CUDA headers' facts that
// scripts/cuda-abi.sh wrote into testdata/abi.txt: prototypes (checked by the C compiler there;
// their parameter counts here), enum values, struct layouts and versioned symbol names.

type abiFacts struct {
	arity   map[string]int    // C function → parameters
	symbol  map[string]string // API name → the symbol it is (cuStreamBeginCapture → ..._v2)
	consts  map[string]int64
	sizeof  map[string]uintptr
	offsets map[string]uintptr // "type.field"
}

func readABI(t *testing.T) *abiFacts {
	t.Helper()
	data, err := os.ReadFile("testdata/abi.txt")
	if err != nil {
		t.Fatal(err)
	}
	f := &abiFacts{arity: map[string]int{}, symbol: map[string]string{}, consts: map[string]int64{},
		sizeof: map[string]uintptr{}, offsets: map[string]uintptr{}}
	for i, line := range strings.Split(strings.TrimSpace(string(data)), "\n") {
		if strings.HasPrefix(line, "#") {
			continue
		}
		w := strings.Fields(line)
		if len(w) != 3 {
			t.Fatalf("testdata/abi.txt:%d: %q is not \"kind name value\"", i+1, line)
		}
		n, nerr := strconv.ParseInt(w[2], 10, 64)
		switch w[0] {
		case "symbol":
			f.symbol[w[1]] = w[2]
			continue
		case "version":
		case "arity":
			f.arity[w[1]] = int(n)
		case "const":
			f.consts[w[1]] = n
		case "sizeof":
			f.sizeof[w[1]] = uintptr(n)
		case "offsetof":
			f.offsets[w[1]] = uintptr(n)
		default:
			t.Fatalf("testdata/abi.txt:%d: unknown kind %q", i+1, w[0])
		}
		if nerr != nil {
			t.Fatalf("testdata/abi.txt:%d: %v", i+1, nerr)
		}
	}
	return f
}

// TestABIConstants: every enum value the bindings (and cublas.go) use is the header's.
func TestABIConstants(t *testing.T) {
	f := readABI(t)
	for _, c := range []struct {
		header string
		got    int64
	}{
		{"CU_STREAM_CAPTURE_MODE_THREAD_LOCAL", captureModeThreadLocal},
		{"CU_STREAM_CAPTURE_STATUS_NONE", captureStatusNone},
		{"CU_STREAM_CAPTURE_STATUS_ACTIVE", captureStatusActive},
		{"CU_MEMHOSTALLOC_PORTABLE", memHostAllocPortable},
		{"CU_MEMHOSTALLOC_DEVICEMAP", memHostAllocDevMap},
		{"CUBLASLT_MATMUL_DESC_TRANSA", ltDescTransA},
		{"CUBLASLT_MATMUL_DESC_TRANSB", ltDescTransB},
		{"CUBLASLT_MATMUL_DESC_EPILOGUE", ltDescEpilogue},
		{"CUBLASLT_MATMUL_DESC_BIAS_POINTER", ltDescBiasPointer},
		{"CUBLASLT_EPILOGUE_DEFAULT", ltEpilogueDefault},
		{"CUBLASLT_EPILOGUE_BIAS", ltEpilogueBias},
		{"CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES", ltPrefMaxWorkspace},
		{"CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES", ltPrefMinAlignA},
		{"CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES", ltPrefMinAlignA + 1},
		{"CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES", ltPrefMinAlignA + 2},
		{"CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES", ltPrefMinAlignA + 3},
		{"CUBLAS_OP_N", opN},
		{"CUBLAS_OP_T", opT},
		{"CUBLAS_COMPUTE_32F", computeF32},
		{"CUBLAS_COMPUTE_32F_FAST_TF32", computeF32FastTF32},
		{"CUDA_R_32F", dtF32},
		{"CUDA_R_16BF", dtBF16},
	} {
		want, ok := f.consts[c.header]
		if !ok {
			t.Errorf("%s is not in testdata/abi.txt (rerun scripts/cuda-abi.sh)", c.header)
		} else if c.got != want {
			t.Errorf("%s is %d in Go, %d in the header", c.header, c.got, want)
		}
	}
}

// TestABILayout: the Go structs cuBLASLt fills have the C structs' size and field offsets.
func TestABILayout(t *testing.T) {
	f := readABI(t)
	var r ltHeuristicResult
	for _, c := range []struct {
		what string
		got  uintptr
		want uintptr
	}{
		{"sizeof cublasLtMatmulAlgo_t", unsafe.Sizeof(ltAlgo{}), f.sizeof["cublasLtMatmulAlgo_t"]},
		{"sizeof cublasLtMatmulHeuristicResult_t", unsafe.Sizeof(r), f.sizeof["cublasLtMatmulHeuristicResult_t"]},
		{"offsetof algo", unsafe.Offsetof(r.Algo), f.offsets["cublasLtMatmulHeuristicResult_t.algo"]},
		{"offsetof workspaceSize", unsafe.Offsetof(r.WorkspaceSize), f.offsets["cublasLtMatmulHeuristicResult_t.workspaceSize"]},
		{"offsetof state", unsafe.Offsetof(r.State), f.offsets["cublasLtMatmulHeuristicResult_t.state"]},
		{"offsetof wavesCount", unsafe.Offsetof(r.WavesCount), f.offsets["cublasLtMatmulHeuristicResult_t.wavesCount"]},
	} {
		if c.want == 0 && !strings.HasSuffix(c.what, "algo") {
			t.Errorf("%s is not in testdata/abi.txt", c.what)
		}
		if c.got != c.want {
			t.Errorf("%s: Go %d, C %d", c.what, c.got, c.want)
		}
	}
	// Enums pass as 32-bit ints: the slots of call() carry them whole either way, but the
	// attribute buffers (TRANSA/TRANSB, 4 bytes) rely on it.
	for _, e := range []string{"cublasOperation_t", "cublasLtEpilogue_t", "cublasComputeType_t"} {
		if f.sizeof[e] != 4 {
			t.Errorf("sizeof %s is %d in the header, the bindings pass 4 bytes", e, f.sizeof[e])
		}
	}
}

// TestABISymbols: the bindings resolve the versioned symbol each API name maps to.
func TestABISymbols(t *testing.T) {
	f := readABI(t)
	var g graphAPI
	var lt cublasLt
	have := slices.Collect(maps.Keys(g.graphSymbols()))
	have = append(have, slices.Collect(maps.Keys(lt.symbolMap()))...)
	want := slices.Collect(maps.Values(f.symbol))
	slices.Sort(have)
	slices.Sort(want)
	if !slices.Equal(have, want) {
		t.Errorf("bindings resolve %v,\nthe headers map the API names to %v", have, want)
	}
}

// abiRecorder stands in for the driver and cuBLASLt through callHook: each entry point gets an
// address naming its symbol; a call records the symbol and its argument count, and fills the
// outputs the bindings read.
type abiRecorder struct {
	t     *testing.T
	names map[uintptr]string
	args  map[string][]int
	host  []byte // what cuMemHostAlloc hands out
}

func (r *abiRecorder) assign(syms map[string]*uintptr) {
	for name, p := range syms {
		a := uintptr(len(r.names) + 1)
		r.names[a] = name
		*p = a
	}
}

func (r *abiRecorder) call(fn uintptr, a []uintptr) uintptr {
	name, ok := r.names[fn]
	if !ok {
		r.t.Fatalf("call of unknown function address %#x", fn)
	}
	r.args[name] = append(r.args[name], len(a))
	switch name {
	case "cuStreamEndCapture":
		*at[uintptr](a[1]) = 0x6a
	case "cuGraphInstantiateWithFlags":
		*at[uintptr](a[0]) = 0x6e
	case "cuStreamIsCapturing":
		*at[int32](a[1]) = captureStatusActive
	case "cuMemHostAlloc":
		r.host = make([]byte, a[1])
		*at[unsafe.Pointer](a[0]) = unsafe.Pointer(&r.host[0])
	case "cuMemHostGetDevicePointer_v2":
		*at[uint64](a[0]) = 0xd000
	case "cublasLtMatmulDescCreate", "cublasLtMatrixLayoutCreate", "cublasLtMatmulPreferenceCreate", "cublasLtCreate":
		*at[uintptr](a[0]) = 0x17
	case "cublasLtMatmulAlgoGetHeuristic":
		res := unsafe.Slice(at[ltHeuristicResult](a[8]), a[7])
		res[0] = ltHeuristicResult{State: 15} // CUBLAS_STATUS_NOT_SUPPORTED: skipped
		res[1] = ltHeuristicResult{WorkspaceSize: 1024}
		*at[int32](a[9]) = 2
	}
	return 0
}

// TestABIArity: every binding passes each C function as many arguments as its prototype in
// the header has, and the graph, pinned-memory and cuBLASLt paths call what they should.
func TestABIArity(t *testing.T) {
	f := readABI(t)
	r := &abiRecorder{t: t, names: map[uintptr]string{}, args: map[string][]int{}}
	d := &driver{path: "recorded driver"}
	r.assign(d.graphSymbols())
	lt := &cublasLt{path: "recorded cuBLASLt"}
	r.assign(lt.symbolMap())
	callHook = r.call
	t.Cleanup(func() { callHook = nil })

	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(d.beginCapture(0x5))
	on, err := d.capturing(0x5)
	must(err)
	if !on {
		t.Error("capturing: the recorder said ACTIVE, the binding says not")
	}
	g, err := d.endCapture(0x5)
	must(err)
	if g.graph != 0x6a || g.exec != 0x6e {
		t.Errorf("endCapture: graph %#x exec %#x, want 0x6a 0x6e", g.graph, g.exec)
	}
	must(d.launchGraph(g, 0x5))
	must(d.destroyGraph(g))
	p, err := d.allocPinned(256)
	must(err)
	if p.dev != 0xd000 || len(p.Bytes()) != 256 || &p.Bytes()[0] != &r.host[0] {
		t.Errorf("allocPinned: dev %#x, %d bytes", p.dev, len(p.Bytes()))
	}
	must(d.freePinned(p))
	h, err := lt.newHandle()
	must(err)
	plan, err := lt.newLtPlan(h, gemm{transA: opT, transB: opN, m: 4, n: 3, k: 2, aType: dtF32, lda: 2, bType: dtF32, ldb: 2, cType: dtF32, ldc: 4, compute: computeF32}, 4096)
	must(err)
	if plan.algo.WorkspaceSize != 1024 {
		t.Errorf("the plan took candidate with workspace %d; the first runnable one (state 0) has 1024", plan.algo.WorkspaceSize)
	}
	must(plan.run(1, 2, 3, 1, 0, 4, 4096, 0x5))
	if err := plan.run(1, 2, 3, 1, 0, 4, 512, 0x5); err == nil || !strings.Contains(err.Error(), "needs 1024 bytes of workspace, got 512") {
		t.Errorf("a workspace below the algorithm's need: %v", err)
	}
	plan.destroy()
	must(lt.destroyHandle(h))

	var missing []string
	for name, n := range f.arity {
		sym := f.symbol[name]
		if sym == "" {
			sym = name
		}
		got, ok := r.args[sym]
		if !ok {
			missing = append(missing, sym)
			continue
		}
		for _, g := range got {
			if g != n {
				t.Errorf("%s: called with %d arguments, its prototype has %d", sym, g, n)
			}
		}
	}
	if len(missing) > 0 {
		slices.Sort(missing)
		t.Errorf("never called by the paths above: %v", missing)
	}
	if want := []int{1, 1, 1}; !reflect.DeepEqual(r.args["cublasLtMatrixLayoutDestroy"], want) {
		t.Errorf("cublasLtMatrixLayoutDestroy calls: %v, want one per layout (3)", r.args["cublasLtMatrixLayoutDestroy"])
	}
	t.Logf("%d entry points checked against the headers' prototypes", len(r.args))
}
