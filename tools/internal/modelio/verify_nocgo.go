//go:build !cgo

package modelio

import (
	"errors"

	"github.com/prolong-rl/prolong/engine"
)

// Verify needs ONNX Runtime, whose Go binding needs cgo: this build has none.
func Verify(string, *engine.Config, map[string]engine.HostTensor, []int32) (float64, error) {
	return 0, errNoCgo
}

var errNoCgo = errors.New("ONNX Runtime needs cgo, and this program was built without it (CGO_ENABLED=0)")

// InitORT reports that this build cannot load ONNX Runtime.
func InitORT() error { return errNoCgo }

// ORTLogits reports that this build cannot run ONNX Runtime.
func ORTLogits(string, []int32) ([]float32, int, error) { return nil, 0, errNoCgo }
