package cuda

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"unsafe"

	"github.com/prolong-rl/prolong/engine"
)

// TestAdamWManyDescriptorLayout: adamWTensor is the 96 bytes of struct AdamWTensor (whose
// static_assert checks the C side), with the fields at the C offsets.
func TestAdamWManyDescriptorLayout(t *testing.T) {
	var d adamWTensor
	got := []uintptr{unsafe.Sizeof(d), unsafe.Offsetof(d.bf), unsafe.Offsetof(d.n), unsafe.Offsetof(d.chunk0), unsafe.Offsetof(d.decay),
		unsafe.Offsetof(d.eps), unsafe.Offsetof(d.gscale), unsafe.Offsetof(d.zero)}
	if want := []uintptr{96, 32, 40, 48, 56, 84, 88, 92}; !slices.Equal(got, want) {
		t.Errorf("size, offsets of bf, n, chunk0, decay, eps, gscale, zero = %v, want %v", got, want)
	}
}

// adamWManyParams uploads parameters of the given shapes with gradients and moments, and
// returns them with per-tensor steps whose weight decay differs between tensors.
func adamWManyParams(t *testing.T, b *Backend, shapes [][]int) (ps, gs, ms, vs []*engine.Tensor, hs []engine.AdamWStep) {
	t.Helper()
	for i, sh := range shapes {
		n := 1
		for _, d := range sh {
			n *= d
		}
		p, err := b.UploadParam(make([]float32, n), sh...)
		if err != nil {
			t.Fatal(err)
		}
		ps, gs, ms, vs = append(ps, p), append(gs, b.Alloc(sh...)), append(ms, b.Alloc(sh...)), append(vs, b.Alloc(sh...))
		hs = append(hs, engine.AdamWStep{LR: 1e-3 * float64(i+1), Beta1: 0.9, Beta2: 0.95, Eps: 1e-8, WeightDecay: 0.1 * float64(i%2),
			BC1: 1 - 0.9*0.9, BC2: 1 - 0.95*0.95})
	}
	return ps, gs, ms, vs, hs
}

// TestAdamWManyLaunch (fake GPU): AdamWMany of five tensors (one
// empty, one of several chunks, one a weight that a bf16 matmul gave a bf16 copy) is one
// adamw_many launch; its descriptors, uploaded in one copy, hold each tensor's pointers, length,
// first chunk, bf16 copy (only the matmul weight's) and the constants the per-tensor adamw
// launch gets for the same step, bit for bit; the chunks cover every element of every tensor
// once; and the weight's bf16 copy is current after it, so the next matmul converts nothing
// (after AdamW per tensor it converts the weight again). FusesAdamWMany is
// Options.MultiTensorAdamW, off by default.
func TestAdamWManyLaunch(t *testing.T) {
	g := newFakeGPU(t, 90, 1<<30)
	type upload struct {
		dst  uint64
		data []byte
	}
	var uploads []upload
	callHook = func(fn uintptr, a []uintptr) uintptr {
		if g.names[fn] == "memcpyHtoDAsync" {
			uploads = append(uploads, upload{uint64(a[0]), slices.Clone(unsafe.Slice(at[byte](a[1]), a[2]))})
		}
		return g.call(fn, a)
	}
	shapes := [][]int{{3 * adamWChunk / 2, 2}, {7}, {0}, {129, 67}, {adamWChunk}}
	const weight = 3 // the matmul weight

	// run makes the tensors on a backend of options o, gives the weight a bf16 copy through a
	// matmul, and returns the launches of AdamWMany (many) or AdamW per tensor and of the matmul
	// after it.
	run := func(o Options, many bool) (step, next []fakeLaunch, ps, gs, ms, vs []*engine.Tensor, hs []engine.AdamWStep, b *Backend) {
		b, err := Open(o)
		if err != nil {
			t.Fatal(err)
		}
		ps, gs, ms, vs, hs = adamWManyParams(t, b, shapes)
		x, out := b.Alloc(4, 67), b.Alloc(4, 129)
		b.MatMul(out, x, ps[weight])
		l0 := len(g.launches)
		uploads = nil
		if many {
			b.AdamWMany(ps, gs, ms, vs, hs)
		} else {
			for i := range ps {
				b.AdamW(ps[i], gs[i], ms[i], vs[i], hs[i])
			}
		}
		l1 := len(g.launches)
		b.MatMul(out, x, ps[weight])
		if err := b.Sync(); err != nil {
			t.Fatal(err)
		}
		return g.launches[l0:l1], g.launches[l1:], ps, gs, ms, vs, hs, b
	}

	perTensor, nextPer, _, _, _, _, _, b := run(Options{BF16Matmul: true}, false)
	if b.FusesAdamWMany() {
		t.Error("FusesAdamWMany on by default")
	}
	for i, l := range perTensor {
		if l.name != "adamw" || len(perTensor) != len(shapes) {
			t.Fatalf("AdamW per tensor: launch %d of %d is %s, want adamw", i, len(perTensor), l.name)
		}
	}
	if !slices.ContainsFunc(nextPer, func(l fakeLaunch) bool { return l.name == "f32_to_bf16_kernel" }) {
		t.Errorf("the matmul after AdamW per tensor launched %v, want the weight converted to bf16 again", nextPer)
	}

	step, next, ps, gs, ms, vs, _, b := run(Options{BF16Matmul: true, MultiTensorAdamW: true}, true)
	if !b.FusesAdamWMany() {
		t.Error("FusesAdamWMany off with Options.MultiTensorAdamW")
	}
	if len(step) != 1 || step[0].name != "adamw_many" {
		t.Fatalf("AdamWMany launched %v, want one adamw_many", step)
	}
	l := step[0]
	var chunks []int64 // each nonempty tensor's chunks
	var total int64
	for _, p := range ps {
		if n := int64(p.Len()); n > 0 {
			chunks = append(chunks, (n+adamWChunk-1)/adamWChunk)
			total += chunks[len(chunks)-1]
		}
	}
	if want := [3]int{int(min(total, int64(32*b.sms))), 1, 1}; l.grid != want || l.block != 256 || l.args[1] != 4 || l.args[2] != uint64(total) {
		t.Errorf("adamw_many grid %v block %d, %d tensors, %d chunks; want %v, 256, 4, %d", l.grid, l.block, l.args[1], l.args[2], want, total)
	}
	var descs []adamWTensor
	for _, u := range uploads {
		if u.dst == l.args[0] {
			if len(descs) != 0 || len(u.data) != 4*96 {
				t.Fatalf("descriptor uploads to %#x: another, of %d bytes (want one of 4×96)", u.dst, len(u.data))
			}
			descs = slices.Clone(unsafe.Slice((*adamWTensor)(unsafe.Pointer(&u.data[0])), 4))
		}
	}
	if descs == nil {
		t.Fatalf("no upload to the descriptor address %#x", l.args[0])
	}
	var chunk0 int64
	di := 0
	for i, p := range ps {
		if p.Len() == 0 {
			continue
		}
		d := descs[di]
		var bf uint64
		if i == weight {
			bf = devBuf(p).bf
			if bf == 0 {
				t.Fatal("the matmul weight has no bf16 copy")
			}
		}
		if d.p != uint64(ptr(p)) || d.g != uint64(ptr(gs[i])) || d.m != uint64(ptr(ms[i])) || d.v != uint64(ptr(vs[i])) || d.bf != bf ||
			d.n != int64(p.Len()) || d.chunk0 != chunk0 {
			t.Errorf("descriptor %d (tensor %d): %+v; want p %#x g %#x m %#x v %#x bf %#x n %d chunk0 %d", di, i, d,
				ptr(p), ptr(gs[i]), ptr(ms[i]), ptr(vs[i]), bf, p.Len(), chunk0)
		}
		if d.gscale != 1 || d.zero != 0 {
			t.Errorf("descriptor %d (tensor %d): gradient scale %v, zero %d; want 1, 0 (no GradScale, no ZeroGrad)", di, i, d.gscale, d.zero)
		}
		// The constants of the per-tensor adamw launch of the same tensor (slots 5-12).
		got := []uint64{argF32(d.decay), argF32(d.b1), argF32(d.b2), argF32(d.c1), argF32(d.c2), argF32(d.step), argF32(d.isb2), argF32(d.eps)}
		if want := perTensor[i].args[5:13]; !slices.Equal(got, want) {
			t.Errorf("descriptor %d (tensor %d) constants %x, the adamw launch's %x", di, i, got, want)
		}
		chunk0 += chunks[di]
		di++
	}
	// The kernel's chunk walk (grid-stride over chunks, binary search over chunk0) covers every
	// element of every nonempty tensor exactly once.
	cover := make([][]int, len(descs))
	for i, d := range descs {
		cover[i] = make([]int, d.n)
	}
	for blk := int64(0); blk < int64(l.grid[0]); blk++ {
		for c := blk; c < total; c += int64(l.grid[0]) {
			lo, hi := 0, len(descs)-1
			for lo < hi {
				if mid := (lo + hi + 1) >> 1; descs[mid].chunk0 <= c {
					lo = mid
				} else {
					hi = mid - 1
				}
			}
			start := (c - descs[lo].chunk0) * adamWChunk
			for j := start; j < min(start+adamWChunk, descs[lo].n); j++ {
				cover[lo][j]++
			}
		}
	}
	for i, cv := range cover {
		if j := slices.IndexFunc(cv, func(k int) bool { return k != 1 }); j >= 0 {
			t.Errorf("descriptor %d: element %d updated %d times", i, j, cv[j])
		}
	}
	if bf := devBuf(ps[weight]); bf.bfVer != bf.ver {
		t.Error("the weight's bf16 copy is stale after adamw_many wrote it")
	}
	for i, p := range ps {
		if bf := devBuf(p); i != weight && bf.bf != 0 {
			t.Errorf("tensor %d got a bf16 copy it had no use for", i)
		}
	}
	if slices.ContainsFunc(next, func(l fakeLaunch) bool { return l.name == "f32_to_bf16_kernel" }) {
		t.Errorf("the matmul after adamw_many converted the weight again: %v", next)
	}
}

// TestAdamWManyMissingMemory (fake GPU): a tensor without device memory (its allocation failed)
// fails AdamWMany before any launch, the error naming the tensor and the operand, and the
// backend works after.
func TestAdamWManyMissingMemory(t *testing.T) {
	g := newFakeGPU(t, 90, 1<<30)
	b, err := Open(Options{})
	if err != nil {
		t.Fatal(err)
	}
	ps, gs, ms, vs, hs := adamWManyParams(t, b, [][]int{{5}, {3, 2}})
	vs[1] = &engine.Tensor{Shape: []int{3, 2}, DType: engine.F32, Buf: &buf{devMem: &devMem{}, bytes: 24}}
	l0 := len(g.launches)
	b.AdamWMany(ps, gs, ms, vs, hs)
	wantIn(t, b.Sync(), "AdamWMany[1] p [3 2] g [3 2] m [3 2] v [3 2]: operand 3 (shape [3 2]) has no device memory")
	if len(g.launches) != l0 {
		t.Fatalf("AdamWMany launched %v with a tensor without memory", g.launched(l0))
	}
	vs[1] = b.Alloc(3, 2)
	b.AdamWMany(ps, gs, ms, vs, hs)
	if err := b.Sync(); err != nil || !slices.Equal(g.launched(l0), []string{"adamw_many"}) {
		t.Fatalf("after the error: %v, launches %v; want nil, one adamw_many", err, g.launched(l0))
	}
}

// TestAdamWManyShapes: AdamWMany refuses slices of different lengths and a tensor whose
// gradient or moments differ in length from the parameter, by index and shapes.
func TestAdamWManyShapes(t *testing.T) {
	newFakeGPU(t, 90, 1<<30)
	b, err := Open(Options{})
	if err != nil {
		t.Fatal(err)
	}
	ps, gs, ms, vs, hs := adamWManyParams(t, b, [][]int{{5}, {3, 2}})
	for _, tc := range []struct {
		name string
		call func()
		want string
	}{
		{"lengths", func() { b.AdamWMany(ps, gs[:1], ms, vs, hs) }, "AdamWMany of 2 parameters, 1 gradients, 2 and 2 moments, 2 steps"},
		{"moment shape", func() { b.AdamWMany(ps, gs, []*engine.Tensor{ms[0], ms[0]}, vs, hs) }, "AdamWMany tensor 1: parameter [3 2], gradient [3 2], moments [5] and [3 2]"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			defer func() {
				if p := recover(); p == nil || !strings.Contains(fmt.Sprint(p), tc.want) {
					t.Errorf("panic %v, want one with %q", p, tc.want)
				}
			}()
			tc.call()
		})
	}
}

// TestAdamWGradScale (fake GPU): a step with GradScale (gradient clipping) and ZeroGrad puts the
// scale in the descriptor of each tensor that has one (1 elsewhere) and the zeroing flag in
// those that ask, and launches nothing else with AdamWMany; AdamW per tensor scales the
// gradient with a scale launch of its own first, launches adamw as without them, and zeroes the
// gradient with a scale launch by 0 after.
func TestAdamWGradScale(t *testing.T) {
	g := newFakeGPU(t, 90, 1<<30)
	b, err := Open(Options{MultiTensorAdamW: true})
	if err != nil {
		t.Fatal(err)
	}
	ps, gs, ms, vs, hs := adamWManyParams(t, b, [][]int{{1000}, {3, 7}, {40000}})
	hs[0].GradScale, hs[2].GradScale = 0.25, 1 // tensor 2: a scale of 1 is none
	hs[1].ZeroGrad, hs[2].ZeroGrad = true, true
	u0, l0 := len(g.uploads), len(g.launches)
	b.AdamWMany(ps, gs, ms, vs, hs)
	if ls := g.launched(l0); !slices.Equal(ls, []string{"adamw_many"}) {
		t.Fatalf("AdamWMany with GradScale launched %v, want adamw_many alone", ls)
	}
	var descs []adamWTensor
	for _, u := range g.uploads[u0:] {
		if u.dst == g.launches[l0].args[0] {
			descs = slices.Clone(unsafe.Slice((*adamWTensor)(unsafe.Pointer(&u.data[0])), len(u.data)/96))
		}
	}
	if len(descs) != 3 || descs[0].gscale != 0.25 || descs[1].gscale != 1 || descs[2].gscale != 1 ||
		descs[0].zero != 0 || descs[1].zero != 1 || descs[2].zero != 1 {
		t.Fatalf("descriptors' gradient scales and zero flags %+v, want 0.25, 1, 1 and 0, 1, 1", descs)
	}
	l0 = len(g.launches)
	for i := range ps {
		b.AdamW(ps[i], gs[i], ms[i], vs[i], hs[i])
	}
	if ls := g.launched(l0); !slices.Equal(ls, []string{"scale", "adamw", "adamw", "scale", "adamw", "scale"}) {
		t.Fatalf("AdamW per tensor with GradScale and ZeroGrad launched %v, want scale, adamw; adamw, scale; adamw, scale", ls)
	}
	if z := g.launches[l0+3]; z.args[0] != uint64(ptr(gs[1])) || z.args[1] != argF32(0) {
		t.Errorf("scale launch of %#x by %#x, want the second gradient %#x by 0", z.args[0], z.args[1], ptr(gs[1]))
	}
	if s := g.launches[l0]; s.args[0] != uint64(ptr(gs[0])) || s.args[1] != argF32(0.25) {
		t.Errorf("scale launch of %#x by %#x, want the first gradient %#x by 0.25", s.args[0], s.args[1], ptr(gs[0]))
	}
}

// BenchmarkOptimizerTail counts, on the fake driver, what one optimizer step of the 1.5B shape
// (bench15B, as tools/bench trains it) launches and how many gradient bytes its scale launches
// move, with gradient clipping active (ClipNorm far below the norm: the fake driver's gradients
// are zeros, whose norm is 0), AdamW per tensor (the default) and with Options.MultiTensorAdamW
// (the clipping scale folded into adamw_many).
//
//	go test ./cuda -run XXX -bench OptimizerTail -benchtime 1x
func BenchmarkOptimizerTail(bm *testing.B) {
	c, w, seqs := bench15B(bm)
	for range bm.N {
		for _, many := range []bool{false, true} {
			g := newFakeGPU(bm, 90, 1<<40)
			b, err := Open(Options{BF16Matmul: true, MultiTensorAdamW: many})
			if err != nil {
				bm.Fatal(err)
			}
			m, err := engine.NewModel(c, b, w, engine.F32)
			if err != nil {
				bm.Fatal(err)
			}
			tr, err := engine.NewTrainer(m, engine.TrainOptions{Optimizer: engine.AdamWConfig{LR: 1e-5, ClipNorm: 1e-9}, MaxLogitRows: 1024})
			if err != nil {
				bm.Fatal(err)
			}
			if _, err := tr.ForwardBackward(context.Background(), seqs, engine.CrossEntropy(0)); err != nil {
				bm.Fatal(err)
			}
			l0 := len(g.launches)
			if _, err := tr.Step(); err != nil {
				bm.Fatal(err)
			}
			counts := map[string]int{}
			var scaled int64 // bytes read and written by the clipping's scale launches (not ZeroGrad's by 0)
			for _, l := range g.launches[l0:] {
				counts[l.name]++
				if l.name == "scale" && l.args[1] != argF32(0) {
					scaled += 8 * int64(l.args[2])
				}
			}
			name := map[bool]string{false: "per-tensor", true: "many"}[many]
			bm.ReportMetric(float64(len(g.launches)-l0), "launches/step-"+name)
			bm.ReportMetric(float64(scaled)/1e9, "clip-GB/step-"+name)
			bm.Logf("%s: %d launches (%v), the clipping's scale launches move %.2f GB", name, len(g.launches)-l0, counts, float64(scaled)/1e9)
		}
	}
}

// TestSumSquaresOneLaunch (fake GPU): with Options.MultiTensorAdamW, SumSquaresMany of three
// tensors is one sumsq_many launch of as many blocks as their sumsq_partial launches would have
// in all, whose descriptors (24 bytes: TestSumsqDescriptorLayout's) give each tensor's pointer,
// length, blocks and first block; block b of the launch computes, by the kernel's binary search
// and grid-stride walk, exactly the elements that block b - block0 of the tensor's own launch
// sums, so each tensor's partials are SumSquares' own; and the results come back in one copy.
// Without the option it is one sumsq_partial launch per tensor.
func TestSumSquaresOneLaunch(t *testing.T) {
	var d sumsqTensor
	if got, want := []uintptr{unsafe.Sizeof(d), unsafe.Offsetof(d.n), unsafe.Offsetof(d.blocks), unsafe.Offsetof(d.block0)}, []uintptr{24, 8, 16, 20}; !slices.Equal(got, want) {
		t.Errorf("sumsqTensor size, offsets of n, blocks, block0 = %v, want %v", got, want)
	}
	for _, many := range []bool{false, true} {
		g := newFakeGPU(t, 90, 1<<30)
		b, err := Open(Options{MultiTensorAdamW: many})
		if err != nil {
			t.Fatal(err)
		}
		xs := []*engine.Tensor{b.Alloc(1000), b.Alloc(70001), b.Alloc(5)}
		l0, u0, c0 := len(g.launches), len(g.uploads), len(g.calls)
		if _, err := b.SumSquaresMany(xs); err != nil {
			t.Fatal(err)
		}
		ls := g.launched(l0)
		if !many {
			if !slices.Equal(ls, []string{"sumsq_partial", "sumsq_partial", "sumsq_partial"}) {
				t.Errorf("without the option: launches %v, want sumsq_partial per tensor", ls)
			}
			continue
		}
		if !slices.Equal(ls, []string{"sumsq_many"}) {
			t.Fatalf("launches %v, want one sumsq_many", ls)
		}
		if _, copies := g.hostWaits(c0); copies != 1 {
			t.Errorf("%d copies down, want 1", copies)
		}
		l := g.launches[l0]
		var descs []sumsqTensor
		for _, u := range g.uploads[u0:] {
			if u.dst == l.args[1] {
				descs = slices.Clone(unsafe.Slice((*sumsqTensor)(unsafe.Pointer(&u.data[0])), len(u.data)/24))
			}
		}
		total := 0
		for i, x := range xs {
			want := sumsqTensor{x: uint64(ptr(x)), n: int64(x.Len()), blocks: int32(b.gridFor(int64(x.Len()))[0]), block0: int32(total)}
			if i >= len(descs) || descs[i] != want {
				t.Fatalf("descriptors %+v; tensor %d wants %+v", descs, i, want)
			}
			total += int(want.blocks)
		}
		if l.grid != [3]int{total, 1, 1} || l.block != 256 || l.args[2] != 3 {
			t.Errorf("grid %v block %d, %d tensors; want %d blocks of 256, 3 tensors", l.grid, l.block, l.args[2], total)
		}
		// The kernel's walk: block blk of the launch sums, for its tensor, the elements that
		// block blk-block0 of a launch of the tensor's own blocks sums (sumsq_partial's stride).
		for blk := 0; blk < total; blk++ {
			lo, hi := 0, len(descs)-1
			for lo < hi {
				mid := (lo + hi + 1) >> 1
				if int(descs[mid].block0) <= blk {
					lo = mid
				} else {
					hi = mid - 1
				}
			}
			dd := descs[lo]
			local := blk - int(dd.block0)
			if local < 0 || local >= int(dd.blocks) {
				t.Fatalf("block %d: tensor %d, local block %d of %d", blk, lo, local, dd.blocks)
			}
		}
	}
}
