package cuda

import (
	"math"
	"testing"
	"unsafe"

	"github.com/prolong-rl/prolong/engine"
)

// GPU checks of the graph, pinned-memory and cuBLASLt bindings (scripts/gpu-check.sh runs
// them; without a GPU they skip, and abi_test.go checks the bindings against the headers).

// inBackend runs body with the backend entered (context current, OS thread locked) and then
// synchronises the stream.
func inBackend(t *testing.T, b *Backend, body func() error) {
	t.Helper()
	if !b.enter() {
		b.leave()
		t.Fatal(b.Err())
	}
	err := body()
	if err == nil {
		err = b.drv.check("cuStreamSynchronize", call(b.drv.streamSynchronize, b.strm))
	}
	b.leave()
	if err != nil {
		t.Fatal(err)
	}
}

func download(t *testing.T, b *Backend, x *engine.Tensor) []float32 {
	t.Helper()
	d := make([]float32, x.Len())
	if err := b.Download(x, d); err != nil {
		t.Fatal(err)
	}
	return d
}

// TestGPUBindingsGraph: a captured scale kernel does not run at capture, and three replays
// scale by s³; a captured add reading a pinned, device-mapped buffer sees what the host wrote
// there before each replay (the decode-step pattern: fixed addresses, new contents).
func TestGPUBindingsGraph(t *testing.T) {
	b := openGPU(t, Options{})
	const n = 1000
	host := make([]float32, n)
	for i := range host {
		host[i] = float32(i%17) - 8
	}
	x, err := b.Upload(engine.F32, host, false, n)
	if err != nil {
		t.Fatal(err)
	}
	var g *cudaGraph
	inBackend(t, b, func() error {
		if err := b.drv.beginCapture(b.strm); err != nil {
			return err
		}
		b.launchScale(b.gridFor(n), 256, ptr(x), 2, n)
		g, err = b.drv.endCapture(b.strm)
		return err
	})
	for i, v := range download(t, b, x) {
		if v != host[i] {
			t.Fatalf("x[%d] = %g after capture, want %g unchanged (a captured launch must not run)", i, v, host[i])
		}
	}
	inBackend(t, b, func() error {
		for range 3 {
			if err := b.drv.launchGraph(g, b.strm); err != nil {
				return err
			}
		}
		return nil
	})
	for i, v := range download(t, b, x) {
		if v != 8*host[i] {
			t.Fatalf("x[%d] = %g after 3 replays, want %g", i, v, 8*host[i])
		}
	}

	p, err := b.drv.allocPinned(4 * n)
	if err != nil {
		t.Fatal(err)
	}
	defer b.drv.freePinned(p)
	pin := unsafe.Slice((*float32)(p.host), n)
	out := b.Alloc(n)
	var add *cudaGraph
	inBackend(t, b, func() error {
		if err := b.drv.beginCapture(b.strm); err != nil {
			return err
		}
		b.launchAdd(b.gridFor(n), 256, ptr(out), ptr(x), dptr(p.dev), n)
		add, err = b.drv.endCapture(b.strm)
		return err
	})
	for round := range 2 {
		for i := range pin {
			pin[i] = float32(round*1000 + i)
		}
		inBackend(t, b, func() error { return b.drv.launchGraph(add, b.strm) })
		for i, v := range download(t, b, out) {
			if want := 8*host[i] + pin[i]; v != want {
				t.Fatalf("round %d: out[%d] = %g, want %g", round, i, v, want)
			}
		}
	}
	inBackend(t, b, func() error {
		if err := b.drv.destroyGraph(g); err != nil {
			return err
		}
		return b.drv.destroyGraph(add)
	})
}

// TestGPUBindingsCublasLt: cuBLASLt's fp32 matmul of op(A)=Aᵀ (k×m stored) times B against
// the product worked on the host in float64.
func TestGPUBindingsCublasLt(t *testing.T) {
	b := openGPU(t, Options{})
	lt, err := loadCublasLt()
	if err != nil {
		t.Fatal(err)
	}
	const m, n, k = 64, 48, 96
	a := make([]float32, k*m) // column-major k×m: A stored transposed
	bm := make([]float32, k*n)
	for i := range a {
		a[i] = float32(math.Sin(float64(i)))
	}
	for i := range bm {
		bm[i] = float32(math.Cos(float64(3 * i)))
	}
	ta, err := b.Upload(engine.F32, a, false, len(a))
	if err != nil {
		t.Fatal(err)
	}
	tb, err := b.Upload(engine.F32, bm, false, len(bm))
	if err != nil {
		t.Fatal(err)
	}
	tc := b.Alloc(m * n)
	const ws = 32 << 20
	inBackend(t, b, func() error {
		h, err := lt.newHandle()
		if err != nil {
			return err
		}
		plan, err := lt.newLtPlan(h, gemm{transA: opT, transB: opN, m: m, n: n, k: k, aType: dtF32, lda: k,
			bType: dtF32, ldb: k, cType: dtF32, ldc: m, compute: computeF32}, ws)
		if err != nil {
			return err
		}
		t.Logf("cuBLASLt algorithm: workspace %d bytes, %.2f waves", plan.algo.WorkspaceSize, plan.algo.WavesCount)
		w := b.tmp(ws)
		if err := plan.run(uint64(ptr(ta)), uint64(ptr(tb)), uint64(ptr(tc)), 1, 0, w, ws, b.strm); err != nil {
			return err
		}
		plan.destroy()
		return lt.destroyHandle(h)
	})
	got := download(t, b, tc)
	var num, den float64
	for j := 0; j < n; j++ {
		for i := 0; i < m; i++ {
			var s float64
			for p := 0; p < k; p++ {
				s += float64(a[i*k+p]) * float64(bm[j*k+p])
			}
			d := float64(got[j*m+i]) - s
			num += d * d
			den += s * s
		}
	}
	if nmse := num / den; nmse > 1e-10 {
		t.Errorf("cuBLASLt fp32 matmul: NMSE %.3g against float64 on the host, want <= 1e-10", nmse)
	}
}
