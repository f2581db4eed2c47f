package main

import (
	"io"
	"os"
	"regexp"
	"strings"
	"testing"
)

// TestTrainMemory15B checks the 1.5B table's adapter count against one worked by hand: rank 16
// on q, k, v, o, gate, up, down of hidden 1536, KV width 256, FFN 8960, 28 layers:
// q,o 2·16·1536 + k,v 16·(1536+256) + gate,up,down 16·(1536+8960) each = 659,456 a layer,
// 18,464,768 in all (73.9 MB in fp32, the adapter push measured by the rollout-server tests).
func TestTrainMemory15B(t *testing.T) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout := os.Stdout
	os.Stdout = w
	err = trainMemory15B(16, 8192)
	os.Stdout = stdout
	w.Close()
	out, _ := io.ReadAll(r)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("\n%s", out)
	const perLayer = 2*2*16*1536 + 2*16*(1536+256) + 3*16*(1536+8960)
	if perLayer != 659456 {
		t.Fatalf("hand count %d", perLayer)
	}
	for _, want := range []string{"18464768", "LoRA r16, bf16 base"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("the table lacks %q", want)
		}
	}
}

// TestZeroMemory15B checks the ZeRO-1 table of the Qwen2.5-1.5B shape against figures worked
// by hand. A layer: q 1536·1536 + bias 1536, k and v 256·1536 + bias 256 each, o 1536·1536,
// gate, up, down 8960·1536 each, two norms of 1536: 46,797,824; 28 layers, the tied embedding
// 151936·1536 and the final norm: 1,543,714,304 parameters, of which 1,310,195,712 in the
// layers' matmuls. On 8 ranks with --shard-optimizer each rank's moments are 8 bytes × 1/8 of
// them: 1,543,714,304 bytes, 1.44 GiB; its sum 4p (master) + 2·1,310,195,712 (bf16 copies) +
// 4p (gradients) + 1,543,714,304 = 16,513,820,160 bytes, 15.38 GiB; replicated, 8p of
// moments (11.50 GiB) and 27,319,820,288 bytes (25.44 GiB) on any number of ranks.
func TestZeroMemory15B(t *testing.T) {
	c := Qwen25_15B()
	if c.NumParams() != 1543714304 || c.LayerMatmulParams() != 1310195712 {
		t.Fatalf("the shape has %d parameters, %d in matmuls; worked by hand: 1543714304, 1310195712", c.NumParams(), c.LayerMatmulParams())
	}
	for _, tc := range []struct {
		ranks        int
		shard        bool
		moments, sum float64
	}{
		{8, true, 1543714304, 16513820160},
		{8, false, 12349714432, 27319820288},
		{1, true, 12349714432, 27319820288}, // one rank: its shard is everything
	} {
		b := fullTrainBytes(c, tc.ranks, tc.shard)
		if b.moments != tc.moments || b.sum() != tc.sum {
			t.Errorf("%d ranks, sharded %v: moments %.0f bytes, sum %.0f; worked by hand %.0f, %.0f", tc.ranks, tc.shard, b.moments, b.sum(), tc.moments, tc.sum)
		}
	}
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout := os.Stdout
	os.Stdout = w
	err = zeroMemory15B()
	os.Stdout = stdout
	w.Close()
	out, _ := io.ReadAll(r)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("\n%s", out)
	// The 8-rank sharded row: bf16 copies 2.44, master 5.75, gradients 5.75, moments 1.44, sum 15.38 GiB.
	if !regexp.MustCompile(`(?m)^\s*8\s+sharded \(--shard-optimizer\)\s+2\.44\s+5\.75\s+5\.75\s+1\.44\s+15\.38\s*$`).Match(out) {
		t.Errorf("the table lacks the 8-rank sharded row worked by hand (2.44, 5.75, 5.75, 1.44, 15.38 GiB)")
	}
}
