package modelio

import (
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/prolong-rl/prolong/checkpoints"
	"github.com/prolong-rl/prolong/engine"
)

// DefaultShardBytes is the --shard-size of the tools: transformers' save_pretrained default
// (max_shard_size "5GB").
const DefaultShardBytes = 5_000_000_000

// CheckWeights looks at every tensor of w once, in name order, before anything is written:
// each value must be finite, and must stay finite when stored as dtype (an f16 holds at most
// 65504). progress, when not nil, is called after each tensor. Errors name the tensor and the
// element.
func CheckWeights(w map[string]engine.HostTensor, dtype checkpoints.DType, progress func(name string)) error {
	names := make([]string, 0, len(w))
	for name := range w {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		for i, v := range w[name].Data {
			f := float64(v)
			if math.IsNaN(f) || math.IsInf(f, 0) {
				return fmt.Errorf("tensor %s%s is %v: the model is damaged", name, index(w[name].Shape, i), v)
			}
			var stored float32
			switch dtype {
			case checkpoints.BF16:
				stored = checkpoints.BF16ToF32(checkpoints.F32ToBF16(v))
			case checkpoints.F16:
				stored = checkpoints.F16ToF32(checkpoints.F32ToF16(v))
			default:
				stored = v
			}
			if math.IsInf(float64(stored), 0) {
				wider := "f32 or bf16"
				if dtype == checkpoints.BF16 {
					wider = "f32"
				}
				return fmt.Errorf("tensor %s%s = %g does not fit in %s (it would become infinite): use --dtype %s", name, index(w[name].Shape, i), v, strings.ToLower(string(dtype)), wider)
			}
		}
		if progress != nil {
			progress(name)
		}
	}
	return nil
}

// index formats the flat index i of a row-major tensor of shape as "[a,b,...]".
func index(shape []int, i int) string {
	idx := make([]string, len(shape))
	for d := len(shape) - 1; d >= 0; d-- {
		n := max(shape[d], 1)
		idx[d] = fmt.Sprint(i % n)
		i /= n
	}
	return "[" + strings.Join(idx, ",") + "]"
}

// Summarize prints the files of dir (the output of a tool, already in place) with their sizes.
func Summarize(w io.Writer, dir string) error {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, e := range entries {
		info, err := e.Info()
		if err != nil {
			return err
		}
		fmt.Fprintf(w, "  %-32s %10s\n", filepath.Join(dir, e.Name()), HumanBytes(info.Size()))
	}
	return nil
}

// HumanBytes formats a size as 512 B, 1.5 KiB, 3.2 GiB.
func HumanBytes(n int64) string {
	if n < 1024 {
		return fmt.Sprintf("%d B", n)
	}
	v, unit := float64(n)/1024, 0
	for v >= 1024 && unit < 3 {
		v, unit = v/1024, unit+1
	}
	return fmt.Sprintf("%.1f %s", v, []string{"KiB", "MiB", "GiB", "TiB"}[unit])
}

// HumanCount formats a parameter count as 6.1K, 494.0M, 7.6B.
func HumanCount(n int64) string {
	switch {
	case n >= 1e9:
		return fmt.Sprintf("%.1fB", float64(n)/1e9)
	case n >= 1e6:
		return fmt.Sprintf("%.1fM", float64(n)/1e6)
	case n >= 1e3:
		return fmt.Sprintf("%.1fK", float64(n)/1e3)
	}
	return fmt.Sprint(n)
}
