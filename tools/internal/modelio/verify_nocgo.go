//go:build !cgo

package modelio

import (
	"errors"

	"github.com/prolong-rl/prolong/engine"
)

// Verify needs ONNX Runtime, whose Go binding needs cgo: this build has none.
func Verify(string, *engine.Config, map[string]engine.HostTensor, []int32) (float64, error) {
	return 0, errors.New("--verify needs ONNX Runtime, and this program was built without cgo (CGO_ENABLED=0)")
}
