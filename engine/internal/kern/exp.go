package kern

import "math"

// Expf is e^x in float32 (Cephes' expf: range reduction to 2^n·e^r with |r| <= ln2/2 and a
// degree-7 polynomial), within 2 ulp of math.Exp over the float32 range and several times
// faster. Results below the normal range flush to zero.
func Expf(x float32) float32 {
	switch {
	case x != x:
		return x
	case x > 88.72283:
		return float32(math.Inf(1))
	case x < -87.33654:
		return 0
	}
	// Each product is rounded on its own (float32(...)), so that no compiler fuses it into an
	// FMA: the AVX2 kernels (attn_amd64.s) repeat these steps and must give the same bits.
	n := float32(math.Floor(float64(float32(x*1.44269504088896341) + 0.5)))
	r := x - float32(n*0.693359375)
	r -= float32(n * -2.12194440e-4)
	p := float32(1.9875691500e-4)
	p = float32(p*r) + 1.3981999507e-3
	p = float32(p*r) + 8.3334519073e-3
	p = float32(p*r) + 4.1665795894e-2
	p = float32(p*r) + 1.6666665459e-1
	p = float32(p*r) + 5.0000001201e-1
	y := float32(float32(p*r)*r) + r + 1
	return y * math.Float32frombits(uint32(int32(n)+127)<<23)
}

// Silu is x·sigmoid(x) = x / (1 + e^-x).
func Silu(x float32) float32 { return x / (1 + Expf(-x)) }

// Sqrtf is the correctly rounded float32 square root (through float64: exact for float32).
func Sqrtf(x float32) float32 { return float32(math.Sqrt(float64(x))) }
