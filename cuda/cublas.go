package cuda

import (
	"unsafe"

	"github.com/ebitengine/purego"
)

// cublas holds the cuBLAS entry points: one handle per backend, bound to its stream.
type cublas struct {
	path                                                       string
	create, setStream, gemmEx, gemmStridedBatched, setMathMode uintptr
	statusName, statusString                                   uintptr // 0 before cuBLAS 11.4
}

// cuBLAS and CUDA data-type constants (cublas_api.h, library_types.h).
const (
	opN = 0
	opT = 1

	dtF32  = 0  // CUDA_R_32F
	dtBF16 = 14 // CUDA_R_16BF

	computeF32         = 68         // CUBLAS_COMPUTE_32F
	computeF32FastTF32 = 77         // CUBLAS_COMPUTE_32F_FAST_TF32
	algoDefault        = 0xFFFFFFFF // CUBLAS_GEMM_DEFAULT (-1) as the low 32 bits of a register
)

func loadCublas() (*cublas, error) {
	h, path, err := specCublas.open()
	if err != nil {
		return nil, err
	}
	c := &cublas{path: path}
	err = symbols(h, path, map[string]*uintptr{
		"cublasCreate_v2": &c.create, "cublasSetStream_v2": &c.setStream, "cublasGemmEx": &c.gemmEx,
		"cublasGemmStridedBatchedEx": &c.gemmStridedBatched,
		"cublasSetMathMode":          &c.setMathMode,
	})
	if err != nil {
		return nil, err
	}
	// Optional: cublasGetStatusName and cublasGetStatusString came with cuBLAS 11.4.
	c.statusName, _ = purego.Dlsym(h, "cublasGetStatusName")
	c.statusString, _ = purego.Dlsym(h, "cublasGetStatusString")
	return c, nil
}

// check turns a cublasStatus_t into an *Error naming the call and the status (cuBLAS's own
// name and description where it has cublasGetStatusName, else the header's name).
func (c *cublas) check(what string, r int) error {
	if r == 0 {
		return nil
	}
	e := &Error{Call: what, Lib: libCublas, Code: r, Name: statusName(cublasStatusNames, libCublas, r)}
	if c.statusName != 0 {
		if n := gostr(callPtr(c.statusName, uintptr(r))); n != "" {
			e.Name = n
		}
	}
	if c.statusString != 0 {
		e.Desc = gostr(callPtr(c.statusString, uintptr(r)))
	}
	return e
}

// gemm is one column-major cublasGemmEx: C[m,n] = alpha·op(A)·op(B) + beta·C with fp32 scalars
// (alpha 0 means 1), or, with batch > 0, cublasGemmStridedBatchedEx over batch products whose
// matrices are strideA, strideB, strideC elements apart.
type gemm struct {
	transA, transB            int
	m, n, k                   int
	a                         uint64
	aType, lda                int
	b                         uint64
	bType, ldb                int
	alpha, beta               float32
	c                         uint64
	cType, ldc                int
	compute                   int
	batch                     int
	strideA, strideB, strideC int64
}

// args packs the 19 arguments of cublasGemmEx, or the 23 of cublasGemmStridedBatchedEx (alpha
// and beta by host pointer).
func (g *gemm) args(handle uintptr, alpha, beta *float32) []uintptr {
	if g.batch > 0 {
		return []uintptr{handle, uintptr(g.transA), uintptr(g.transB), uintptr(g.m), uintptr(g.n), uintptr(g.k),
			uintptr(unsafe.Pointer(alpha)), uintptr(g.a), uintptr(g.aType), uintptr(g.lda), uintptr(g.strideA),
			uintptr(g.b), uintptr(g.bType), uintptr(g.ldb), uintptr(g.strideB), uintptr(unsafe.Pointer(beta)),
			uintptr(g.c), uintptr(g.cType), uintptr(g.ldc), uintptr(g.strideC), uintptr(g.batch),
			uintptr(g.compute), uintptr(algoDefault)}
	}
	return []uintptr{handle, uintptr(g.transA), uintptr(g.transB), uintptr(g.m), uintptr(g.n), uintptr(g.k),
		uintptr(unsafe.Pointer(alpha)), uintptr(g.a), uintptr(g.aType), uintptr(g.lda),
		uintptr(g.b), uintptr(g.bType), uintptr(g.ldb), uintptr(unsafe.Pointer(beta)),
		uintptr(g.c), uintptr(g.cType), uintptr(g.ldc), uintptr(g.compute), uintptr(algoDefault)}
}
