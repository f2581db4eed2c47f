//go:build unix

package onnx

import (
	"fmt"
	"os"
	"syscall"
)

// mapFile maps a file read-only into memory (its pages stay in the page cache instead of
// being copied onto the heap); release unmaps it. Empty files map to nil.
func mapFile(path string) (data []byte, release func(), err error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, nil, err
	}
	size := fi.Size()
	if size == 0 {
		return nil, func() {}, nil
	}
	if size != int64(int(size)) || !fi.Mode().IsRegular() {
		data, err := os.ReadFile(path)
		return data, func() {}, err
	}
	data, err = syscall.Mmap(int(f.Fd()), 0, int(size), syscall.PROT_READ, syscall.MAP_SHARED)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: mmap: %w", path, err)
	}
	return data, func() { syscall.Munmap(data) }, nil
}
