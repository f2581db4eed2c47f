package kern

import (
	"math"
	"math/rand/v2"
	"testing"
)

// TestExps: Exps gives math.Exp's bits on every ISA path, for values across the float64 range
// and around math.Exp's special cases (overflow, the denormal range, underflow, NaN, ±Inf, ±0),
// at lengths that leave a tail of 1-3 values, wherever in a group of four the special value sits.
func TestExps(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 8))
	special := []float64{0, math.Copysign(0, -1), 1, -1, 708, 709, 709.78, 709.79, 710, -708, -708.4, -709, -720,
		-744.4, -745.2, -746, -1e300, 1e300, math.Inf(1), math.Inf(-1), math.NaN(), 1e-300, -1e-300, 5e-324,
		math.Ln2, -math.Ln2 / 2, math.Ln2 / 2, 0.5 * math.Ln2 * 1023}
	var src []float64
	for i := 0; i < 20000; i++ {
		switch i % 4 {
		case 0:
			src = append(src, r.NormFloat64()*3) // softmax-like arguments
		case 1:
			src = append(src, -r.Float64()*30)
		case 2:
			src = append(src, (r.Float64()*2-1)*708)
		default:
			src = append(src, (r.Float64()*2-1)*1e-6)
		}
	}
	for _, isa := range ISAs() {
		restore := SetISA(isa)
		for _, n := range []int{0, 1, 3, 4, 5, 7, 8, 1001, len(src)} {
			dst := make([]float64, n)
			Exps(dst, src[:n])
			check(t, isa, src[:n], dst)
		}
		for shift := range 4 { // a special value in each lane of a group, and in the tail
			in := make([]float64, 0, 4*len(special)+3)
			for range shift {
				in = append(in, 0.25)
			}
			for _, s := range special {
				in = append(in, s, 1.5, -2.5, 3.5)
			}
			dst := make([]float64, len(in))
			Exps(dst, in)
			check(t, isa, in, dst)
		}
		restore()
	}
}

func check(t *testing.T, isa string, src, dst []float64) {
	t.Helper()
	for i, x := range src {
		if want := math.Exp(x); math.Float64bits(dst[i]) != math.Float64bits(want) && !(math.IsNaN(want) && math.IsNaN(dst[i])) {
			t.Fatalf("%s: Exps(%v) at %d of %d = %v (%#x), math.Exp %v (%#x)", isa, x, i, len(src), dst[i], math.Float64bits(dst[i]), want, math.Float64bits(want))
		}
	}
}

// BenchmarkExps measures a vocabulary-long row of exponentials, against math.Exp on each.
func BenchmarkExps(b *testing.B) {
	r := rand.New(rand.NewPCG(1, 2))
	src, dst := make([]float64, 32000), make([]float64, 32000)
	for i := range src {
		src[i] = r.NormFloat64()*2 - 6
	}
	b.Run("Exps", func(b *testing.B) {
		for b.Loop() {
			Exps(dst, src)
		}
	})
	b.Run("math.Exp", func(b *testing.B) {
		for b.Loop() {
			for i, x := range src {
				dst[i] = math.Exp(x)
			}
		}
	})
}
