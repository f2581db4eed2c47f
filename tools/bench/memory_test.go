package main

import (
	"io"
	"os"
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
