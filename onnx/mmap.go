package onnx

import "github.com/prolong-rl/prolong/checkpoints"

// mapFile maps a file read-only into memory where the platform can (mapOpen): its pages stay
// in the page cache instead of being copied onto the heap; release unmaps it. A path that is
// not a regular file is refused (a named pipe would block forever).
func mapFile(path string) (data []byte, release func(), err error) {
	f, err := checkpoints.OpenRegular(path)
	if err != nil {
		return nil, nil, err
	}
	defer f.Close()
	return mapOpen(f)
}
