package data

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/parquet-go/parquet-go"
)

// Parquet goes through github.com/parquet-go/parquet-go, the maintained pure-Go Parquet library
// (no cgo, reads the nested LIST and STRUCT columns that pyarrow writes for verl datasets).

// ReadParquet reads rows from a Parquet file in verl's layout: columns prompt (string, or list
// of {role, content}), data_source, reward_model {ground_truth, ...} or ground_truth, and an
// optional extra_info (struct, or JSON text). Errors name the file and the row. A row whose
// strings hold more than opts.MaxLineBytes is skipped (Options.SkipLong) or an error before it
// is converted; the library has decoded it by then, so that bounds the work after reading,
// not the reading itself.
func ReadParquet(ctx context.Context, path string, opts Options) ([]Row, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("data: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("data: %w", err)
	}
	return ReadParquetFrom(ctx, f, st.Size(), path, opts)
}

// ReadParquetFrom reads rows from Parquet data of the given size; name is used in errors.
func ReadParquetFrom(ctx context.Context, f io.ReaderAt, size int64, name string, opts Options) (rows []Row, err error) {
	// The library decodes with reflection and may panic on data it does not expect; turn that
	// into an error naming the file and row.
	row := -1
	defer func() {
		if p := recover(); p != nil {
			where := name
			if row >= 0 {
				where = fmt.Sprintf("%s: row %d", name, row+1)
			}
			rows, err = nil, fmt.Errorf("data: %s: cannot decode: %v", where, p)
		}
	}()
	pf, err := parquet.OpenFile(f, size)
	if err != nil {
		return nil, fmt.Errorf("data: %s: not a readable Parquet file: %w", name, err)
	}
	if !hasColumn(pf.Schema(), "prompt") && !hasColumn(pf.Schema(), "messages") {
		return nil, fmt.Errorf("data: %s: no prompt column (columns: %v)", name, columnNames(pf.Schema()))
	}
	r := parquet.NewReader(pf)
	defer r.Close()
	n := int(r.NumRows())
	rows = make([]Row, 0, min(n, 1<<20))
	for row = 0; row < n; row++ {
		if row%1024 == 0 {
			if err := ctx.Err(); err != nil {
				return nil, err
			}
		}
		m := map[string]any{}
		if err := r.Read(&m); err != nil {
			if errors.Is(err, io.EOF) {
				break
			}
			return nil, fmt.Errorf("data: %s: row %d: %w", name, row+1, err)
		}
		if size := stringBytes(m); size > int64(opts.maxLine()) {
			if !opts.skipLong(row+1, size) {
				return nil, fmt.Errorf("data: %s: row %d: %d bytes of text, over the limit of %d bytes per row", name, row+1, size, opts.maxLine())
			}
			continue
		}
		rw, err := rowFromMap(m, opts)
		if err != nil {
			return nil, fmt.Errorf("data: %s: row %d: %w", name, row+1, err)
		}
		rw.Index, rw.Line = len(rows), row+1
		rows = append(rows, rw)
	}
	return rows, nil
}

// stringBytes is the length of the string values in a decoded row, nested ones included.
func stringBytes(v any) int64 {
	switch v := v.(type) {
	case string:
		return int64(len(v))
	case []byte:
		return int64(len(v))
	case map[string]any:
		n := int64(0)
		for _, x := range v {
			n += stringBytes(x)
		}
		return n
	case []any:
		n := int64(0)
		for _, x := range v {
			n += stringBytes(x)
		}
		return n
	}
	return 0
}

func hasColumn(s *parquet.Schema, name string) bool {
	for _, f := range s.Fields() {
		if f.Name() == name {
			return true
		}
	}
	return false
}

func columnNames(s *parquet.Schema) []string {
	var out []string
	for _, f := range s.Fields() {
		out = append(out, f.Name())
	}
	return out
}

// The two schemas WriteParquet writes: chat prompts as list<struct<role, content>> (verl's
// layout), text prompts as a string column. extra_info is kept as JSON text because its keys
// vary from row to row.
type parquetChatRow struct {
	DataSource  string        `parquet:"data_source"`
	Prompt      []Message     `parquet:"prompt,list"`
	RewardModel parquetReward `parquet:"reward_model"`
	ExtraInfo   string        `parquet:"extra_info,optional"`
}

type parquetTextRow struct {
	DataSource  string        `parquet:"data_source"`
	Prompt      string        `parquet:"prompt"`
	RewardModel parquetReward `parquet:"reward_model"`
	ExtraInfo   string        `parquet:"extra_info,optional"`
}

type parquetReward struct {
	Style       string `parquet:"style"`
	GroundTruth string `parquet:"ground_truth"`
}

// WriteParquet writes rows in verl's Parquet layout (zstd-compressed). All rows must have the
// same prompt kind: all chat messages or all text.
func WriteParquet(w io.Writer, rows []Row) error {
	chat := len(rows) > 0 && rows[0].Messages != nil
	extra := func(i int, r Row) (string, error) {
		if r.ExtraInfo == nil {
			return "", nil
		}
		b, err := json.Marshal(r.ExtraInfo)
		if err != nil {
			return "", fmt.Errorf("data: row %d: extra_info: %w", i+1, err)
		}
		return string(b), nil
	}
	opts := []parquet.WriterOption{parquet.Compression(&parquet.Zstd)}
	if chat {
		pw := parquet.NewGenericWriter[parquetChatRow](w, opts...)
		for i, r := range rows {
			if r.Messages == nil {
				return fmt.Errorf("data: row %d has a text prompt, row 1 chat messages: one Parquet file holds one kind", i+1)
			}
			ei, err := extra(i, r)
			if err != nil {
				return err
			}
			if _, err := pw.Write([]parquetChatRow{{DataSource: r.DataSource, Prompt: r.Messages, RewardModel: parquetReward{"rule", r.GroundTruth}, ExtraInfo: ei}}); err != nil {
				return fmt.Errorf("data: row %d: %w", i+1, err)
			}
		}
		return pw.Close()
	}
	pw := parquet.NewGenericWriter[parquetTextRow](w, opts...)
	for i, r := range rows {
		if r.Messages != nil {
			return fmt.Errorf("data: row %d has chat messages, row 1 a text prompt: one Parquet file holds one kind", i+1)
		}
		ei, err := extra(i, r)
		if err != nil {
			return err
		}
		if _, err := pw.Write([]parquetTextRow{{DataSource: r.DataSource, Prompt: r.Prompt, RewardModel: parquetReward{"rule", r.GroundTruth}, ExtraInfo: ei}}); err != nil {
			return fmt.Errorf("data: row %d: %w", i+1, err)
		}
	}
	return pw.Close()
}
