// Package cpu is Prolong's CPU backend: the reference implementation of engine.Backend and
// engine.TrainBackend, fp32 compute with weights in fp32 or bf16, on the SIMD kernels of
// engine/internal/kern (AVX-512, AVX2+FMA or pure Go, chosen at run time).
//
// Importing the package registers it as "cpu" with engine.RegisterBackend, so that
// engine.OpenDevice("cpu") and the CPU fallback of engine.OpenDevice("auto") find it:
//
//	import _ "github.com/prolong-rl/prolong/engine/cpu"
//
// A program that wants options calls New directly:
//
//	b := cpu.New(cpu.WithPoolLimit(256<<20), cpu.WithThreads(4))
package cpu
