//go:build unix

package onnx

import (
	"fmt"
	"io"
	"syscall"

	"github.com/prolong-rl/prolong/checkpoints"
)

// mapFile maps a file read-only into memory (its pages stay in the page cache instead of
// being copied onto the heap); release unmaps it. Empty files map to nil. A path that is not a
// regular file is refused (a named pipe would block forever).
func mapFile(path string) (data []byte, release func(), err error) {
	f, err := checkpoints.OpenRegular(path)
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
	if size != int64(int(size)) {
		data, err := io.ReadAll(f)
		return data, func() {}, err
	}
	data, err = syscall.Mmap(int(f.Fd()), 0, int(size), syscall.PROT_READ, syscall.MAP_SHARED)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: mmap: %w", path, err)
	}
	return data, func() { syscall.Munmap(data) }, nil
}
