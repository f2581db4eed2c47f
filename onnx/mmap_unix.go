//go:build unix

package onnx

import (
	"fmt"
	"io"
	"os"
	"syscall"
)

// mapOpen maps the open file f read-only into memory; release unmaps it. Empty files map to
// nil; a file larger than the address space is read instead.
func mapOpen(f *os.File) (data []byte, release func(), err error) {
	fi, err := f.Stat()
	if err != nil {
		return nil, nil, err
	}
	size := fi.Size()
	if size == 0 {
		return nil, func() {}, nil
	}
	if size != int64(int(size)) {
		data, err := io.ReadAll(f)
		return data, func() {}, err
	}
	data, err = syscall.Mmap(int(f.Fd()), 0, int(size), syscall.PROT_READ, syscall.MAP_SHARED)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: mmap: %w", f.Name(), err)
	}
	return data, func() { syscall.Munmap(data) }, nil
}
