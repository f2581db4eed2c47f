//go:build !cgo

package main

import (
	"errors"

	"github.com/prolong-rl/prolong/engine"
)

// ortRates needs the ONNX Runtime binding, which needs cgo.
func ortRates(*engine.Config, map[string]engine.HostTensor, int, int, int) (map[string]float64, error) {
	return nil, errors.New("--ort: this build has no cgo (CGO_ENABLED=0): the ONNX Runtime binding needs cgo and a C compiler")
}
