package cuda

import (
	"fmt"
	"os"
	"unsafe"

	"github.com/prolong-rl/prolong/engine"
)

func init() {
	// "cuda" is the GPU of DeviceOptions.Index with bf16 matmuls (fp32 accumulation, fp32 master
	// weights), the setting for speed, unless the options ask for fp32; "cuda-fp32" keeps every
	// matmul in exact fp32, for comparisons with the CPU and for models whose training needs it.
	engine.RegisterBackend("cuda", func(o engine.DeviceOptions) (engine.Backend, error) {
		switch o.MatMulPrecision {
		case "", "auto", "bf16":
			return Open(Options{Device: o.Index, BF16Matmul: true, TiledAttention: tiledFromEnv()})
		case "fp32":
			return Open(Options{Device: o.Index, TiledAttention: tiledFromEnv()})
		}
		return nil, fmt.Errorf("--matmul-precision %q: want auto, fp32 or bf16", o.MatMulPrecision)
	})
	engine.RegisterBackend("cuda-fp32", func(o engine.DeviceOptions) (engine.Backend, error) {
		if o.MatMulPrecision == "bf16" {
			return nil, fmt.Errorf("--device cuda-fp32 runs exact fp32 matmuls: --matmul-precision bf16 is --device cuda")
		}
		return Open(Options{Device: o.Index, TiledAttention: tiledFromEnv()})
	})
}

// tiledFromEnv is Options.TiledAttention for devices opened by name: on when
// PROLONG_CUDA_TILED_ATTENTION=1 (the switch of tools/train and tools/bench while the tiled
// kernels are off by default).
func tiledFromEnv() bool { return os.Getenv("PROLONG_CUDA_TILED_ATTENTION") == "1" }

// Info implements engine.Describer; MemoryBytes is the GPU's total memory (cuMemGetInfo), 0
// when it cannot be read.
func (b *Backend) Info() engine.DeviceInfo {
	_, total, _ := b.MemInfo()
	return engine.DeviceInfo{Kind: "cuda", Name: b.Name(), MemoryBytes: total, BF16: true, MatMulPrecisions: []string{"auto", "fp32", "bf16"}}
}

// MemInfo implements engine.DeviceMemory: cuMemGetInfo's free and total bytes of the GPU. Memory
// this backend's allocator keeps cached for reuse counts as used.
func (b *Backend) MemInfo() (free, total int64, err error) {
	var f, t uint64
	err = b.opErr(desc("MemInfo"), func() error {
		return b.drv.check("cuMemGetInfo", call(b.drv.memGetInfo, uintptr(unsafe.Pointer(&f)), uintptr(unsafe.Pointer(&t))))
	})
	return int64(f), int64(t), err
}

// Close implements engine.Backend. Open hands out one Backend per Options for the whole
// process (its primary context, stream, modules and allocator cache are shared by every
// caller), so Close releases nothing: the GPU is released when the process exits.
func (b *Backend) Close() error { return nil }
