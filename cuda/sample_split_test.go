package cuda

import (
	"encoding/binary"
	"math"
	"slices"
	"testing"

	"github.com/prolong-rl/prolong/engine"
)

// TestSampleSplitLaunches (fake driver, 4 SMs): with Options.SplitSample, Sample's plain rows
// go to the three split kernels when they are fewer than two per SM, each row in
// min(2·SMs/rows, V/min part) parts, the part maxima, sums and argmaxima passed from launch to
// launch; top-k/top-p rows still go to sample_topkp; enough rows to fill the GPU, or the option
// off, keep sample_rows.
func TestSampleSplitLaunches(t *testing.T) {
	plain, topk := engine.SampleRow{Temperature: 1, U: 0.5}, engine.SampleRow{Temperature: 1, TopK: 5, U: 0.5}
	for _, tc := range []struct {
		name    string
		opts    Options
		R, V    int
		rows    []engine.SampleRow
		S       int      // parts; 0: no split launches
		kernels []string // in order
	}{
		{"batch 1, Qwen2 vocabulary", Options{SplitSample: true}, 1, 151936, []engine.SampleRow{{}}, 8,
			[]string{"sample_split_max", "sample_split_mass", "sample_split_pick"}},
		{"option off", Options{}, 1, 151936, []engine.SampleRow{plain}, 0, []string{"sample_rows"}},
		{"rows fill the GPU", Options{SplitSample: true}, 8, 151936, rep(plain, 8), 0, []string{"sample_rows"}},
		{"small parts, top-k row apart", Options{SplitSample: true, SampleSplitMinPart: 16}, 4, 257, []engine.SampleRow{plain, topk, {}, plain}, 3,
			[]string{"sample_split_max", "sample_split_mass", "sample_split_pick", "sample_topkp"}},
		{"vocabulary of one part", Options{SplitSample: true}, 1, 2000, []engine.SampleRow{plain}, 0, []string{"sample_rows"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := newFakeGPU(t, 90, 1<<30)
			b, err := Open(tc.opts)
			if err != nil {
				t.Fatal(err)
			}
			logits := b.Alloc(tc.R, tc.V)
			l0 := len(g.launches)
			if _, _, err := b.Sample(logits, tc.rows); err != nil {
				t.Fatal(err)
			}
			ls := g.launches[l0:]
			var names []string
			for _, l := range ls {
				names = append(names, l.name)
			}
			if len(names) != len(tc.kernels) {
				t.Fatalf("launches %v, want %v", names, tc.kernels)
			}
			for i, n := range tc.kernels {
				if names[i] != n {
					t.Fatalf("launches %v, want %v", names, tc.kernels)
				}
			}
			if tc.S == 0 {
				return
			}
			n := 0 // plain rows
			for _, r := range tc.rows {
				if plainSampled(r, tc.V) {
					n++
				}
			}
			mx, ms, pk := ls[0], ls[1], ls[2]
			V, S := uint64(tc.V), uint64(tc.S)
			switch {
			case mx.grid != [3]int{n, tc.S, 1} || ms.grid != mx.grid || pk.grid != [3]int{n, 1, 1}:
				t.Errorf("grids %v %v %v, want (%d, %d) twice and %d", mx.grid, ms.grid, pk.grid, n, tc.S, n)
			case mx.block != 256 || ms.block != 256 || pk.block != 256:
				t.Errorf("blocks %d %d %d, want 256", mx.block, ms.block, pk.block)
			case mx.args[3] != V || mx.args[4] != S || ms.args[6] != V || ms.args[7] != S || pk.args[9] != V || pk.args[10] != S:
				t.Errorf("V, S: %v %v %v", mx.args[3:], ms.args[6:], pk.args[9:])
			case ms.args[2] != mx.args[0] || pk.args[4] != mx.args[0] || pk.args[2] != ms.args[0] || pk.args[3] != ms.args[1]:
				t.Errorf("the part maxima, sums and argmaxima do not pass from launch to launch: %v %v %v", mx.args, ms.args, pk.args)
			case mx.args[1] != ms.args[3] || mx.args[1] != pk.args[5] || mx.args[2] != ms.args[4] || mx.args[2] != pk.args[6]:
				t.Errorf("the launches read other logits or rows: %v %v %v", mx.args, ms.args, pk.args)
			}
		})
	}
}

func rep(r engine.SampleRow, n int) []engine.SampleRow {
	out := make([]engine.SampleRow, n)
	for i := range out {
		out[i] = r
	}
	return out
}

// TestSampleOneCopyEachWay (fake driver): Sample sends every row's parameters up in one copy,
// laid out set by set (plain rows, then top-k/top-p rows: U, row, temperature, top-k, top-p),
// points each kernel at its set's part of it and of one output buffer (ids, then log-probs),
// and brings the results back in one copy after one synchronisation (before: a copy up per
// parameter array and two copies down per set, each waited for).
func TestSampleOneCopyEachWay(t *testing.T) {
	g := newFakeGPU(t, 90, 1<<30)
	b, err := Open(Options{})
	if err != nil {
		t.Fatal(err)
	}
	const R, V = 6, 50
	logits := b.Alloc(R, V)
	rows := []engine.SampleRow{{Temperature: 1, U: 0.25}, {Temperature: 0.8, TopK: 7, U: 0.5}, {},
		{Temperature: 1.2, TopP: 0.9, U: 0.125}, {Temperature: 0.5, U: 0.75}, {Temperature: 0.9, TopK: 9, TopP: 0.8, U: 0.625}}
	c0, l0, u0, d0 := len(g.calls), len(g.launches), len(g.uploads), g.dtoh
	if _, _, err := b.Sample(logits, rows); err != nil {
		t.Fatal(err)
	}
	syncs, copies := g.hostWaits(c0)
	if syncs != 1 || copies != 1 || g.dtoh-d0 != 8*R || len(g.uploads)-u0 != 1 {
		t.Fatalf("%d synchronisations, %d copies down of %d bytes, %d copies up; want 1, 1 of %d, 1", syncs, copies, g.dtoh-d0, len(g.uploads)-u0, 8*R)
	}
	up := g.uploads[u0]
	if len(up.data) != 24*R {
		t.Fatalf("parameters of %d bytes, want %d", len(up.data), 24*R)
	}
	le := binary.LittleEndian
	ls := g.launches[l0:]
	if len(ls) != 2 || ls[0].name != "sample_rows" || ls[1].name != "sample_topkp" {
		t.Fatalf("launches %v, want sample_rows and sample_topkp", ls)
	}
	out := ls[0].args[0]
	for si, set := range [][]int{{0, 2, 4}, {1, 3, 5}} {
		n, at, off := len(set), 72*si, 3*si // byte offset of the set's parameters; its first output
		for i, r := range set {
			p := rows[r]
			got := [5]uint64{le.Uint64(up.data[at+8*i:]), uint64(le.Uint32(up.data[at+8*n+4*i:])), uint64(le.Uint32(up.data[at+12*n+4*i:])),
				uint64(le.Uint32(up.data[at+16*n+4*i:])), uint64(le.Uint32(up.data[at+20*n+4*i:]))}
			want := [5]uint64{math.Float64bits(p.U), uint64(r), uint64(math.Float32bits(p.Temperature)), uint64(p.TopK), uint64(math.Float32bits(p.TopP))}
			if got != want {
				t.Errorf("set %d row %d: U, row, temperature, top-k, top-p bits %v, want %v", si, r, got, want)
			}
		}
		l, dp := ls[si], up.dst+uint64(at)
		// sample_rows(ids, lps, logits, rows, temps, us, V); sample_topkp(ids, lps, logits, rows, temps, topks, topps, us, V)
		want := []uint64{out + uint64(4*off), out + uint64(4*(R+off)), l.args[2], dp + uint64(8*n), dp + uint64(12*n), dp, V}
		if si == 1 {
			want = []uint64{out + uint64(4*off), out + uint64(4*(R+off)), l.args[2], dp + uint64(8*n), dp + uint64(12*n), dp + uint64(16*n), dp + uint64(20*n), dp, V}
		}
		if l.grid[0] != n || !slices.Equal(l.args, want) {
			t.Errorf("%s: grid %d, args %#x; want %d rows, %#x", l.name, l.grid[0], l.args, n, want)
		}
	}
}
