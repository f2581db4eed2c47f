//go:build !cgo

package onnx

import (
	"os"
	"testing"

	"github.com/prolong-rl/prolong/engine"
)

// Without cgo the ONNX Runtime binding cannot be built: the tests that need it skip, or fail
// under PROLONG_REQUIRE_ORT=1.

func needORT(t testing.TB) {
	t.Helper()
	if os.Getenv("PROLONG_REQUIRE_ORT") == "1" {
		t.Fatal("PROLONG_REQUIRE_ORT=1 but this test binary was built without cgo (CGO_ENABLED=0): the ONNX Runtime binding needs cgo and a C compiler")
	}
	t.Skip("skipping: built without cgo, so ONNX Runtime (github.com/yalue/onnxruntime_go) is unavailable")
}

type ortSession struct{}

type kvState struct {
	past int
	k, v [][]float32
}

func newORTSession(t testing.TB, path string, cfg *engine.Config) *ortSession {
	t.Fatal("ONNX Runtime needs cgo")
	return nil
}

func newORTSessionThreads(t testing.TB, path string, cfg *engine.Config, threads int) *ortSession {
	return newORTSession(t, path, cfg)
}

func (o *ortSession) step(t testing.TB, ids [][]int64, st kvState) ([][]float32, kvState) {
	t.Fatal("ONNX Runtime needs cgo")
	return nil, st
}

func (o *ortSession) stepWith(t testing.TB, ids, pos, mask [][]int64, st kvState) ([][]float32, kvState) {
	t.Fatal("ONNX Runtime needs cgo")
	return nil, st
}
