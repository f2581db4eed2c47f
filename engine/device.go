package engine

import "fmt"

// DeviceOptions configure the device OpenDevice opens, as data: each backend takes what applies
// to it and refuses what it cannot do.
type DeviceOptions struct {
	// MatMulPrecision is the arithmetic of matmuls: "" or "auto" (the device's fastest exact-enough
	// choice), "fp32", or "bf16" (training matmuls too as bf16 products with fp32 sums, like
	// autocast). Info().MatMulPrecisions lists what a device takes.
	MatMulPrecision string
	// Threads caps how many cores an op keeps busy (the CPU); 0: all of GOMAXPROCS.
	Threads int
	// PoolLimitBytes bounds the freed buffers a backend keeps for reuse (the CPU); 0: the
	// backend's default; negative: none kept.
	PoolLimitBytes int64
	// Index is the GPU ordinal (a data-parallel rank's local rank); 0 for the first.
	Index int
}

// DeviceInfo says what a device is and what it can do.
type DeviceInfo struct {
	// Kind is the registered backend ("cpu", "cuda").
	Kind string
	// Name is the backend's own name ("cpu (avx512, bf16 dot)", "cuda (NVIDIA H200, ...)").
	Name string
	// MemoryBytes is the memory the device computes in (RAM for the CPU); 0 if unknown.
	MemoryBytes int64
	// BF16 says whether the device multiplies bf16 in hardware.
	BF16 bool
	// MatMulPrecisions are the DeviceOptions.MatMulPrecision values it takes.
	MatMulPrecisions []string
}

// Describer is implemented by backends that can say what they are beyond their name; Device's
// Info comes from it.
type Describer interface {
	Info() DeviceInfo
}

// Device is an open backend with what it is (Info) and the line a program logs about the
// choice (Chosen: the backend and, for auto, why). Close it when done.
type Device struct {
	Backend
	Info   DeviceInfo
	Chosen string
}

// OpenDevice opens the device a program's --device flag names — "cpu", a registered backend
// such as "cuda" (a program registers it by importing its package), or "auto": the first
// registered accelerator that opens, else the CPU — configured by opts. Every program opens its
// device here.
func OpenDevice(name string, opts DeviceOptions) (*Device, error) {
	switch opts.MatMulPrecision {
	case "", "auto", "fp32", "bf16":
	default:
		return nil, fmt.Errorf("--matmul-precision %q: want auto, fp32 or bf16", opts.MatMulPrecision)
	}
	b, chosen, err := openDevice(name, opts)
	if err != nil {
		return nil, err
	}
	d := &Device{Backend: b, Chosen: chosen, Info: DeviceInfo{Name: b.Name()}}
	if di, ok := b.(Describer); ok {
		d.Info = di.Info()
	}
	return d, nil
}
