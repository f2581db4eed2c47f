package engine

// Dropout masks drawn from a counter-based hash, so that every backend draws the same mask
// from the same key, bit for bit, and a backward pass can draw its forward's mask again from
// the key instead of keeping it (TrainBackend.Dropout).
//
// The mask of a tensor of n elements (row-major, element i) under seed and stream:
//
//	mix(z)  = SplitMix64's finaliser: z ^= z>>30; z *= 0xbf58476d1ce4e5b9;
//	          z ^= z>>27; z *= 0x94d049bb133111eb; z ^= z>>31  (mod 2⁶⁴)
//	key     = mix(seed ^ mix(stream))
//	u_i     = mix(key + (i+1)·0x9e3779b97f4a7c15) >> 40         (24 bits: SplitMix64's
//	                                                              (i+1)-th output from key)
//	keep_i  = u_i >= round(p·2²⁴)
//	out_i   = keep_i ? x_i·float32(1/(1-p)) : 0
//
// so an element is dropped with probability round(p·2²⁴)/2²⁴ (p within 3e-8) and the kept
// ones are scaled by 1/(1-p), PyTorch's inverted dropout (nn.Dropout in training mode).

import (
	"fmt"
	"math"
	"slices"
)

// dropoutGamma is SplitMix64's increment (2⁶⁴ divided by the golden ratio).
const dropoutGamma = 0x9e3779b97f4a7c15

// dropoutMix is SplitMix64's output finaliser.
func dropoutMix(z uint64) uint64 {
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
	z = (z ^ (z >> 27)) * 0x94d049bb133111eb
	return z ^ (z >> 31)
}

// DropoutKey is the per-call key of the mask of (seed, stream): mix(seed ^ mix(stream)).
// Backends hash element indices under it (DropoutBits).
func DropoutKey(seed, stream uint64) uint64 { return dropoutMix(seed ^ dropoutMix(stream)) }

// DropoutBits is the 24-bit uniform value u_i of element i under key (DropoutKey).
func DropoutBits(key, i uint64) uint32 { return uint32(dropoutMix(key+(i+1)*dropoutGamma) >> 40) }

// DropoutThreshold is round(p·2²⁴): element i is kept when DropoutBits(key, i) >= it.
func DropoutThreshold(p float32) uint32 { return uint32(math.Round(float64(p) * (1 << 24))) }

// DropoutScale is float32(1/(1-p)), the factor of the kept elements.
func DropoutScale(p float32) float32 { return float32(1 / (1 - float64(p))) }

// CheckDropout panics unless p is in [0, 1) (a programmer error: configurations are checked
// where they are read).
func CheckDropout(p float32) {
	if !(p >= 0 && p < 1) {
		panic(fmt.Sprintf("engine: dropout probability %g outside [0,1)", p))
	}
}

// DropoutRef is the reference of TrainBackend.Dropout on host slices: out[i] = x[i]·scale
// where element i is kept under (seed, stream), else 0. out may alias x.
func DropoutRef(out, x []float32, p float32, seed, stream uint64) {
	CheckDropout(p)
	key, thr, s := DropoutKey(seed, stream), DropoutThreshold(p), DropoutScale(p)
	for i, v := range x {
		if DropoutBits(key, uint64(i)) >= thr {
			out[i] = v * s
		} else {
			out[i] = 0
		}
	}
}

// dropoutStream is the stream of the LoRA dropout mask of adapter target tg of layer li in
// micro-batch micro of optimizer step step: step<<32 | micro<<16 | li<<4 | tg (step < 2³²,
// micro < 2¹⁶, li < 2¹², checked where they are set).
func dropoutStream(step, micro uint64, li int, tg loraTarget) uint64 {
	return step<<32 | micro<<16 | uint64(li)<<4 | uint64(tg)
}

// LoRADropoutStream is the stream of the LoRA dropout mask on the input of the adapter of
// PEFT module name module (one of LoRATargets) in layer li, for micro-batch micro of
// optimizer step step: step<<32 | micro<<16 | li<<4 | index of module in LoRATargets. The
// seed is the run's (LoRAConfig.Seed). Tests and reference scripts recompute masks with it.
func LoRADropoutStream(step, micro uint64, li int, module string) (uint64, error) {
	i := slices.Index(LoRATargets, module)
	if i < 0 {
		return 0, fmt.Errorf("lora dropout: module %q is not one of %v", module, LoRATargets)
	}
	return dropoutStream(step, micro, li, loraTarget(i)), nil
}
