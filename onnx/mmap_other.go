//go:build !unix

package onnx

import (
	"io"
	"os"
)

// mapOpen reads the whole file (no mmap on this platform); release is a no-op.
func mapOpen(f *os.File) (data []byte, release func(), err error) {
	data, err = io.ReadAll(f)
	return data, func() {}, err
}
