// Package data reads and writes RL prompt sets in the layouts verl users keep: JSONL and
// Parquet rows with a prompt (text, or chat messages [{role, content}]), a data_source (the
// task kind the reward routes on), a ground truth (reward_model.ground_truth or ground_truth)
// and extra_info metadata. It splits off validation sets and streams rows in a seeded order per
// epoch from a position that can be saved and restored on resume.
//
// Errors name the file and the line (JSONL) or row (Parquet) at fault.
package data

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/prolong-rl/prolong/checkpoints"
	"github.com/prolong-rl/prolong/grpo/tasks"
)

// Message is one chat message.
type Message struct {
	Role    string `json:"role" parquet:"role"`
	Content string `json:"content" parquet:"content"`
}

// Row is one prompt with what its reward needs.
type Row struct {
	// Prompt is the prompt text; empty when Messages is set.
	Prompt string
	// Messages is the prompt as chat messages; nil when Prompt is set.
	Messages []Message
	// DataSource is the task kind (verl's data_source) that routes the reward.
	DataSource string
	// GroundTruth is what the reward checks against: the string itself, or the compact JSON
	// text of a non-string ground truth (a list of tests, a countdown puzzle).
	GroundTruth string
	// ExtraInfo is the row's metadata (verl's extra_info), passed to the reward.
	ExtraInfo map[string]any
	// Index is the row's position in its file (0-based), for programs; people read Line.
	Index int
	// Line is where the row is in its file, counted from 1: its line in a JSONL file (blank
	// lines count), its row in a Parquet file. 0 for rows not read from a file.
	Line int
}

// At names the row in file for messages: "file:LINE" for JSONL, "file row N" for Parquet,
// both counted from 1.
func (r Row) At(file string) string {
	n := r.Line
	if n == 0 {
		n = r.Index + 1
	}
	if strings.EqualFold(filepath.Ext(file), ".parquet") {
		return fmt.Sprintf("%s row %d", file, n)
	}
	return fmt.Sprintf("%s:%d", file, n)
}

// Chat returns the prompt as chat messages: Messages, or Prompt as one user message.
func (r Row) Chat() []Message {
	if r.Messages != nil {
		return r.Messages
	}
	return []Message{{Role: "user", Content: r.Prompt}}
}

// DefaultMaxLineBytes is the longest JSONL line (and the most string bytes of one Parquet row)
// read when Options.MaxLineBytes is 0: 8 MiB, room for a long-context prompt with a large
// ground truth (a code task's tests), while one line never costs more than a small multiple
// of it, however long it is in the file.
const DefaultMaxLineBytes = 8 << 20

// Options tunes reading.
type Options struct {
	// DefaultDataSource is used for rows without a data_source; when empty such rows are errors.
	DefaultDataSource string
	// MaxLineBytes bounds one JSONL line (its bytes before the newline) and the strings of one
	// Parquet row (their bytes together); 0 means DefaultMaxLineBytes. A longer JSONL line is
	// not held in memory: reading keeps at most MaxLineBytes of it and passes over the rest.
	MaxLineBytes int
	// SkipLong, when set, is told of each line (Parquet row) over MaxLineBytes, counted from
	// 1, with its length in bytes, and the line is skipped. When nil, such a line is an error.
	SkipLong func(line int, size int64)
}

func (o Options) maxLine() int {
	if o.MaxLineBytes > 0 {
		return o.MaxLineBytes
	}
	return DefaultMaxLineBytes
}

// skipLong reports a line (row) over the limit to SkipLong and says whether it did: without
// SkipLong the line is an error.
func (o Options) skipLong(line int, size int64) bool {
	if o.SkipLong == nil {
		return false
	}
	o.SkipLong(line, size)
	return true
}

// fieldError names the field at fault inside a row.
type fieldError struct {
	field string
	err   error
}

func (e *fieldError) Error() string { return e.field + ": " + e.err.Error() }
func (e *fieldError) Unwrap() error { return e.err }

func ferr(field, format string, args ...any) error {
	return &fieldError{field: field, err: fmt.Errorf(format, args...)}
}

func typeName(v any) string {
	switch v.(type) {
	case nil:
		return "null"
	case string, []byte:
		return "string"
	case json.Number, float64, float32, int, int32, int64:
		return "number"
	case bool:
		return "boolean"
	case []any:
		return "list"
	case map[string]any:
		return "object"
	}
	return fmt.Sprintf("%T", v)
}

// ParseJSONLRow parses one JSONL line into a Row (Index 0). Errors name the field at fault.
func ParseJSONLRow(line []byte, opts Options) (Row, error) {
	dec := json.NewDecoder(bytes.NewReader(line))
	dec.UseNumber()
	var m map[string]any
	if err := dec.Decode(&m); err != nil {
		return Row{}, fmt.Errorf("not a JSON object: %w", err)
	}
	if m == nil {
		return Row{}, errors.New("not a JSON object: null")
	}
	if _, err := dec.Token(); err != io.EOF {
		return Row{}, errors.New("text after the JSON object")
	}
	return rowFromMap(m, opts)
}

// rowFromMap converts a decoded row (from JSON, or from Parquet with lists and structs as
// []any and map[string]any) to a Row.
func rowFromMap(m map[string]any, opts Options) (Row, error) {
	var r Row
	p, ok := m["prompt"]
	if !ok || p == nil {
		if p, ok = m["messages"]; !ok || p == nil {
			return r, ferr("prompt", "missing")
		}
	}
	switch p := unwrapList(p).(type) {
	case string:
		if p == "" {
			return r, ferr("prompt", "empty")
		}
		r.Prompt = p
	case []byte:
		if len(p) == 0 {
			return r, ferr("prompt", "empty")
		}
		r.Prompt = string(p)
	case []any:
		if len(p) == 0 {
			return r, ferr("prompt", "empty list of messages")
		}
		r.Messages = make([]Message, len(p))
		for i, e := range p {
			msg, ok := e.(map[string]any)
			if !ok {
				return r, ferr(fmt.Sprintf("prompt[%d]", i), "want a {role, content} object, got %s", typeName(e))
			}
			role, ok1 := asString(msg["role"])
			content, ok2 := asString(msg["content"])
			if !ok1 || role == "" {
				return r, ferr(fmt.Sprintf("prompt[%d].role", i), "want a non-empty string, got %s", typeName(msg["role"]))
			}
			if !ok2 {
				return r, ferr(fmt.Sprintf("prompt[%d].content", i), "want a string, got %s", typeName(msg["content"]))
			}
			r.Messages[i] = Message{Role: role, Content: content}
		}
	default:
		return r, ferr("prompt", "want a string or a list of {role, content} messages, got %s", typeName(p))
	}

	switch ds := m["data_source"].(type) {
	case nil:
		if opts.DefaultDataSource == "" {
			return r, ferr("data_source", "missing: set it in each row, or give rows without one a default kind (tools/train --default-kind KIND)")
		}
		r.DataSource = opts.DefaultDataSource
	default:
		s, ok := asString(ds)
		if !ok || s == "" {
			return r, ferr("data_source", "want a non-empty string, got %s", typeName(ds))
		}
		r.DataSource = s
	}

	var gt any
	gtField := "ground_truth"
	if rm, ok := m["reward_model"]; ok && rm != nil {
		rmm, ok := rm.(map[string]any)
		if !ok {
			return r, ferr("reward_model", "want an object, got %s", typeName(rm))
		}
		gt, gtField = rmm["ground_truth"], "reward_model.ground_truth"
	}
	if gt == nil {
		gt = m["ground_truth"]
	}
	if gt == nil {
		return r, ferr(gtField, "missing")
	}
	gt = unwrapList(gt)
	if s, ok := asString(gt); ok {
		r.GroundTruth = s
	} else {
		b, err := json.Marshal(gt)
		if err != nil {
			return r, ferr(gtField, "%w", err)
		}
		r.GroundTruth = string(b)
	}

	switch ei := m["extra_info"].(type) {
	case nil:
	case map[string]any:
		r.ExtraInfo = ei
	case string, []byte:
		// Parquet files written by WriteParquet keep extra_info as JSON text.
		s, _ := asString(ei)
		if s != "" {
			dec := json.NewDecoder(strings.NewReader(s))
			dec.UseNumber()
			if err := dec.Decode(&r.ExtraInfo); err != nil {
				return r, ferr("extra_info", "JSON text that is not an object: %w", err)
			}
		}
	default:
		return r, ferr("extra_info", "want an object, got %s", typeName(ei))
	}
	return r, nil
}

func asString(v any) (string, bool) {
	switch v := v.(type) {
	case string:
		return v, true
	case []byte:
		return string(v), true
	}
	return "", false
}

// unwrapList turns the 3-level Parquet LIST layout as some readers return it,
// {"list": [{"element": x}, ...]}, into []any{x, ...}, recursively; other values are returned
// as they are.
func unwrapList(v any) any {
	switch v := v.(type) {
	case map[string]any:
		if l, ok := v["list"]; ok && len(v) == 1 {
			if items, ok := l.([]any); ok {
				out := make([]any, len(items))
				for i, it := range items {
					if e, ok := it.(map[string]any); ok && len(e) == 1 {
						if x, ok := e["element"]; ok {
							out[i] = unwrapList(x)
							continue
						}
					}
					out[i] = unwrapList(it)
				}
				return out
			}
		}
		for k, x := range v {
			v[k] = unwrapList(x)
		}
		return v
	case []any:
		for i, x := range v {
			v[i] = unwrapList(x)
		}
		return v
	}
	return v
}

// utf8BOM is the byte-order mark some editors and Windows tools put at the start of a UTF-8
// file (Python reads it away with encoding="utf-8-sig").
var utf8BOM = []byte("\xef\xbb\xbf")

// ReadJSONL reads rows from JSONL; name is used in errors ("name:line: field: problem").
// Blank lines are skipped, as is a UTF-8 byte-order mark at the start. A line longer than
// opts.MaxLineBytes is passed over without being held whole (see Options.SkipLong). ctx is
// checked every 1024 lines.
func ReadJSONL(ctx context.Context, r io.Reader, name string, opts Options) ([]Row, error) {
	limit := opts.maxLine()
	br := bufio.NewReaderSize(r, 64<<10)
	var rows []Row
	var buf []byte // the line being read, never more than limit bytes
	for line := 1; ; line++ {
		if line%1024 == 0 {
			if err := ctx.Err(); err != nil {
				return nil, err
			}
		}
		buf = buf[:0]
		size, eof := int64(0), false // the line's length without its newline
		for {
			chunk, err := br.ReadSlice('\n')
			if err == nil {
				chunk = chunk[:len(chunk)-1]
			}
			if line == 1 && size == 0 && bytes.HasPrefix(chunk, utf8BOM) {
				chunk = chunk[len(utf8BOM):]
			}
			size += int64(len(chunk))
			if size <= int64(limit) {
				if len(buf)+len(chunk) > cap(buf) { // grow by doubling, to limit at most
					nb := make([]byte, len(buf), min(max(2*cap(buf), len(buf)+len(chunk)), limit))
					copy(nb, buf)
					buf = nb
				}
				buf = append(buf, chunk...)
			}
			if err == bufio.ErrBufferFull {
				continue
			}
			if err == io.EOF {
				eof = true
			} else if err != nil {
				return nil, fmt.Errorf("%s:%d: %w", name, line, err)
			}
			break
		}
		if eof && size == 0 {
			return rows, nil
		}
		if size > int64(limit) {
			if !opts.skipLong(line, size) {
				return nil, fmt.Errorf("%s:%d: line of %d bytes, over the limit of %d bytes per line", name, line, size, limit)
			}
		} else if b := bytes.TrimSpace(buf); len(b) > 0 {
			row, err := ParseJSONLRow(b, opts)
			if err != nil {
				return nil, fmt.Errorf("%s:%d: %w", name, line, err)
			}
			row.Index, row.Line = len(rows), line
			rows = append(rows, row)
		}
		if eof {
			return rows, nil
		}
	}
}

// Load reads a prompt set from a .jsonl (or .json lines) or .parquet file.
func Load(ctx context.Context, path string, opts Options) ([]Row, error) {
	switch strings.ToLower(filepath.Ext(path)) {
	case ".parquet":
		return ReadParquet(ctx, path, opts)
	case ".jsonl", ".json", ".ndjson":
		f, err := os.Open(path)
		if err != nil {
			return nil, fmt.Errorf("data: %w", err)
		}
		defer f.Close()
		return ReadJSONL(ctx, f, path, opts)
	}
	return nil, fmt.Errorf("data: %s: unknown extension (want .jsonl or .parquet)", path)
}

// jsonRow is the JSONL layout WriteJSONL writes (verl's).
type jsonRow struct {
	DataSource  string         `json:"data_source"`
	Prompt      any            `json:"prompt"`
	RewardModel jsonReward     `json:"reward_model"`
	ExtraInfo   map[string]any `json:"extra_info,omitempty"`
}

type jsonReward struct {
	Style       string `json:"style"`
	GroundTruth any    `json:"ground_truth"`
}

// WriteJSONL writes rows in verl's layout, one JSON object a line.
func WriteJSONL(w io.Writer, rows []Row) error {
	bw := bufio.NewWriter(w)
	enc := json.NewEncoder(bw)
	enc.SetEscapeHTML(false)
	for i, r := range rows {
		jr := jsonRow{DataSource: r.DataSource, RewardModel: jsonReward{Style: "rule", GroundTruth: r.GroundTruth}, ExtraInfo: r.ExtraInfo}
		if r.Messages != nil {
			jr.Prompt = r.Messages
		} else {
			jr.Prompt = r.Prompt
		}
		if err := enc.Encode(jr); err != nil {
			return fmt.Errorf("data: row %d: %w", i+1, err)
		}
	}
	return bw.Flush()
}

// WriteFileAtomic writes a file through a temporary name in the same directory, fsyncs it and
// renames it, so a crash never leaves a half-written file under the real name.
//
// Deprecated: use checkpoints.WriteFileAtomic, which this calls with mode 0644.
func WriteFileAtomic(path string, write func(io.Writer) error) error {
	if err := checkpoints.WriteFileAtomic(path, 0o644, write); err != nil {
		return fmt.Errorf("data: %w", err)
	}
	return nil
}

// Save writes rows to a .jsonl or .parquet file (by extension), atomically
// (checkpoints.WriteFileAtomic, mode 0644).
func Save(path string, rows []Row) error {
	var write func(io.Writer) error
	switch strings.ToLower(filepath.Ext(path)) {
	case ".parquet":
		write = func(w io.Writer) error { return WriteParquet(w, rows) }
	case ".jsonl", ".json", ".ndjson":
		write = func(w io.Writer) error { return WriteJSONL(w, rows) }
	default:
		return fmt.Errorf("data: %s: unknown extension (want .jsonl or .parquet)", path)
	}
	if err := checkpoints.WriteFileAtomic(path, 0o644, write); err != nil {
		return fmt.Errorf("data: %w", err)
	}
	return nil
}

// FromTasks turns generated tasks into rows: the prompt text, data_source = family, the ground
// truth, and extra_info {split, index, key, and the family's knobs}.
func FromTasks(ts []tasks.Task) []Row {
	rows := make([]Row, len(ts))
	for i, t := range ts {
		info := map[string]any{"split": string(t.Split), "index": i, "key": t.Key}
		for k, v := range t.Meta {
			info[k] = v
		}
		rows[i] = Row{Prompt: t.Prompt, DataSource: t.Family, GroundTruth: t.GroundTruth, ExtraInfo: info, Index: i}
	}
	return rows
}
