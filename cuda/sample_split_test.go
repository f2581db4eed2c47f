package cuda

import (
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
