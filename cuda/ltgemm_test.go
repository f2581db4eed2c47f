package cuda

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"unsafe"

	"github.com/prolong-rl/prolong/engine"
)

// The fake cuBLASLt of the fake GPU (fake_test.go): its descriptors, layouts and preferences
// are objects the test can read back, its heuristic answers as the test says, and every
// cublasLtMatmul is recorded as the GEMM its descriptors describe, in cublasGemmEx's terms, so
// that a test compares the two calls of one op field by field.

// The heuristic's answers (fakeLt.heuristic).
const (
	ltAlgoFound       = iota // one runnable algorithm
	ltAlgoNone               // success, no result
	ltAlgoUnsupported        // CUBLAS_STATUS_NOT_SUPPORTED
)

type fakeLt struct {
	loadErr   error  // loadCublasLt fails with it
	heuristic int    // ltAlgoFound, ltAlgoNone, ltAlgoUnsupported
	need      uint64 // the workspace the algorithm asks for
	next      uintptr
	objs      map[uintptr]*fakeLtObj // descriptors, layouts and preferences alive, by handle
	queries   []fakeLtQuery
	matmuls   []fakeLtMatmul
}

// fakeLtObj is a descriptor ("desc": compute type, scale type), a layout ("layout": type, rows,
// cols, ld) or a preference ("pref"), with the attributes set on it.
type fakeLtObj struct {
	kind  string
	v     []uint64
	attrs map[uintptr]uint64
}

// fakeLtQuery is one cublasLtMatmulAlgoGetHeuristic: the GEMM described (no addresses), and
// the preference's workspace limit and minimum alignments of A, B, C, D.
type fakeLtQuery struct {
	g         gemm
	workspace uint64
	align     [4]uint64
}

// fakeLtMatmul is one cublasLtMatmul: the GEMM it runs, its workspace, stream and algorithm.
type fakeLtMatmul struct {
	g           gemm
	ws, wsBytes uint64
	stream      uintptr
	algo        ltAlgo
}

func (g *fakeGPU) ltObj(h uintptr, kind string) *fakeLtObj {
	o := g.lt.objs[h]
	if o == nil || o.kind != kind {
		g.t.Fatalf("cuBLASLt: handle %#x is not a live %s", h, kind)
	}
	return o
}

// ltDescribe is the GEMM a matmul descriptor and the A, B, C layouts describe, in
// cublasGemmEx's terms (m, n, k from the layouts and the transposes), or an error where the
// layouts do not fit together.
func (g *fakeGPU) ltDescribe(desc, la, lb, lc uintptr) (gemm, error) {
	d := g.ltObj(desc, "desc")
	A, B, C := g.ltObj(la, "layout"), g.ltObj(lb, "layout"), g.ltObj(lc, "layout")
	if d.v[1] != dtF32 {
		return gemm{}, fmt.Errorf("scale type %d, the scalars passed are float", d.v[1])
	}
	r := gemm{transA: int(d.attrs[ltDescTransA]), transB: int(d.attrs[ltDescTransB]), compute: int(d.v[0]),
		aType: int(A.v[0]), lda: int(A.v[3]), bType: int(B.v[0]), ldb: int(B.v[3]), cType: int(C.v[0]), ldc: int(C.v[3]),
		m: int(C.v[1]), n: int(C.v[2])}
	am, ak := A.v[1], A.v[2]
	if r.transA == opT {
		am, ak = ak, am
	}
	bk, bn := B.v[1], B.v[2]
	if r.transB == opT {
		bk, bn = bn, bk
	}
	r.k = int(ak)
	if int(am) != r.m || bk != ak || int(bn) != r.n {
		return gemm{}, fmt.Errorf("layouts do not fit: op(A) %dx%d, op(B) %dx%d, C %dx%d", am, ak, bk, bn, r.m, r.n)
	}
	for _, l := range []*fakeLtObj{A, B, C} {
		if l.v[3] < l.v[1] {
			return gemm{}, fmt.Errorf("leading dimension %d below the %d rows", l.v[3], l.v[1])
		}
	}
	return r, nil
}

// ltCall runs a call of the fake cuBLASLt.
func (g *fakeGPU) ltCall(name string, a []uintptr) uintptr {
	l := &g.lt
	if l.objs == nil {
		l.objs = map[uintptr]*fakeLtObj{}
	}
	newObj := func(kind string, v ...uint64) {
		l.next++
		h := 0x5000 + l.next
		l.objs[h] = &fakeLtObj{kind: kind, v: v, attrs: map[uintptr]uint64{}}
		*at[uintptr](a[0]) = h
	}
	setAttr := func(kind string) {
		var v uint64
		switch a[3] {
		case 4:
			v = uint64(*at[uint32](a[2]))
		case 8:
			v = *at[uint64](a[2])
		default:
			g.t.Fatalf("%s: attribute %d of %d bytes", name, a[1], a[3])
		}
		g.ltObj(a[0], kind).attrs[a[1]] = v
	}
	destroy := func(kind string) {
		g.ltObj(a[0], kind)
		delete(l.objs, a[0])
	}
	switch name {
	case "lt.create":
		*at[uintptr](a[0]) = 0xc1
	case "lt.destroy":
	case "lt.descCreate":
		newObj("desc", uint64(a[1]), uint64(a[2]))
	case "lt.descSetAttribute":
		setAttr("desc")
	case "lt.descDestroy":
		destroy("desc")
	case "lt.layoutCreate":
		newObj("layout", uint64(a[1]), uint64(a[2]), uint64(a[3]), uint64(a[4]))
	case "lt.layoutDestroy":
		destroy("layout")
	case "lt.prefCreate":
		newObj("pref")
	case "lt.prefSetAttribute":
		setAttr("pref")
	case "lt.prefDestroy":
		destroy("pref")
	case "lt.algoGetHeuristic":
		d, err := g.ltDescribe(a[1], a[2], a[3], a[4])
		if err != nil {
			g.t.Errorf("cublasLtMatmulAlgoGetHeuristic: %v", err)
		}
		if a[5] != a[4] {
			g.t.Errorf("cublasLtMatmulAlgoGetHeuristic: D's layout %#x is not C's %#x", a[5], a[4])
		}
		p := g.ltObj(a[6], "pref")
		q := fakeLtQuery{g: d, workspace: p.attrs[ltPrefMaxWorkspace]}
		for i := range q.align {
			q.align[i] = p.attrs[uintptr(ltPrefMinAlignA+i)]
		}
		l.queries = append(l.queries, q)
		switch l.heuristic {
		case ltAlgoNone:
			*at[int32](a[9]) = 0
		case ltAlgoUnsupported:
			return 15 // CUBLAS_STATUS_NOT_SUPPORTED
		default:
			res := unsafe.Slice(at[ltHeuristicResult](a[8]), a[7])
			res[0] = ltHeuristicResult{Algo: ltAlgo{uint64(len(l.queries))}, WorkspaceSize: l.need}
			*at[int32](a[9]) = 1
		}
	case "lt.matmul":
		d, err := g.ltDescribe(a[1], a[4], a[6], a[9])
		if err != nil {
			g.t.Errorf("cublasLtMatmul: %v", err)
		}
		if a[10] != a[8] || a[11] != a[9] {
			g.t.Errorf("cublasLtMatmul: D (%#x, layout %#x) is not C (%#x, layout %#x)", a[10], a[11], a[8], a[9])
		}
		d.alpha, d.a, d.b, d.beta, d.c = *at[float32](a[2]), uint64(a[3]), uint64(a[5]), *at[float32](a[7]), uint64(a[8])
		l.matmuls = append(l.matmuls, fakeLtMatmul{g: d, ws: uint64(a[13]), wsBytes: uint64(a[14]), stream: a[15], algo: *at[ltAlgo](a[12])})
	default:
		g.t.Fatalf("fake cuBLASLt: %s not implemented", name)
	}
	return 0
}

// captureLog sends slog's default logger to a buffer for the test's duration.
func captureLog(t *testing.T) *bytes.Buffer {
	var buf bytes.Buffer
	old := slog.Default()
	slog.SetDefault(slog.New(slog.NewTextHandler(&buf, nil)))
	t.Cleanup(func() { slog.SetDefault(old) })
	return &buf
}

// TestCublasLtGemmsMatchGemmEx (fake GPU): with the option on, MatMul, MatMulDX, MatMulDW and
// MatMuls' GEMMs run as one cublasLtMatmul each whose descriptors describe the same GEMM as
// the cublasGemmEx the same op issues with the option off (transposes, m, n, k, types, leading
// dimensions, compute type, addresses, alpha, beta), on the backend's stream, with the
// backend's workspace and the algorithm the heuristic chose; cublasGemmEx is not called.
func TestCublasLtGemmsMatchGemmEx(t *testing.T) {
	for _, bf16 := range []bool{false, true} {
		t.Run(fmt.Sprintf("bf16=%v", bf16), func(t *testing.T) {
			g := newFakeGPU(t, 90, 1<<30)
			g.lt.need = 4096
			b, err := Open(Options{BF16Matmul: bf16})
			if err != nil {
				t.Fatal(err)
			}
			const m, k, n = 16, 40, 24
			x, dy, out, dx := b.Alloc(m, k), b.Alloc(m, n), b.Alloc(m, n), b.Alloc(m, k)
			w := fakeWeight(t, b, engine.F32, n, k)
			wb := fakeWeight(t, b, engine.BF16, n, k)
			dw, err := b.UploadParam(make([]float32, n*k), n, k)
			if err != nil {
				t.Fatal(err)
			}
			ops := []struct {
				name string
				run  func()
			}{
				{"MatMul", func() { b.MatMul(out, x, w) }},
				{"MatMul/bf16-weight", func() { b.MatMul(out, x, wb) }},
				{"MatMulDX", func() { b.MatMulDX(dx, dy, w) }},
				{"MatMulDW", func() { b.MatMulDW(dw, dy, x) }},
				{"MatMuls", func() { b.MatMuls([]*engine.Tensor{out}, x, []*engine.Tensor{w}) }},
			}
			want := make([]gemm, len(ops))
			for i, op := range ops {
				n0 := len(g.gemms)
				op.run()
				if err := b.Sync(); err != nil {
					t.Fatal(err)
				}
				if len(g.gemms) != n0+1 {
					t.Fatalf("%s, option off: %d cublasGemmEx calls, want 1", op.name, len(g.gemms)-n0)
				}
				want[i] = g.gemms[n0]
			}
			if len(g.lt.matmuls) != 0 || g.count("lt.create") != 0 {
				t.Fatal("cuBLASLt used with the option off")
			}
			if err := b.SetCublasLt(true); err != nil {
				t.Fatal(err)
			}
			for i, op := range ops {
				n0, l0 := len(g.gemms), len(g.lt.matmuls)
				op.run()
				if err := b.Sync(); err != nil {
					t.Fatal(err)
				}
				if len(g.gemms) != n0 || len(g.lt.matmuls) != l0+1 {
					t.Fatalf("%s, option on: %d cublasGemmEx and %d cublasLtMatmul calls, want 0 and 1", op.name, len(g.gemms)-n0, len(g.lt.matmuls)-l0)
				}
				got := g.lt.matmuls[l0]
				if got.g != want[i] {
					t.Errorf("%s: cublasLtMatmul runs\n%+v,\ncublasGemmEx ran\n%+v", op.name, got.g, want[i])
				}
				if got.ws != b.lt.ws || got.wsBytes != ltWorkspaceBytes || got.stream != b.strm {
					t.Errorf("%s: workspace %#x of %d bytes on stream %#x, want the backend's %#x of %d on %#x",
						op.name, got.ws, got.wsBytes, got.stream, b.lt.ws, ltWorkspaceBytes, b.strm)
				}
				if got.algo[0] == 0 {
					t.Errorf("%s: algorithm %v, not the heuristic's", op.name, got.algo)
				}
			}
			if want[3].beta != 1 || want[0].beta != 0 {
				t.Errorf("betas %g (MatMul), %g (MatMulDW), want 0 and 1", want[0].beta, want[3].beta)
			}
		})
	}
}

// TestCublasLtPlanCache (fake GPU): the heuristic is asked once per GEMM descriptor: a second
// call of a shape reuses its plan (no query, no new descriptors), another shape or an operand
// at an address aligned to less than 256 bytes gets a plan of its own, whose preference says
// that alignment. Every query offers the backend's 32 MiB workspace.
func TestCublasLtPlanCache(t *testing.T) {
	g := newFakeGPU(t, 90, 1<<30)
	b, err := Open(Options{BF16Matmul: true, CublasLt: true})
	if err != nil {
		t.Fatal(err)
	}
	x, out := b.Alloc(16, 64), b.Alloc(16, 32)
	x2, out2 := b.Alloc(24, 64), b.Alloc(24, 32)
	w := fakeWeight(t, b, engine.BF16, 32, 64)
	for _, s := range []struct {
		name             string
		run              func()
		queries, matmuls int
	}{
		{"first", func() { b.MatMul(out, x, w) }, 1, 1},
		{"same shape", func() { b.MatMul(out, x, w) }, 1, 2},
		{"same shape, other tensors", func() { b.MatMul(b.Alloc(16, 32), b.Alloc(16, 64), w) }, 1, 3},
		{"other M", func() { b.MatMul(out2, x2, w) }, 2, 4},
		{"other M again", func() { b.MatMul(out2, x2, w) }, 2, 5},
		{"first again", func() { b.MatMul(out, x, w) }, 2, 6},
	} {
		s.run()
		if err := b.Sync(); err != nil {
			t.Fatal(err)
		}
		if len(g.lt.queries) != s.queries || len(g.lt.matmuls) != s.matmuls {
			t.Fatalf("%s: %d heuristic queries and %d matmuls in all, want %d and %d", s.name, len(g.lt.queries), len(g.lt.matmuls), s.queries, s.matmuls)
		}
		if len(g.lt.objs) != 5*s.queries {
			t.Errorf("%s: %d cuBLASLt objects alive, want 5 per plan (descriptor, 3 layouts, preference)", s.name, len(g.lt.objs))
		}
	}
	for i, q := range g.lt.queries {
		if q.workspace != ltWorkspaceBytes || q.align != [4]uint64{256, 256, 256, 256} {
			t.Errorf("query %d: workspace %d, alignments %v; want %d and 256 each", i, q.workspace, q.align, ltWorkspaceBytes)
		}
	}
	if q := g.lt.queries[1].g; q.m != 32 || q.n != 24 || q.k != 64 {
		t.Errorf("second query for m=%d n=%d k=%d, want 32, 24, 64", q.m, q.n, q.k)
	}

	// An operand 4 bytes into a tensor (the attention matmuls' head columns): a plan of its own
	// for that alignment, the aligned one's kept.
	base := uint64(ptr(out2))
	gm := gemm{transA: opN, transB: opN, m: 8, n: 8, k: 8, a: base + 4, aType: dtF32, lda: 32, b: base + 64, bType: dtF32, ldb: 8,
		c: uint64(ptr(x2)) + 32, cType: dtF32, ldc: 8, compute: computeF32}
	for range 2 {
		b.op(desc("test gemm"), func() { b.gemm("test", gm) })
	}
	if err := b.Sync(); err != nil {
		t.Fatal(err)
	}
	if len(g.lt.queries) != 3 || len(g.lt.matmuls) != 8 {
		t.Fatalf("unaligned operands: %d queries, %d matmuls in all; want 3 and 8", len(g.lt.queries), len(g.lt.matmuls))
	}
	if q := g.lt.queries[2]; q.align != [4]uint64{4, 64, 32, 32} {
		t.Errorf("unaligned operands: preference alignments %v, want A 4, B 64, C and D 32", q.align)
	}
	lt, ex, plans, none := b.CublasLtStats()
	if lt != 8 || ex != 0 || plans != 3 || none != 0 {
		t.Errorf("CublasLtStats %d, %d, %d, %d; want 8 on cuBLASLt, 0 on GemmEx, 3 plans, 0 without an algorithm", lt, ex, plans, none)
	}
}

// TestCublasLtWorkspaceOnce (fake GPU): the workspace is allocated once, at Open, from the
// backend's allocator (counted in MemoryStats), and every GEMM uses it, also after the option
// was switched off and on again.
func TestCublasLtWorkspaceOnce(t *testing.T) {
	g := newFakeGPU(t, 90, 1<<30)
	b, err := Open(Options{CublasLt: true})
	if err != nil {
		t.Fatal(err)
	}
	if g.blocks[b.lt.ws] < ltWorkspaceBytes {
		t.Fatalf("workspace %#x: a device block of %d bytes, want %d", b.lt.ws, g.blocks[b.lt.ws], ltWorkspaceBytes)
	}
	if in, _, _ := b.MemoryStats(); in < ltWorkspaceBytes {
		t.Errorf("MemoryStats: %d bytes in use, the workspace alone is %d", in, ltWorkspaceBytes)
	}
	x, out := b.Alloc(16, 32), b.Alloc(16, 8)
	w := fakeWeight(t, b, engine.F32, 8, 32)
	allocs := g.count("memAlloc")
	for i := range 6 {
		if i == 2 || i == 4 {
			if err := b.SetCublasLt(i == 4); err != nil {
				t.Fatal(err)
			}
		}
		b.MatMul(out, x, w)
	}
	if err := b.Sync(); err != nil {
		t.Fatal(err)
	}
	if n := g.count("memAlloc") - allocs; n != 0 {
		t.Errorf("%d device allocations by the GEMMs and the switches", n)
	}
	if len(g.lt.matmuls) != 4 || len(g.gemms) != 2 {
		t.Fatalf("%d cublasLtMatmul, %d cublasGemmEx; want 4 (on), 2 (switched off)", len(g.lt.matmuls), len(g.gemms))
	}
	for _, m := range g.lt.matmuls {
		if m.ws != b.lt.ws {
			t.Errorf("a matmul used workspace %#x, the backend's is %#x", m.ws, b.lt.ws)
		}
	}
	if g.count("lt.create") != 1 {
		t.Errorf("%d cuBLASLt handles made, want 1", g.count("lt.create"))
	}
}

// TestCublasLtFallback (fake GPU): a shape the heuristic has no algorithm for (no result, or
// CUBLAS_STATUS_NOT_SUPPORTED) runs on cublasGemmEx, logged once naming the shape, and is not
// asked about again; a batched GEMM runs on cublasGemmStridedBatchedEx without asking.
func TestCublasLtFallback(t *testing.T) {
	for _, tc := range []struct {
		name      string
		heuristic int
		reason    string
	}{
		{"no result", ltAlgoNone, "has no algorithm for 24x16x32"},
		{"not supported", ltAlgoUnsupported, "CUBLAS_STATUS_NOT_SUPPORTED"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := newFakeGPU(t, 90, 1<<30)
			g.lt.heuristic = tc.heuristic
			log := captureLog(t)
			b, err := Open(Options{CublasLt: true})
			if err != nil {
				t.Fatal(err)
			}
			x, out := b.Alloc(16, 32), b.Alloc(16, 24)
			w := fakeWeight(t, b, engine.F32, 24, 32)
			for range 3 {
				b.MatMul(out, x, w)
			}
			if err := b.Sync(); err != nil {
				t.Fatal(err)
			}
			if len(g.lt.queries) != 1 || len(g.lt.matmuls) != 0 || len(g.gemms) != 3 {
				t.Fatalf("%d heuristic queries, %d cublasLtMatmul, %d cublasGemmEx; want 1, 0, 3", len(g.lt.queries), len(g.lt.matmuls), len(g.gemms))
			}
			if g.gemms[0].m != 24 || g.gemms[0].n != 16 || g.gemms[0].k != 32 {
				t.Errorf("cublasGemmEx ran %+v", g.gemms[0])
			}
			if len(g.lt.objs) != 0 {
				t.Errorf("%d cuBLASLt objects of the failed plan left alive", len(g.lt.objs))
			}
			lines := strings.Count(log.String(), "cuBLASLt has no algorithm for a GEMM")
			if lines != 1 || !strings.Contains(log.String(), "m=24 n=16 k=32 op(A)=T op(B)=N lda=32 ldb=32 ldc=24 types f32,f32->f32 compute 32F") ||
				!strings.Contains(log.String(), tc.reason) {
				t.Errorf("log (want one line naming the shape and %q):\n%s", tc.reason, log)
			}
			if lt, ex, plans, none := b.CublasLtStats(); lt != 0 || ex != 3 || plans != 0 || none != 1 {
				t.Errorf("CublasLtStats %d, %d, %d, %d; want 0, 3, 0, 1", lt, ex, plans, none)
			}

			g.lt.heuristic = ltAlgoFound
			b.op(desc("test batched gemm"), func() {
				b.gemm("batched", gemm{transA: opN, transB: opN, m: 8, n: 8, k: 8, a: uint64(ptr(x)), aType: dtF32, lda: 8,
					b: uint64(ptr(x)), bType: dtF32, ldb: 8, c: uint64(ptr(out)), cType: dtF32, ldc: 8, compute: computeF32,
					batch: 2, strideA: 64, strideB: 64, strideC: 64})
			})
			if err := b.Sync(); err != nil {
				t.Fatal(err)
			}
			if g.count("blas.gemmStridedBatched") != 1 || len(g.lt.queries) != 1 {
				t.Errorf("batched GEMM: %d cublasGemmStridedBatchedEx, %d heuristic queries in all; want 1 and 1", g.count("blas.gemmStridedBatched"), len(g.lt.queries))
			}
		})
	}
}

// TestCublasLtUnavailable (fake GPU): where cuBLASLt does not load, Open still succeeds, the
// log says why once, and the GEMMs run on cublasGemmEx; SetCublasLt returns the reason without
// logging it again.
func TestCublasLtUnavailable(t *testing.T) {
	g := newFakeGPU(t, 90, 1<<30)
	g.lt.loadErr = errors.New("cuBLASLt not found (tried libcublasLt.so.13)")
	log := captureLog(t)
	b, err := Open(Options{CublasLt: true})
	if err != nil {
		t.Fatal(err)
	}
	x, out := b.Alloc(16, 32), b.Alloc(16, 24)
	w := fakeWeight(t, b, engine.F32, 24, 32)
	b.MatMul(out, x, w)
	if err := b.Sync(); err != nil {
		t.Fatal(err)
	}
	if len(g.gemms) != 1 || g.count("lt.create") != 0 {
		t.Fatalf("%d cublasGemmEx, %d cuBLASLt handles; want 1 and 0", len(g.gemms), g.count("lt.create"))
	}
	err = b.SetCublasLt(true)
	wantIn(t, err, "cuBLASLt (Options.CublasLt) is unavailable, the GEMMs run on cublasGemmEx", "tried libcublasLt.so.13")
	b.MatMul(out, x, w)
	if err := b.Sync(); err != nil {
		t.Fatal(err)
	}
	if len(g.gemms) != 2 {
		t.Fatalf("after SetCublasLt failed: %d cublasGemmEx calls in all, want 2", len(g.gemms))
	}
	if n := strings.Count(log.String(), "cuBLASLt (Options.CublasLt) is unavailable"); n != 1 || !strings.Contains(log.String(), "tried libcublasLt.so.13") {
		t.Errorf("log (want the reason once):\n%s", log)
	}
}

// TestCublasLtMatmulError (fake GPU): a failed cublasLtMatmul fails its op with the status and
// the shape, and the backend works again after the error is returned.
func TestCublasLtMatmulError(t *testing.T) {
	g := newFakeGPU(t, 90, 1<<30)
	b, err := Open(Options{CublasLt: true})
	if err != nil {
		t.Fatal(err)
	}
	x, out := b.Alloc(16, 32), b.Alloc(16, 24)
	w := fakeWeight(t, b, engine.F32, 24, 32)
	g.fail("lt.matmul", 7) // CUBLAS_STATUS_INVALID_VALUE
	b.MatMul(out, x, w)
	wantIn(t, b.Sync(), "MatMul out [16 24] x [16 32] w [24 32]: cublasLtMatmul MatMul (m=24 n=16 k=32): CUBLAS_STATUS_INVALID_VALUE (7)")
	b.MatMul(out, x, w)
	if err := b.Sync(); err != nil {
		t.Fatalf("after the error was returned: %v", err)
	}
	if len(g.lt.matmuls) != 1 {
		t.Errorf("%d matmuls recorded, want 1 (the second call)", len(g.lt.matmuls))
	}
}

// TestCublasLtPlanCacheBound (fake GPU): past ltMaxPlans plans, each new shape drops one plan
// and destroys its descriptors; the GEMMs still run on cuBLASLt.
func TestCublasLtPlanCacheBound(t *testing.T) {
	saved := ltMaxPlans
	ltMaxPlans = 2
	t.Cleanup(func() { ltMaxPlans = saved })
	g := newFakeGPU(t, 90, 1<<30)
	b, err := Open(Options{CublasLt: true})
	if err != nil {
		t.Fatal(err)
	}
	w := fakeWeight(t, b, engine.F32, 24, 32)
	for _, m := range []int{16, 17, 18, 19, 20} {
		b.MatMul(b.Alloc(m, 24), b.Alloc(m, 32), w)
	}
	if err := b.Sync(); err != nil {
		t.Fatal(err)
	}
	if len(g.lt.queries) != 5 || len(g.lt.matmuls) != 5 || len(g.gemms) != 0 {
		t.Fatalf("%d queries, %d cublasLtMatmul, %d cublasGemmEx; want 5, 5, 0", len(g.lt.queries), len(g.lt.matmuls), len(g.gemms))
	}
	if _, _, plans, _ := b.CublasLtStats(); plans != 2 || len(g.lt.objs) != 2*5 {
		t.Errorf("%d plans and %d cuBLASLt objects alive, want 2 and 10", plans, len(g.lt.objs))
	}
}
