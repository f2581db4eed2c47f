package cuda

import (
	"fmt"
	"math"
	"unsafe"
)

// dptr is a device address (CUdeviceptr) as a kernel argument.
type dptr uint64

// kernelArgs packs kernel arguments for cuLaunchKernel, whose kernelParams is an array of
// pointers, one per parameter, each to a value of the parameter's size. Every value gets an
// 8-byte slot (little-endian: a 4-byte parameter reads the low half). Go types map to CUDA
// parameter types one to one: dptr -> T*, int32 -> int, int64 -> long long, float32 -> float,
// float64 -> double, uint32 -> unsigned. Go's int is refused, so that no width is guessed.
type kernelArgs struct {
	vals []uint64
	ptrs []unsafe.Pointer
}

func packArgs(args ...any) (*kernelArgs, error) {
	k := &kernelArgs{vals: make([]uint64, len(args)), ptrs: make([]unsafe.Pointer, len(args))}
	for i, a := range args {
		switch v := a.(type) {
		case dptr:
			k.vals[i] = uint64(v)
		case int32:
			k.vals[i] = uint64(uint32(v))
		case uint32:
			k.vals[i] = uint64(v)
		case int64:
			k.vals[i] = uint64(v)
		case float32:
			k.vals[i] = uint64(math.Float32bits(v))
		case float64:
			k.vals[i] = math.Float64bits(v)
		default:
			return nil, fmt.Errorf("cuda: kernel argument %d has unsupported type %T", i, a)
		}
	}
	for i := range k.vals {
		k.ptrs[i] = unsafe.Pointer(&k.vals[i])
	}
	return k, nil
}

// params is the void** cuLaunchKernel takes (nil for a kernel without parameters).
func (k *kernelArgs) params() unsafe.Pointer {
	if len(k.ptrs) == 0 {
		return nil
	}
	return unsafe.Pointer(&k.ptrs[0])
}
