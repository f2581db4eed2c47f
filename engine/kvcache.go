package engine

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
)

// DefaultBlockSize is the number of token positions per KV-cache block.
const DefaultBlockSize = 16

// KVCache is a paged key/value cache (as in vLLM): fixed-size blocks of positions, a block
// table per sequence, reference counts so that forked sequences share the blocks of their
// common prefix, and copy on write when a shared, partly filled block is appended to. Storage
// lives on the backend and grows on demand up to a memory budget.
type KVCache struct {
	mu         sync.Mutex
	store      KVStore
	blockSize  int
	blockBytes int64 // bytes of one block over all layers, keys and values
	maxBlocks  int   // budget
	refs       []int32
	free       []int32
	used       int
}

// ErrKVBudget is wrapped by errors returned when the KV-cache memory budget is exhausted.
var ErrKVBudget = fmt.Errorf("KV-cache memory budget exhausted")

// kvBlockBytes is the size of one cache block of a model of config c: keys and values (2) of
// DefaultBlockSize positions, num_key_value_heads × head_dim each, in every layer, fp32 (4 bytes).
func kvBlockBytes(c *Config) int64 {
	return int64(c.NumHiddenLayers) * 2 * int64(c.KVDim()) * DefaultBlockSize * 4
}

// KVBudget is the KV-cache budget in bytes that lets a Generator run seqs samples of up to
// seqLen positions (prompt and response) each at once: seqs × (ceil(seqLen/DefaultBlockSize) + 2)
// blocks of kvBlockBytes. The two blocks more than the positions need are the margin of the
// scheduler's reservations: a sample's prompt and response are rounded up to blocks separately
// (one block more at most), and a sample may copy its prompt's shared last block.
func KVBudget(c *Config, seqs, seqLen int) int64 {
	blocks := (seqLen+DefaultBlockSize-1)/DefaultBlockSize + 2
	return int64(seqs) * int64(blocks) * kvBlockBytes(c)
}

// KVMemoryFraction is the share of the machine's memory that DefaultKVBudget allows the KV
// cache at most.
const KVMemoryFraction = 0.25

// DefaultKVBudget is a Generator's KV budget when GeneratorOptions leave it 0: KVBudget of
// maxSeqs samples of the model's max_position_embeddings positions (the most the generator can
// reserve, so the budget never holds back a request that MaxSeqs lets in), and at most
// KVMemoryFraction of the machine's memory (MemTotal, or the cgroup's limit where lower; 4 GiB
// assumed where neither can be read), and at least one block.
func DefaultKVBudget(c *Config, maxSeqs int) int64 {
	need := KVBudget(c, maxSeqs, c.MaxPositionEmbeddings)
	mem := SystemMemory()
	if mem <= 0 {
		mem = 4 << 30
	}
	return max(min(need, int64(float64(mem)*KVMemoryFraction)), kvBlockBytes(c))
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

// NewKVCache creates a cache for model m holding at most budgetBytes of keys and values
// (fp32). It allocates storage lazily.
func NewKVCache(m *Model, budgetBytes int64) (*KVCache, error) {
	c := m.Config
	bs := DefaultBlockSize
	blockBytes := kvBlockBytes(c)
	maxBlocks := int(budgetBytes / blockBytes)
	if maxBlocks < 1 {
		return nil, fmt.Errorf("KV cache: budget of %d bytes is below one block (%d bytes)", budgetBytes, blockBytes)
	}
	store, err := m.Backend.NewKVStore(c.NumHiddenLayers, c.NumKeyValueHeads, bs, c.HeadDim, 0)
	if err != nil {
		return nil, fmt.Errorf("KV cache: %w", err)
	}
	return &KVCache{store: store, blockSize: bs, blockBytes: blockBytes, maxBlocks: maxBlocks}, nil
}

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
		n := c.store.NumBlocks()
		if n >= c.maxBlocks {
			return 0, fmt.Errorf("%w: all %d blocks (%.1f MiB) in use", ErrKVBudget, c.maxBlocks,
				float64(int64(c.maxBlocks)*c.blockBytes)/(1<<20))
		}
		grow := min(max(n, 16), c.maxBlocks-n) // double, within the budget
		if err := c.store.Grow(n + grow); err != nil {
			return 0, fmt.Errorf("KV cache: grow to %d blocks: %w", n+grow, err)
		}
		for b := n + grow - 1; b >= n; b-- {
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
