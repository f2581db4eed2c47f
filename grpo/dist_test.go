package grpo

import (
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prolong-rl/prolong/checkpoints"
	"github.com/prolong-rl/prolong/engine"
	"github.com/prolong-rl/prolong/engine/dist"
	"github.com/prolong-rl/prolong/grpo/modeldir"
)

// TestShare: the ranks' slices of n prompts are contiguous, cover them once, and differ in
// size by at most one (worked by hand for 16 over 3: 5, 5, 6).
func TestShare(t *testing.T) {
	for _, c := range []struct {
		n, size int
		want    [][2]int
	}{
		{16, 1, [][2]int{{0, 16}}},
		{16, 2, [][2]int{{0, 8}, {8, 16}}},
		{16, 3, [][2]int{{0, 5}, {5, 10}, {10, 16}}},
		{2, 3, [][2]int{{0, 0}, {0, 1}, {1, 2}}},
		{0, 2, [][2]int{{0, 0}, {0, 0}}},
	} {
		for r, w := range c.want {
			if lo, hi := share(c.n, r, c.size); lo != w[0] || hi != w[1] {
				t.Errorf("share(%d, %d, %d) = [%d, %d), want [%d, %d)", c.n, r, c.size, lo, hi, w[0], w[1])
			}
		}
	}
}

// TestServerShare: each rank's rollout servers, worked by hand: as prompts are split when
// there are as many servers as ranks or more, round-robin when there are fewer.
func TestServerShare(t *testing.T) {
	for _, c := range []struct {
		n, size int
		want    [][2]int
	}{
		{1, 1, [][2]int{{0, 1}}},
		{3, 1, [][2]int{{0, 3}}},
		{2, 2, [][2]int{{0, 1}, {1, 2}}},
		{3, 2, [][2]int{{0, 1}, {1, 3}}},
		{8, 3, [][2]int{{0, 2}, {2, 5}, {5, 8}}},
		{1, 2, [][2]int{{0, 1}, {0, 1}}},
		{2, 5, [][2]int{{0, 1}, {1, 2}, {0, 1}, {1, 2}, {0, 1}}},
	} {
		for r, w := range c.want {
			if lo, hi := ServerShare(c.n, r, c.size); lo != w[0] || hi != w[1] {
				t.Errorf("ServerShare(%d, %d, %d) = [%d, %d), want [%d, %d)", c.n, r, c.size, lo, hi, w[0], w[1])
			}
		}
	}
}

// onRanks runs f on every rank of a local group of size ranks and returns their errors.
func onRanks(size int, f func(d *dataParallel) error) []error {
	comms := dist.NewLocalGroup(size, dist.Options{Timeout: time.Minute})
	errs := make([]error, size)
	var wg sync.WaitGroup
	for r, c := range comms {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[r] = f(newDataParallel(c, nil))
		}()
	}
	wg.Wait()
	return errs
}

// TestGatherAgreeChecksum: gather gives every rank every rank's value (odd byte counts, an
// empty one); agree fails on every rank when one failed, naming it; checkSameWeights fails
// on every rank when one rank's weights, or its LoRA adapters, differ in one bit, naming each
// rank's checksum.
func TestGatherAgreeChecksum(t *testing.T) {
	const size = 3
	errs := onRanks(size, func(d *dataParallel) error {
		v := map[string]any{"rank": d.rank, "text": strings.Repeat("x", 2*d.rank+1)}
		if d.rank == 1 {
			v = map[string]any{}
		}
		all, err := gather(d, "test", fmt.Sprint(v))
		if err != nil {
			return err
		}
		want := []string{"map[rank:0 text:x]", "map[]", "map[rank:2 text:xxxxx]"}
		if !reflect.DeepEqual(all, want) {
			return fmt.Errorf("gathered %q, want %q", all, want)
		}
		var mine error
		if d.rank == 2 {
			mine = errors.New("disk full")
		}
		if err := d.agree("saving", mine); err == nil || !strings.Contains(err.Error(), "disk full") || (d.rank != 2 && !strings.Contains(err.Error(), "rank 2: disk full")) {
			return fmt.Errorf("agree: %v", err)
		}
		w := map[string]engine.HostTensor{"a": {Shape: []int{2}, Data: []float32{1, 2}}}
		ad := map[string]engine.HostTensor{"a.lora_B.weight": {Shape: []int{1}, Data: []float32{3}}}
		if err := d.checkSameWeights(7, w, nil); err != nil {
			return fmt.Errorf("same weights: %v", err)
		}
		if err := d.checkSameWeights(7, w, ad); err != nil {
			return fmt.Errorf("same weights and adapters: %v", err)
		}
		if d.rank == 2 { // an adapter one bit off, the base the same
			ad["a.lora_B.weight"].Data[0] = math.Nextafter32(3, 4)
		}
		err = d.checkSameWeights(8, w, ad)
		if err == nil || !strings.Contains(err.Error(), "differ at step 8") || !strings.Contains(err.Error(), "rank 2 ") {
			return fmt.Errorf("an adapter one bit off on rank 2: %v", err)
		}
		if d.rank == 1 {
			w["a"].Data[1] = math.Nextafter32(2, 3)
		}
		err = d.checkSameWeights(9, w, nil)
		if err == nil || !strings.Contains(err.Error(), "differ at step 9") || !strings.Contains(err.Error(), "rank 1 ") {
			return fmt.Errorf("one bit off on rank 1: %v", err)
		}
		return nil
	})
	for r, err := range errs {
		if err != nil {
			t.Errorf("rank %d: %v", r, err)
		}
	}
}

// TestDataParallelMatchesOneProcess: 2 and 3 ranks (in one process, the local communicator),
// each sampling and training its share of the prompts with dynamic sampling, log the metrics
// of the 1-process run of the same global batch (to 1e-6 relative) and hold identical weights
// after every step, close to the 1-process run's.
func TestDataParallelMatchesOneProcess(t *testing.T) {
	cfg := smallConfig()
	cfg.PromptsPerStep, cfg.SamplesPerPrompt, cfg.MaxResponseTokens, cfg.MaxSamplingRounds = 7, 4, 5, 3
	const steps = 2
	one, gen := newGRPO(t, cfg, countSevens)
	defer gen.Close()
	var want []*Metrics
	for s := 0; s < steps; s++ {
		m, err := one.Step(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		want = append(want, m)
	}
	if want[0].SamplingRounds < 2 || want[0].OptimizerUpdates == 0 {
		t.Fatalf("the 1-process step should need several sampling rounds and update: %+v", want[0])
	}
	wantW, _ := one.Policy.Model.HostWeights()
	serial := map[int]string{} // the weights' checksum with the all-reduce after the backward
	for _, tc := range []struct {
		size    int
		overlap bool
	}{{2, false}, {2, true}, {3, false}, {3, true}} {
		size := tc.size
		t.Run(fmt.Sprintf("%d ranks, overlap %v", size, tc.overlap), func(t *testing.T) {
			comms := dist.NewLocalGroup(size, dist.Options{Timeout: time.Minute})
			ranks := make([]*PolicyOptimizer, size)
			for r := range ranks {
				var g *engine.Generator
				ranks[r], g = newGRPO(t, cfg, countSevens)
				defer g.Close()
				ranks[r].SetComm(comms[r])
				ranks[r].dp.overlap, ranks[r].dp.bucketElems = tc.overlap, 700 // many buckets
			}
			got := make([][]*Metrics, size)
			errs := make([]error, size)
			var wg sync.WaitGroup
			for r, tr := range ranks {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for s := 0; s < steps; s++ {
						m, err := tr.Step(context.Background())
						if err != nil {
							errs[r] = err
							return
						}
						got[r] = append(got[r], m)
					}
				}()
			}
			wg.Wait()
			for r, err := range errs {
				if err != nil {
					t.Fatalf("rank %d: %v", r, err)
				}
			}
			for r := range ranks {
				m, w := got[r][0], want[0]
				for _, c := range []struct {
					name      string
					got, want float64
				}{
					{"score mean", m.RewardMean, w.RewardMean}, {"pg loss", m.PGLoss, w.PGLoss}, {"loss", m.Loss, w.Loss},
					{"entropy", m.Entropy, w.Entropy}, {"grad norm", m.GradNorm, w.GradNorm}, {"kl", m.KL, w.KL},
					{"clip frac", m.ClipFrac, w.ClipFrac}, {"response length", m.ResponseLenMean, w.ResponseLenMean},
					{"groups kept", float64(m.GroupsKept), float64(w.GroupsKept)}, {"groups dropped", float64(m.GroupsDropped), float64(w.GroupsDropped)},
					{"sampling rounds", float64(m.SamplingRounds), float64(w.SamplingRounds)}, {"train tokens", float64(m.TrainTokens), float64(w.TrainTokens)},
					{"rollout k3", m.RolloutK3KL, w.RolloutK3KL}, {"updates", float64(m.OptimizerUpdates), float64(w.OptimizerUpdates)},
				} {
					if rel := math.Abs(c.got-c.want) / math.Max(math.Abs(c.want), 1e-30); rel > 1e-6 {
						t.Errorf("rank %d step 1 %s: %.9g, 1 process %.9g", r, c.name, c.got, c.want)
					}
				}
				if m.GradAllReduceBytes == 0 {
					t.Errorf("rank %d: no gradient all-reduce bytes", r)
				}
			}
			w0, _ := ranks[0].Policy.Model.HostWeights()
			for r := 1; r < size; r++ {
				w, _ := ranks[r].Policy.Model.HostWeights()
				if weightsChecksum(w) != weightsChecksum(w0) {
					t.Errorf("rank %d's weights differ from rank 0's", r)
				}
			}
			if !tc.overlap {
				serial[size] = weightsChecksum(w0)
			} else if weightsChecksum(w0) != serial[size] {
				t.Errorf("the weights after the all-reduce overlapped with the backward differ from those after it")
			}
			for name, w := range wantW {
				for i, v := range w.Data {
					if d := math.Abs(float64(v - w0[name].Data[i])); d > 1e-4 {
						t.Fatalf("%s[%d]: %d ranks %g, 1 process %g", name, i, size, w0[name].Data[i], v)
					}
				}
			}
		})
	}
}

// TestRunDataParallel: a run of 2 ranks (the local communicator) writes one run directory, as
// rank 0 (one metrics log with a line per step, one TensorBoard file, the exports and run
// states), logs the 1-process run's rollouts and gradient norm, passes the weights checks at
// each save, and is resumed by a single process (a run state has no per-rank part). The same
// holds for a LoRA run (rank 4): the adapters' gradients are summed over the ranks, the
// checks at each save cover the adapters, and rank 0 alone writes the base and the exports'
// adapter/.
func TestRunDataParallel(t *testing.T) {
	for _, tc := range []struct {
		name string
		run  func(t *testing.T, dir string, steps int) (RunConfig, JobFunc)
	}{
		{"full", tinyRun},
		{"lora", func(t *testing.T, dir string, steps int) (RunConfig, JobFunc) { return loraRun(t, dir, steps, "fp32") }},
	} {
		t.Run(tc.name, func(t *testing.T) { testRunDataParallel(t, tc.run) })
	}
}

func testRunDataParallel(t *testing.T, run func(t *testing.T, dir string, steps int) (RunConfig, JobFunc)) {
	ctx := context.Background()
	oneDir, dpDir := t.TempDir(), t.TempDir()
	cfg, job := run(t, oneDir, 4)
	lora := cfg.LoRA.Rank > 0
	cfg.Trainer.PromptsPerStep = 3 // uneven over 2 ranks
	if _, err := Run(ctx, cfg, job); err != nil {
		t.Fatal(err)
	}
	comms := dist.NewLocalGroup(2, dist.Options{Timeout: time.Minute})
	res := make([]*RunResult, 2)
	errs := make([]error, 2)
	var wg sync.WaitGroup
	for r := range comms {
		cfg, job := run(t, dpDir, 4)
		cfg.Trainer.PromptsPerStep = 3
		cfg.Cluster = &Cluster{Comm: comms[r]}
		wg.Add(1)
		go func() {
			defer wg.Done()
			res[r], errs[r] = Run(ctx, cfg, job)
		}()
	}
	wg.Wait()
	for r, err := range errs {
		if err != nil {
			t.Fatalf("rank %d: %v", r, err)
		}
	}
	if evs, _ := filepath.Glob(filepath.Join(dpDir, "events.out.tfevents.*")); len(evs) != 1 {
		t.Errorf("TensorBoard files %v: want rank 0's alone", evs)
	}
	one, err := ReadMetrics(filepath.Join(oneDir, MetricsFile))
	if err != nil {
		t.Fatal(err)
	}
	dp, err := ReadMetrics(filepath.Join(dpDir, MetricsFile))
	if err != nil || len(dp) != 5 {
		t.Fatalf("%d records (%v), want 5: rank 0's alone", len(dp), err)
	}
	if a, b := one[1].Metrics, dp[1].Metrics; a.RewardMean != b.RewardMean || a.GroupsKept != b.GroupsKept || a.ResponseLenMean != b.ResponseLenMean ||
		math.Abs(a.Entropy-b.Entropy) > 1e-6*a.Entropy || math.Abs(a.GradNorm-b.GradNorm) > 1e-5*a.GradNorm || a.GradNorm == 0 ||
		!reflect.DeepEqual(one[0].Eval, dp[0].Eval) {
		t.Errorf("step 1: 2 ranks %+v\n1 process %+v", b, a)
	}
	for _, r := range res {
		if r.Step != 4 || len(r.Exports) != len(res[0].Exports) {
			t.Errorf("result %+v", r)
		}
	}
	for _, d := range res[0].Exports {
		if _, err := os.Stat(filepath.Join(d, "model.safetensors")); err != nil {
			t.Error(err)
		}
		if _, err := os.Stat(filepath.Join(d, modeldir.AdapterDir, modeldir.AdapterWeightsFile)); lora && err != nil {
			t.Error(err)
		}
	}
	if _, err := os.Stat(filepath.Join(dpDir, BaseDir, "model.safetensors")); lora && err != nil {
		t.Error(err)
	}
	rp, err := LoadResumePoint(dpDir)
	if err != nil || rp.Step != 4 {
		t.Fatalf("resume point %v (%v)", rp, err)
	}
	cfg, job = run(t, dpDir, 5)
	cfg.Trainer.PromptsPerStep = 3
	cfg.Resume = rp
	if r, err := Run(ctx, cfg, job); err != nil || r.Step != 5 {
		t.Fatalf("resumed by one process: %v (%v)", r, err)
	}
}

// TestProgressDescribe: a timed-out collective's description names the rank whose heartbeat
// stopped, the rank alive but not there yet, and the last run state on disk.
func TestProgressDescribe(t *testing.T) {
	dir := t.TempDir()
	p := &progress{rank: 0, size: 4}
	if err := p.start(dir); err != nil {
		t.Fatal(err)
	}
	p.enter(3, "all-reduce of gradients")
	p.enter(3, "loss metrics")
	record := func(rank, seq int, age time.Duration, what string) {
		rec := fmt.Sprintf("%d %d %s", seq, time.Now().Add(-age).UnixMilli(), what)
		if err := os.WriteFile(filepath.Join(dir, "dist", fmt.Sprintf("rank-%d", rank)), []byte(rec), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	record(1, 2, 0, "step 3: loss metrics")                      // there, alive
	record(2, 1, time.Minute, "step 3: all-reduce of gradients") // stopped
	record(3, 1, 0, "step 3: all-reduce of gradients")           // alive, behind
	step2 := filepath.Join(dir, StateDir, checkpoints.StepDirName(2))
	if err := errors.Join(os.MkdirAll(step2, 0o755), os.WriteFile(filepath.Join(step2, checkpoints.StateFile), nil, 0o644)); err != nil {
		t.Fatal(err)
	}
	got := p.describe()
	for _, want := range []string{"failed: rank 2 (no sign of life for 1m0s: dead, stopped or frozen; last in collective 1, step 3: all-reduce of gradients)",
		"rank 3 (alive but not there yet: last in collective 1, step 3: all-reduce of gradients)",
		"this rank waits in collective 2 (step 3: loss metrics)", "last step saved: 2"} {
		if !strings.Contains(got, want) {
			t.Errorf("description %q lacks %q", got, want)
		}
	}
	if strings.Contains(got, "rank 1 ") {
		t.Errorf("description %q names rank 1, which reached the collective", got)
	}
}

// TestOpenClusterModes: which communicator OpenCluster opens for --dist and --device. Without
// a launcher, auto is a world of one; --dist nccl needs a GPU device; under torchrun-style
// variables (no MPI) auto with a GPU device goes to NCCL (here: no GPU backend is registered in
// this test binary, which the error says), and with the CPU to MPI, which needs an MPI
// launcher.
func TestOpenClusterModes(t *testing.T) {
	for _, k := range []string{"OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "PMI_RANK", "PMI_SIZE", "PMIX_RANK", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_STEP_ID", "RANK", "WORLD_SIZE", "LOCAL_RANK"} {
		t.Setenv(k, "")
		os.Unsetenv(k)
	}
	c, err := OpenCluster(dist.ModeAuto, time.Minute, "cpu")
	if err != nil || c.Size() != 1 {
		t.Fatalf("no launcher: %v, size %d", err, c.Size())
	}
	if _, err := OpenCluster(dist.ModeNCCL, time.Minute, "cpu"); err == nil || !strings.Contains(err.Error(), "--dist nccl needs a GPU device") {
		t.Errorf("--dist nccl on the CPU: %v", err)
	}
	for k, v := range map[string]string{"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29511"} {
		t.Setenv(k, v)
	}
	for _, c := range []struct{ mode, device, want string }{
		{"auto", "cuda", `no device backend "cuda" registered`},
		{"auto", "auto", `no device backend "cuda" registered`},
		{"nccl", "cuda-fp32", `no device backend "cuda-fp32" registered`},
		{"auto", "cpu", "needs an MPI launcher"},
	} {
		if _, err := OpenCluster(dist.Mode(c.mode), time.Minute, c.device); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("torchrun-style, --dist %s --device %s: %v, want an error saying %q", c.mode, c.device, err, c.want)
		}
	}
}
