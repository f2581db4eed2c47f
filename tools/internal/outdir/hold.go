//go:build !testhold

package outdir

// holdAt is where a program built with -tags testhold stops (see hold_testhold.go); in every
// other build it does nothing.
func holdAt(string) {}
