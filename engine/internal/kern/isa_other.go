//go:build !amd64

package kern

// archImpls: only the generic path off amd64.
func archImpls() []*impl { return nil }

// AMXStatus says why the amx path is not available: off amd64 there is none.
func AMXStatus() string { return "not an x86-64 CPU" }

// AMXRefused: off amd64 there is no AMX to refuse.
func AMXRefused() bool { return false }
