package cuda

import (
	"fmt"
	"os"
	"slices"
	"strings"
	"unsafe"

	"github.com/prolong-rl/prolong/engine"
)

func init() {
	// "cuda" is the GPU of DeviceOptions.Index with bf16 matmuls (fp32 accumulation, fp32 master
	// weights), the setting for speed, unless the options ask for fp32; "cuda-fp32" keeps every
	// matmul in exact fp32, for comparisons with the CPU and for models whose training needs it.
	// Both take the paths that are off by default from PROLONG_CUDA_OPTIONS (EnvOptions).
	engine.RegisterBackend("cuda", func(o engine.DeviceOptions) (engine.Backend, error) {
		switch o.MatMulPrecision {
		case "", "auto", "bf16":
			return openNamed(Options{Device: o.Index, BF16Matmul: true})
		case "fp32":
			return openNamed(Options{Device: o.Index})
		}
		return nil, fmt.Errorf("--matmul-precision %q: want auto, fp32 or bf16", o.MatMulPrecision)
	})
	engine.RegisterBackend("cuda-fp32", func(o engine.DeviceOptions) (engine.Backend, error) {
		if o.MatMulPrecision == "bf16" {
			return nil, fmt.Errorf("--device cuda-fp32 runs exact fp32 matmuls: --matmul-precision bf16 is --device cuda")
		}
		return openNamed(Options{Device: o.Index})
	})
}

// openNamed opens a device opened by name (--device cuda, cuda-fp32) with o and the paths
// PROLONG_CUDA_OPTIONS switches on.
func openNamed(o Options) (*Backend, error) {
	o, err := EnvOptions(o)
	if err != nil {
		return nil, err
	}
	return Open(o)
}

// envOption is a name PROLONG_CUDA_OPTIONS takes and the option it sets.
type envOption struct {
	name string
	set  func(*Options)
}

// envOptions are the names PROLONG_CUDA_OPTIONS takes, each switching on one of the paths that
// are off by default until a GPU run shows they pass and win.
var envOptions = []envOption{
	{"tiled-attention", func(o *Options) { o.TiledAttention = true }},
	{"bf16-kv", func(o *Options) { o.BF16KV = true }},
	{"split-kv", func(o *Options) { o.SplitKVDecode = true }},
	{"fused-add-rmsnorm", func(o *Options) { o.FusedAddRMSNorm = true }},
	{"matmuls", func(o *Options) { o.MatMuls = true }},
	{"fused-mlp", func(o *Options) { o.FusedMLP = true }},
	{"fused-qkv-rope", func(o *Options) { o.FusedQKVRoPE = true }},
	{"multi-tensor-adamw", func(o *Options) { o.MultiTensorAdamW = true }},
	{"decode-graphs", func(o *Options) { o.DecodeGraphs = true }},
	{"cublaslt", func(o *Options) { o.CublasLt = true }},
	{"uninit-alloc", func(o *Options) { o.UninitAlloc = true }},
	{"fold-bf16", func(o *Options) { o.FoldBF16 = true }},
	{"device-top-logprobs", func(o *Options) { o.DeviceTopLogProbs = true }},
	{"split-sample", func(o *Options) { o.SplitSample = true }},
	{"large-logit-chunks", func(o *Options) { o.LogitBudget = 1 << 30 }},
}

// debugEnvOptions are names PROLONG_CUDA_OPTIONS takes that "all" leaves out: debugging aids
// that cost speed.
var debugEnvOptions = []envOption{
	{"poison-uninit", func(o *Options) { o.PoisonUninit = true }},
}

// EnvOptions is o with the paths PROLONG_CUDA_OPTIONS names switched on: a comma-separated list
// of tiled-attention, bf16-kv, split-kv, fused-add-rmsnorm, matmuls, fused-mlp, fused-qkv-rope,
// multi-tensor-adamw, decode-graphs, cublaslt, uninit-alloc, fold-bf16, device-top-logprobs,
// split-sample, large-logit-chunks, or "all" (all of those); and poison-uninit (Options.PoisonUninit, a debugging
// aid that "all" leaves out). It is how the programs
// (tools/train, tools/rollout-server, tools/bench) reach them while they are off by default.
// PROLONG_CUDA_TILED_ATTENTION=1 still means tiled-attention. An unknown name is an error that lists the known ones.
func EnvOptions(o Options) (Options, error) {
	if os.Getenv("PROLONG_CUDA_TILED_ATTENTION") == "1" {
		o.TiledAttention = true
	}
	for _, name := range strings.Split(os.Getenv("PROLONG_CUDA_OPTIONS"), ",") {
		name = strings.TrimSpace(name)
		if name == "" {
			continue
		}
		i := slices.IndexFunc(envOptions, func(e envOption) bool { return e.name == name })
		d := slices.IndexFunc(debugEnvOptions, func(e envOption) bool { return e.name == name })
		switch {
		case name == "all":
			for _, e := range envOptions {
				e.set(&o)
			}
		case d >= 0:
			debugEnvOptions[d].set(&o)
		case i < 0:
			var known []string
			for _, e := range slices.Concat(envOptions, debugEnvOptions) {
				known = append(known, e.name)
			}
			return o, fmt.Errorf("PROLONG_CUDA_OPTIONS: unknown option %q (known: %s, all)", name, strings.Join(known, ", "))
		default:
			envOptions[i].set(&o)
		}
	}
	return o, nil
}

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
