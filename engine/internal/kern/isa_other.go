//go:build !amd64

package kern

// archImpls: only the generic path off amd64.
func archImpls() []*impl { return nil }
