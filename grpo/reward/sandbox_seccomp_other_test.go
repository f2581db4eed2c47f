//go:build !amd64 && !arm64

package reward

// hostSyscalls is empty where the sandbox has no filter (TestSeccompNumbers skips).
var hostSyscalls = map[string]uintptr{}
