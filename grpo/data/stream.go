package data

import (
	"fmt"
	"io"
	"math/rand/v2"
)

// SplitValidation splits off a validation set: round(fraction*len(rows)) rows chosen by a
// seeded shuffle, the rest for training; both keep the file order. fraction must be in [0, 1).
func SplitValidation(rows []Row, fraction float64, seed uint64) (train, val []Row, err error) {
	if !(fraction >= 0 && fraction < 1) {
		return nil, nil, fmt.Errorf("data: validation fraction %v, want 0 <= f < 1", fraction)
	}
	k := int(fraction*float64(len(rows)) + 0.5)
	perm := rand.New(rand.NewPCG(seed, 0x76616c)).Perm(len(rows))
	isVal := make([]bool, len(rows))
	for _, i := range perm[:k] {
		isVal[i] = true
	}
	for i, r := range rows {
		if isVal[i] {
			val = append(val, r)
		} else {
			train = append(train, r)
		}
	}
	return train, val, nil
}

// StreamConfig configures a Stream.
type StreamConfig struct {
	// Seed seeds the per-epoch shuffles.
	Seed uint64
	// NoShuffle streams rows in file order every epoch.
	NoShuffle bool
	// Epochs stops the stream (io.EOF) after this many passes; 0 streams forever.
	Epochs int
}

// StreamState is a Stream's position, to save with a checkpoint and restore on resume.
type StreamState struct {
	Epoch int    `json:"epoch"`
	Pos   int    `json:"pos"`
	Seed  uint64 `json:"seed"`
	Size  int    `json:"size"`
}

// Stream hands out rows epoch after epoch, each epoch in the order of a permutation drawn from
// (Seed, epoch). Its position is a StreamState. Not safe for concurrent use.
type Stream struct {
	rows  []Row
	cfg   StreamConfig
	epoch int
	pos   int
	perm  []int
}

// NewStream streams rows (not copied). It returns an error for an empty set.
func NewStream(rows []Row, cfg StreamConfig) (*Stream, error) {
	if len(rows) == 0 {
		return nil, fmt.Errorf("data: cannot stream an empty prompt set")
	}
	if cfg.Epochs < 0 {
		return nil, fmt.Errorf("data: StreamConfig.Epochs = %d", cfg.Epochs)
	}
	s := &Stream{rows: rows, cfg: cfg}
	s.shuffle()
	return s, nil
}

func (s *Stream) shuffle() {
	if s.cfg.NoShuffle {
		s.perm = nil
		return
	}
	s.perm = rand.New(rand.NewPCG(s.cfg.Seed, uint64(s.epoch))).Perm(len(s.rows))
}

// Len is the number of rows per epoch.
func (s *Stream) Len() int { return len(s.rows) }

// Next returns the next row, or io.EOF after the last epoch.
func (s *Stream) Next() (Row, error) {
	if s.pos == len(s.rows) {
		s.epoch++
		s.pos = 0
		s.shuffle()
	}
	if s.cfg.Epochs > 0 && s.epoch >= s.cfg.Epochs {
		return Row{}, io.EOF
	}
	i := s.pos
	if s.perm != nil {
		i = s.perm[s.pos]
	}
	s.pos++
	return s.rows[i], nil
}

// NextN returns the next n rows (fewer, with io.EOF, at the end of the last epoch).
func (s *Stream) NextN(n int) ([]Row, error) {
	out := make([]Row, 0, n)
	for len(out) < n {
		r, err := s.Next()
		if err != nil {
			return out, err
		}
		out = append(out, r)
	}
	return out, nil
}

// State returns the stream's position.
func (s *Stream) State() StreamState {
	return StreamState{Epoch: s.epoch, Pos: s.pos, Seed: s.cfg.Seed, Size: len(s.rows)}
}

// Restore moves the stream to a saved position. The prompt set's size and the seed must be the
// ones the state was saved with.
func (s *Stream) Restore(st StreamState) error {
	if st.Size != len(s.rows) {
		return fmt.Errorf("data: stream state is for %d rows, this prompt set has %d", st.Size, len(s.rows))
	}
	if st.Seed != s.cfg.Seed {
		return fmt.Errorf("data: stream state has seed %d, this stream %d", st.Seed, s.cfg.Seed)
	}
	if st.Epoch < 0 || st.Pos < 0 || st.Pos > len(s.rows) {
		return fmt.Errorf("data: stream state epoch %d pos %d out of range", st.Epoch, st.Pos)
	}
	s.epoch, s.pos = st.Epoch, st.Pos
	s.shuffle()
	return nil
}
