package cuda

import (
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/prolong-rl/prolong/engine"
)

// fakeWeight uploads a random linear weight [n, k] of dtype dt.
func fakeWeight(t *testing.T, b *Backend, dt engine.DType, n, k int) *engine.Tensor {
	t.Helper()
	r := rand.New(rand.NewPCG(uint64(n), uint64(k)))
	v := make([]float32, n*k)
	for i := range v {
		v[i] = float32(r.NormFloat64())
	}
	w, err := b.Upload(dt, v, true, n, k)
	if err != nil {
		t.Fatal(err)
	}
	return w
}

// TestMatMulsLaunches (fake GPU): MatMuls of decoding rows is one gemv3 launch per three
// weights of one operand type, each block range of its grid one weight's gemv grid, with the
// arguments of each product (an unused slot has N = 0); the engine's unfused route is one
// launch per weight. Prefill rows run one GEMM per weight on x's bf16 copy, converted once.
func TestMatMulsLaunches(t *testing.T) {
	g := newFakeGPU(t, 90, 1<<30)
	b, err := Open(Options{MatMuls: true})
	if err != nil {
		t.Fatal(err)
	}
	if !b.FusesMatMuls() {
		t.Fatal("Options.MatMuls set, FusesMatMuls false")
	}
	if off, _ := Open(Options{}); off.FusesMatMuls() {
		t.Fatal("MatMuls on by default")
	}
	for _, tc := range []struct {
		name string
		dt   engine.DType
		m, k int
		ns   []int
		want []string
		wpr  int
	}{
		{"qkv/bf16", engine.BF16, 1, 64, []int{96, 32, 32}, []string{"gemv3_bf16"}, 1},
		{"gate-up/f32", engine.F32, 8, 128, []int{200, 200}, []string{"gemv3_f32"}, 1},
		{"four/bf16", engine.BF16, 3, 64, []int{17, 9, 8, 40}, []string{"gemv3_bf16", "gemv3_bf16"}, 1},
		{"long-rows/bf16", engine.BF16, 2, 8192, []int{10, 3}, []string{"gemv3_bf16"}, 4},
	} {
		t.Run(tc.name, func(t *testing.T) {
			x := b.Alloc(tc.m, tc.k)
			var outs, ws []*engine.Tensor
			for _, n := range tc.ns {
				outs = append(outs, b.Alloc(tc.m, n))
				ws = append(ws, fakeWeight(t, b, tc.dt, n, tc.k))
			}
			l0 := len(g.launches)
			b.MatMuls(outs, x, ws)
			if err := b.Sync(); err != nil {
				t.Fatal(err)
			}
			if got := g.launched(l0); !slices.Equal(got, tc.want) {
				t.Fatalf("launches %v, want %v", got, tc.want)
			}
			for li, l := range g.launches[l0:] {
				grid := 0
				for j := 0; j < 3; j++ {
					i := 3*li + j
					y, w, n := uint64(0), uint64(0), uint64(0)
					if i < len(ws) {
						y, w, n = uint64(ptr(outs[i])), uint64(ptr(ws[i])), uint64(tc.ns[i])
						grid += (tc.ns[i] + 8/tc.wpr - 1) / (8 / tc.wpr)
					}
					if l.args[j] != y || l.args[4+j] != w || l.args[7+j] != n {
						t.Errorf("launch %d slot %d: y %#x w %#x N %d; want %#x %#x %d", li, j, l.args[j], l.args[4+j], l.args[7+j], y, w, n)
					}
				}
				if l.args[3] != uint64(ptr(x)) || l.args[10] != uint64(tc.m) || l.args[11] != uint64(tc.k) || l.args[12] != uint64(tc.wpr) {
					t.Errorf("launch %d: x %#x M %d K %d wpr %d; want %#x %d %d %d", li, l.args[3], l.args[10], l.args[11], l.args[12], ptr(x), tc.m, tc.k, tc.wpr)
				}
				if l.grid != [3]int{grid, 1, 1} || l.block != 256 {
					t.Errorf("launch %d: grid %v block %d, want [%d 1 1] 256", li, l.grid, l.block, grid)
				}
			}
			// The engine's route without MatMuls: one launch per weight.
			l0 = len(g.launches)
			for i, w := range ws {
				b.MatMul(outs[i], x, w)
			}
			if n := len(g.launches) - l0; n != len(ws) {
				t.Errorf("unfused: %d launches, want %d", n, len(ws))
			}
		})
	}

	// Prefill rows: one conversion of x for three GEMMs.
	x := b.Alloc(16, 64)
	var outs, ws []*engine.Tensor
	for _, n := range []int{64, 32, 32} {
		outs = append(outs, b.Alloc(16, n))
		ws = append(ws, fakeWeight(t, b, engine.BF16, n, 64))
	}
	l0, g0 := len(g.launches), g.count("blas.gemmEx")
	b.MatMuls(outs, x, ws)
	if err := b.Sync(); err != nil {
		t.Fatal(err)
	}
	if got, gemms := g.launched(l0), g.count("blas.gemmEx")-g0; !slices.Equal(got, []string{"f32_to_bf16_kernel"}) || gemms != 3 {
		t.Fatalf("prefill MatMuls: launches %v and %d GEMMs, want one conversion and 3", got, gemms)
	}
}

// TestGateUpSwiGLULaunches (fake GPU): the fused MLP op of decoding rows is one gemv_swiglu
// launch (three unfused: two matrix-vector products and swiglu), with the products written
// only where kept; of prefill rows, x's conversion, two GEMMs and swiglu_out_bf16 writing out's
// bf16 copy, which the down projection's GEMM then reads without converting out (unfused: a
// second conversion).
func TestGateUpSwiGLULaunches(t *testing.T) {
	g := newFakeGPU(t, 90, 1<<30)
	b, err := Open(Options{FusedMLP: true})
	if err != nil {
		t.Fatal(err)
	}
	if !b.FusesGateUpSwiGLU() {
		t.Fatal("Options.FusedMLP set, FusesGateUpSwiGLU false")
	}
	if off, _ := Open(Options{}); off.FusesGateUpSwiGLU() {
		t.Fatal("FusedMLP on by default")
	}
	const d, inter = 64, 96
	wg, wu, wd := fakeWeight(t, b, engine.BF16, inter, d), fakeWeight(t, b, engine.BF16, inter, d), fakeWeight(t, b, engine.BF16, d, inter)

	for _, keep := range []bool{false, true} {
		x, out := b.Alloc(2, d), b.Alloc(2, inter)
		var gate, up *engine.Tensor
		wantG, wantU := uint64(0), uint64(0)
		if keep {
			gate, up = b.Alloc(2, inter), b.Alloc(2, inter)
			wantG, wantU = uint64(ptr(gate)), uint64(ptr(up))
		}
		l0 := len(g.launches)
		b.GateUpSwiGLU(out, gate, up, x, wg, wu)
		if err := b.Sync(); err != nil {
			t.Fatal(err)
		}
		if got := g.launched(l0); !slices.Equal(got, []string{"gemv_swiglu_bf16"}) {
			t.Fatalf("decode keep=%v: launches %v, want gemv_swiglu_bf16 alone", keep, got)
		}
		l := g.launches[l0]
		want := []uint64{uint64(ptr(out)), wantG, wantU, uint64(ptr(x)), uint64(ptr(wg)), uint64(ptr(wu)), 2, inter, d, 1}
		if !slices.Equal(l.args, want) || l.grid != [3]int{inter / 8, 1, 1} || l.block != 256 {
			t.Fatalf("decode keep=%v: args %#x grid %v block %d; want %#x grid [%d 1 1] block 256", keep, l.args, l.grid, l.block, want, inter/8)
		}
	}
	g0 := len(g.launches)
	x, gt, ut, mm := b.Alloc(2, d), b.Alloc(2, inter), b.Alloc(2, inter), b.Alloc(2, inter)
	b.MatMul(gt, x, wg)
	b.MatMul(ut, x, wu)
	b.SwiGLU(mm, gt, ut)
	if n := len(g.launches) - g0; n != 3 {
		t.Fatalf("decode unfused: %d launches, want 3", n)
	}

	// Prefill rows, then the down projection.
	const T = 16
	for _, fused := range []bool{true, false} {
		x, out, dn := b.Alloc(T, d), b.Alloc(T, inter), b.Alloc(T, d)
		l0, g0 := len(g.launches), g.count("blas.gemmEx")
		if fused {
			b.GateUpSwiGLU(out, nil, nil, x, wg, wu)
		} else {
			gate, up := b.Alloc(T, inter), b.Alloc(T, inter)
			b.MatMul(gate, x, wg)
			b.MatMul(up, x, wu)
			b.SwiGLU(out, gate, up)
		}
		b.MatMul(dn, out, wd)
		if err := b.Sync(); err != nil {
			t.Fatal(err)
		}
		want := []string{"f32_to_bf16_kernel", "swiglu_out_bf16"}
		if !fused {
			want = []string{"f32_to_bf16_kernel", "swiglu", "f32_to_bf16_kernel"}
		}
		if got, gemms := g.launched(l0), g.count("blas.gemmEx")-g0; !slices.Equal(got, want) || gemms != 3 {
			t.Fatalf("prefill fused=%v: launches %v and %d GEMMs, want %v and 3", fused, got, gemms, want)
		}
		if fused {
			l := g.launches[l0+1]
			if l.args[0] != uint64(ptr(out)) || l.args[1] != devBuf(out).bf || l.args[1] == 0 || l.args[4] != T*inter {
				t.Fatalf("swiglu_out_bf16 args %#x: want out %#x, its bf16 copy %#x, n %d", l.args, ptr(out), devBuf(out).bf, T*inter)
			}
		}
	}
}
