package cuda

import (
	"errors"
	"fmt"
	"strings"

	"github.com/prolong-rl/prolong/engine"
)

// Error is a failed call of the CUDA driver, cuBLAS or NVRTC. Inside an op the backend wraps it
// with the op and its shapes ("cuda: MatMul out [4 8] x [4 16] w [8 16]: ...").
type Error struct {
	// Call is the library call and what it was doing ("cuMemAlloc", "cublasGemmEx MatMul
	// (m=8 n=4 k=16)").
	Call string
	// Lib is the library: "CUDA driver", "cuBLAS" or "NVRTC".
	Lib string
	// Code is the status the call returned (CUresult, cublasStatus_t, nvrtcResult).
	Code int
	// Name is the status's name in the library's header (CUDA_ERROR_OUT_OF_MEMORY), and Desc
	// the library's own description where it has one.
	Name, Desc string
	// Fatal says the CUDA context is lost (a kernel fault: CUDA answers every later call of the
	// process with the same error), so the backend cannot go on.
	Fatal bool
}

func (e *Error) Error() string {
	s := fmt.Sprintf("%s: %s (%d)", e.Call, e.Name, e.Code)
	if e.Desc != "" {
		s += ": " + e.Desc
	}
	return s
}

// outOfMemory reports whether err is a device out-of-memory: the driver's, or cuBLAS failing
// to allocate its workspace.
func outOfMemory(err error) bool {
	var e *Error
	if !errors.As(err, &e) {
		return false
	}
	return (e.Lib == libDriver && e.Code == cudaErrorOutOfMemory) || (e.Lib == libCublas && e.Code == cublasStatusAllocFailed)
}

// fatal reports whether err leaves the CUDA context unusable.
func fatal(err error) bool {
	var e *Error
	return errors.As(err, &e) && e.Fatal
}

const (
	libDriver = "CUDA driver"
	libCublas = "cuBLAS"
	libNVRTC  = "NVRTC"

	cudaErrorOutOfMemory           = 2
	cudaErrorUnsupportedPTXVersion = 222
	cublasStatusAllocFailed        = 3
	nvrtcErrorInvalidOption        = 5
)

// driverErrorNames are the CUresult names of cuda.h (CUDA 13.0) that the backend can meet; the
// driver's cuGetErrorName gives the name first, this table only when it does not know the code.
var driverErrorNames = map[int]string{
	1: "CUDA_ERROR_INVALID_VALUE", 2: "CUDA_ERROR_OUT_OF_MEMORY", 3: "CUDA_ERROR_NOT_INITIALIZED",
	4: "CUDA_ERROR_DEINITIALIZED", 34: "CUDA_ERROR_STUB_LIBRARY", 46: "CUDA_ERROR_DEVICE_UNAVAILABLE",
	100: "CUDA_ERROR_NO_DEVICE", 101: "CUDA_ERROR_INVALID_DEVICE", 200: "CUDA_ERROR_INVALID_IMAGE",
	201: "CUDA_ERROR_INVALID_CONTEXT", 209: "CUDA_ERROR_NO_BINARY_FOR_GPU", 214: "CUDA_ERROR_ECC_UNCORRECTABLE",
	218: "CUDA_ERROR_INVALID_PTX", 221: "CUDA_ERROR_JIT_COMPILER_NOT_FOUND", 222: "CUDA_ERROR_UNSUPPORTED_PTX_VERSION",
	400: "CUDA_ERROR_INVALID_HANDLE", 500: "CUDA_ERROR_NOT_FOUND", 600: "CUDA_ERROR_NOT_READY",
	700: "CUDA_ERROR_ILLEGAL_ADDRESS", 701: "CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES", 702: "CUDA_ERROR_LAUNCH_TIMEOUT",
	709: "CUDA_ERROR_CONTEXT_IS_DESTROYED", 710: "CUDA_ERROR_ASSERT", 714: "CUDA_ERROR_HARDWARE_STACK_ERROR",
	715: "CUDA_ERROR_ILLEGAL_INSTRUCTION", 716: "CUDA_ERROR_MISALIGNED_ADDRESS", 717: "CUDA_ERROR_INVALID_ADDRESS_SPACE",
	718: "CUDA_ERROR_INVALID_PC", 719: "CUDA_ERROR_LAUNCH_FAILED", 999: "CUDA_ERROR_UNKNOWN",
}

// driverFatal are the CUresults after which, as cuda.h says of each, "the process is left in an
// inconsistent state and any further CUDA work will return the same error": kernel faults,
// uncorrectable ECC errors, a timed-out launch, a driver shutting down.
var driverFatal = map[int]bool{4: true, 214: true, 700: true, 702: true, 710: true, 714: true, 715: true,
	716: true, 717: true, 718: true, 719: true}

// cublasStatusNames are cublasStatus_t of cublas_api.h (the same from CUDA 11 to 13).
var cublasStatusNames = map[int]string{
	1: "CUBLAS_STATUS_NOT_INITIALIZED", 3: "CUBLAS_STATUS_ALLOC_FAILED", 7: "CUBLAS_STATUS_INVALID_VALUE",
	8: "CUBLAS_STATUS_ARCH_MISMATCH", 11: "CUBLAS_STATUS_MAPPING_ERROR", 13: "CUBLAS_STATUS_EXECUTION_FAILED",
	14: "CUBLAS_STATUS_INTERNAL_ERROR", 15: "CUBLAS_STATUS_NOT_SUPPORTED", 16: "CUBLAS_STATUS_LICENSE_ERROR",
}

// nvrtcResultNames are nvrtcResult of nvrtc.h (CUDA 13.0; 12 and up came with CUDA 12).
var nvrtcResultNames = map[int]string{
	1: "NVRTC_ERROR_OUT_OF_MEMORY", 2: "NVRTC_ERROR_PROGRAM_CREATION_FAILURE", 3: "NVRTC_ERROR_INVALID_INPUT",
	4: "NVRTC_ERROR_INVALID_PROGRAM", 5: "NVRTC_ERROR_INVALID_OPTION", 6: "NVRTC_ERROR_COMPILATION",
	7: "NVRTC_ERROR_BUILTIN_OPERATION_FAILURE", 8: "NVRTC_ERROR_NO_NAME_EXPRESSIONS_AFTER_COMPILATION",
	9: "NVRTC_ERROR_NO_LOWERED_NAMES_BEFORE_COMPILATION", 10: "NVRTC_ERROR_NAME_EXPRESSION_NOT_VALID",
	11: "NVRTC_ERROR_INTERNAL_ERROR", 12: "NVRTC_ERROR_TIME_FILE_WRITE_FAILED", 13: "NVRTC_ERROR_NO_PCH_CREATE_ATTEMPTED",
	14: "NVRTC_ERROR_PCH_CREATE_HEAP_EXHAUSTED", 15: "NVRTC_ERROR_PCH_CREATE", 16: "NVRTC_ERROR_CANCELLED",
	17: "NVRTC_ERROR_TIME_TRACE_FILE_WRITE_FAILED",
}

// statusName is the table's name for code, or a placeholder naming the library.
func statusName(table map[int]string, lib string, code int) string {
	if n, ok := table[code]; ok {
		return n
	}
	return "unknown " + lib + " status"
}

// opDesc names an op and the shapes of its tensors, for errors and the record of recent ops;
// formatted only when an error needs it. what is the op's name followed by a name for each
// tensor ("MatMul out x w").
type opDesc struct {
	what    string
	n       int
	shapes  [8][]int
	missing int // index of a tensor without device memory (its allocation failed), or -1
}

// desc describes an op over tensors (nil ones, optional operands, are left out).
func desc(what string, ts ...*engine.Tensor) opDesc {
	d := opDesc{what: what, missing: -1}
	for _, t := range ts {
		if d.n == len(d.shapes) {
			break
		}
		if t != nil {
			if bf, ok := t.Buf.(*buf); ok && bf.ptr == 0 && bf.bytes > 0 && d.missing < 0 {
				d.missing = d.n
			}
			d.shapes[d.n] = t.Shape
		}
		d.n++
	}
	return d
}

func (d opDesc) String() string {
	if d.what == "" {
		return "(outside any op)"
	}
	words := strings.Fields(d.what)
	var b strings.Builder
	b.WriteString(words[0])
	for i, s := range d.shapes[:d.n] {
		if s == nil {
			continue
		}
		if i+1 < len(words) {
			b.WriteString(" " + words[i+1])
		}
		fmt.Fprintf(&b, " %v", s)
	}
	return b.String()
}
