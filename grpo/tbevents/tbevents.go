// Package tbevents writes TensorBoard event files of scalars, and reads them back.
//
// An event file is a sequence of TFRecords, each
//
//	uint64 length (little-endian)
//	uint32 masked CRC32C of the 8 length bytes
//	byte   data[length]: one serialized tensorboard.Event
//	uint32 masked CRC32C of data
//
// where masked(crc) = ((crc >> 15) | (crc << 17)) + 0xa282ead8. The first Event of a file
// carries file_version "brain.Event:2"; a scalar is a Summary.Value with a tag and a
// simple_value (a float32), as torch's and verl's writers write them.
//
// TensorBoard reads every file whose name contains "tfevents" in a run directory, in name
// order; Create names a file events.out.tfevents.<unix seconds>.<hostname> so that name order
// is the order of writing.
//
// Restarts: Create marks each session's start with a SessionLog START event at the step it
// starts from. TensorBoard drops what an earlier session logged at that step and later
// (orphaned by a crash): its Python loader at a START event after the first, its Rust loader
// at the first value of each tag whose step is not above the last one kept.
package tbevents

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"strings"
	"time"

	"google.golang.org/protobuf/encoding/protowire"
)

// FileVersion is the file_version of a file's first event: the version TensorBoard reads.
const FileVersion = "brain.Event:2"

// Field numbers of the messages written, from TensorBoard's tensorboard/compat/proto/event.proto
// and summary.proto (TensorFlow's core/util/event.proto and core/framework/summary.proto).
const (
	eventWallTime    protowire.Number = 1 // Event.wall_time: double, seconds since the epoch
	eventStep        protowire.Number = 2 // Event.step: int64
	eventFileVersion protowire.Number = 3 // Event.file_version: string (oneof what)
	eventSummary     protowire.Number = 5 // Event.summary: Summary (oneof what)
	eventSessionLog  protowire.Number = 7 // Event.session_log: SessionLog (oneof what)
	sessionStatus    protowire.Number = 1 // SessionLog.status: enum SessionStatus
	summaryValue     protowire.Number = 1 // Summary.value: repeated Summary.Value
	valueTag         protowire.Number = 1 // Summary.Value.tag: string
	valueSimple      protowire.Number = 2 // Summary.Value.simple_value: float (oneof value)

	sessionStart = 1 // SessionLog.SessionStatus START
)

// ErrTruncated is wrapped by the reader's error for a file that ends inside a record, as one
// does whose writer was killed mid-write (or is writing it now).
var ErrTruncated = errors.New("tbevents: truncated record")

// Scalar is one tagged value of a step.
type Scalar struct {
	Tag   string
	Value float32
}

// Event is the part of a tensorboard.Event that this package writes and reads.
type Event struct {
	WallTime float64 // seconds since the Unix epoch
	Step     int64
	// FileVersion is set in a file's first event only.
	FileVersion string
	// SessionStart marks a SessionLog START: a (re)started run logs from Step on.
	SessionStart bool
	// Scalars are the Summary's simple values (values of other kinds are not read).
	Scalars []Scalar
}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// maskedCRC is the TFRecord checksum of b: its CRC32C, rotated right by 15 bits, plus a
// constant (so that a CRC of data that holds CRCs is not trivially zero).
func maskedCRC(b []byte) uint32 {
	c := crc32.Checksum(b, castagnoli)
	return (c>>15 | c<<17) + 0xa282ead8
}

// appendRecord appends data framed as one TFRecord.
func appendRecord(dst, data []byte) []byte {
	n := len(dst)
	dst = binary.LittleEndian.AppendUint64(dst, uint64(len(data)))
	dst = binary.LittleEndian.AppendUint32(dst, maskedCRC(dst[n:]))
	dst = append(dst, data...)
	return binary.LittleEndian.AppendUint32(dst, maskedCRC(data))
}

// marshal encodes e as a tensorboard.Event (fields in number order, a zero step left out as
// proto3 does; a scalar's simple_value is written even when 0, as a oneof member must be).
func (e *Event) marshal() []byte {
	var b []byte
	b = protowire.AppendTag(b, eventWallTime, protowire.Fixed64Type)
	b = protowire.AppendFixed64(b, math.Float64bits(e.WallTime))
	if e.Step != 0 {
		b = protowire.AppendTag(b, eventStep, protowire.VarintType)
		b = protowire.AppendVarint(b, uint64(e.Step))
	}
	switch {
	case e.FileVersion != "":
		b = protowire.AppendTag(b, eventFileVersion, protowire.BytesType)
		b = protowire.AppendString(b, e.FileVersion)
	case e.SessionStart:
		b = protowire.AppendTag(b, eventSessionLog, protowire.BytesType)
		b = protowire.AppendBytes(b, protowire.AppendVarint(protowire.AppendTag(nil, sessionStatus, protowire.VarintType), sessionStart))
	case len(e.Scalars) > 0:
		var sum []byte
		for _, s := range e.Scalars {
			var v []byte
			v = protowire.AppendTag(v, valueTag, protowire.BytesType)
			v = protowire.AppendString(v, s.Tag)
			v = protowire.AppendTag(v, valueSimple, protowire.Fixed32Type)
			v = protowire.AppendFixed32(v, math.Float32bits(s.Value))
			sum = protowire.AppendTag(sum, summaryValue, protowire.BytesType)
			sum = protowire.AppendBytes(sum, v)
		}
		b = protowire.AppendTag(b, eventSummary, protowire.BytesType)
		b = protowire.AppendBytes(b, sum)
	}
	return b
}

// Writer appends events to one event file; every write is synced to disk, so a killed run
// loses at most the record being written.
type Writer struct {
	f *os.File
}

// Create starts a new event file in dir (created if missing), named
// events.out.tfevents.<unix seconds>.<hostname> (with .1 to .9 added when a file of that name
// exists), holding the file-version event and a SessionLog START at step start: the step
// this session logs from.
func Create(dir string, start int64) (*Writer, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("tbevents: %w", err)
	}
	host, err := os.Hostname()
	if err != nil || host == "" || strings.ContainsRune(host, os.PathSeparator) {
		host = "localhost"
	}
	now := time.Now()
	base := filepath.Join(dir, fmt.Sprintf("events.out.tfevents.%d.%s", now.Unix(), host))
	const flags = os.O_WRONLY | os.O_CREATE | os.O_EXCL
	f, err := os.OpenFile(base, flags, 0o644)
	for i := 1; errors.Is(err, fs.ErrExist) && i < 10; i++ {
		f, err = os.OpenFile(fmt.Sprintf("%s.%d", base, i), flags, 0o644)
	}
	if err != nil {
		return nil, fmt.Errorf("tbevents: %w", err)
	}
	w := &Writer{f: f}
	wall := unixSeconds(now)
	if err := w.Write(Event{WallTime: wall, FileVersion: FileVersion}, Event{WallTime: wall, Step: start, SessionStart: true}); err != nil {
		f.Close()
		return nil, err
	}
	return w, nil
}

// unixSeconds is t in seconds since the Unix epoch, with its fraction.
func unixSeconds(t time.Time) float64 { return float64(t.UnixNano()) / 1e9 }

// Name is the file's path.
func (w *Writer) Name() string { return w.f.Name() }

// WriteScalars writes the scalars of a step as one event, stamped now.
func (w *Writer) WriteScalars(step int64, scalars []Scalar) error {
	return w.Write(Event{WallTime: unixSeconds(time.Now()), Step: step, Scalars: scalars})
}

// Write appends events, one record each, in one write, and syncs the file.
func (w *Writer) Write(events ...Event) error {
	var buf []byte
	for i := range events {
		buf = appendRecord(buf, events[i].marshal())
	}
	if _, err := w.f.Write(buf); err != nil {
		return fmt.Errorf("tbevents: %w", err)
	}
	if err := w.f.Sync(); err != nil {
		return fmt.Errorf("tbevents: %w", err)
	}
	return nil
}

// Close closes the file.
func (w *Writer) Close() error { return w.f.Close() }
