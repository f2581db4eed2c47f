package cuda

import (
	"fmt"
	"math"
	"unsafe"

	"github.com/prolong-rl/prolong/engine"
)

// topLogProbsMax is the largest k the top_logprobs kernel ranks (TOP_MAX in
// kernels/toplogprobs.cu); engine.MaxTopLogProbs is 20.
const topLogProbsMax = 32

// TopLogProbs implements engine.TopLogProbsBackend. With Options.DeviceTopLogProbs the listed
// rows are ranked on the device (kernels/toplogprobs.cu) and k ids and k log-probs a row come
// back in one download, in place of the row's V fp32 logits; without it (the default until a GPU
// run shows the kernel passes) the rows' logits come back and are ranked on the host, as the
// engine does for backends without the op (engine.TopLogProbsOnHost).
func (b *Backend) TopLogProbs(logits *engine.Tensor, rows []int32, sr []engine.SampleRow, k int) ([]int32, []float32, error) {
	R, V := logits.Rows(), logits.Cols()
	if err := engine.CheckTopLogProbs(R, V, rows, sr, k, topLogProbsMax); err != nil {
		return nil, nil, fmt.Errorf("cuda: %w", err)
	}
	if !b.opts.DeviceTopLogProbs {
		b.topMu.Lock() // the host buffer, kept from call to call (600 KB a row at Qwen2's vocabulary)
		defer b.topMu.Unlock()
		return engine.TopLogProbsOnHost(b, logits, rows, sr, k, &b.topBuf)
	}
	n := len(rows)
	if n == 0 {
		return []int32{}, []float32{}, nil
	}
	var ids []int32
	var lps []float32
	err := b.opErr(desc("TopLogProbs logits", logits), func() error {
		temps, topks, topps := make([]float32, n), make([]int32, n), make([]float32, n)
		for i, r := range sr {
			temps[i], topks[i], topps[i] = r.Temperature, int32(r.TopK), r.TopP
		}
		out := b.tmp(uint64(8 * n * k)) // ids [n*k] | log-probs [n*k]: one download
		b.launchTopLogprobs([3]int{n, 1, 1}, 1024, dptr(out), dptr(out+uint64(4*n*k)), ptr(logits), b.ints(rows),
			b.floats(temps), b.ints(topks), b.floats(topps), int32(k), int32(V))
		host := make([]uint32, 2*n*k)
		b.download(unsafe.Pointer(&host[0]), out, uint64(8*n*k))
		if b.failed() {
			return nil
		}
		ids, lps = make([]int32, n*k), make([]float32, n*k)
		for i := range ids {
			ids[i], lps[i] = int32(host[i]), math.Float32frombits(host[n*k+i])
		}
		return nil
	})
	return ids, lps, err
}
