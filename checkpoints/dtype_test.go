package checkpoints

import (
	"math"
	"math/big"
	"math/rand/v2"
	"sort"
	"testing"
)

// TestBF16Rounding checks fp32 -> bf16 against a hand-worked table (round to nearest, ties to
// even on the 16 dropped bits) and against a float64 nearest-neighbour search on random values.
func TestBF16Rounding(t *testing.T) {
	for _, tc := range []struct {
		in   uint32
		want uint16
		why  string
	}{
		{0x3F800000, 0x3F80, "1 is exact"},
		{0xC0200000, 0xC020, "-2.5 is exact"},
		{0x3F808000, 0x3F80, "1+2^-8: tie, 0x3F80 is even"},
		{0x3F818000, 0x3F82, "1+3*2^-8: tie, 0x3F81 is odd so up to 1.015625"},
		{0x3F808001, 0x3F81, "just above the tie rounds up"},
		{0x3F807FFF, 0x3F80, "just below the tie rounds down"},
		{0x40490FDB, 0x4049, "pi -> 3.140625"},
		{0x477FE000, 0x4780, "65504 -> 65536"},
		{0x7F7FFFFF, 0x7F80, "max float overflows to +inf"},
		{0xFF800000, 0xFF80, "-inf stays"},
		{0x00008000, 0x0000, "subnormal tie to even zero"},
		{0x00018000, 0x0002, "subnormal tie, 1 is odd so up to 2"},
		{0x80000000, 0x8000, "-0 keeps its sign"},
		{0x7F800001, 0x7FC0, "a signalling NaN stays NaN (quiet)"},
		{0x7FC00000, 0x7FC0, "quiet NaN"},
	} {
		if got := F32ToBF16(math.Float32frombits(tc.in)); got != tc.want {
			t.Errorf("F32ToBF16(%#08x) = %#04x, want %#04x (%s)", tc.in, got, tc.want, tc.why)
		}
	}
	r := rand.New(rand.NewPCG(1, 2))
	for i := 0; i < 200000; i++ {
		b := r.Uint32()
		if b&0x7f800000 == 0x7f800000 {
			continue
		}
		v := float64(math.Float32frombits(b))
		lo := float64(BF16ToF32(uint16(b >> 16)))
		hi := float64(BF16ToF32(uint16(b>>16) + 1)) // the next bf16 away from zero
		if math.IsInf(hi, 0) {
			hi = math.Copysign(math.Ldexp(1, 128), v) // as if the exponent were unbounded
		}
		want := uint16(b >> 16)
		dl, dh := math.Abs(v-lo), math.Abs(v-hi)
		if dh < dl || dh == dl && want&1 == 1 {
			want++
		}
		if got := F32ToBF16(float32(v)); got != want {
			t.Fatalf("F32ToBF16(%#08x) = %#04x, nearest-even search says %#04x", b, got, want)
		}
	}
}

// TestF16Rounding checks fp32 -> f16 against a hand-worked table, every half value's widening
// against a direct formula, and random values against a nearest search over all halves.
func TestF16Rounding(t *testing.T) {
	p := func(e int) float32 { return float32(math.Ldexp(1, e)) }
	for _, tc := range []struct {
		in   float32
		want uint16
		why  string
	}{
		{1, 0x3C00, "1"},
		{-2.5, 0xC100, "-2.5"},
		{0.1, 0x2E66, "0.1 -> 0.0999755859375"},
		{float32(math.Pi), 0x4248, "pi -> 3.140625"},
		{65504, 0x7BFF, "largest half"},
		{65519, 0x7BFF, "below the tie with 65536"},
		{65520, 0x7C00, "tie between 65504 (odd) and 65536 -> +inf"},
		{1e6, 0x7C00, "overflow"},
		{1 + p(-11), 0x3C00, "tie, 0x3C00 even"},
		{1 + 3*p(-11), 0x3C02, "tie, 0x3C01 odd -> up"},
		{p(-14), 0x0400, "smallest normal"},
		{p(-24), 0x0001, "smallest subnormal"},
		{p(-25), 0x0000, "tie between 0 and 2^-24 -> 0"},
		{1.5 * p(-25), 0x0001, "above the tie"},
		{3 * p(-25), 0x0002, "1.5 x 2^-24: tie, 1 odd -> 2"},
		{1e-10, 0x0000, "underflow"},
		{float32(math.Copysign(0, -1)), 0x8000, "-0"},
		{float32(math.Inf(-1)), 0xFC00, "-inf"},
	} {
		if got := F32ToF16(tc.in); got != tc.want {
			t.Errorf("F32ToF16(%g) = %#04x, want %#04x (%s)", tc.in, got, tc.want, tc.why)
		}
	}
	// Widening: value = (-1)^s x 2^(e-15) x (1 + f/1024), subnormals 2^-14 x f/1024.
	var finite []float64 // every non-negative finite half, ascending
	for h := 0; h < 1<<16; h++ {
		s, e, f := h>>15, (h>>10)&31, h&1023
		got := F16ToF32(uint16(h))
		var want float64
		switch {
		case e == 31 && f == 0:
			want = math.Inf(1)
		case e == 31:
			if got == got {
				t.Fatalf("F16ToF32(%#04x) = %g, want NaN", h, got)
			}
			continue
		case e == 0:
			want = math.Ldexp(float64(f)/1024, -14)
		default:
			want = math.Ldexp(1+float64(f)/1024, e-15)
		}
		if s == 1 {
			want = -want
		}
		if float64(got) != want || math.Signbit(float64(got)) != (s == 1) {
			t.Fatalf("F16ToF32(%#04x) = %g, want %g", h, got, want)
		}
		if F32ToF16(got) != uint16(h) {
			t.Fatalf("F32ToF16(F16ToF32(%#04x)) = %#04x", h, F32ToF16(got))
		}
		if s == 0 && e < 31 {
			finite = append(finite, want)
		}
	}
	r := rand.New(rand.NewPCG(3, 4))
	for i := 0; i < 200000; i++ {
		v := float32(math.Ldexp(r.Float64(), r.IntN(44)-28)) // 2^-28 .. 2^16
		x := float64(v)
		k := sort.SearchFloat64s(finite, x) // finite[k-1] < x <= finite[k]
		var want uint16
		switch {
		case k == len(finite):
			want = 0x7C00 // beyond 65504: halfway to 65536 or more
			if x < 65520 {
				want = 0x7BFF
			}
		case finite[k] == x || k == 0:
			want = uint16(k)
		default:
			dl, dh := x-finite[k-1], finite[k]-x
			want = uint16(k)
			if dl < dh || dl == dh && (k-1)&1 == 0 {
				want = uint16(k - 1)
			}
		}
		if got := F32ToF16(v); got != want {
			t.Fatalf("F32ToF16(%g) = %#04x, nearest-even search says %#04x", v, got, want)
		}
	}
}

// halfFormat describes a binary floating-point format narrower than fp32 for refRound.
type halfFormat struct {
	name    string
	prec    int     // significand bits, the implicit one included
	emin    int     // exponent of the smallest normal value
	maxFin  float64 // largest finite value
	enc     func(float32) uint16
	dec     func(uint16) float32
	maxBits uint16 // bit pattern of maxFin
}

var halfFormats = []halfFormat{
	{"bf16", 8, -126, math.Ldexp(255, 127-7), F32ToBF16, BF16ToF32, 0x7f7f},
	{"f16", 11, -14, 65504, F32ToF16, F16ToF32, 0x7bff},
}

// refRound rounds x to the format f by a second, independent formulation: exact big.Float
// arithmetic on the value rather than bit manipulation. The quantum at x is
// 2^(max(floor(log2|x|), emin) - (prec-1)); x / quantum is rounded to an integer, ties to even;
// a result beyond the largest finite value by half a unit in the last place or more is an
// infinity (IEEE 754 overflow under round to nearest).
func refRound(f halfFormat, x float32) float64 {
	if x == 0 || math.IsInf(float64(x), 0) {
		return float64(x)
	}
	bx := new(big.Float).SetFloat64(float64(x)) // exact
	e := bx.MantExp(nil) - 1                    // floor(log2|x|)
	qe := max(e, f.emin) - (f.prec - 1)
	n := new(big.Float).SetMantExp(bx, -qe) // x / quantum, exact
	whole, _ := n.Int(nil)                  // truncated toward zero
	frac := new(big.Float).Sub(n, new(big.Float).SetInt(whole))
	frac.Abs(frac)
	half := big.NewFloat(0.5)
	away := frac.Cmp(half) > 0 || frac.Cmp(half) == 0 && whole.Bit(0) == 1
	if away {
		if x > 0 {
			whole.Add(whole, big.NewInt(1))
		} else {
			whole.Sub(whole, big.NewInt(1))
		}
	}
	r, _ := new(big.Float).SetMantExp(new(big.Float).SetInt(whole), qe).Float64()
	if math.Abs(r) > f.maxFin {
		return math.Inf(int(math.Copysign(1, r)))
	}
	if r == 0 {
		return math.Copysign(0, float64(x))
	}
	return r
}

// TestHalfTable checks both formats on hand-worked values, NaNs included: "=" pairs convert
// both ways, "->" only narrowing, "<-" only widening.
func TestHalfTable(t *testing.T) {
	bf16, f16 := halfFormats[0], halfFormats[1]
	for _, tc := range []struct {
		f    halfFormat
		f32  uint32 // fp32 bits
		dir  string
		half uint16
		why  string
	}{
		{f16, 0x7FC00000, "=", 0x7E00, "the quiet NaN"},
		{f16, 0xFFC00000, "=", 0xFE00, "a negative NaN keeps its sign"},
		{f16, 0x7F800001, "->", 0x7E00, "a signalling NaN whose payload is below f16's stays NaN (quiet)"},
		{f16, 0x7FA00000, "->", 0x7F00, "the top payload bits are kept"},
		{f16, 0x7F802000, "<-", 0x7C01, "a signalling NaN widens with its payload"},
		{f16, 0x7F800000, "=", 0x7C00, "+inf"},
		{f16, 0xFF800000, "=", 0xFC00, "-inf"},
		{f16, 0x477FE000, "=", 0x7BFF, "65504, the largest half"},
		{f16, 0x38800000, "=", 0x0400, "2^-14, the smallest normal"},
		{f16, 0x387FC000, "=", 0x03FF, "the largest subnormal, 1023 x 2^-24"},
		{f16, 0x387FE000, "->", 0x0400, "2^-14 - 2^-25 rounds up across the subnormal boundary (tie, 0x3ff odd)"},
		{f16, 0x33800000, "=", 0x0001, "2^-24, the smallest subnormal"},
		{f16, 0x33000001, "->", 0x0001, "just above half the smallest subnormal"},
		{f16, 0x80000000, "=", 0x8000, "-0"},
		{f16, 0x80000001, "->", 0x8000, "the smallest fp32 subnormal underflows to -0"},
		{bf16, 0xFFC00001, "->", 0xFFC0, "a negative NaN keeps its sign"},
		{bf16, 0x7F810000, "->", 0x7FC1, "a signalling NaN becomes quiet, payload kept"},
		{bf16, 0xFF800000, "=", 0xFF80, "-inf"},
		{bf16, 0x7F7F7FFF, "->", 0x7F7F, "just below the overflow tie stays finite"},
		{bf16, 0x7F7F8000, "->", 0x7F80, "the overflow tie rounds to +inf (0x7f7f odd)"},
		{bf16, 0x00800000, "=", 0x0080, "the smallest normal"},
		{bf16, 0x007FFFFF, "->", 0x0080, "the largest subnormal rounds up into the normals"},
		{bf16, 0x00010000, "=", 0x0001, "the smallest subnormal"},
	} {
		if tc.dir != "<-" {
			if got := tc.f.enc(math.Float32frombits(tc.f32)); got != tc.half {
				t.Errorf("%s: %#08x narrows to %#04x, want %#04x (%s)", tc.f.name, tc.f32, got, tc.half, tc.why)
			}
		}
		if tc.dir != "->" {
			if got := math.Float32bits(tc.f.dec(tc.half)); got != tc.f32 {
				t.Errorf("%s: %#04x widens to %#08x, want %#08x (%s)", tc.f.name, tc.half, got, tc.f32, tc.why)
			}
		}
	}
}

// TestHalfAgainstBigFloat holds both encoders to refRound: on every fp32 whose top 16 bits
// are all zero or all one below them (the neighbourhood of every bf16 and f16 value, ties
// included), on both sides of each, and on random fp32 values of every magnitude.
func TestHalfAgainstBigFloat(t *testing.T) {
	check := func(f halfFormat, b uint32) {
		v := math.Float32frombits(b)
		if v != v {
			return
		}
		want := refRound(f, v)
		got := float64(f.dec(f.enc(v)))
		if got != want || math.Signbit(got) != math.Signbit(want) {
			t.Fatalf("%s: %#08x (%g) encodes to %#04x = %g; exact rounding gives %g", f.name, b, v, f.enc(v), got, want)
		}
	}
	for _, f := range halfFormats {
		for hi := uint32(0); hi < 1<<16; hi++ {
			for _, lo := range []uint32{0, 1, 0x0fff, 0x1000, 0x1001, 0x1fff, 0x7fff, 0x8000, 0x8001, 0xffff} {
				check(f, hi<<16|lo)
			}
		}
		r := rand.New(rand.NewPCG(7, 8))
		for range 100000 {
			check(f, r.Uint32())
		}
	}
}

// TestHalfExhaustive: every 16-bit pattern of both formats widens and narrows back to itself
// (NaNs to a NaN), and each exact midpoint between neighbours rounds to the even one.
func TestHalfExhaustive(t *testing.T) {
	for _, f := range halfFormats {
		for i := 0; i < 1<<16; i++ {
			h := uint16(i)
			v := f.dec(h)
			if v != v {
				if g := f.dec(f.enc(v)); g == g {
					t.Fatalf("%s: NaN %#04x encodes to non-NaN %v", f.name, h, g)
				}
				continue
			}
			if g := f.enc(v); g != h {
				t.Fatalf("%s: %#04x (%v) encodes to %#04x", f.name, h, v, g)
			}
			if h&0x7fff < f.maxBits { // the midpoint to the next pattern of the same sign
				lo, hi := float64(v), float64(f.dec(h+1))
				mid := float32((lo + hi) / 2)
				if float64(mid) != (lo+hi)/2 {
					t.Fatalf("%s: midpoint of %#04x and %#04x is not an fp32", f.name, h, h+1)
				}
				want := h
				if h&1 == 1 {
					want = h + 1
				}
				if g := f.enc(mid); g != want {
					t.Fatalf("%s: midpoint %v of %#04x and %#04x encodes to %#04x, want %#04x", f.name, mid, h, h+1, g, want)
				}
			}
		}
	}
}
