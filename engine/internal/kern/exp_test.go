package kern

import (
	"math"
	"testing"
)

// Expf against math.Exp over the float32 range, in ulps of the float32 result.
func TestExpf(t *testing.T) {
	worst := 0.0
	for x := float32(-87); x < 88; x += 0.0137 {
		want := math.Exp(float64(x))
		got := float64(Expf(x))
		ulp := float64(math.Nextafter32(float32(want), float32(math.Inf(1))) - float32(want))
		worst = max(worst, math.Abs(got-want)/ulp)
	}
	if worst > 2 {
		t.Errorf("Expf is %.2f ulp from math.Exp at worst", worst)
	}
	for _, tt := range []struct{ x, want float32 }{
		{0, 1}, {-100, 0}, {100, float32(math.Inf(1))}, {1, float32(math.E)},
	} {
		if got := Expf(tt.x); got != tt.want && math.Abs(float64(got-tt.want)) > 1e-6 {
			t.Errorf("Expf(%g) = %g, want %g", tt.x, got, tt.want)
		}
	}
	if nan := Expf(float32(math.NaN())); nan == nan {
		t.Error("Expf(NaN) is not NaN")
	}
}
