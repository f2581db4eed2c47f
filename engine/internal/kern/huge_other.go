//go:build !linux

package kern

import "unsafe"

// adviseHuge is a no-op off Linux.
func adviseHuge(p unsafe.Pointer, n int) {}
