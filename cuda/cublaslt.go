package cuda

import (
	"fmt"
	"runtime"
	"unsafe"
)

// Bindings for cuBLASLt (libcublasLt), the matmul API with workspaces, epilogues and a
// heuristic choice of algorithm. Issue 35 asks whether it beats cublasGemmEx for the training
// GEMMs; these bindings make it measurable (TestGPUCublasLtMatchesGemmEx on a GPU). Prototypes,
// enum values and struct layouts are checked against the headers (abi_test.go, testdata/abi.txt).
// Options.CublasLt runs the backend's GEMMs through them (ltgemm.go).

var specCublasLt = libSpec{"cuBLASLt", "PROLONG_CUBLASLT", []string{"libcublasLt.so.13", "libcublasLt.so.12", "libcublasLt.so"}}

const libCublasLt = "cuBLASLt"

// cublasLt holds cuBLASLt's entry points.
type cublasLt struct {
	path                                      string
	create, destroy                           uintptr
	descCreate, descDestroy, descSetAttribute uintptr
	layoutCreate, layoutDestroy               uintptr
	prefCreate, prefDestroy, prefSetAttribute uintptr
	algoGetHeuristic, matmul                  uintptr
}

// Values from cublasLt.h and library_types.h (checked by abi_test.go).
const (
	ltDescTransA          = 3 // CUBLASLT_MATMUL_DESC_TRANSA
	ltDescTransB          = 4 // CUBLASLT_MATMUL_DESC_TRANSB
	ltDescEpilogue        = 7 // CUBLASLT_MATMUL_DESC_EPILOGUE
	ltDescBiasPointer     = 8 // CUBLASLT_MATMUL_DESC_BIAS_POINTER
	ltEpilogueDefault     = 1 // CUBLASLT_EPILOGUE_DEFAULT
	ltEpilogueBias        = 4 // CUBLASLT_EPILOGUE_BIAS
	ltPrefMaxWorkspace    = 1 // CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES
	ltPrefMinAlignA       = 5 // CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES (B, C, D follow: 6, 7, 8)
	ltHeuristicCandidates = 8
)

// ltAlgo is cublasLtMatmulAlgo_t: opaque, 64 bytes.
type ltAlgo [8]uint64

// ltHeuristicResult is cublasLtMatmulHeuristicResult_t.
type ltHeuristicResult struct {
	Algo          ltAlgo
	WorkspaceSize uint64
	State         int32 // cublasStatus_t: 0 when the algorithm can run
	WavesCount    float32
	Reserved      [4]int32
}

var loadCublasLtFn = loadCublasLt

func loadCublasLt() (*cublasLt, error) {
	h, path, err := specCublasLt.open()
	if err != nil {
		return nil, err
	}
	c := &cublasLt{path: path}
	if err := symbols(h, path, c.symbolMap()); err != nil {
		return nil, err
	}
	return c, nil
}

// symbolMap names the C symbol of each entry point.
func (c *cublasLt) symbolMap() map[string]*uintptr {
	return map[string]*uintptr{
		"cublasLtCreate": &c.create, "cublasLtDestroy": &c.destroy,
		"cublasLtMatmulDescCreate": &c.descCreate, "cublasLtMatmulDescDestroy": &c.descDestroy,
		"cublasLtMatmulDescSetAttribute": &c.descSetAttribute,
		"cublasLtMatrixLayoutCreate":     &c.layoutCreate, "cublasLtMatrixLayoutDestroy": &c.layoutDestroy,
		"cublasLtMatmulPreferenceCreate": &c.prefCreate, "cublasLtMatmulPreferenceDestroy": &c.prefDestroy,
		"cublasLtMatmulPreferenceSetAttribute": &c.prefSetAttribute,
		"cublasLtMatmulAlgoGetHeuristic":       &c.algoGetHeuristic, "cublasLtMatmul": &c.matmul,
	}
}

// check turns a cublasStatus_t into an *Error naming the call (cuBLAS's status names).
func (c *cublasLt) check(what string, r int) error {
	if r == 0 {
		return nil
	}
	return &Error{Call: what, Lib: libCublasLt, Code: r, Name: statusName(cublasStatusNames, libCublas, r)}
}

// newHandle creates a cuBLASLt handle (one per backend, like cuBLAS's).
func (c *cublasLt) newHandle() (uintptr, error) {
	var h uintptr
	err := c.check("cublasLtCreate", call(c.create, uintptr(unsafe.Pointer(&h))))
	return h, err
}

// destroyHandle releases a handle from newHandle.
func (c *cublasLt) destroyHandle(h uintptr) error {
	return c.check("cublasLtDestroy", call(c.destroy, h))
}

// ltPlan is one column-major matmul described to cuBLASLt, with the algorithm its heuristic
// chose for a workspace of up to workspace bytes: descriptors made once, run many times.
type ltPlan struct {
	lt                  *cublasLt
	handle              uintptr
	desc, a, b, c, pref uintptr
	algo                ltHeuristicResult
	g                   gemm
}

// ptrAlign is the alignment of a device address in bytes as cuBLASLt's preferences take it:
// the largest power of two dividing it, at most 256 (the preferences' default, which
// cuMemAlloc's blocks meet); 256 for 0 (no address given).
func ptrAlign(p uint64) uint32 {
	if p == 0 || p%256 == 0 {
		return 256
	}
	return uint32(p & -p)
}

// newLtPlan describes g (transposes, shapes, types, leading dimensions, compute type; no
// batch) and asks the heuristic for the best algorithm that fits workspace bytes and the
// alignment of g's addresses (ptrAlign: an operand at an offset inside a tensor may be aligned
// to less than the 256 bytes cuBLASLt assumes by default). C and D are the same matrix.
func (c *cublasLt) newLtPlan(handle uintptr, g gemm, workspace uint64) (*ltPlan, error) {
	if g.batch > 0 {
		return nil, fmt.Errorf("cuda: cuBLASLt plan: batched GEMMs are not described yet")
	}
	p := &ltPlan{lt: c, handle: handle, g: g}
	ok := false
	defer func() {
		if !ok {
			p.destroy()
		}
	}()
	if err := c.check("cublasLtMatmulDescCreate", call(c.descCreate, uintptr(unsafe.Pointer(&p.desc)), uintptr(g.compute), dtF32)); err != nil {
		return nil, err
	}
	for _, a := range []struct {
		attr int
		v    int32
	}{{ltDescTransA, int32(g.transA)}, {ltDescTransB, int32(g.transB)}} {
		v := a.v
		if err := c.check("cublasLtMatmulDescSetAttribute", call(c.descSetAttribute, p.desc, uintptr(a.attr), uintptr(unsafe.Pointer(&v)), 4)); err != nil {
			return nil, err
		}
	}
	// Column-major layouts: op(A) is m×k, op(B) k×n, C m×n.
	rowsA, colsA := g.m, g.k
	if g.transA == opT {
		rowsA, colsA = g.k, g.m
	}
	rowsB, colsB := g.k, g.n
	if g.transB == opT {
		rowsB, colsB = g.n, g.k
	}
	for _, l := range []struct {
		dst             *uintptr
		typ, rows, cols int
		ld              int
	}{{&p.a, g.aType, rowsA, colsA, g.lda}, {&p.b, g.bType, rowsB, colsB, g.ldb}, {&p.c, g.cType, g.m, g.n, g.ldc}} {
		if err := c.check("cublasLtMatrixLayoutCreate", call(c.layoutCreate, uintptr(unsafe.Pointer(l.dst)), uintptr(l.typ),
			uintptr(l.rows), uintptr(l.cols), uintptr(l.ld))); err != nil {
			return nil, err
		}
	}
	if err := c.check("cublasLtMatmulPreferenceCreate", call(c.prefCreate, uintptr(unsafe.Pointer(&p.pref)))); err != nil {
		return nil, err
	}
	ws := workspace
	if err := c.check("cublasLtMatmulPreferenceSetAttribute", call(c.prefSetAttribute, p.pref, ltPrefMaxWorkspace, uintptr(unsafe.Pointer(&ws)), 8)); err != nil {
		return nil, err
	}
	align := [4]uint32{ptrAlign(g.a), ptrAlign(g.b), ptrAlign(g.c), ptrAlign(g.c)} // A, B, C, D
	for i := range align {
		if err := c.check("cublasLtMatmulPreferenceSetAttribute", call(c.prefSetAttribute, p.pref, uintptr(ltPrefMinAlignA+i), uintptr(unsafe.Pointer(&align[i])), 4)); err != nil {
			return nil, err
		}
	}
	var res [ltHeuristicCandidates]ltHeuristicResult
	var n int32
	if err := c.check("cublasLtMatmulAlgoGetHeuristic", call(c.algoGetHeuristic, handle, p.desc, p.a, p.b, p.c, p.c, p.pref,
		ltHeuristicCandidates, uintptr(unsafe.Pointer(&res[0])), uintptr(unsafe.Pointer(&n)))); err != nil {
		return nil, err
	}
	for i := 0; i < int(n); i++ {
		if res[i].State == 0 {
			p.algo = res[i]
			ok = true
			return p, nil
		}
	}
	return nil, fmt.Errorf("cuda: cuBLASLt has no algorithm for %dx%dx%d (types %d,%d→%d, compute %d) within %d bytes of workspace",
		g.m, g.n, g.k, g.aType, g.bType, g.cType, g.compute, workspace)
}

// run enqueues C = alpha·op(A)·op(B) + beta·C on stream with the plan's algorithm, using the
// device workspace ws of wsBytes (at least the algorithm's WorkspaceSize).
func (p *ltPlan) run(a, b, c uint64, alpha, beta float32, ws, wsBytes uint64, stream uintptr) error {
	if wsBytes < p.algo.WorkspaceSize {
		return fmt.Errorf("cuda: cuBLASLt algorithm needs %d bytes of workspace, got %d", p.algo.WorkspaceSize, wsBytes)
	}
	// The scalars on the heap, kept alive over the call: a stack that grows inside call would
	// move them away from the addresses passed.
	al, be := new(float32), new(float32)
	*al, *be = alpha, beta
	err := p.lt.check("cublasLtMatmul", call(p.lt.matmul, p.handle, p.desc, uintptr(unsafe.Pointer(al)),
		uintptr(a), p.a, uintptr(b), p.b, uintptr(unsafe.Pointer(be)), uintptr(c), p.c, uintptr(c), p.c,
		uintptr(unsafe.Pointer(&p.algo.Algo)), uintptr(ws), uintptr(wsBytes), stream))
	runtime.KeepAlive(al)
	runtime.KeepAlive(be)
	return err
}

// destroy frees the plan's descriptors (those made).
func (p *ltPlan) destroy() {
	c := p.lt
	if p.pref != 0 {
		call(c.prefDestroy, p.pref)
	}
	for _, l := range []uintptr{p.a, p.b, p.c} {
		if l != 0 {
			call(c.layoutDestroy, l)
		}
	}
	if p.desc != 0 {
		call(c.descDestroy, p.desc)
	}
	*p = ltPlan{lt: c}
}
