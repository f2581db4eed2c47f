package tbevents

import (
	"bytes"
	"encoding/json"
	"errors"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"
)

// TestMaskedCRC checks the TFRecord checksum against published and hand-worked values.
func TestMaskedCRC(t *testing.T) {
	mask := func(c uint32) uint32 { return (c>>15 | c<<17) + 0xa282ead8 }
	for _, tc := range []struct {
		name string
		data []byte
		want uint32
	}{
		// CRC-32C check value 0xe3069283; masked by hand: 0xe3069283>>15 = 0x1c60d,
		// 0xe3069283<<17 = 0x25060000 (mod 2^32), or = 0x2507c60d, + 0xa282ead8 = 0xc78ab0e5.
		{"check string", []byte("123456789"), 0xc78ab0e5},
		// RFC 3720 (iSCSI) B.4: 32 zero bytes have CRC32C 0x8a9136aa.
		{"RFC 3720 zeros", make([]byte, 32), mask(0x8a9136aa)},
		// TensorBoard's rustboard masked_crc.rs: from a real TensorFlow event file holding
		// Event(file_version="CRC test, one two").
		{"TensorFlow file_version", []byte("\x1a\x11CRC test, one two"), 0x5794d08a},
	} {
		if got := maskedCRC(tc.data); got != tc.want {
			t.Errorf("%s: masked CRC %#08x, want %#08x", tc.name, got, tc.want)
		}
	}
}

// tfRecords are two records of an event file written by TensorFlow (tf.summary.scalar("accuracy",
// 0.99, step=77)), as TensorBoard's rustboard tf_record.rs test quotes them (dumped by xxd): the
// file-version event and the scalar as a TF2 tensor summary.
var tfRecords = []byte("\x18\x00\x00\x00\x00\x00\x00\x00\xa3\x7f\x4b\x22" +
	"\x09\x00\x00\x80\x38\x99\xd6\xd7\x41\x1a\x0dbrain.Event:2" + "\x12\x4b\x36\xab" +
	"\x32\x00\x00\x00\x00\x00\x00\x00\x24\x19\x56\xec" +
	"\x09\xc4\x05\xb7\x3d\x99\xd6\xd7\x41\x10\x4d\x2a\x25\x0a\x23\x0a\x08accuracy" +
	"\x42\x0a\x08\x01\x12\x00\x22\x04\xa4\x70\x7d\x3f\x4a\x0b\x0a\x09\x0a\x07scalars" +
	"\xa5\x5b\x64\x33")

// TestTensorFlowRecords: the file-version record is written byte for byte as TensorFlow wrote
// it, and both of TensorFlow's records read back (the tensor summary has no simple value).
func TestTensorFlowRecords(t *testing.T) {
	wall := math.Float64frombits(0x41d7d69938800000) // 1599759586
	first := Event{WallTime: wall, FileVersion: FileVersion}
	if got := appendRecord(nil, first.marshal()); !bytes.Equal(got, tfRecords[:40]) {
		t.Fatalf("file-version record\n got % x\nwant % x", got, tfRecords[:40])
	}
	path := filepath.Join(t.TempDir(), "events.out.tfevents.1599759586.tf")
	os.WriteFile(path, tfRecords, 0o644)
	evs, err := ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(evs) != 2 || !reflect.DeepEqual(evs[0], first) || evs[1].Step != 77 || evs[1].Scalars != nil ||
		math.Abs(evs[1].WallTime-1599759606.86) > 0.01 {
		t.Fatalf("read %+v", evs)
	}
}

// TestMarshal compares encoded events with bytes worked out by hand from event.proto and
// summary.proto.
func TestMarshal(t *testing.T) {
	wall15 := "\x09\x00\x00\x00\x00\x00\x00\xf8\x3f" // field 1, fixed64: 1.5
	for _, tc := range []struct {
		name string
		e    Event
		want string
	}{
		{"scalar", Event{WallTime: 1.5, Step: 7, Scalars: []Scalar{{"a", 0.25}}},
			// step 7; summary (5, len 10) { value (1, len 8) { tag "a"; simple_value (2, fixed32) 0.25 } }
			wall15 + "\x10\x07" + "\x2a\x0a" + "\x0a\x08" + "\x0a\x01a" + "\x15\x00\x00\x80\x3e"},
		{"zero step and zero value", Event{WallTime: 1.5, Scalars: []Scalar{{"b", 0}, {"c", -2}}},
			// step 0 left out; a 0 simple_value kept (a oneof member); -2 = 0xc0000000
			wall15 + "\x2a\x14" + "\x0a\x08\x0a\x01b\x15\x00\x00\x00\x00" + "\x0a\x08\x0a\x01c\x15\x00\x00\x00\xc0"},
		{"session start", Event{WallTime: 1.5, Step: 300, SessionStart: true},
			// step 300 = varint ac 02; session_log (7, len 2) { status START }
			wall15 + "\x10\xac\x02" + "\x3a\x02\x08\x01"},
	} {
		if got := string(tc.e.marshal()); got != tc.want {
			t.Errorf("%s:\n got % x\nwant % x", tc.name, got, tc.want)
		}
		var back Event
		if err := back.unmarshal([]byte(tc.want)); err != nil || !reflect.DeepEqual(back, tc.e) {
			t.Errorf("%s: read back %+v, %v", tc.name, back, err)
		}
	}
}

// writeTestFile writes a file of three scalar steps after the file-version and session-start
// events, and returns its path and the scalar events.
func writeTestFile(t *testing.T) (string, []Event) {
	t.Helper()
	w, err := Create(t.TempDir(), 3)
	if err != nil {
		t.Fatal(err)
	}
	want := []Event{
		{Step: 3, Scalars: []Scalar{{"train/reward_mean", 0.5}, {"train/reward_by_kind/math", 0.75}}},
		{Step: 4, Scalars: []Scalar{{"train/lr", 2e-6}, {"eval/pass_at_k/4", 0}}},
		{Step: 5, Scalars: []Scalar{{"train/kl", 3e-30}, {"x", -1.25}}},
	}
	for _, e := range want {
		if err := w.WriteScalars(e.Step, e.Scalars); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return w.Name(), want
}

// TestRoundTrip: a file's name is what TensorBoard looks for, it starts with the file version
// and the session start, and the scalars read back as written.
func TestRoundTrip(t *testing.T) {
	path, want := writeTestFile(t)
	if !regexp.MustCompile(`^events\.out\.tfevents\.\d{10}\.[^/]+$`).MatchString(filepath.Base(path)) {
		t.Fatalf("file name %s", filepath.Base(path))
	}
	evs, err := ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(evs) != 5 || evs[0].FileVersion != FileVersion || !evs[1].SessionStart || evs[1].Step != 3 {
		t.Fatalf("read %+v", evs)
	}
	for i, e := range evs {
		if e.WallTime < 1.7e9 {
			t.Fatalf("event %d: wall time %v", i, e.WallTime)
		}
		if i >= 2 {
			e.WallTime = 0
			if !reflect.DeepEqual(e, want[i-2]) {
				t.Fatalf("event %d: %+v, want %+v", i, e, want[i-2])
			}
		}
	}
}

// TestNewFilePerSession: files created in the same second get distinct names whose order is
// the order of creation (TensorBoard reads a run's files in name order).
func TestNewFilePerSession(t *testing.T) {
	dir := t.TempDir()
	var names []string
	for i := range 3 {
		w, err := Create(dir, int64(i))
		if err != nil {
			t.Fatal(err)
		}
		names = append(names, filepath.Base(w.Name()))
		w.Close()
	}
	sorted := append([]string(nil), names...)
	sort.Strings(sorted)
	if !reflect.DeepEqual(sorted, names) || names[0] == names[1] || names[1] == names[2] {
		t.Fatalf("names %v", names)
	}
}

// TestDamagedFile: a file cut inside its last record (a killed writer) reads up to that record
// and names its offset; a changed byte is a checksum error at its record's offset.
func TestDamagedFile(t *testing.T) {
	path, _ := writeTestFile(t)
	b, _ := os.ReadFile(path)
	var offs []int // offsets of the five records
	for off := 0; off < len(b); {
		offs = append(offs, off)
		_, n, err := nextRecord(b[off:])
		if err != nil {
			t.Fatal(err)
		}
		off += n
	}
	last := offs[4]
	for _, tc := range []struct {
		name  string
		edit  func([]byte) []byte
		read  int // events read before the error
		where string
		trunc bool
	}{
		{"cut in the header", func(b []byte) []byte { return b[:last+5] }, 4, "offset " + strconv.Itoa(last), true},
		{"cut in the data", func(b []byte) []byte { return b[:last+20] }, 4, "offset " + strconv.Itoa(last), true},
		{"cut before the data checksum", func(b []byte) []byte { return b[:len(b)-1] }, 4, "offset " + strconv.Itoa(last), true},
		{"length changed", func(b []byte) []byte { b[offs[2]] ^= 1; return b }, 2, "offset " + strconv.Itoa(offs[2]) + ": length checksum", false},
		{"data changed", func(b []byte) []byte { b[offs[3]+14] ^= 1; return b }, 3, "offset " + strconv.Itoa(offs[3]) + ": data checksum", false},
	} {
		p := filepath.Join(t.TempDir(), "events.out.tfevents.1.x")
		os.WriteFile(p, tc.edit(append([]byte(nil), b...)), 0o644)
		evs, err := ReadFile(p)
		if err == nil || len(evs) != tc.read || !strings.Contains(err.Error(), tc.where) || errors.Is(err, ErrTruncated) != tc.trunc {
			t.Errorf("%s: %d events, error %v; want %d events and an error at %q (truncated: %v)", tc.name, len(evs), err, tc.read, tc.where, tc.trunc)
		}
	}
}

// TestIndependentReader has testdata/read_events.py (Google's protobuf runtime on TensorBoard's
// own .proto files, the crc32c library's CRC32C, the framing read from its description) read a
// file written here, and checks that it rejects a damaged one.
func TestIndependentReader(t *testing.T) {
	py := "/usr/bin/python3"
	err := exec.Command(py, "-c", "import google.protobuf, crc32c").Run()
	if _, perr := exec.LookPath("protoc"); err == nil {
		err = perr
	}
	if err != nil {
		if os.Getenv("PROLONG_REQUIRE_PYTHON") == "1" {
			t.Fatalf("PROLONG_REQUIRE_PYTHON=1 but %s with protobuf and crc32c, or protoc, is missing: %v", py, err)
		}
		t.Skipf("%s with protobuf and crc32c, or protoc, is missing (apt-get install python3-protobuf python3-crc32c protobuf-compiler): %v", py, err)
	}
	path, want := writeTestFile(t)
	out, err := exec.Command(py, "testdata/read_events.py", path).CombinedOutput()
	if err != nil {
		t.Fatalf("read_events.py: %v\n%s", err, out)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	if len(lines) != 5 {
		t.Fatalf("read_events.py printed %d events:\n%s", len(lines), out)
	}
	type pyEvent struct {
		WallTime     float64 `json:"wall_time"`
		Step         int64
		FileVersion  string `json:"file_version"`
		SessionStart bool   `json:"session_start"`
		Scalars      [][2]any
	}
	var got []Event
	for _, l := range lines {
		var p pyEvent
		if err := json.Unmarshal([]byte(l), &p); err != nil || p.WallTime < 1.7e9 {
			t.Fatalf("%s: %v", l, err)
		}
		e := Event{Step: p.Step, FileVersion: p.FileVersion, SessionStart: p.SessionStart}
		for _, s := range p.Scalars {
			e.Scalars = append(e.Scalars, Scalar{Tag: s[0].(string), Value: float32(s[1].(float64))})
		}
		got = append(got, e)
	}
	t.Logf("read_events.py: %s", out)
	wantAll := append([]Event{{FileVersion: FileVersion}, {Step: 3, SessionStart: true}}, want...)
	if !reflect.DeepEqual(got, wantAll) {
		t.Fatalf("read_events.py read %+v\nwant %+v", got, wantAll)
	}
	b, _ := os.ReadFile(path)
	b[len(b)-6] ^= 0x40
	os.WriteFile(path, b, 0o644)
	if out, err := exec.Command(py, "testdata/read_events.py", path).CombinedOutput(); err == nil || !strings.Contains(string(out), "data checksum") {
		t.Fatalf("read_events.py accepted a changed byte: %v\n%s", err, out)
	}
}
