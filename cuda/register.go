package cuda

import "github.com/prolong-rl/prolong/engine"

func init() {
	// "cuda" is device 0 with bf16 matmuls (fp32 accumulation, fp32 master weights), the
	// setting for speed; tests open exact fp32 matmuls with Open(Options{}).
	engine.RegisterBackend("cuda", func() (engine.Backend, error) { return Open(Options{BF16Matmul: true}) })
}
