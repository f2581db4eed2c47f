package cuda

import (
	"math"
	"unsafe"
)

// dptr is a device address (CUdeviceptr) as a kernel argument.
type dptr uint64

// kernelArgs packs kernel arguments for cuLaunchKernel, whose kernelParams is an array of
// pointers, one per parameter, each to a value of the parameter's size. Every value gets an
// 8-byte slot (little-endian: a 4-byte parameter reads the low half). The typed launchers of
// launchers_gen.go fill the slots with the argX functions below, one per Go type, which map to
// the C parameter types one to one: dptr -> T*, int32 -> int, uint32 -> unsigned, int64 ->
// long long, uint64 -> unsigned long long, float32 -> float, float64 -> double.
type kernelArgs struct {
	vals []uint64
	ptrs []unsafe.Pointer
}

func argPtr(v dptr) uint64    { return uint64(v) }
func argI32(v int32) uint64   { return uint64(uint32(v)) }
func argU32(v uint32) uint64  { return uint64(v) }
func argI64(v int64) uint64   { return uint64(v) }
func argU64(v uint64) uint64  { return v }
func argF32(v float32) uint64 { return uint64(math.Float32bits(v)) }
func argF64(v float64) uint64 { return math.Float64bits(v) }

// packArgs points a kernelArgs at the slots vals.
func packArgs(vals []uint64) *kernelArgs {
	k := &kernelArgs{vals: vals, ptrs: make([]unsafe.Pointer, len(vals))}
	for i := range k.vals {
		k.ptrs[i] = unsafe.Pointer(&k.vals[i])
	}
	return k
}

// params is the void** cuLaunchKernel takes (nil for a kernel without parameters).
func (k *kernelArgs) params() unsafe.Pointer {
	if len(k.ptrs) == 0 {
		return nil
	}
	return unsafe.Pointer(&k.ptrs[0])
}
