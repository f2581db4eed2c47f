package cuda

import (
	"encoding/json"
	"fmt"
	"math"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/prolong-rl/prolong/engine"
	"github.com/prolong-rl/prolong/engine/dist"
)

// TestGPUNCCL runs engine/dist's nccl backend on the GPU with the backend's tensors: a world of
// one rank in a plain process, or of N ranks under a launcher (mpirun -np N, or torchrun-style
// variables; each rank takes the GPU of its local rank). Every collective, fp32 and bf16, is
// checked exactly against values worked out here (small integers, exact in bf16 up to 8
// ranks), then all-reduces of 1-256 MiB are timed and their bus bandwidth logged (nccl-tests'
// definition: busbw = algbw × 2(N-1)/N, algbw = bytes / time; 0 for one rank, where
// NCCL copies nothing). With PROLONG_NCCL_JSON set, rank 0 writes the results there.
// Without a GPU it skips (fails with PROLONG_REQUIRE_CUDA=1); without NCCL it skips (fails with
// PROLONG_REQUIRE_NCCL=1). scripts/gpu-check.sh runs it.
func TestGPUNCCL(t *testing.T) {
	l, err := dist.DetectEnv()
	if err != nil {
		t.Fatal(err)
	}
	b := openGPU(t, Options{Device: l.LocalRank, BF16Matmul: true})
	c, err := dist.Open(dist.ModeNCCL, l, "cuda", dist.Options{Timeout: time.Minute})
	if err != nil {
		if os.Getenv("PROLONG_REQUIRE_NCCL") != "1" && strings.Contains(err.Error(), "not found") {
			t.Skip("no NCCL (PROLONG_REQUIRE_NCCL=1 makes this a failure): ", err)
		}
		t.Fatal(err)
	}
	defer func() {
		if err := c.Close(); err != nil {
			t.Error(err)
		}
	}()
	n, rank := c.Size(), c.Rank()
	if rank == 0 {
		t.Logf("nccl: %s, %d rank(s), %s (%v)", dist.NCCLVersion(c), n, b.Name(), l)
	}
	report := map[string]any{"nccl": dist.NCCLVersion(c), "ranks": n, "gpu": b.Name()}

	put := func(dt engine.DType, v []float32) (dist.Buffer, error) {
		var x *engine.Tensor
		var err error
		if dt == engine.BF16 {
			x, err = b.Upload(engine.BF16, v, true, 1, len(v)) // bf16 storage: a linear weight's layout
		} else {
			x, err = b.Upload(engine.F32, v, false, len(v))
		}
		if err != nil {
			return nil, err
		}
		return b.DistBuffer(x)
	}
	get := func(d dist.Buffer) ([]float32, error) {
		v := make([]float32, d.Len())
		return v, b.Download(d.(distBuf).t, v)
	}
	checks, err := checkCollectives(c, put, get)
	if err != nil {
		t.Fatal(err)
	}
	for what, res := range checks {
		if res != "ok" {
			t.Errorf("rank %d: %s: %s", rank, what, res)
		}
	}
	if err := c.Barrier(); err != nil {
		t.Fatal(err)
	}
	report["checks"] = checks

	// Bus bandwidth of in-place fp32 all-reduces, as nccl-tests measures it. Each call here waits
	// for its stream (the Comm API's contract), so small sizes pay a synchronisation per call.
	type bw struct {
		Bytes   int     `json:"bytes"`
		Iters   int     `json:"iters"`
		Seconds float64 `json:"seconds_per_call"`
		AlgBW   float64 `json:"algbw_gb_s"`
		BusBW   float64 `json:"busbw_gb_s"`
	}
	var rows []bw
	for mib := 1; mib <= 256; mib *= 2 {
		bytes := mib << 20
		x := b.Alloc(bytes / 4)
		xb, err := b.DistBuffer(x)
		if err != nil {
			t.Fatal(err)
		}
		for range 3 { // warm up (NCCL sets up its channels and buffers on first use)
			if err := c.AllReduce(xb); err != nil {
				t.Fatal(err)
			}
		}
		if err := c.Barrier(); err != nil {
			t.Fatal(err)
		}
		const iters = 20
		start := time.Now()
		for range iters {
			if err := c.AllReduce(xb); err != nil {
				t.Fatal(err)
			}
		}
		sec := time.Since(start).Seconds() / iters
		b.Free(x)
		alg := float64(bytes) / sec / 1e9
		r := bw{Bytes: bytes, Iters: iters, Seconds: sec, AlgBW: alg, BusBW: alg * 2 * float64(n-1) / float64(n)}
		rows = append(rows, r)
		if rank == 0 {
			t.Logf("nccl all-reduce fp32 %4d MiB, %d rank(s): %8.1f µs, algbw %7.1f GB/s, busbw %7.1f GB/s",
				mib, n, sec*1e6, r.AlgBW, r.BusBW)
		}
	}
	report["allreduce_fp32"] = rows
	if p := os.Getenv("PROLONG_NCCL_JSON"); p != "" && rank == 0 {
		data, _ := json.MarshalIndent(report, "", " ")
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Error(err)
		}
	}
}

// checkCollectives runs every collective of c on fp32 and bf16 buffers made by put and read
// by get, with values whose results are exact (small integers: exact in bf16 up to 8 ranks;
// past that, bf16 results are compared to 1/64), and returns "ok" or the first wrong element
// for each. An error is a collective or a buffer that failed.
func checkCollectives(c dist.Comm, put func(engine.DType, []float32) (dist.Buffer, error), get func(dist.Buffer) ([]float32, error)) (map[string]string, error) {
	n, rank := c.Size(), c.Rank()
	fill := func(m int, f func(i int) float32) []float32 {
		v := make([]float32, m)
		for i := range v {
			v[i] = f(i)
		}
		return v
	}
	tri := float32(n * (n + 1) / 2) // the sum over ranks of rank+1
	const m = 4099                  // elements per rank: odd, so no kernel gets a round size
	root := n - 1
	checks := map[string]string{}
	for _, dt := range []engine.DType{engine.F32, engine.BF16} {
		var putErr error // the first buffer put failed to make
		mk := func(v []float32) dist.Buffer {
			b, err := put(dt, v)
			if putErr == nil {
				putErr = err
			}
			return b
		}
		for _, tc := range []struct {
			op  string
			run func() (out dist.Buffer, want []float32, err error)
		}{
			{"all-reduce", func() (dist.Buffer, []float32, error) {
				x := mk(fill(m, func(i int) float32 { return float32((rank + 1) * (i%7 + 1)) }))
				return x, fill(m, func(i int) float32 { return tri * float32(i%7+1) }), c.AllReduce(x)
			}},
			{fmt.Sprintf("broadcast from rank %d", root), func() (dist.Buffer, []float32, error) {
				x := mk(fill(m, func(i int) float32 {
					if rank == root {
						return float32(i % 200)
					}
					return -float32(rank + 1)
				}))
				return x, fill(m, func(i int) float32 { return float32(i % 200) }), c.Broadcast(x, root)
			}},
			{"all-gather", func() (dist.Buffer, []float32, error) {
				send := mk(fill(m, func(i int) float32 { return float32(rank%8*16 + i%16) }))
				recv := mk(make([]float32, n*m))
				return recv, fill(n*m, func(j int) float32 { return float32(j/m%8*16 + j%m%16) }), c.AllGather(send, recv)
			}},
			{"reduce-scatter", func() (dist.Buffer, []float32, error) {
				send := mk(fill(n*m, func(j int) float32 { return float32((rank + 1) * (j%7 + 1)) }))
				recv := mk(make([]float32, m))
				return recv, fill(m, func(i int) float32 { return tri * float32((rank*m+i)%7+1) }), c.ReduceScatter(send, recv)
			}},
		} {
			what := fmt.Sprintf("%s %v", tc.op, dist.Float32)
			tol := 0.0
			if dt == engine.BF16 {
				what = fmt.Sprintf("%s %v", tc.op, dist.BFloat16)
				if n > 8 { // sums past 256 are not exact in bf16, and NCCL rounds partial sums
					tol = 1.0 / 64
				}
			}
			out, want, err := tc.run()
			if putErr != nil {
				return checks, fmt.Errorf("rank %d: %s: making a buffer: %w", rank, what, putErr)
			}
			if err != nil {
				return checks, fmt.Errorf("rank %d: %s: %w", rank, what, err)
			}
			got, err := get(out)
			if err != nil {
				return checks, fmt.Errorf("rank %d: %s: reading the result: %w", rank, what, err)
			}
			checks[what] = "ok"
			for i := range want {
				if math.Abs(float64(got[i]-want[i])) > tol*math.Abs(float64(want[i])) {
					checks[what] = fmt.Sprintf("element %d of %d is %g, want %g", i, len(want), got[i], want[i])
					break
				}
			}
		}
	}
	return checks, nil
}
