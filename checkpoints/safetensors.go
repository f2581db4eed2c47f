// Package checkpoints reads and writes what users keep: safetensors weights, Hugging Face model
// directories (config.json beside the weights), written atomically so that a crash never
// leaves a half-written file under its real name.
package checkpoints

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"sort"

	"github.com/prolong-rl/prolong/engine"
)

// DType is a safetensors element type this package converts to and from fp32.
type DType string

// Supported element types.
const (
	F32  DType = "F32"
	BF16 DType = "BF16"
	F16  DType = "F16"
)

func (d DType) size() int {
	switch d {
	case F32:
		return 4
	case BF16, F16:
		return 2
	}
	return 0
}

// maxHeader bounds the JSON header (safetensors' own limit is 100 MB).
const maxHeader = 100 << 20

// Tensor is one tensor of a safetensors file, converted to fp32, with its stored dtype.
type Tensor struct {
	engine.HostTensor
	DType DType
}

type headerEntry struct {
	DType       string   `json:"dtype"`
	Shape       []int    `json:"shape"`
	DataOffsets [2]int64 `json:"data_offsets"`
}

// ReadSafetensors reads every tensor of a safetensors file as fp32 (F32, BF16 and F16), with
// the header's __metadata__. The header is validated strictly; errors name the file and the
// tensor at fault. Tensors are read one at a time from the file (no second copy of it).
func ReadSafetensors(path string) (map[string]Tensor, map[string]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, nil, err
	}
	t, meta, err := ParseSafetensors(f, st.Size())
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", path, err)
	}
	return t, meta, nil
}

// ParseSafetensors reads a safetensors image of the given size from r (see ReadSafetensors).
func ParseSafetensors(r io.ReaderAt, size int64) (map[string]Tensor, map[string]string, error) {
	var lenBuf [8]byte
	if size < 8 {
		return nil, nil, fmt.Errorf("safetensors: %d bytes, too short for the header length", size)
	}
	if _, err := r.ReadAt(lenBuf[:], 0); err != nil {
		return nil, nil, fmt.Errorf("safetensors: header length: %w", err)
	}
	n := binary.LittleEndian.Uint64(lenBuf[:])
	if n == 0 || n > maxHeader || int64(n) > size-8 {
		return nil, nil, fmt.Errorf("safetensors: header length %d does not fit the file of %d bytes (limit %d)", n, size, maxHeader)
	}
	hdr := make([]byte, n)
	if _, err := r.ReadAt(hdr, 8); err != nil {
		return nil, nil, fmt.Errorf("safetensors: header: %w", err)
	}
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(hdr, &raw); err != nil {
		return nil, nil, fmt.Errorf("safetensors: header is not a JSON object: %w", err)
	}
	dataStart := 8 + int64(n)
	dataLen := size - dataStart
	meta := map[string]string{}
	type span struct {
		name     string
		lo, hi   int64
		dtype    DType
		shape    []int
		elements int64
	}
	var spans []span
	for name, msg := range raw {
		if name == "__metadata__" {
			if err := json.Unmarshal(msg, &meta); err != nil {
				return nil, nil, fmt.Errorf("safetensors: __metadata__ must map strings to strings: %w", err)
			}
			continue
		}
		var e headerEntry
		if err := json.Unmarshal(msg, &e); err != nil {
			return nil, nil, fmt.Errorf("safetensors: tensor %q: %w", name, err)
		}
		dt := DType(e.DType)
		if dt.size() == 0 {
			return nil, nil, fmt.Errorf("safetensors: tensor %q has dtype %q (supported: F32, BF16, F16)", name, e.DType)
		}
		elems := int64(1)
		for _, d := range e.Shape {
			if d < 0 || (d > 0 && elems > math.MaxInt64/int64(d)/8) {
				return nil, nil, fmt.Errorf("safetensors: tensor %q has shape %v", name, e.Shape)
			}
			elems *= int64(d)
		}
		lo, hi := e.DataOffsets[0], e.DataOffsets[1]
		if lo < 0 || hi < lo || hi > dataLen {
			return nil, nil, fmt.Errorf("safetensors: tensor %q has data offsets [%d, %d] outside the %d data bytes", name, lo, hi, dataLen)
		}
		if hi-lo != elems*int64(dt.size()) {
			return nil, nil, fmt.Errorf("safetensors: tensor %q: shape %v of %s needs %d bytes, offsets span %d", name, e.Shape, dt, elems*int64(dt.size()), hi-lo)
		}
		spans = append(spans, span{name, lo, hi, dt, e.Shape, elems})
	}
	sort.Slice(spans, func(i, j int) bool {
		return spans[i].lo < spans[j].lo || spans[i].lo == spans[j].lo && spans[i].hi < spans[j].hi
	})
	for i := 1; i < len(spans); i++ {
		if spans[i].lo < spans[i-1].hi {
			return nil, nil, fmt.Errorf("safetensors: tensors %q and %q overlap", spans[i-1].name, spans[i].name)
		}
	}
	out := map[string]Tensor{}
	for _, s := range spans {
		buf := make([]byte, s.hi-s.lo)
		if _, err := r.ReadAt(buf, dataStart+s.lo); err != nil {
			return nil, nil, fmt.Errorf("safetensors: tensor %q: %w", s.name, err)
		}
		data := make([]float32, s.elements)
		switch s.dtype {
		case F32:
			for i := range data {
				data[i] = math.Float32frombits(binary.LittleEndian.Uint32(buf[4*i:]))
			}
		case BF16:
			for i := range data {
				data[i] = math.Float32frombits(uint32(binary.LittleEndian.Uint16(buf[2*i:])) << 16)
			}
		case F16:
			for i := range data {
				data[i] = f16ToF32(binary.LittleEndian.Uint16(buf[2*i:]))
			}
		}
		out[s.name] = Tensor{HostTensor: engine.HostTensor{Shape: append([]int{}, s.shape...), Data: data}, DType: s.dtype}
	}
	return out, meta, nil
}

// WriteSafetensors writes tensors (names sorted, header padded with spaces to a multiple of 8
// as the reference implementation does) as dtype, with optional metadata, atomically: a temp
// file in the same directory, fsynced, renamed over path, and the directory fsynced.
func WriteSafetensors(path string, tensors map[string]engine.HostTensor, dtype DType, meta map[string]string) error {
	if dtype.size() == 0 {
		return fmt.Errorf("safetensors %s: dtype %q not supported", path, dtype)
	}
	names := make([]string, 0, len(tensors))
	for n := range tensors {
		names = append(names, n)
	}
	sort.Strings(names)
	hdr := map[string]any{}
	if len(meta) > 0 {
		hdr["__metadata__"] = meta
	}
	var off int64
	for _, n := range names {
		t := tensors[n]
		elems := 1
		for _, d := range t.Shape {
			elems *= d
		}
		if elems != len(t.Data) {
			return fmt.Errorf("safetensors %s: tensor %q has %d values for shape %v", path, n, len(t.Data), t.Shape)
		}
		size := int64(elems * dtype.size())
		hdr[n] = headerEntry{DType: string(dtype), Shape: append([]int{}, t.Shape...), DataOffsets: [2]int64{off, off + size}}
		off += size
	}
	hb, err := json.Marshal(hdr)
	if err != nil {
		return fmt.Errorf("safetensors %s: %w", path, err)
	}
	for len(hb)%8 != 0 {
		hb = append(hb, ' ')
	}
	return writeAtomic(path, func(w io.Writer) error {
		var lb [8]byte
		binary.LittleEndian.PutUint64(lb[:], uint64(len(hb)))
		if _, err := w.Write(lb[:]); err != nil {
			return err
		}
		if _, err := w.Write(hb); err != nil {
			return err
		}
		for _, n := range names {
			d := tensors[n].Data
			buf := make([]byte, len(d)*dtype.size())
			for i, v := range d {
				switch dtype {
				case F32:
					binary.LittleEndian.PutUint32(buf[4*i:], math.Float32bits(v))
				case BF16:
					binary.LittleEndian.PutUint16(buf[2*i:], f32ToBF16(v))
				case F16:
					binary.LittleEndian.PutUint16(buf[2*i:], f32ToF16(v))
				}
			}
			if _, err := w.Write(buf); err != nil {
				return err
			}
		}
		return nil
	})
}

// writeAtomic writes a file through fill into a temp file beside path, fsyncs it, renames it
// over path and fsyncs the directory. On error the temp file is removed and path is untouched.
func writeAtomic(path string, fill func(io.Writer) error) (err error) {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(f.Name())
		}
	}()
	if err = fill(f); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	if err = f.Sync(); err != nil {
		return err
	}
	if err = f.Close(); err != nil {
		return err
	}
	if err = os.Rename(f.Name(), path); err != nil {
		return err
	}
	if d, derr := os.Open(dir); derr == nil {
		d.Sync()
		d.Close()
	}
	return nil
}

// f32ToBF16 rounds to nearest even (NaN stays NaN).
func f32ToBF16(v float32) uint16 {
	b := math.Float32bits(v)
	if b&0x7fffffff > 0x7f800000 {
		return uint16(b>>16) | 0x40
	}
	return uint16((b + 0x7fff + (b>>16)&1) >> 16)
}

// f16ToF32 widens an IEEE half.
func f16ToF32(h uint16) float32 {
	sign := uint32(h>>15) << 31
	exp := int(h>>10) & 0x1f
	frac := uint32(h & 0x3ff)
	switch {
	case exp == 0:
		if frac == 0 {
			return math.Float32frombits(sign)
		}
		v := float32(frac) / 1024 / 16384 // subnormal: frac * 2^-24
		if sign != 0 {
			v = -v
		}
		return v
	case exp == 31:
		return math.Float32frombits(sign | 0x7f800000 | frac<<13)
	}
	return math.Float32frombits(sign | uint32(exp-15+127)<<23 | frac<<13)
}

// f32ToF16 rounds to the nearest IEEE half (ties to even), with overflow to infinity.
func f32ToF16(v float32) uint16 {
	b := math.Float32bits(v)
	sign := uint16(b>>16) & 0x8000
	exp := int(b>>23) & 0xff
	frac := b & 0x7fffff
	if exp == 0xff {
		if frac != 0 {
			return sign | 0x7e00
		}
		return sign | 0x7c00
	}
	e := exp - 127 + 15
	if e >= 31 {
		return sign | 0x7c00
	}
	if e <= 0 {
		if e < -10 {
			return sign
		}
		m := frac | 0x800000
		shift := uint32(14 - e)
		half := uint32(1) << (shift - 1)
		r := m >> shift
		rem := m & (1<<shift - 1)
		if rem > half || rem == half && r&1 == 1 {
			r++
		}
		return sign | uint16(r)
	}
	r := uint32(e)<<10 | frac>>13
	rem := frac & 0x1fff
	if rem > 0x1000 || rem == 0x1000 && r&1 == 1 {
		r++ // may carry into the exponent, which is the right rounding (up to infinity)
	}
	return sign | uint16(r)
}
