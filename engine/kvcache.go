package engine

import (
	"fmt"
	"math"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
)

// DefaultBlockSize is the number of token positions per KV-cache block.
const DefaultBlockSize = 16

// KVCache is a paged key/value cache (as in vLLM): fixed-size blocks of positions, a block
// table per sequence, reference counts so that forked sequences share the blocks of their
// common prefix, and copy on write when a shared, partly filled block is appended to. Storage
// lives on the backend, holds fp32 or bf16 keys and values, and grows on demand up to a memory
// budget.
type KVCache struct {
	mu         sync.Mutex
	store      KVStore
	dtype      DType
	blockSize  int
	blockBytes int64 // bytes of one block over all layers, keys and values
	maxBlocks  int   // budget
	refs       []int32
	free       []int32
	used       int
	scratch    bool // one pass's cache, thrown away after it (AttnBatch.Scratch)
	// pad is the block the padded rows of a fixed-size decode batch write to and attend over
	// (see decodeBufs), made on first use beside the budget's blocks where hasPad.
	pad    int32
	hasPad bool
}

// ErrKVBudget is wrapped by errors returned when the KV-cache memory budget is exhausted.
var ErrKVBudget = fmt.Errorf("KV-cache memory budget exhausted")

// KVDType chooses the element type of a Generator's KV cache.
type KVDType uint8

// KV cache element types. KVAuto is bf16 where the model's linear weights are bf16 and the
// backend's KV store holds bf16 (KVDTyper), fp32 otherwise.
const (
	KVAuto KVDType = iota
	KVF32
	KVBF16
)

func (k KVDType) String() string {
	switch k {
	case KVAuto:
		return "auto"
	case KVF32:
		return "fp32"
	case KVBF16:
		return "bf16"
	}
	return fmt.Sprintf("KVDType(%d)", uint8(k))
}

// ParseKVDType parses a --kv-dtype value: "auto" (or ""), "fp32" or "bf16".
func ParseKVDType(s string) (KVDType, error) {
	switch s {
	case "", "auto":
		return KVAuto, nil
	case "fp32":
		return KVF32, nil
	case "bf16":
		return KVBF16, nil
	}
	return 0, fmt.Errorf("KV dtype %q: want auto, fp32 or bf16", s)
}

// KVDTyper is implemented by a backend whose KV store holds more element types than F32.
type KVDTyper interface {
	// KVDTypes lists the dtypes NewKVStore takes.
	KVDTypes() []DType
}

// KVDTypeSupported reports whether b's KV store holds dt (every backend holds F32).
func KVDTypeSupported(b Backend, dt DType) bool {
	if dt == F32 {
		return true
	}
	if t, ok := b.(KVDTyper); ok {
		return slices.Contains(t.KVDTypes(), dt)
	}
	return false
}

// Resolve is the element type k gives a KV cache of model m: KVAuto follows m's linear weights
// where m's backend stores that dtype; an explicit bf16 on a backend without it is an error.
func (k KVDType) Resolve(m *Model) (DType, error) {
	switch k {
	case KVAuto:
		if m.WeightDType == BF16 && KVDTypeSupported(m.Backend, BF16) {
			return BF16, nil
		}
		return F32, nil
	case KVF32:
		return F32, nil
	case KVBF16:
		if !KVDTypeSupported(m.Backend, BF16) {
			return 0, fmt.Errorf("KV dtype bf16: the %s backend's KV cache holds fp32 only", m.Backend.Name())
		}
		return BF16, nil
	}
	return 0, fmt.Errorf("KV dtype %v: unknown", k)
}

// kvElemBytes is the size of one cached key or value element of dtype dt.
func kvElemBytes(dt DType) int64 {
	if dt == BF16 {
		return 2
	}
	return 4
}

// kvBlockBytes is the size of one cache block of a model of config c: keys and values (2) of
// DefaultBlockSize positions, num_key_value_heads × head_dim each, in every layer, of dtype dt.
func kvBlockBytes(c *Config, dt DType) int64 {
	return int64(c.NumHiddenLayers) * 2 * int64(c.KVDim()) * DefaultBlockSize * kvElemBytes(dt)
}

// KVBudget is the KV-cache budget in bytes that holds seqs sequences of up to seqLen positions
// (prompt and response) each at once, keys and values of dtype dt: seqs × (ceil(seqLen/
// DefaultBlockSize) + 1) blocks. The block more than the positions need is a sample's copy of
// its prompt's shared last block.
func KVBudget(c *Config, dt DType, seqs, seqLen int) int64 {
	blocks := (seqLen+DefaultBlockSize-1)/DefaultBlockSize + 1
	return int64(seqs) * int64(blocks) * kvBlockBytes(c, dt)
}

// KVMemoryFraction is the share of the machine's memory (RAM) that DefaultKVBudget allows the KV
// cache at most on a backend without device memory of its own.
const KVMemoryFraction = 0.25

// KVDeviceMemoryFraction is the share of a device's free memory (DeviceMemory, read when the
// generator is made: after the weights, and after the optimizer where the trainer made it
// first) that DefaultKVBudget allows the KV cache at most.
const KVDeviceMemoryFraction = 0.5

// DeviceMemory is implemented by a backend with memory of its own (a GPU): what is free now and
// in all (cuMemGetInfo).
type DeviceMemory interface {
	MemInfo() (free, total int64, err error)
}

// DefaultKVBudget is a Generator's KV budget when GeneratorOptions leave it 0, for model m with
// keys and values of dtype dt: KVBudget of maxSeqs sequences of the model's
// max_position_embeddings positions (the most the generator can ever hold), and at most
// KVDeviceMemoryFraction of the device's free memory (DeviceMemory) or, on the CPU,
// KVMemoryFraction of the machine's memory (MemTotal, or the cgroup's limit where lower; 4 GiB
// assumed where neither can be read), and at least one block. why says which bound chose it.
func DefaultKVBudget(m *Model, dt DType, maxSeqs int) (bytes int64, why string) {
	c := m.Config
	need := KVBudget(c, dt, maxSeqs, c.MaxPositionEmbeddings)
	var limit int64
	if dm, ok := m.Backend.(DeviceMemory); ok {
		if free, _, err := dm.MemInfo(); err == nil && free > 0 {
			limit = int64(float64(free) * KVDeviceMemoryFraction)
			why = fmt.Sprintf("%.0f%% of the device's %.1f GiB free", 100*KVDeviceMemoryFraction, float64(free)/(1<<30))
		}
	}
	if limit == 0 {
		mem := SystemMemory()
		what := fmt.Sprintf("%.1f GiB of RAM", float64(mem)/(1<<30))
		if mem <= 0 {
			mem, what = 4<<30, "4 GiB assumed (RAM unknown)"
		}
		limit = int64(float64(mem) * KVMemoryFraction)
		why = fmt.Sprintf("%.0f%% of %s", 100*KVMemoryFraction, what)
	}
	if need <= limit {
		why = fmt.Sprintf("%d sequences of max_position_embeddings %d (below %s)", maxSeqs, c.MaxPositionEmbeddings, why)
	}
	return max(min(need, limit), kvBlockBytes(c, dt)), why
}

// SystemMemory is the memory this process may use: the host's MemTotal (/proc/meminfo), or the
// cgroup's memory limit where lower; 0 if unknown.
func SystemMemory() int64 {
	var mem int64
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		for line := range strings.Lines(string(b)) {
			if rest, ok := strings.CutPrefix(line, "MemTotal:"); ok {
				if kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64); err == nil {
					mem = kb << 10
				}
			}
		}
	}
	for _, f := range []string{"/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"} {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		if lim, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64); err == nil && lim > 0 && (mem == 0 || lim < mem) {
			mem = lim // "max" (no limit) does not parse
		}
	}
	return mem
}

// NewKVCache creates an fp32 cache for model m holding at most budgetBytes of keys and values.
// It allocates storage lazily.
func NewKVCache(m *Model, budgetBytes int64) (*KVCache, error) {
	return NewKVCacheOf(m, F32, budgetBytes)
}

// NewKVCacheOf creates a cache for model m holding at most budgetBytes of keys and values of
// dtype dt (F32, or BF16 where m's backend stores it). It allocates storage lazily.
func NewKVCacheOf(m *Model, dt DType, budgetBytes int64) (*KVCache, error) {
	c := m.Config
	bs := DefaultBlockSize
	blockBytes := kvBlockBytes(c, dt)
	maxBlocks := int(budgetBytes / blockBytes)
	if maxBlocks < 1 {
		return nil, fmt.Errorf("KV cache: budget of %d bytes is below one block (%d bytes)", budgetBytes, blockBytes)
	}
	store, err := m.Backend.NewKVStore(c.NumHiddenLayers, c.NumKeyValueHeads, bs, c.HeadDim, 0, dt)
	if err != nil {
		return nil, fmt.Errorf("KV cache: %w", err)
	}
	return &KVCache{store: store, dtype: dt, blockSize: bs, blockBytes: blockBytes, maxBlocks: maxBlocks}, nil
}

// DType is the element type of the cached keys and values.
func (c *KVCache) DType() DType { return c.dtype }

// BlockBytes is the size of one block over all layers, keys and values.
func (c *KVCache) BlockBytes() int64 { return c.blockBytes }

// BlockSize is the number of positions per block.
func (c *KVCache) BlockSize() int { return c.blockSize }

// Capacity is the budget in blocks.
func (c *KVCache) Capacity() int { return c.maxBlocks }

// Used is the number of blocks held by live sequences.
func (c *KVCache) Used() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.used
}

// BlocksFor is the number of blocks n positions need.
func (c *KVCache) BlocksFor(n int) int { return (n + c.blockSize - 1) / c.blockSize }

// Free releases the backend storage. Sequences must not be used afterwards.
func (c *KVCache) Free() { c.store.Free() }

func (c *KVCache) alloc() (int32, error) {
	if len(c.free) == 0 {
		total := c.store.NumBlocks()
		n := total // blocks of the budget made so far
		if c.hasPad {
			n--
		}
		if n >= c.maxBlocks {
			return 0, fmt.Errorf("%w: all %d blocks (%.1f MiB) in use", ErrKVBudget, c.maxBlocks,
				float64(int64(c.maxBlocks)*c.blockBytes)/(1<<20))
		}
		grow := min(max(n, 16), c.maxBlocks-n) // double, within the budget
		if err := c.store.Grow(total + grow); err != nil {
			return 0, fmt.Errorf("KV cache: grow to %d blocks: %w", total+grow, err)
		}
		for b := total + grow - 1; b >= total; b-- {
			c.free = append(c.free, int32(b))
		}
		c.refs = append(c.refs, make([]int32, grow)...)
	}
	b := c.free[len(c.free)-1]
	c.free = c.free[:len(c.free)-1]
	c.refs[b] = 1
	c.used++
	return b, nil
}

// padBlock returns the block that the padded rows of a fixed-size decode batch write their keys
// and values to and attend over, so that they read nothing a sequence wrote and write nothing a
// sequence reads. It is one block beside the budget (never counted in Used or Capacity), made
// on first use and held until Free.
func (c *KVCache) padBlock() (int32, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.hasPad {
		return c.pad, nil
	}
	total := c.store.NumBlocks()
	if err := c.store.Grow(total + 1); err != nil {
		return 0, fmt.Errorf("KV cache: grow to %d blocks for the decode padding block: %w", total+1, err)
	}
	c.pad, c.hasPad = int32(total), true
	c.refs = append(c.refs, 1) // never released
	return c.pad, nil
}

func (c *KVCache) release(b int32) {
	c.refs[b]--
	if c.refs[b] == 0 {
		c.free = append(c.free, b)
		c.used--
	}
}

// Seq is one sequence's view of the cache: its block table and length.
type Seq struct {
	cache  *KVCache
	blocks []int32
	n      int // positions written
}

// NewSeq starts an empty sequence.
func (c *KVCache) NewSeq() *Seq { return &Seq{cache: c} }

// Len is the number of positions stored.
func (s *Seq) Len() int { return s.n }

// Fork returns a sequence sharing all of s's blocks; both may then grow independently.
func (s *Seq) Fork() *Seq {
	c := s.cache
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, b := range s.blocks {
		c.refs[b]++
	}
	return &Seq{cache: c, blocks: append([]int32(nil), s.blocks...), n: s.n}
}

// Release returns the sequence's blocks to the cache.
func (s *Seq) Release() {
	c := s.cache
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, b := range s.blocks {
		c.release(b)
	}
	s.blocks, s.n = nil, 0
}

// reserve makes room for k more positions and returns their cache slots. A shared last block
// is copied first (copy on write). On error nothing changes.
func (s *Seq) reserve(k int) ([]int32, error) {
	c := s.cache
	c.mu.Lock()
	defer c.mu.Unlock()
	bs := c.blockSize
	var fresh []int32
	undo := func() {
		for _, b := range fresh {
			c.release(b)
		}
	}
	// copy on write: the block the next position lands in is shared and partly filled.
	cowIdx, cowNew := -1, int32(0)
	if s.n%bs != 0 && c.refs[s.blocks[len(s.blocks)-1]] > 1 {
		b, err := c.alloc()
		if err != nil {
			return nil, err
		}
		fresh = append(fresh, b)
		cowIdx, cowNew = len(s.blocks)-1, b
	}
	need := c.BlocksFor(s.n+k) - len(s.blocks)
	newBlocks := make([]int32, 0, need)
	for i := 0; i < need; i++ {
		b, err := c.alloc()
		if err != nil {
			undo()
			return nil, err
		}
		fresh = append(fresh, b)
		newBlocks = append(newBlocks, b)
	}
	if cowIdx >= 0 {
		old := s.blocks[cowIdx]
		c.store.CopyBlock(int(cowNew), int(old))
		c.release(old)
		s.blocks[cowIdx] = cowNew
	}
	s.blocks = append(s.blocks, newBlocks...)
	slots := make([]int32, k)
	for i := range slots {
		p := s.n + i
		slots[i] = s.blocks[p/bs]*int32(bs) + int32(p%bs)
	}
	s.n += k
	return slots, nil
}

// truncate forgets positions beyond n (used to roll back a failed step).
func (s *Seq) truncate(n int) {
	c := s.cache
	c.mu.Lock()
	defer c.mu.Unlock()
	keep := c.BlocksFor(n)
	for _, b := range s.blocks[keep:] {
		c.release(b)
	}
	s.blocks = s.blocks[:keep]
	s.n = n
}

// appendBlocks is the number of blocks that appending one position to each of seqs takes: a
// fresh block for a sequence whose last block is full (or that has none), and a copy for one
// whose partly filled last block is shared, unless every holder of that block is among seqs
// (the last of them to append finds it no longer shared).
func (c *KVCache) appendBlocks(seqs []*Seq) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	shared := map[int32]int32{} // partly filled, shared last block -> holders among seqs
	for _, s := range seqs {
		switch {
		case s.n%c.blockSize == 0:
			n++
		case c.refs[s.blocks[len(s.blocks)-1]] > 1:
			shared[s.blocks[len(s.blocks)-1]]++
		}
	}
	for b, k := range shared {
		if c.refs[b] > k {
			n += int(k)
		} else {
			n += int(k) - 1
		}
	}
	return n
}

// ParseBytes parses a memory size: a number of bytes with an optional unit, binary (KiB, MiB,
// GiB, TiB) or decimal (kB, MB, GB, TB; B for bytes), case-insensitive: "512MiB", "2GiB",
// "1.5GB", "1048576".
func ParseBytes(s string) (int64, error) {
	t := strings.ToLower(strings.TrimSpace(s))
	units := []struct {
		suffix string
		mult   float64
	}{{"kib", 1 << 10}, {"mib", 1 << 20}, {"gib", 1 << 30}, {"tib", 1 << 40},
		{"kb", 1e3}, {"mb", 1e6}, {"gb", 1e9}, {"tb", 1e12}, {"b", 1}}
	mult := 1.0
	for _, u := range units {
		if rest, ok := strings.CutSuffix(t, u.suffix); ok {
			t, mult = strings.TrimSpace(rest), u.mult
			break
		}
	}
	v, err := strconv.ParseFloat(t, 64)
	if err != nil || v < 0 || math.IsInf(v, 0) || v*mult > math.MaxInt64/2 {
		return 0, fmt.Errorf("memory size %q: want a number of bytes with an optional unit (KiB, MiB, GiB, TiB, kB, MB, GB, TB)", s)
	}
	return int64(v * mult), nil
}
