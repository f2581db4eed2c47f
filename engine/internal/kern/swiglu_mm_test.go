package kern

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"
)

// TestMatMulSwiGLU: the fused gate/up product with SwiGLU gives MatMuls then SwiGLU bit for bit
// (out, and the products where asked for), on every ISA path and the emulated AMX path, for
// fp32, bf16 and bf16 dot-product weights (and a dot weight beside an fp32 one, which takes the
// unfused route), with partial last panels, row counts around the register blocks and past one
// strip (stripRows), and 1 to 3 threads; out's values past m·n are left alone.
func TestMatMulSwiGLU(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	paths := map[string]func() func(){}
	for _, isa := range ISAs() {
		paths[isa] = func() func() { return SetISA(isa) }
	}
	paths["amx-emulated"] = useAMXEmulation
	for name, set := range paths {
		restore := set()
		for _, tc := range []struct {
			k, n       int
			gate, up   string // f32, bf16, dot
			keep       bool   // gy, uy written too
			ms         []int
			threadList []Threads
		}{
			{64, 96, "f32", "f32", false, []int{1, 5, 16, 33, 300}, []Threads{1, 2, 3}},
			{100, 33, "bf16", "bf16", true, []int{1, 7, 29, 260}, []Threads{1, 3}},
			{37, 70, "dot", "dot", true, []int{1, 4, 15, 40}, []Threads{1, 2}},
			{48, 7, "dot", "dot", false, []int{3, 33, 290}, []Threads{2}},
			{32, 40, "dot", "f32", true, []int{6}, []Threads{2}},
			{0, 9, "f32", "f32", true, []int{3}, []Threads{1}},
		} {
			mk := func(kind string) *Weight {
				w := randF32(r, tc.n*tc.k)
				switch kind {
				case "bf16":
					return newWeight(r, tc.n, tc.k, true)
				case "dot":
					return Threads(0).NewWeightDot(w, tc.n, tc.k)
				}
				return NewWeightF32(w, tc.n, tc.k)
			}
			g, u := mk(tc.gate), mk(tc.up)
			for _, m := range tc.ms {
				for _, thr := range tc.threadList {
					id := fmt.Sprintf("%s k=%d n=%d %s/%s m=%d threads %d", name, tc.k, tc.n, tc.gate, tc.up, m, thr)
					x := randF32(r, m*tc.k)
					for i := range x {
						x[i] *= 2
					}
					mn := m * tc.n
					wg, wu, want := make([]float32, mn), make([]float32, mn), make([]float32, mn)
					thr.MatMuls([][]float32{wg, wu}, x, m, []*Weight{g, u})
					SwiGLU(want, wg, wu)
					out := nanBuf(mn + 5)
					var gy, uy []float32
					if tc.keep {
						gy, uy = nanBuf(mn), nanBuf(mn)
					}
					thr.MatMulSwiGLU(out, gy, uy, x, m, g, u)
					same(t, id+" out", out[:mn], want)
					for i := mn; i < len(out); i++ {
						if !math.IsNaN(float64(out[i])) {
							t.Fatalf("%s: out[%d] written past m·n", id, i)
						}
					}
					if tc.keep {
						same(t, id+" gate", gy, wg)
						same(t, id+" up", uy, wu)
					}
				}
			}
		}
		restore()
	}
}

// nanBuf is n NaNs: values an op must overwrite.
func nanBuf(n int) []float32 {
	s := make([]float32, n)
	for i := range s {
		s[i] = float32(math.NaN())
	}
	return s
}

// same fails unless got and want are equal bit for bit.
func same(t *testing.T, what string, got, want []float32) {
	t.Helper()
	for i := range want {
		if math.Float32bits(got[i]) != math.Float32bits(want[i]) {
			t.Fatalf("%s: [%d] = %v, want %v", what, i, got[i], want[i])
		}
	}
}
