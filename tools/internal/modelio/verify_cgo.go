//go:build cgo

package modelio

import (
	"fmt"
	"math"

	"github.com/prolong-rl/prolong/engine"
	"github.com/prolong-rl/prolong/onnx/ortrun"
)

// Verify runs ONNX Runtime on the ONNX file and the engine on the weights, both on the same
// sample ids, and returns the largest absolute difference of their logits.
func Verify(onnxPath string, cfg *engine.Config, w map[string]engine.HostTensor, ids []int32) (float64, error) {
	got, vocab, err := ortrun.Logits(onnxPath, ids)
	if err != nil {
		return 0, err
	}
	if vocab != cfg.VocabSize {
		return 0, fmt.Errorf("%s: ONNX Runtime gives %d logits per position, the config says vocab_size %d", onnxPath, vocab, cfg.VocabSize)
	}
	want, err := EngineLogits(cfg, w, ids)
	if err != nil {
		return 0, err
	}
	var d float64
	for i := range want {
		d = math.Max(d, math.Abs(float64(got[i])-float64(want[i])))
	}
	return d, nil
}

// InitORT loads ONNX Runtime (from $ONNXRUNTIME_LIB or where scripts/setup-ort.sh puts it).
func InitORT() error { return ortrun.Init() }

// ORTLogits runs ONNX Runtime on the decoder file on ids from position 0 and returns the
// logits of every position ([len(ids)*vocab] row-major) and the vocabulary size.
func ORTLogits(onnxPath string, ids []int32) ([]float32, int, error) {
	return ortrun.Logits(onnxPath, ids)
}
