package cuda

import "github.com/prolong-rl/prolong/engine"

func init() {
	// "cuda" is device 0 with bf16 matmuls (fp32 accumulation, fp32 master weights), the
	// setting for speed; "cuda-fp32" keeps every matmul in exact fp32, for comparisons with the
	// CPU and for models whose training needs it.
	engine.RegisterBackend("cuda", func() (engine.Backend, error) { return Open(Options{BF16Matmul: true}) })
	engine.RegisterBackend("cuda-fp32", func() (engine.Backend, error) { return Open(Options{}) })
}
