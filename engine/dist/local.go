package dist

import (
	"fmt"
	"sync"
	"time"

	"github.com/prolong-rl/prolong/engine/internal/kern"
)

// NewLocal is a world of one rank: every collective is a copy (or nothing).
func NewLocal() Comm { return NewLocalGroup(1, Options{})[0] }

// NewLocalGroup makes n ranks in this process that meet over a shared rendezvous: each must be
// driven by its own goroutine. It is the reference the other backends are tested against: sums
// are taken in rank order in fp32 (bf16: widened, summed, rounded to nearest even once). A
// collective that waits longer than opts.Timeout returns an error wrapping ErrTimeout; ranks
// that called different collectives in the same round all get an error naming both calls.
// Every rank has local rank = rank (one node). Host buffers only.
func NewLocalGroup(n int, opts Options) []Comm {
	g := &localGroup{size: n, timeout: opts.timeout(), opts: opts, rounds: map[int]*round{}, aborted: make(chan struct{})}
	cs := make([]Comm, n)
	for r := range cs {
		cs[r] = &localComm{g: g, rank: r}
	}
	return cs
}

type localGroup struct {
	size    int
	timeout time.Duration
	opts    Options

	mu      sync.Mutex
	rounds  map[int]*round
	aborted chan struct{}
	reason  string
}

// round is one collective: every rank's call and, once the last arrives, the result.
type round struct {
	calls   []*call
	arrived int
	done    chan struct{}
	failed  bool
	err     error
}

type call struct {
	op         string
	send, recv Buffer
	root       int
}

type localComm struct {
	g      *localGroup
	rank   int
	seq    int
	closed bool
}

func (c *localComm) Rank() int       { return c.rank }
func (c *localComm) Size() int       { return c.g.size }
func (c *localComm) LocalRank() int  { return c.rank }
func (c *localComm) Backend() string { return "local" }

func (c *localComm) AllReduce(buf Buffer) error {
	if err := checkBuf("all-reduce", "buf", buf); err != nil {
		return err
	}
	return c.do(&call{op: "all-reduce", send: buf, recv: buf})
}

func (c *localComm) ReduceScatter(send, recv Buffer) error {
	if err := checkPair("reduce-scatter", send, recv, c.g.size, false); err != nil {
		return err
	}
	return c.do(&call{op: "reduce-scatter", send: send, recv: recv})
}

func (c *localComm) AllGather(send, recv Buffer) error {
	if err := checkPair("all-gather", send, recv, c.g.size, true); err != nil {
		return err
	}
	return c.do(&call{op: "all-gather", send: send, recv: recv})
}

func (c *localComm) Broadcast(buf Buffer, root int) error {
	if err := checkBuf("broadcast", "buf", buf); err != nil {
		return err
	}
	if err := checkRoot("broadcast", root, c.g.size); err != nil {
		return err
	}
	return c.do(&call{op: "broadcast", send: buf, recv: buf, root: root})
}

func (c *localComm) Barrier() error { return c.do(&call{op: "barrier"}) }

func (c *localComm) Abort(reason string) {
	g := c.g
	g.mu.Lock()
	defer g.mu.Unlock()
	select {
	case <-g.aborted:
	default:
		g.reason = fmt.Sprintf("rank %d: %s", c.rank, reason)
		close(g.aborted)
	}
}

// Close makes this rank's later calls fail with ErrClosed.
func (c *localComm) Close() error { c.closed = true; return nil }

// do joins this rank's call to the current round and waits for the round's result.
func (c *localComm) do(cl *call) error {
	if c.closed {
		return fmt.Errorf("dist: %s on rank %d: %w", cl.op, c.rank, ErrClosed)
	}
	for _, b := range []Buffer{cl.send, cl.recv} {
		if b == nil {
			continue
		}
		if _, ok := b.(DeviceBuffer); ok {
			return fmt.Errorf("dist: %s: the local backend takes host buffers, not device buffers", cl.op)
		}
	}
	g := c.g
	seq := c.seq
	c.seq++
	g.mu.Lock()
	select {
	case <-g.aborted:
		g.mu.Unlock()
		return fmt.Errorf("dist: %s on rank %d: %w (%s)", cl.op, c.rank, ErrAborted, g.reason)
	default:
	}
	r := g.rounds[seq]
	if r == nil {
		r = &round{calls: make([]*call, g.size), done: make(chan struct{})}
		g.rounds[seq] = r
	}
	if r.failed {
		g.mu.Unlock()
		return fmt.Errorf("dist: %s on rank %d: %w (another rank gave up on this round)", cl.op, c.rank, ErrTimeout)
	}
	r.calls[c.rank] = cl
	r.arrived++
	if r.arrived == g.size {
		r.err = r.run()
		delete(g.rounds, seq)
		close(r.done)
	}
	g.mu.Unlock()

	timer, stop := deadline(g.timeout)
	defer stop()
	start := time.Now()
	select {
	case <-r.done:
		return r.err
	case <-g.aborted:
		return fmt.Errorf("dist: %s on rank %d: %w (%s)", cl.op, c.rank, ErrAborted, g.reason)
	case <-timer:
		g.mu.Lock()
		defer g.mu.Unlock()
		select {
		case <-r.done: // completed as the timer fired
			return r.err
		default:
		}
		r.failed = true
		return fmt.Errorf("dist: %s on rank %d: %w after %v (%d of %d ranks joined)%s",
			cl.op, c.rank, ErrTimeout, time.Since(start).Round(time.Millisecond), r.arrived, g.size, g.opts.describe())
	}
}

// run computes a complete round into every rank's buffers.
func (r *round) run() error {
	c0 := r.calls[0]
	for rk, c := range r.calls {
		if c.op != c0.op {
			return fmt.Errorf("dist: rank 0 called %s, rank %d called %s", c0.op, rk, c.op)
		}
		if c.op == "barrier" {
			continue
		}
		if c.send.DType() != c0.send.DType() || c.send.Len() != c0.send.Len() || c.recv.Len() != c0.recv.Len() {
			return fmt.Errorf("dist: %s: rank 0 passed %v×%d, rank %d passed %v×%d",
				c.op, c0.send.DType(), c0.send.Len(), rk, c.send.DType(), c.send.Len())
		}
		if c.root != c0.root {
			return fmt.Errorf("dist: %s: rank 0 named root %d, rank %d root %d", c.op, c0.root, rk, c.root)
		}
	}
	n := len(r.calls)
	switch c0.op {
	case "all-reduce":
		sum := r.sum()
		for _, c := range r.calls {
			store(c.recv, 0, sum)
		}
	case "reduce-scatter":
		sum := r.sum()
		m := c0.recv.Len()
		for rk, c := range r.calls {
			store(c.recv, 0, sum[rk*m:(rk+1)*m])
		}
	case "all-gather":
		m := c0.send.Len()
		for _, c := range r.calls {
			for src := 0; src < n; src++ {
				copyBuf(c.recv, src*m, r.calls[src].send)
			}
		}
	case "broadcast":
		src := r.calls[c0.root].send
		for rk, c := range r.calls {
			if rk != c0.root {
				copyBuf(c.recv, 0, src)
			}
		}
	}
	return nil
}

// sum adds every rank's send buffer in rank order in fp32.
func (r *round) sum() []float32 {
	acc := make([]float32, r.calls[0].send.Len())
	tmp := make([]float32, len(acc))
	for _, c := range r.calls {
		load(tmp, c.send)
		for i, v := range tmp {
			acc[i] += v
		}
	}
	return acc
}

// load widens a host buffer into fp32.
func load(dst []float32, b Buffer) {
	switch b := b.(type) {
	case HostF32:
		copy(dst, b)
	case HostBF16:
		kern.BF16ToF32(dst, b)
	}
}

// store writes fp32 values into b at element offset off (bf16: rounded to nearest even).
func store(b Buffer, off int, v []float32) {
	switch b := b.(type) {
	case HostF32:
		copy(b[off:], v)
	case HostBF16:
		kern.F32ToBF16(b[off:], v)
	}
}

// copyBuf copies src's elements into dst at element offset off (same dtype).
func copyBuf(dst Buffer, off int, src Buffer) {
	switch d := dst.(type) {
	case HostF32:
		copy(d[off:], src.(HostF32))
	case HostBF16:
		copy(d[off:], src.(HostBF16))
	}
}
