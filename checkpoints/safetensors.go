package checkpoints

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"sort"

	"github.com/prolong-rl/prolong/engine"
	"golang.org/x/sys/unix"
)

// DType is a safetensors element type that this package converts to and from fp32.
type DType string

// The element types read and written (others are recognised in headers but not converted).
const (
	F32  DType = "F32"
	BF16 DType = "BF16"
	F16  DType = "F16"
)

// dtypeSizes holds the element size in bytes of every dtype the safetensors format defines.
var dtypeSizes = map[string]int64{
	"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1,
	"I16": 2, "U16": 2, "F16": 2, "BF16": 2,
	"I32": 4, "U32": 4, "F32": 4,
	"I64": 8, "U64": 8, "F64": 8,
}

// convertible reports whether d is one of F32, BF16, F16.
func (d DType) convertible() bool { return d == F32 || d == BF16 || d == F16 }

// MaxHeaderBytes bounds the JSON header of a safetensors file (the reference implementation's
// limit is 100 MB too); a larger length is treated as corruption.
const MaxHeaderBytes = 100 << 20

// File is the content of a safetensors file: tensors converted to fp32, the dtype each was
// stored as, and the header's __metadata__ map.
type File struct {
	Tensors  map[string]engine.HostTensor
	DTypes   map[string]DType
	Metadata map[string]string
}

// entry is one validated tensor of a header; lo and hi are offsets into the data region.
type entry struct {
	name   string
	dtype  string
	shape  []int
	elems  int64
	lo, hi int64
}

// header is a validated safetensors header.
type header struct {
	dataStart int64 // file offset of the data region
	entries   []entry
	meta      map[string]string
}

// parseHeader reads and validates the header of a safetensors image of size bytes: the 8-byte
// length against the file size and MaxHeaderBytes, the JSON object, each tensor's dtype, shape
// and data offsets, and that the tensors tile the data region exactly (sorted by offset,
// neither overlapping nor leaving gaps or trailing bytes).
func parseHeader(r io.ReaderAt, size int64) (*header, error) {
	if size < 8 {
		return nil, fmt.Errorf("file of %d bytes is too short for the 8-byte header length", size)
	}
	var lb [8]byte
	if _, err := r.ReadAt(lb[:], 0); err != nil {
		return nil, fmt.Errorf("reading the header length: %w", err)
	}
	n := binary.LittleEndian.Uint64(lb[:])
	if n > MaxHeaderBytes {
		return nil, fmt.Errorf("header length %d exceeds the limit of %d bytes", n, MaxHeaderBytes)
	}
	if int64(n) > size-8 {
		return nil, fmt.Errorf("header length %d does not fit the file of %d bytes (truncated?)", n, size)
	}
	hb := make([]byte, n)
	if _, err := r.ReadAt(hb, 8); err != nil {
		return nil, fmt.Errorf("reading the header: %w", err)
	}
	if len(bytes.TrimSpace(hb)) == 0 || bytes.TrimLeft(hb, " \t\r\n")[0] != '{' {
		return nil, errors.New("header is not a JSON object")
	}
	h := &header{dataStart: 8 + int64(n), meta: map[string]string{}}
	dataLen := size - h.dataStart

	// Walk the top-level object by tokens to refuse duplicate names (a map would keep the last).
	dec := json.NewDecoder(bytes.NewReader(hb))
	if _, err := dec.Token(); err != nil {
		return nil, fmt.Errorf("header is not valid JSON: %w", err)
	}
	seen := map[string]bool{}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, fmt.Errorf("header is not valid JSON: %w", err)
		}
		name, _ := tok.(string)
		if seen[name] {
			return nil, fmt.Errorf("header names %q twice", name)
		}
		seen[name] = true
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			return nil, fmt.Errorf("header is not valid JSON at %q: %w", name, err)
		}
		if name == "__metadata__" {
			if err := json.Unmarshal(raw, &h.meta); err != nil || h.meta == nil {
				return nil, fmt.Errorf("__metadata__ must map strings to strings: %s", raw)
			}
			continue
		}
		e, err := parseEntry(name, raw, dataLen)
		if err != nil {
			return nil, err
		}
		h.entries = append(h.entries, e)
	}
	if _, err := dec.Token(); err != nil {
		return nil, fmt.Errorf("header is not valid JSON: %w", err)
	}
	if rest, _ := io.ReadAll(dec.Buffered()); len(bytes.TrimSpace(rest)) != 0 {
		return nil, errors.New("header has bytes after its JSON object")
	}

	sort.Slice(h.entries, func(i, j int) bool {
		a, b := h.entries[i], h.entries[j]
		if a.lo != b.lo {
			return a.lo < b.lo
		}
		return a.hi < b.hi
	})
	var end int64
	for i, e := range h.entries {
		switch {
		case e.lo < end:
			return nil, fmt.Errorf("tensor %q (data offsets [%d, %d]) overlaps tensor %q", e.name, e.lo, e.hi, h.entries[i-1].name)
		case e.lo > end:
			return nil, fmt.Errorf("tensor %q starts at data offset %d, leaving a gap after offset %d", e.name, e.lo, end)
		}
		end = e.hi
	}
	if end != dataLen {
		last := "(none)"
		if len(h.entries) > 0 {
			last = fmt.Sprintf("%q", h.entries[len(h.entries)-1].name)
		}
		return nil, fmt.Errorf("the last tensor %s ends at data offset %d but the data region holds %d bytes", last, end, dataLen)
	}
	return h, nil
}

// parseEntry validates one tensor's header entry against the data region's length.
func parseEntry(name string, raw json.RawMessage, dataLen int64) (entry, error) {
	var info struct {
		DType       *string  `json:"dtype"`
		Shape       *[]int64 `json:"shape"`
		DataOffsets *[]int64 `json:"data_offsets"`
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&info); err != nil {
		return entry{}, fmt.Errorf("tensor %q: bad header entry: %w", name, err)
	}
	switch {
	case name == "":
		return entry{}, errors.New("a tensor has an empty name")
	case info.DType == nil:
		return entry{}, fmt.Errorf("tensor %q: missing field \"dtype\"", name)
	case info.Shape == nil:
		return entry{}, fmt.Errorf("tensor %q: missing field \"shape\"", name)
	case info.DataOffsets == nil || len(*info.DataOffsets) != 2:
		return entry{}, fmt.Errorf("tensor %q: field \"data_offsets\" must be two integers", name)
	}
	size, ok := dtypeSizes[*info.DType]
	if !ok {
		return entry{}, fmt.Errorf("tensor %q: unknown dtype %q", name, *info.DType)
	}
	e := entry{name: name, dtype: *info.DType, elems: 1, lo: (*info.DataOffsets)[0], hi: (*info.DataOffsets)[1]}
	for i, d := range *info.Shape {
		switch {
		case d < 0:
			return entry{}, fmt.Errorf("tensor %q: shape %v: dimension %d is negative", name, *info.Shape, i)
		case d > math.MaxInt32:
			return entry{}, fmt.Errorf("tensor %q: shape %v: dimension %d is over 2^31-1", name, *info.Shape, i)
		}
	}
	for _, d := range *info.Shape {
		if d != 0 && e.elems > dataLen/d {
			return entry{}, fmt.Errorf("tensor %q: shape %v holds more elements than the data region has bytes (%d)", name, *info.Shape, dataLen)
		}
		e.elems *= d
	}
	for _, d := range *info.Shape {
		e.shape = append(e.shape, int(d))
	}
	if e.shape == nil {
		e.shape = []int{} // a scalar
	}
	if e.lo < 0 || e.hi < e.lo || e.hi > dataLen {
		return entry{}, fmt.Errorf("tensor %q: data offsets [%d, %d] lie outside the data region of %d bytes", name, e.lo, e.hi, dataLen)
	}
	if want := e.elems * size; e.hi-e.lo != want {
		return entry{}, fmt.Errorf("tensor %q: shape %v of %s needs %d bytes but data offsets [%d, %d] span %d",
			name, *info.Shape, e.dtype, want, e.lo, e.hi, e.hi-e.lo)
	}
	return e, nil
}

// ParseSafetensors reads a safetensors image of size bytes from r: the header is validated
// (see ReadSafetensors) and every tensor converted to fp32. Errors name the tensor at fault
// but not the file; ReadSafetensors adds the path.
func ParseSafetensors(r io.ReaderAt, size int64) (*File, error) {
	h, err := parseHeader(r, size)
	if err != nil {
		return nil, err
	}
	f := &File{Tensors: map[string]engine.HostTensor{}, DTypes: map[string]DType{}, Metadata: h.meta}
	var mapped []byte
	if m, ok := r.(*mappedFile); ok {
		mapped = m.data
	}
	var buf []byte // streamed reads go through one chunk buffer, never the whole file
	for _, e := range h.entries {
		dt := DType(e.dtype)
		if !dt.convertible() {
			return nil, fmt.Errorf("tensor %q: dtype %s is not supported (want F32, BF16 or F16)", e.name, e.dtype)
		}
		data := make([]float32, e.elems)
		es := int64(dtypeSizes[e.dtype])
		if mapped != nil {
			decode(dt, data, mapped[h.dataStart+e.lo:h.dataStart+e.hi])
		} else {
			const chunk = 1 << 20 // elements per read
			for i := int64(0); i < e.elems; i += chunk {
				k := min(chunk, e.elems-i)
				if int64(cap(buf)) < k*es {
					buf = make([]byte, k*es)
				}
				b := buf[:k*es]
				if _, err := r.ReadAt(b, h.dataStart+e.lo+i*es); err != nil {
					return nil, fmt.Errorf("tensor %q: %w", e.name, err)
				}
				decode(dt, data[i:i+k], b)
			}
		}
		f.Tensors[e.name] = engine.HostTensor{Shape: e.shape, Data: data}
		f.DTypes[e.name] = dt
	}
	return f, nil
}

// decode converts little-endian values of dtype dt in b into dst (len(b) = len(dst) x size).
func decode(dt DType, dst []float32, b []byte) {
	switch dt {
	case F32:
		for i := range dst {
			dst[i] = math.Float32frombits(binary.LittleEndian.Uint32(b[4*i:]))
		}
	case BF16:
		for i := range dst {
			dst[i] = BF16ToF32(binary.LittleEndian.Uint16(b[2*i:]))
		}
	case F16:
		for i := range dst {
			dst[i] = F16ToF32(binary.LittleEndian.Uint16(b[2*i:]))
		}
	}
}

// mappedFile is a read-only memory map of a file, read through io.ReaderAt or directly.
type mappedFile struct{ data []byte }

// ReadAt implements io.ReaderAt.
func (m *mappedFile) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 || off > int64(len(m.data)) {
		return 0, io.EOF
	}
	n := copy(p, m.data[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// ReadSafetensors reads a safetensors file, converting F32, BF16 and F16 tensors to fp32. The
// file is memory-mapped (read in chunks where mapping fails), so loading never holds a second
// copy of it. The header is validated strictly: the length against the file size, the JSON,
// each dtype, shape and offset, and that the tensors tile the data region. Errors name the
// file and the tensor at fault.
// A path that is not a regular file (a named pipe would block forever) is refused.
func ReadSafetensors(path string) (*File, error) {
	fh, err := OpenRegular(path)
	if err != nil {
		return nil, err
	}
	return readSafetensors(fh, path)
}

// readSafetensors is ReadSafetensors of the open file fh, named path in errors; it closes fh.
func readSafetensors(fh *os.File, path string) (*File, error) {
	defer fh.Close()
	st, err := fh.Stat()
	if err != nil {
		return nil, err
	}
	var r io.ReaderAt = fh
	if st.Size() >= 8 && st.Size() < math.MaxInt {
		if data, err := unix.Mmap(int(fh.Fd()), 0, int(st.Size()), unix.PROT_READ, unix.MAP_SHARED); err == nil {
			defer unix.Munmap(data)
			r = &mappedFile{data: data}
		}
	}
	f, err := ParseSafetensors(r, st.Size())
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return f, nil
}

// WriteSafetensors writes tensors to path as dtype (F32, BF16 or F16; BF16 and F16 round to
// nearest even) with optional metadata. The output is deterministic: names sorted, data in
// that order, the header padded with spaces to a multiple of 8 bytes as the reference
// implementation does. The file is written atomically: a temp file in the same directory,
// fsynced, renamed over path, and the directory fsynced.
func WriteSafetensors(path string, tensors map[string]engine.HostTensor, dtype DType, metadata map[string]string) error {
	if !dtype.convertible() {
		return fmt.Errorf("%s: dtype %q is not supported for writing (want F32, BF16 or F16)", path, dtype)
	}
	dtypeOf := func(string) DType { return dtype }
	hb, names, err := encodeHeader(tensors, dtypeOf, metadata)
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	return writeAtomic(path, func(w io.Writer) error { return writeSafetensors(w, hb, tensors, names, dtypeOf) })
}

// EncodeSafetensors writes tensors to w in safetensors format, each as dtypeOf(name) (F32, BF16
// or F16; BF16 and F16 round to nearest even), deterministically as WriteSafetensors does: a
// request body with some tensors in half precision and the others exact.
func EncodeSafetensors(w io.Writer, tensors map[string]engine.HostTensor, dtypeOf func(name string) DType, metadata map[string]string) error {
	hb, names, err := encodeHeader(tensors, dtypeOf, metadata)
	if err != nil {
		return err
	}
	return writeSafetensors(w, hb, tensors, names, dtypeOf)
}

func writeSafetensors(w io.Writer, hb []byte, tensors map[string]engine.HostTensor, names []string, dtypeOf func(string) DType) error {
	var lb [8]byte
	binary.LittleEndian.PutUint64(lb[:], uint64(len(hb)))
	if _, err := w.Write(lb[:]); err != nil {
		return err
	}
	if _, err := w.Write(hb); err != nil {
		return err
	}
	return writeData(w, tensors, names, dtypeOf)
}

// encodeHeader builds the padded JSON header: __metadata__ first, then tensors by sorted name.
func encodeHeader(tensors map[string]engine.HostTensor, dtypeOf func(string) DType, metadata map[string]string) ([]byte, []string, error) {
	names := make([]string, 0, len(tensors))
	for n := range tensors {
		if n == "" || n == "__metadata__" {
			return nil, nil, fmt.Errorf("tensor name %q is not allowed", n)
		}
		if d := dtypeOf(n); !d.convertible() {
			return nil, nil, fmt.Errorf("tensor %q: dtype %q is not supported for writing (want F32, BF16 or F16)", n, d)
		}
		names = append(names, n)
	}
	sort.Strings(names)
	var hb bytes.Buffer
	hb.WriteByte('{')
	if len(metadata) > 0 {
		m, err := json.Marshal(metadata) // keys sorted
		if err != nil {
			return nil, nil, err
		}
		hb.WriteString(`"__metadata__":`)
		hb.Write(m)
	}
	var off int64
	for i, n := range names {
		t := tensors[n]
		dtype := dtypeOf(n)
		es := int64(dtypeSizes[string(dtype)])
		elems := int64(1)
		for _, d := range t.Shape {
			if d < 0 {
				return nil, nil, fmt.Errorf("tensor %q has shape %v", n, t.Shape)
			}
			elems *= int64(d)
		}
		if elems != int64(len(t.Data)) {
			return nil, nil, fmt.Errorf("tensor %q has %d values for shape %v", n, len(t.Data), t.Shape)
		}
		if i > 0 || len(metadata) > 0 {
			hb.WriteByte(',')
		}
		name, _ := json.Marshal(n)
		shape := t.Shape
		if shape == nil {
			shape = []int{}
		}
		sh, _ := json.Marshal(shape)
		fmt.Fprintf(&hb, `%s:{"dtype":"%s","shape":%s,"data_offsets":[%d,%d]}`, name, dtype, sh, off, off+elems*es)
		off += elems * es
	}
	hb.WriteByte('}')
	for hb.Len()%8 != 0 {
		hb.WriteByte(' ')
	}
	return hb.Bytes(), names, nil
}

// writeData writes the tensors' values in order, converted to dtype, through a bounded buffer.
func writeData(w io.Writer, tensors map[string]engine.HostTensor, names []string, dtypeOf func(string) DType) error {
	buf := make([]byte, 0, 1<<16)
	for _, n := range names {
		dtype := dtypeOf(n)
		es := dtypeSizes[string(dtype)]
		for _, v := range tensors[n].Data {
			switch dtype {
			case F32:
				buf = binary.LittleEndian.AppendUint32(buf, math.Float32bits(v))
			case BF16:
				buf = binary.LittleEndian.AppendUint16(buf, F32ToBF16(v))
			case F16:
				buf = binary.LittleEndian.AppendUint16(buf, F32ToF16(v))
			}
			if int64(len(buf))+es > int64(cap(buf)) {
				if _, err := w.Write(buf); err != nil {
					return err
				}
				buf = buf[:0]
			}
		}
	}
	_, err := w.Write(buf)
	return err
}
