package onnx

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"math/bits"
	"path/filepath"
	"strconv"

	"github.com/prolong-rl/prolong/checkpoints"
	"github.com/prolong-rl/prolong/engine"
	"github.com/prolong-rl/prolong/onnx/onnxpb"
)

// maxElements bounds the element count of one tensor a reader will allocate (2^34 floats,
// 64 GiB): a corrupt dims field must give an error, not an allocation failure.
const maxElements = 1 << 34

// TensorDims returns the dims of t as ints, checking that none is negative and that the
// element count fits. Errors name the tensor, its dims, and why they are refused.
func TensorDims(t *onnxpb.TensorProto) ([]int, int64, error) {
	n := int64(1)
	dims := make([]int, len(t.GetDims()))
	for i, d := range t.GetDims() {
		if d < 0 {
			return nil, 0, fmt.Errorf("tensor %s: dims %v: dim %d is negative", t.GetName(), t.GetDims(), i)
		}
		dims[i] = int(d)
	}
	for _, d := range t.GetDims() {
		if d > 0 && n > maxElements/d {
			why := "over 2^34 elements, more than a tensor may hold"
			if dimsOverflow(t.GetDims()) {
				why = "their product overflows 64 bits"
			}
			return nil, 0, fmt.Errorf("tensor %s: dims %v: %s (its data: %s)", t.GetName(), t.GetDims(), why, dataSize(t))
		}
		n *= d
	}
	return dims, n, nil
}

// dimsOverflow reports whether the product of dims (none negative) overflows an int64.
func dimsOverflow(dims []int64) bool {
	p := uint64(1)
	for _, d := range dims {
		if d == 0 {
			return false
		}
	}
	for _, d := range dims {
		hi, lo := bits.Mul64(p, uint64(d))
		if hi != 0 || lo > math.MaxInt64 {
			return true
		}
		p = lo
	}
	return false
}

// dataSize says how much data a tensor holds, for messages.
func dataSize(t *onnxpb.TensorProto) string {
	switch {
	case t.GetDataLocation() == onnxpb.TensorProto_EXTERNAL:
		return "external"
	case len(t.GetRawData()) > 0:
		return fmt.Sprintf("%d bytes of raw_data", len(t.GetRawData()))
	case len(t.GetFloatData()) > 0:
		return fmt.Sprintf("%d values of float_data", len(t.GetFloatData()))
	case len(t.GetInt32Data()) > 0:
		return fmt.Sprintf("%d values of int32_data", len(t.GetInt32Data()))
	case len(t.GetInt64Data()) > 0:
		return fmt.Sprintf("%d values of int64_data", len(t.GetInt64Data()))
	case len(t.GetDoubleData()) > 0:
		return fmt.Sprintf("%d values of double_data", len(t.GetDoubleData()))
	}
	return "none"
}

// TensorFloat32 decodes a float tensor (FLOAT, FLOAT16, BFLOAT16 or DOUBLE; raw_data, the
// typed fields, or external data resolved against dir, the model's directory) to float32.
// External data is read section by section from its file, never the whole file at once.
func TensorFloat32(t *onnxpb.TensorProto, dir string) ([]float32, error) {
	_, n, err := TensorDims(t)
	if err != nil {
		return nil, err
	}
	name := t.GetName()
	dt := onnxpb.TensorProto_DataType(t.GetDataType())
	var width int64
	var conv func(b []byte, out []float32)
	widen := checkpoints.F16ToF32 // the 16-bit types' widening
	if dt == onnxpb.TensorProto_BFLOAT16 {
		widen = checkpoints.BF16ToF32
	}
	switch dt {
	case onnxpb.TensorProto_FLOAT:
		width = 4
		conv = func(b []byte, out []float32) {
			for i := range out {
				out[i] = math.Float32frombits(binary.LittleEndian.Uint32(b[4*i:]))
			}
		}
	case onnxpb.TensorProto_FLOAT16, onnxpb.TensorProto_BFLOAT16:
		width = 2
		conv = func(b []byte, out []float32) {
			for i := range out {
				out[i] = widen(binary.LittleEndian.Uint16(b[2*i:]))
			}
		}
	case onnxpb.TensorProto_DOUBLE:
		width = 8
		conv = func(b []byte, out []float32) {
			for i := range out {
				out[i] = float32(math.Float64frombits(binary.LittleEndian.Uint64(b[8*i:])))
			}
		}
	default:
		return nil, fmt.Errorf("tensor %s: data type %s is not a float type", name, dt)
	}
	if t.GetDataLocation() == onnxpb.TensorProto_EXTERNAL {
		var out []float32
		err := readExternal(t, dir, n*width, func(r io.Reader) error {
			out = make([]float32, n) // only now that the file is known to hold the bytes
			var buf [1 << 16]byte
			per := int64(len(buf)) / width
			for i := int64(0); i < n; i += per {
				k := min(per, n-i)
				if _, err := io.ReadFull(r, buf[:k*width]); err != nil {
					return err
				}
				conv(buf[:k*width], out[i:i+k])
			}
			return nil
		})
		if err != nil {
			return nil, err
		}
		return out, nil
	}
	if raw := t.GetRawData(); raw != nil || n == 0 {
		if int64(len(raw)) != n*width {
			return nil, fmt.Errorf("tensor %s: raw_data has %d bytes, dims %v of %s need %d", name, len(raw), t.GetDims(), dt, n*width)
		}
		out := make([]float32, n)
		conv(raw, out)
		return out, nil
	}
	out := make([]float32, 0, min(n, 1<<20))
	switch dt {
	case onnxpb.TensorProto_FLOAT:
		if int64(len(t.GetFloatData())) != n {
			return nil, fmt.Errorf("tensor %s: float_data has %d values, dims %v need %d", name, len(t.GetFloatData()), t.GetDims(), n)
		}
		out = append(out, t.GetFloatData()...)
	case onnxpb.TensorProto_FLOAT16, onnxpb.TensorProto_BFLOAT16:
		// The 16-bit types keep their bit patterns in int32_data, one value per entry.
		if int64(len(t.GetInt32Data())) != n {
			return nil, fmt.Errorf("tensor %s: int32_data has %d values, dims %v need %d", name, len(t.GetInt32Data()), t.GetDims(), n)
		}
		for _, v := range t.GetInt32Data() {
			out = append(out, widen(uint16(v)))
		}
	case onnxpb.TensorProto_DOUBLE:
		if int64(len(t.GetDoubleData())) != n {
			return nil, fmt.Errorf("tensor %s: double_data has %d values, dims %v need %d", name, len(t.GetDoubleData()), t.GetDims(), n)
		}
		for _, v := range t.GetDoubleData() {
			out = append(out, float32(v))
		}
	}
	return out, nil
}

// TensorInt64 decodes an INT64 or INT32 tensor (raw_data, typed fields or external data).
func TensorInt64(t *onnxpb.TensorProto, dir string) ([]int64, error) {
	_, n, err := TensorDims(t)
	if err != nil {
		return nil, err
	}
	name := t.GetName()
	dt := onnxpb.TensorProto_DataType(t.GetDataType())
	var width int64
	switch dt {
	case onnxpb.TensorProto_INT64:
		width = 8
	case onnxpb.TensorProto_INT32:
		width = 4
	default:
		return nil, fmt.Errorf("tensor %s: data type %s is not an integer type", name, dt)
	}
	decode := func(raw []byte) []int64 {
		out := make([]int64, n)
		for i := range out {
			if width == 8 {
				out[i] = int64(binary.LittleEndian.Uint64(raw[8*i:]))
			} else {
				out[i] = int64(int32(binary.LittleEndian.Uint32(raw[4*i:])))
			}
		}
		return out
	}
	if t.GetDataLocation() == onnxpb.TensorProto_EXTERNAL {
		var raw []byte
		err := readExternal(t, dir, n*width, func(r io.Reader) error {
			raw = make([]byte, n*width)
			_, err := io.ReadFull(r, raw)
			return err
		})
		if err != nil {
			return nil, err
		}
		return decode(raw), nil
	}
	if raw := t.GetRawData(); raw != nil || n == 0 {
		if int64(len(raw)) != n*width {
			return nil, fmt.Errorf("tensor %s: raw_data has %d bytes, dims %v of %s need %d", name, len(raw), t.GetDims(), dt, n*width)
		}
		return decode(raw), nil
	}
	if dt == onnxpb.TensorProto_INT64 {
		if int64(len(t.GetInt64Data())) != n {
			return nil, fmt.Errorf("tensor %s: int64_data has %d values, dims %v need %d", name, len(t.GetInt64Data()), t.GetDims(), n)
		}
		return append([]int64(nil), t.GetInt64Data()...), nil
	}
	if int64(len(t.GetInt32Data())) != n {
		return nil, fmt.Errorf("tensor %s: int32_data has %d values, dims %v need %d", name, len(t.GetInt32Data()), t.GetDims(), n)
	}
	out := make([]int64, n)
	for i, v := range t.GetInt32Data() {
		out[i] = int64(v)
	}
	return out, nil
}

// ExternalRef is where a tensor's data lives outside the model file.
type ExternalRef struct {
	Location       string // file name relative to the model's directory
	Offset, Length int64  // byte range; Length -1 when absent (to the end of the file)
}

// External parses t's external_data entries (location, offset, length).
func External(t *onnxpb.TensorProto) (ExternalRef, error) {
	ref := ExternalRef{Length: -1}
	for _, e := range t.GetExternalData() {
		switch e.GetKey() {
		case "location":
			ref.Location = e.GetValue()
		case "offset", "length":
			v, err := strconv.ParseInt(e.GetValue(), 10, 64)
			if err != nil || v < 0 {
				return ref, fmt.Errorf("tensor %s: external_data %s %q is not a non-negative integer", t.GetName(), e.GetKey(), e.GetValue())
			}
			if e.GetKey() == "offset" {
				ref.Offset = v
			} else {
				ref.Length = v
			}
		}
	}
	if err := checkLocation(ref.Location); err != nil {
		return ref, fmt.Errorf("tensor %s: external_data: %w", t.GetName(), err)
	}
	return ref, nil
}

// readExternal opens t's external data file and hands read a reader over exactly size bytes.
func readExternal(t *onnxpb.TensorProto, dir string, size int64, read func(io.Reader) error) error {
	ref, err := External(t)
	if err != nil {
		return err
	}
	if dir == "" {
		return fmt.Errorf("tensor %s: external data %s but the model was not read from a file", t.GetName(), ref.Location)
	}
	path := filepath.Join(dir, ref.Location)
	if ref.Length >= 0 && ref.Length != size {
		return fmt.Errorf("tensor %s: external data length %d, dims %v need %d bytes", t.GetName(), ref.Length, t.GetDims(), size)
	}
	f, err := checkpoints.OpenModelFile(dir, ref.Location)
	if err != nil {
		return fmt.Errorf("tensor %s: external data: %w", t.GetName(), err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return fmt.Errorf("tensor %s: external data: %w", t.GetName(), err)
	}
	if ref.Offset > fi.Size() || size > fi.Size()-ref.Offset {
		return fmt.Errorf("tensor %s: external data %s: %d bytes at offset %d, beyond its %d bytes", t.GetName(), path, size, ref.Offset, fi.Size())
	}
	if err := read(io.NewSectionReader(f, ref.Offset, size)); err != nil {
		if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
			return fmt.Errorf("tensor %s: external data %s truncated: %w", t.GetName(), path, err)
		}
		return fmt.Errorf("tensor %s: external data %s: %w", t.GetName(), path, err)
	}
	return nil
}

// NewTensor encodes data (row-major, shape dims) as an initializer of type dt (FLOAT, FLOAT16,
// BFLOAT16 or DOUBLE) in raw_data, little-endian; narrower types round to nearest even.
func NewTensor(name string, dims []int, data []float32, dt onnxpb.TensorProto_DataType) (*onnxpb.TensorProto, error) {
	if n := engine.NumElements(dims); n != len(data) {
		return nil, fmt.Errorf("tensor %s: %d values for dims %v", name, len(data), dims)
	}
	var raw []byte
	switch dt {
	case onnxpb.TensorProto_FLOAT:
		raw = float32Bytes(data)
	case onnxpb.TensorProto_FLOAT16, onnxpb.TensorProto_BFLOAT16:
		raw = make([]byte, 2*len(data))
		for i, v := range data {
			h := checkpoints.F32ToBF16(v)
			if dt == onnxpb.TensorProto_FLOAT16 {
				h = checkpoints.F32ToF16(v)
			}
			binary.LittleEndian.PutUint16(raw[2*i:], h)
		}
	case onnxpb.TensorProto_DOUBLE:
		raw = make([]byte, 8*len(data))
		for i, v := range data {
			binary.LittleEndian.PutUint64(raw[8*i:], math.Float64bits(float64(v)))
		}
	default:
		return nil, fmt.Errorf("tensor %s: data type %s is not a float type", name, dt)
	}
	dtype := int32(dt)
	return &onnxpb.TensorProto{Name: &name, Dims: dims64(dims), DataType: &dtype, RawData: raw}, nil
}

// NewInt64Tensor encodes data (shape dims) as an INT64 initializer in raw_data.
func NewInt64Tensor(name string, dims []int, data []int64) (*onnxpb.TensorProto, error) {
	if n := engine.NumElements(dims); n != len(data) {
		return nil, fmt.Errorf("tensor %s: %d values for dims %v", name, len(data), dims)
	}
	dtype := int32(onnxpb.TensorProto_INT64)
	return &onnxpb.TensorProto{Name: &name, Dims: dims64(dims), DataType: &dtype, RawData: int64Bytes(data)}, nil
}
