//go:build !linux

package cuda

// threadID is 0 where the thread id is not read (CUDA runs on Linux here): every goroutine then
// shares one recorded decode step, so only one may drive a backend with Options.DecodeGraphs.
func threadID() int { return 0 }
