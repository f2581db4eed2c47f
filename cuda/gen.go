package cuda

// launchers_gen.go holds one typed launcher per kernel of kernels/*.cu, generated from their
// `extern "C" __global__` signatures (cuda/internal/kernelgen). After changing a kernel's
// signature, run `go generate ./cuda`; TestLaunchersUpToDate fails until then, and
// TestLaunchersMatchPTX checks every launcher's parameters against the PTX NVRTC compiles.
//
//go:generate go run gen_launchers.go
