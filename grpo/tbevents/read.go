package tbevents

import (
	"encoding/binary"
	"fmt"
	"math"
	"os"

	"google.golang.org/protobuf/encoding/protowire"
)

// ReadFile reads an event file's events. A record whose checksums or Event do not parse is an
// error naming the file and the record's offset; so is a file that ends inside a record
// (wrapping ErrTruncated), with the events before it returned.
func ReadFile(path string) ([]Event, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var out []Event
	for off := 0; off < len(b); {
		data, n, err := nextRecord(b[off:])
		if err != nil {
			return out, fmt.Errorf("%s: record at offset %d: %w", path, off, err)
		}
		var e Event
		if err := e.unmarshal(data); err != nil {
			return out, fmt.Errorf("%s: record at offset %d: event: %w", path, off, err)
		}
		out = append(out, e)
		off += n
	}
	return out, nil
}

// nextRecord checks the TFRecord at the start of b and returns its data and its size.
func nextRecord(b []byte) (data []byte, size int, err error) {
	if len(b) < 12 {
		return nil, 0, fmt.Errorf("%w: %d of 12 header bytes", ErrTruncated, len(b))
	}
	if got, want := maskedCRC(b[:8]), binary.LittleEndian.Uint32(b[8:12]); got != want {
		return nil, 0, fmt.Errorf("length checksum %#08x, want %#08x", got, want)
	}
	n := binary.LittleEndian.Uint64(b)
	if len(b) < 16 || n > uint64(len(b)-16) {
		return nil, 0, fmt.Errorf("%w: %d bytes of data, %d there", ErrTruncated, n, max(len(b)-16, 0))
	}
	data = b[12 : 12+n]
	if got, want := maskedCRC(data), binary.LittleEndian.Uint32(b[12+n:]); got != want {
		return nil, 0, fmt.Errorf("data checksum %#08x, want %#08x", got, want)
	}
	return data, int(n) + 16, nil
}

// unmarshal decodes a tensorboard.Event, keeping the fields Event has and skipping others.
func (e *Event) unmarshal(b []byte) error {
	return eachField(b, func(num protowire.Number, typ protowire.Type, v []byte, x uint64) error {
		switch {
		case num == eventWallTime && typ == protowire.Fixed64Type:
			e.WallTime = math.Float64frombits(x)
		case num == eventStep && typ == protowire.VarintType:
			e.Step = int64(x)
		case num == eventFileVersion && typ == protowire.BytesType:
			e.FileVersion = string(v)
		case num == eventSessionLog && typ == protowire.BytesType:
			return eachField(v, func(num protowire.Number, typ protowire.Type, _ []byte, x uint64) error {
				if num == sessionStatus && typ == protowire.VarintType {
					e.SessionStart = x == sessionStart
				}
				return nil
			})
		case num == eventSummary && typ == protowire.BytesType:
			return eachField(v, func(num protowire.Number, typ protowire.Type, v []byte, _ uint64) error {
				if num != summaryValue || typ != protowire.BytesType {
					return nil
				}
				return e.unmarshalValue(v)
			})
		}
		return nil
	})
}

// unmarshalValue keeps a Summary.Value that holds a simple_value.
func (e *Event) unmarshalValue(b []byte) error {
	var s Scalar
	simple := false
	err := eachField(b, func(num protowire.Number, typ protowire.Type, v []byte, x uint64) error {
		switch {
		case num == valueTag && typ == protowire.BytesType:
			s.Tag = string(v)
		case num == valueSimple && typ == protowire.Fixed32Type:
			s.Value, simple = math.Float32frombits(uint32(x)), true
		}
		return nil
	})
	if err == nil && simple {
		e.Scalars = append(e.Scalars, s)
	}
	return err
}

// eachField calls f with each field of the message b: its number and wire type, and its
// bytes (length-delimited fields) or its number (varint, fixed32, fixed64).
func eachField(b []byte, f func(num protowire.Number, typ protowire.Type, v []byte, x uint64) error) error {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return protowire.ParseError(n)
		}
		b = b[n:]
		var v []byte
		var x uint64
		switch typ {
		case protowire.VarintType:
			x, n = protowire.ConsumeVarint(b)
		case protowire.Fixed32Type:
			var x32 uint32
			x32, n = protowire.ConsumeFixed32(b)
			x = uint64(x32)
		case protowire.Fixed64Type:
			x, n = protowire.ConsumeFixed64(b)
		case protowire.BytesType:
			v, n = protowire.ConsumeBytes(b)
		default:
			n = protowire.ConsumeFieldValue(num, typ, b)
		}
		if n < 0 {
			return fmt.Errorf("field %d: %w", num, protowire.ParseError(n))
		}
		b = b[n:]
		if err := f(num, typ, v, x); err != nil {
			return fmt.Errorf("field %d: %w", num, err)
		}
	}
	return nil
}
