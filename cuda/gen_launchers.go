//go:build ignore

// gen_launchers.go writes launchers_gen.go from the kernel signatures of kernels/*.cu. Run with
// `go generate ./cuda` (see gen.go).
package main

import (
	"fmt"
	"os"

	"github.com/prolong-rl/prolong/cuda/internal/kernelgen"
)

func main() {
	ks, err := kernelgen.ParseDir("kernels")
	if err == nil {
		var src []byte
		if src, err = kernelgen.Generate(ks); err == nil {
			err = os.WriteFile("launchers_gen.go", src, 0o644)
		}
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "gen_launchers:", err)
		os.Exit(1)
	}
}
