package cuda

import (
	"os"
	"testing"
)

func TestZZDumpPTX(t *testing.T) {
	out := os.Getenv("PTX_OUT")
	if out == "" {
		t.Skip()
	}
	n := openNVRTC(t)
	ptx, log, err := n.Compile(KernelSource(), "k.cu", "compute_90")
	if err != nil {
		t.Fatal(err, log)
	}
	os.WriteFile(out, ptx, 0o644)
}
