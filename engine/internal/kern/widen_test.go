package kern

import (
	"math"
	"math/rand/v2"
	"testing"
)

// TestWidenBF16: every path widens bf16 to the same fp32 as the scalar BF16ToF32 (x << 16),
// around the 32-value cut-off of the vector loop, NaNs, infinities and subnormals included.
func TestWidenBF16(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for _, n := range []int{0, 1, 31, 32, 33, 64, 100, 1024 + 17} {
		src := make([]uint16, n)
		for i := range src {
			src[i] = uint16(rng.Uint32())
		}
		if n > 3 {
			src[0], src[1], src[2] = 0x7fc1, 0xff80, 0x0001 // NaN, -Inf, subnormal
		}
		for _, isa := range ISAs() {
			restore := SetISA(isa)
			got := make([]float32, n)
			WidenBF16(got, src)
			restore()
			for i, v := range src {
				if want := math.Float32frombits(uint32(v) << 16); math.Float32bits(got[i]) != math.Float32bits(want) {
					t.Fatalf("%s, n=%d: [%d] = %#x, want %#x", isa, n, i, math.Float32bits(got[i]), math.Float32bits(want))
				}
			}
		}
	}
}
