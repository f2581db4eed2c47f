//go:build !unix

package onnx

import "os"

// mapFile reads the whole file (no mmap on this platform); release is a no-op.
func mapFile(path string) (data []byte, release func(), err error) {
	data, err = os.ReadFile(path)
	return data, func() {}, err
}
