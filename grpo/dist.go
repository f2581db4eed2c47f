package grpo

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/gob"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prolong-rl/prolong/checkpoints"
	"github.com/prolong-rl/prolong/engine"
	"github.com/prolong-rl/prolong/engine/dist"
)

// Data-parallel GRPO. With a Cluster of several ranks (RunConfig.Cluster), every rank holds the
// whole policy and:
//   - draws the same prompts from the same seeded stream, and generates, scores and trains only
//     its share: a contiguous slice of each rollout round's prompts (share), whole groups, with
//     the sampling seed of each prompt's global index, so the rollouts are those of the
//     1-process run of the same global batch;
//   - tells the others its groups' rewards, lengths and truncations (gatherBytes), so that every
//     rank keeps the same groups (dynamic sampling fills the global batch), computes the same
//     advantages, the same shuffled mini-batches and the same loss normalisation, and logs the
//     1-process run's rollout metrics;
//   - sums its gradients with the others' (an all-reduce per bucket of gradBucketElems, during
//     the mini-batch's last backward: dist_overlap.go) before the optimizer step, so the
//     gradient, its global norm, the clipping and the update are the 1-process run's, and the
//     weights stay identical on every rank (checked by a checksum at each save);
//   - adds its loss metrics to the others' (sums over tokens and micro-batches).
// Rank 0 alone writes the run directory (metrics, TensorBoard, plots, exports, run states) and
// pushes weights to rollout servers.

// gradBucketElems is the size of a gradient all-reduce (4 MiB of fp32).
const gradBucketElems = 1 << 20

// Cluster is this process's place in a data-parallel run: the communicator and what the
// launcher said. OpenCluster makes it.
type Cluster struct {
	Comm   dist.Comm
	Launch dist.Launch
	mon    *progress
}

// OpenCluster detects the launcher (dist.DetectEnv) and opens the communicator that mode asks
// for (dist.Open), each collective bounded by timeout; device is the trainer's --device. The
// trainer's collectives move host buffers (its gradients too, staged through host memory on a
// GPU). Under an MPI launcher, auto opens MPI whatever the device. --dist nccl (or auto under a
// torchrun-style launcher, which has no MPI, with a GPU device) opens NCCL on the GPU of this
// rank's local rank, which stages the host buffers through device memory (dist.HostCopier);
// UNVERIFIED on GPUs (docs/distributed.md). A collective that times out ends the job with a
// message naming the rank that is behind and the last step saved.
func OpenCluster(mode dist.Mode, timeout time.Duration, device string) (*Cluster, error) {
	l, err := dist.DetectEnv()
	if err != nil {
		return nil, err
	}
	commDevice := "cpu"
	gpu := device != "cpu" && device != ""
	if mode == dist.ModeNCCL || (mode == dist.ModeAuto && !l.MPI && l.Distributed() && gpu) {
		if !gpu {
			return nil, errors.New("--dist nccl needs a GPU device (--device cuda)")
		}
		commDevice, mode = device, dist.ModeNCCL
		if device == "auto" {
			commDevice = "cuda"
		}
	}
	mon := &progress{}
	c, err := dist.Open(mode, l, commDevice, dist.Options{Timeout: timeout, Describe: mon.describe})
	if err != nil {
		return nil, err
	}
	mon.rank, mon.size = c.Rank(), c.Size()
	return &Cluster{Comm: c, Launch: l, mon: mon}, nil
}

// Rank is this process's rank (0 without a cluster).
func (c *Cluster) Rank() int {
	if c == nil || c.Comm == nil {
		return 0
	}
	return c.Comm.Rank()
}

// Size is the number of ranks (1 without a cluster).
func (c *Cluster) Size() int {
	if c == nil || c.Comm == nil {
		return 1
	}
	return c.Comm.Size()
}

// Close ends the communicator (MPI_Finalize).
func (c *Cluster) Close() error {
	if c == nil || c.Comm == nil {
		return nil
	}
	return c.Comm.Close()
}

// Abort ends every rank of the job, saying why (it does not return under MPI).
func (c *Cluster) Abort(reason string) {
	if c != nil && c.Comm != nil && c.Comm.Size() > 1 {
		c.Comm.Abort(reason)
	}
}

// dataParallel is a PolicyOptimizer's view of the other ranks; nil for a single process.
type dataParallel struct {
	comm       dist.Comm
	rank, size int
	mon        *progress // may be nil
	// The gradient all-reduces of the current step: seconds waiting for the other ranks to
	// finish their backward (a barrier), seconds summing, bytes (per rank).
	gradWait, gradSeconds float64
	gradBytes             int
	step                  int // for progress records
	// overlap sums the gradients during the backward (RunConfig.GradOverlap, dist_overlap.go);
	// plan and bucketBufs are its bucket layout and host buffers, kept from step to step.
	overlap     bool
	bucketElems int // gradBucketElems (tests make it smaller)
	plan        *gradPlan
	bucketBufs  [][]float32
}

func newDataParallel(c dist.Comm, mon *progress) *dataParallel {
	if c == nil || c.Size() < 2 {
		return nil
	}
	return &dataParallel{comm: c, rank: c.Rank(), size: c.Size(), mon: mon, overlap: true, bucketElems: gradBucketElems}
}

// share is rank's slice [lo, hi) of n items split over size ranks: contiguous, the later ranks
// taking one more where n does not divide evenly.
func share(n, rank, size int) (lo, hi int) { return n * rank / size, n * (rank + 1) / size }

// ServerShare is the slice [lo, hi) of n rollout servers that rank of size ranks sends its
// prompts to: split as the prompts are (contiguous, the later ranks taking one more where n
// does not divide evenly) when there are at least as many servers as ranks, else the one
// server rank mod n (ranks share the servers round-robin). Weights go to every server.
func ServerShare(n, rank, size int) (lo, hi int) {
	if n < size {
		return rank % n, rank%n + 1
	}
	return share(n, rank, size)
}

// enter records that this rank enters a collective (what, of the current step) for the
// timeout's message.
func (d *dataParallel) enter(what string) {
	if d.mon != nil {
		d.mon.enter(d.step, what)
	}
}

// allReduceGrads sums the policy's accumulated gradients over the ranks, after a barrier that
// tells the wait for the slowest rank apart from the summing.
func (d *dataParallel) allReduceGrads(policy *engine.Trainer) error {
	t0 := time.Now()
	d.enter("barrier before the gradients")
	if err := d.comm.Barrier(); err != nil {
		return err
	}
	t1 := time.Now()
	d.gradWait += t1.Sub(t0).Seconds()
	err := policy.ReduceGrads(d.bucketElems, func(b []float32) error {
		d.enter(fmt.Sprintf("all-reduce of gradients (%d values)", len(b)))
		d.gradBytes += 4 * len(b)
		return d.comm.AllReduce(dist.HostF32(b))
	})
	d.gradSeconds += time.Since(t1).Seconds()
	return err
}

// gatherBytes gives every rank every rank's b, in rank order (an all-gather of the lengths, then
// of the bytes as bf16 bit patterns, which collectives move unchanged).
func (d *dataParallel) gatherBytes(what string, b []byte) ([][]byte, error) {
	d.enter(what)
	n := uint64(len(b))
	lens := make(dist.HostBF16, 4*d.size)
	if err := d.comm.AllGather(dist.HostBF16{uint16(n), uint16(n >> 16), uint16(n >> 32), uint16(n >> 48)}, lens); err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	sizes := make([]int, d.size)
	words := 0
	for r := range sizes {
		l := lens[4*r:]
		sizes[r] = int(uint64(l[0]) | uint64(l[1])<<16 | uint64(l[2])<<32 | uint64(l[3])<<48)
		words = max(words, (sizes[r]+1)/2)
	}
	send := make(dist.HostBF16, words)
	for i, c := range b {
		send[i/2] |= uint16(c) << (8 * (i % 2))
	}
	recv := make(dist.HostBF16, words*d.size)
	if err := d.comm.AllGather(send, recv); err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	out := make([][]byte, d.size)
	for r := range out {
		w := recv[r*words : (r+1)*words]
		out[r] = make([]byte, sizes[r])
		for i := range out[r] {
			out[r][i] = byte(w[i/2] >> (8 * (i % 2)))
		}
	}
	return out, nil
}

// gather gob-encodes v, gathers every rank's and decodes them into a slice in rank order.
func gather[T any](d *dataParallel, what string, v T) ([]T, error) {
	var buf bytes.Buffer
	if err := gob.NewEncoder(&buf).Encode(v); err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	all, err := d.gatherBytes(what, buf.Bytes())
	if err != nil {
		return nil, err
	}
	out := make([]T, len(all))
	for r, b := range all {
		if err := gob.NewDecoder(bytes.NewReader(b)).Decode(&out[r]); err != nil {
			return nil, fmt.Errorf("%s: from rank %d: %w", what, r, err)
		}
	}
	return out, nil
}

// agree makes the ranks share their outcome of a step that may fail on some of them (a rank-0
// write): every rank returns an error when any rank failed, naming it.
func (d *dataParallel) agree(what string, err error) error {
	msg := ""
	if err != nil {
		msg = err.Error()
	}
	all, gerr := gather(d, what, msg)
	if gerr != nil {
		return errors.Join(err, gerr)
	}
	var errs []error
	for r, m := range all {
		if m == "" {
			continue
		}
		if r == d.rank {
			errs = append(errs, err)
		} else {
			errs = append(errs, fmt.Errorf("rank %d: %s", r, m))
		}
	}
	return errors.Join(errs...)
}

// broadcastWeights gives every rank rank 0's weights (names, shapes and values): a job's
// starting model is built or read once.
func (d *dataParallel) broadcastWeights(w map[string]engine.HostTensor) (map[string]engine.HostTensor, error) {
	type header struct {
		Names  []string
		Shapes [][]int
	}
	var h header
	if d.rank == 0 {
		h.Names = slices.Sorted(func(yield func(string) bool) {
			for k := range w {
				if !yield(k) {
					return
				}
			}
		})
		for _, n := range h.Names {
			h.Shapes = append(h.Shapes, w[n].Shape)
		}
	}
	hs, err := gather(d, "the starting weights' names", h)
	if err != nil {
		return nil, err
	}
	h = hs[0]
	out := make(map[string]engine.HostTensor, len(h.Names))
	for i, name := range h.Names {
		t := engine.HostTensor{Shape: h.Shapes[i]}
		if d.rank == 0 {
			t.Data = w[name].Data
		} else {
			n := 1
			for _, s := range t.Shape {
				n *= s
			}
			t.Data = make([]float32, n)
		}
		d.enter("broadcast of weight " + name)
		if err := d.comm.Broadcast(dist.HostF32(t.Data), 0); err != nil {
			return nil, fmt.Errorf("broadcast of weight %q: %w", name, err)
		}
		out[name] = t
	}
	return out, nil
}

// weightsChecksum is the SHA-256 of weights: each name, shape and fp32 bit pattern, in name
// order.
func weightsChecksum(w map[string]engine.HostTensor) string {
	h := sha256.New()
	var b [8]byte
	for _, name := range slices.Sorted(func(yield func(string) bool) {
		for k := range w {
			if !yield(k) {
				return
			}
		}
	}) {
		t := w[name]
		h.Write([]byte(name))
		for _, s := range t.Shape {
			binary.LittleEndian.PutUint64(b[:], uint64(s))
			h.Write(b[:])
		}
		buf := make([]byte, 4*len(t.Data))
		for i, v := range t.Data {
			binary.LittleEndian.PutUint32(buf[4*i:], math.Float32bits(v))
		}
		h.Write(buf)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// checkSameWeights compares this rank's weights checksum with every other rank's: of w and,
// in a LoRA run (adapters not nil), of the adapters too, each logged; a difference is an error
// naming each rank's checksums.
func (d *dataParallel) checkSameWeights(step int, w, adapters map[string]engine.HostTensor) error {
	sum := weightsChecksum(w)
	if adapters == nil {
		slog.Info("dist: weights checksum", "rank", d.rank, "step", step, "sha256", sum)
	} else {
		ad := weightsChecksum(adapters)
		slog.Info("dist: weights checksum", "rank", d.rank, "step", step, "sha256", sum, "adapters_sha256", ad)
		sum += " adapters " + ad
	}
	all, err := gather(d, "the weights checksums", sum)
	if err != nil {
		return err
	}
	for _, s := range all {
		if s != all[0] {
			var parts []string
			for r, s := range all {
				parts = append(parts, fmt.Sprintf("rank %d %s", r, s))
			}
			return fmt.Errorf("dist: the ranks' weights differ at step %d (SHA-256: %s): the ranks did not apply the same updates", step, strings.Join(parts, ", "))
		}
	}
	return nil
}

// progress records, in the run directory's dist/ folder, the collective each rank entered last
// and a heartbeat (one small file per rank, rewritten in place every second); when a collective
// times out, describe reads the files and names the ranks that did not arrive (those whose
// heartbeat stopped: dead, stopped or frozen processes; and those alive but still before the
// collective), and the last run state saved in the run directory.
type progress struct {
	mu         sync.Mutex
	rank, size int
	dir        string
	f          *os.File
	seq        int
	what       string
	stateDir   string
}

// progressRecordBytes is the size of a rank's record (space-padded).
const progressRecordBytes = 256

// heartbeatEvery is how often a rank rewrites its record; a record older than staleAfter is
// a rank that no longer runs.
const (
	heartbeatEvery = time.Second
	staleAfter     = 5 * time.Second
)

// start opens this rank's file under dir/dist and starts its heartbeat.
func (p *progress) start(dir string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.dir, p.stateDir = filepath.Join(dir, "dist"), filepath.Join(dir, StateDir)
	if err := os.MkdirAll(p.dir, 0o755); err != nil {
		return err
	}
	f, err := os.OpenFile(filepath.Join(p.dir, fmt.Sprintf("rank-%d", p.rank)), os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	p.f = f
	p.write()
	go func() { // for the life of the process
		for range time.Tick(heartbeatEvery) {
			p.mu.Lock()
			p.write()
			p.mu.Unlock()
		}
	}()
	return nil
}

// enter records collective number seq+1 of step.
func (p *progress) enter(step int, what string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.seq++
	p.what = fmt.Sprintf("step %d: %s", step, what)
	p.write()
}

// write rewrites this rank's record: "seq unix-ms what" (p.mu held).
func (p *progress) write() {
	if p.f == nil {
		return
	}
	rec := fmt.Sprintf("%d %d %s", p.seq, time.Now().UnixMilli(), p.what)
	if len(rec) > progressRecordBytes-1 {
		rec = rec[:progressRecordBytes-1]
	}
	rec += strings.Repeat(" ", progressRecordBytes-1-len(rec)) + "\n"
	p.f.WriteAt([]byte(rec), 0) // best effort: the files only explain a timeout
}

// describe names the ranks that did not reach this rank's collective and the last step saved.
func (p *progress) describe() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	var behind []string
	if p.dir != "" {
		for r := 0; r < p.size; r++ {
			if r == p.rank {
				continue
			}
			b, err := os.ReadFile(filepath.Join(p.dir, fmt.Sprintf("rank-%d", r)))
			fields := strings.SplitN(strings.TrimSpace(string(b)), " ", 3)
			if err != nil || len(fields) < 2 {
				behind = append(behind, fmt.Sprintf("rank %d (no progress record in %s)", r, p.dir))
				continue
			}
			seq, _ := strconv.Atoi(fields[0])
			ms, _ := strconv.ParseInt(fields[1], 10, 64)
			last := "no collective yet"
			if seq > 0 && len(fields) == 3 {
				last = fmt.Sprintf("last in collective %d, %s", seq, fields[2])
			}
			switch age := time.Since(time.UnixMilli(ms)); {
			case age > staleAfter:
				behind = append(behind, fmt.Sprintf("rank %d (no sign of life for %v: dead, stopped or frozen; %s)", r, age.Round(time.Second), last))
			case seq < p.seq:
				behind = append(behind, fmt.Sprintf("rank %d (alive but not there yet: %s)", r, last))
			}
		}
	}
	s := fmt.Sprintf("this rank waits in collective %d (%s)", p.seq, p.what)
	switch {
	case len(behind) > 0:
		s = "failed: " + strings.Join(behind, ", ") + "; " + s
	case p.dir != "":
		s = "every rank is alive and reached this collective: one is stuck inside it; " + s
	}
	// The run states on disk (each written whole, then renamed): rank 0 may have saved one
	// that the others have not heard of.
	if steps, _ := checkpoints.ListSteps(p.stateDir); p.stateDir != "" && len(steps) > 0 {
		s += fmt.Sprintf("; last step saved: %d (%s): continue with --resume", steps[len(steps)-1], p.stateDir)
	} else {
		s += "; no run state saved yet: start the run again"
	}
	return s
}

// dpRollouts is rank d's share of a rollout round's prompts, generated and scored, and every
// rank's groups' numbers (samplesInfo per prompt, in global prompt order).
type sampleInfo struct {
	Reward, Shaped float64 // before and after the overlong shaping
	Len            int
	Trunc          bool
}

// sampleRoundDP is sampleRound for a data-parallel run: every rank draws the same prompts,
// samples and scores its share, and the ranks exchange their groups' numbers, so that every
// rank records the round's metrics in the 1-process order and keeps the same groups; b.groups
// holds every rank's kept groups (others' as remote rollouts: numbers without tokens).
func (t *PolicyOptimizer) sampleRoundDP(ctx context.Context, b *RolloutBatch, round int, st *rolloutStats) error {
	cfg, m, d := t.Config, b.Metrics, t.dp
	d.step = b.Step
	prompts, err := t.Prompts.Next(cfg.PromptsPerStep - len(b.groups))
	if err != nil {
		return fmt.Errorf("grpo: step %d: prompts: %w", m.Step, err)
	}
	lo, hi := share(len(prompts), d.rank, d.size)
	var mine [][]*rollout
	info := make([][]sampleInfo, 0, hi-lo)
	if hi > lo {
		p := t.rolloutParams(b.Step, round)
		p.Seed += uint64(lo) // prompt i's samples are seeded by its index in the round
		samples, err := t.Rollouts.Rollout(ctx, prompts[lo:hi], p)
		if err != nil {
			return fmt.Errorf("grpo: step %d: rollout: %w", m.Step, err)
		}
		rewards, err := t.rewards(ctx, prompts[lo:hi], samples)
		if err != nil {
			return fmt.Errorf("grpo: step %d: %w", m.Step, err)
		}
		for i := range samples {
			g, _, err := t.group(&prompts[lo+i], samples[i], rewards[i], nil, nil)
			if err != nil {
				return fmt.Errorf("grpo: step %d: rollout of prompt %d: %w", m.Step, lo+i, err)
			}
			mine = append(mine, g)
			si := make([]sampleInfo, len(g))
			for j, r := range g {
				si[j] = sampleInfo{Reward: rewards[i][j], Shaped: r.reward, Len: len(r.tokens), Trunc: r.truncated}
			}
			info = append(info, si)
		}
	}
	all, err := gather(d, fmt.Sprintf("rollouts of round %d", round), info)
	if err != nil {
		return fmt.Errorf("grpo: step %d: %w", m.Step, err)
	}
	m.SamplingRounds++
	i := 0
	for r, groups := range all {
		if rlo, rhi := share(len(prompts), r, d.size); len(groups) != rhi-rlo {
			return fmt.Errorf("grpo: step %d: rank %d sent %d groups for its %d prompts", m.Step, r, len(groups), rhi-rlo)
		}
		for _, g := range groups {
			p := &prompts[i]
			rs := make([]float64, len(g))
			for j, s := range g {
				st.add(m, p.Kind, s.Reward, s.Shaped, s.Len, s.Trunc)
				rs[j] = s.Shaped
			}
			if cfg.DynamicSampling && UniformGroups([][]float64{rs}, 1e-9)[0] {
				m.GroupsDropped++
				i++
				continue
			}
			if r == d.rank {
				b.groups = append(b.groups, mine[i-lo])
			} else {
				rg := make([]*rollout, len(g))
				for j, s := range g {
					rg[j] = &rollout{prompt: p, remote: true, n: s.Len, truncated: s.Trunc, reward: s.Shaped}
				}
				b.groups = append(b.groups, rg)
			}
			i++
		}
	}
	return nil
}

// localRollouts are those of rs this rank generated.
func localRollouts(rs []*rollout) []*rollout {
	var out []*rollout
	for _, r := range rs {
		if !r.remote {
			out = append(out, r)
		}
	}
	return out
}

// lossSums is a rank's lossAgg and training tokens, exchanged to make the step's loss metrics.
type lossSums struct {
	Loss, PG, KL, Ent, Clo, Chi, Dual, CCov, KCov, AKL, Tokens float64
	KindTokens, KindEnt, KindKL                                map[string]float64
	HasRef, HasEnt                                             bool
	TrainTokens                                                int
}

// combineLoss replaces a (this rank's sums) and m.TrainTokens by the sums over the ranks, in
// rank order; the gradient norm, the same on every rank, stays.
func (d *dataParallel) combineLoss(a *lossAgg, m *Metrics) error {
	mine := lossSums{a.loss, a.pg, a.kl, a.ent, a.clo, a.chi, a.dual, a.ccov, a.kcov, a.akl, a.tokens,
		a.kindTokens, a.kindEnt, a.kindKL, a.hasRef, a.hasEnt, m.TrainTokens}
	all, err := gather(d, "loss metrics", mine)
	if err != nil {
		return err
	}
	g := lossAgg{gradNorm: a.gradNorm, kindTokens: map[string]float64{}, kindEnt: map[string]float64{}, kindKL: map[string]float64{}}
	m.TrainTokens = 0
	for _, s := range all {
		g.loss += s.Loss
		g.pg += s.PG
		g.kl += s.KL
		g.ent += s.Ent
		g.clo += s.Clo
		g.chi += s.Chi
		g.dual += s.Dual
		g.ccov += s.CCov
		g.kcov += s.KCov
		g.akl += s.AKL
		g.tokens += s.Tokens
		for k, v := range s.KindTokens {
			g.kindTokens[k] += v
		}
		for k, v := range s.KindEnt {
			g.kindEnt[k] += v
		}
		for k, v := range s.KindKL {
			g.kindKL[k] += v
		}
		g.hasRef = g.hasRef || s.HasRef
		g.hasEnt = g.hasEnt || s.HasEnt
		m.TrainTokens += s.TrainTokens
	}
	*a = g
	return nil
}

// combineMismatch replaces s (this rank's sums) by the sums over the ranks (the maximum for
// DiffMax).
func (d *dataParallel) combineMismatch(s *mismatchSums) error {
	all, err := gather(d, "rollout log-prob mismatch", *s)
	if err != nil {
		return err
	}
	var g mismatchSums
	for _, o := range all {
		g.N += o.N
		g.K1 += o.K1
		g.K3 += o.K3
		g.Diff += o.Diff
		g.DiffMax = max(g.DiffMax, o.DiffMax)
		g.WSum += o.WSum
		g.Above += o.Above
	}
	*s = g
	return nil
}

// evaluateDP is Evaluate for a data-parallel run: each rank samples its share of the prompts
// (seeded by their global index) and the ranks exchange lengths and rewards.
func (t *PolicyOptimizer) evaluateDP(ctx context.Context, prompts []Prompt, p engine.SamplingParams) (*EvalResult, error) {
	d := t.dp
	lo, hi := share(len(prompts), d.rank, d.size)
	type evalInfo struct {
		Lens    [][]int
		Rewards [][]float64
	}
	var mine evalInfo
	if hi > lo {
		p.Seed += uint64(lo)
		samples, err := t.Rollouts.Rollout(ctx, prompts[lo:hi], p)
		if err != nil {
			return nil, fmt.Errorf("grpo: evaluation: %w", err)
		}
		rewards, err := t.rewards(ctx, prompts[lo:hi], samples)
		if err != nil {
			return nil, fmt.Errorf("grpo: evaluation %w", err)
		}
		mine.Rewards = rewards
		for _, ss := range samples {
			l := make([]int, len(ss))
			for j, s := range ss {
				l[j] = len(s.Tokens)
			}
			mine.Lens = append(mine.Lens, l)
		}
	}
	all, err := gather(d, "evaluation", mine)
	if err != nil {
		return nil, fmt.Errorf("grpo: evaluation: %w", err)
	}
	var samples [][]engine.Sample
	var rewards [][]float64
	longest := 0
	for _, e := range all {
		for _, l := range e.Lens {
			for _, n := range l {
				longest = max(longest, n)
			}
		}
	}
	zeros := make([]int32, longest) // evalResult reads only the responses' lengths
	for r, e := range all {
		if rlo, rhi := share(len(prompts), r, d.size); len(e.Lens) != rhi-rlo || len(e.Rewards) != rhi-rlo {
			return nil, fmt.Errorf("grpo: evaluation: rank %d sent %d results for its %d prompts", r, len(e.Lens), rhi-rlo)
		}
		for i, l := range e.Lens {
			ss := make([]engine.Sample, len(l))
			for j, n := range l {
				ss[j].Tokens = zeros[:n:n]
			}
			samples = append(samples, ss)
			rewards = append(rewards, e.Rewards[i])
		}
	}
	return evalResult(prompts, samples, rewards), nil
}
