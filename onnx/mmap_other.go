//go:build !unix

package onnx

import (
	"io"

	"github.com/prolong-rl/prolong/checkpoints"
)

// mapFile reads the whole file (no mmap on this platform); release is a no-op. A path that is
// not a regular file is refused.
func mapFile(path string) (data []byte, release func(), err error) {
	f, err := checkpoints.OpenRegular(path)
	if err != nil {
		return nil, nil, err
	}
	defer f.Close()
	data, err = io.ReadAll(f)
	return data, func() {}, err
}
