package data

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"runtime"
	"strings"
	"testing"

	"github.com/parquet-go/parquet-go"

	"github.com/prolong-rl/prolong/grpo/tasks"
)

var ctx = context.Background()

// Rows as verl's examples write them (gsm8k preprocessing), plus the variants users keep.
const sampleJSONL = `{"data_source": "openai/gsm8k", "prompt": [{"role": "user", "content": "Natalia sold clips to 48 of her friends... Let's think step by step and output the final answer after \"####\"."}], "ability": "math", "reward_model": {"style": "rule", "ground_truth": "72"}, "extra_info": {"split": "train", "index": 0, "answer": "Natalia sold 48/2 = 24 clips in May. #### 72"}}

{"data_source": "arith", "prompt": "12+7-5=", "ground_truth": "14"}
{"data_source": "code", "prompt": "Write add.", "reward_model": {"ground_truth": {"fn_name": "add", "inputs": [[1, 2]], "outputs": [3]}}}
{"data_source": "countdown", "prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "use 3 5 7 8 to make 24"}], "reward_model": {"ground_truth": {"numbers": [3, 5, 7, 8], "target": 24}}, "extra_info": {"difficulty": 2}}
`

func TestReadJSONL(t *testing.T) {
	rows, err := ReadJSONL(ctx, strings.NewReader(sampleJSONL), "sample.jsonl", Options{})
	if err != nil {
		t.Fatal(err)
	}
	if len(rows) != 4 {
		t.Fatalf("%d rows", len(rows))
	}
	if r := rows[0]; r.DataSource != "openai/gsm8k" || r.GroundTruth != "72" || len(r.Messages) != 1 || r.Messages[0].Role != "user" ||
		r.ExtraInfo["split"] != "train" || r.ExtraInfo["index"] != json.Number("0") || r.Prompt != "" {
		t.Errorf("row 0: %+v", r)
	}
	if r := rows[1]; r.Prompt != "12+7-5=" || r.Messages != nil || r.GroundTruth != "14" || r.Index != 1 {
		t.Errorf("row 1: %+v", r)
	}
	if gt := rows[2].GroundTruth; gt != `{"fn_name":"add","inputs":[[1,2]],"outputs":[3]}` {
		t.Errorf("row 2 ground truth %s", gt)
	}
	if r := rows[3]; len(r.Chat()) != 2 || r.Chat()[0].Content != "Be brief." || r.GroundTruth != `{"numbers":[3,5,7,8],"target":24}` {
		t.Errorf("row 3: %+v", r)
	}
	if c := rows[1].Chat(); len(c) != 1 || c[0] != (Message{"user", "12+7-5="}) {
		t.Errorf("Chat of a text prompt: %+v", c)
	}
}

func TestJSONLErrors(t *testing.T) {
	cases := []struct {
		line, want string
	}{
		{`{"data_source": "math", "ground_truth": "1"}`, "bad.jsonl:2: prompt: missing"},
		{`{"prompt": 3, "data_source": "math", "ground_truth": "1"}`, "bad.jsonl:2: prompt: want a string or a list of {role, content} messages, got number"},
		{`{"prompt": [{"role": "user"}], "data_source": "math", "ground_truth": "1"}`, "bad.jsonl:2: prompt[0].content: want a string, got null"},
		{`{"prompt": [{"content": "x"}], "data_source": "math", "ground_truth": "1"}`, "bad.jsonl:2: prompt[0].role"},
		{`{"prompt": ["x"], "data_source": "math", "ground_truth": "1"}`, "prompt[0]: want a {role, content} object, got string"},
		{`{"prompt": "x", "ground_truth": "1"}`, "bad.jsonl:2: data_source: missing"},
		{`{"prompt": "x", "data_source": 5, "ground_truth": "1"}`, "data_source: want a non-empty string, got number"},
		{`{"prompt": "x", "data_source": "math"}`, "bad.jsonl:2: ground_truth: missing"},
		{`{"prompt": "x", "data_source": "math", "reward_model": {"style": "rule"}}`, "reward_model.ground_truth: missing"},
		{`{"prompt": "x", "data_source": "math", "reward_model": "7"}`, "reward_model: want an object, got string"},
		{`{"prompt": "x", "data_source": "math", "ground_truth": "1", "extra_info": [1]}`, "extra_info: want an object, got list"},
		{`{"prompt": "x", "data_source": "math", "ground_truth": "1"} {}`, "text after the JSON object"},
		{`[1, 2]`, "bad.jsonl:2: not a JSON object"},
		{`{"prompt": "x",`, "bad.jsonl:2: not a JSON object"},
		{`null`, "not a JSON object: null"},
	}
	for _, c := range cases {
		in := `{"prompt": "ok", "data_source": "math", "ground_truth": "1"}` + "\n" + c.line + "\n"
		_, err := ReadJSONL(ctx, strings.NewReader(in), "bad.jsonl", Options{})
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: error %v, want %q", c.line, err, c.want)
		}
	}
	rows, err := ReadJSONL(ctx, strings.NewReader(`{"prompt": "x", "ground_truth": "1"}`), "d.jsonl", Options{DefaultDataSource: "arith"})
	if err != nil || rows[0].DataSource != "arith" {
		t.Errorf("default data source: %+v %v", rows, err)
	}
	if _, err := Load(ctx, "prompts.csv", Options{}); err == nil || !strings.Contains(err.Error(), "prompts.csv") {
		t.Errorf("unknown extension: %v", err)
	}
	if _, err := Load(ctx, filepath.Join(t.TempDir(), "missing.jsonl"), Options{}); err == nil || !strings.Contains(err.Error(), "missing.jsonl") {
		t.Errorf("missing file: %v", err)
	}
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := ReadJSONL(cancelled, strings.NewReader(strings.Repeat(`{"prompt": "x", "data_source": "m", "ground_truth": "1"}`+"\n", 2000)), "big.jsonl", Options{}); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled read: %v", err)
	}
}

func TestRoundTrips(t *testing.T) {
	f, _ := tasks.New("countdown")
	ts, err := tasks.Generate(f, tasks.GenerateConfig{Split: tasks.Train, N: 50, Seed: 3})
	if err != nil {
		t.Fatal(err)
	}
	text := FromTasks(ts)
	chat, err := ReadJSONL(ctx, strings.NewReader(sampleJSONL), "sample.jsonl", Options{})
	if err != nil {
		t.Fatal(err)
	}
	chat = []Row{chat[0], chat[3]}
	chat[1].Index = 1
	dir := t.TempDir()
	for _, set := range []struct {
		name string
		rows []Row
	}{{"text", text}, {"chat", chat}} {
		for _, ext := range []string{".jsonl", ".parquet"} {
			path := filepath.Join(dir, set.name+ext)
			if err := Save(path, set.rows); err != nil {
				t.Fatal(err)
			}
			got, err := Load(ctx, path, Options{})
			if err != nil {
				t.Fatalf("%s: %v", path, err)
			}
			if len(got) != len(set.rows) {
				t.Fatalf("%s: %d rows, want %d", path, len(got), len(set.rows))
			}
			for i := range got {
				w := set.rows[i]
				g := got[i]
				if g.Prompt != w.Prompt || !reflect.DeepEqual(g.Messages, w.Messages) || g.DataSource != w.DataSource ||
					g.GroundTruth != w.GroundTruth || g.Index != i || jsonOf(g.ExtraInfo) != jsonOf(w.ExtraInfo) {
					t.Fatalf("%s row %d:\n got %+v\nwant %+v", path, i, g, w)
				}
			}
		}
	}
	// Mixed prompt kinds do not go into one Parquet file.
	if err := Save(filepath.Join(dir, "mixed.parquet"), append(append([]Row{}, chat[:1]...), text[0])); err == nil || !strings.Contains(err.Error(), "row 1") {
		t.Errorf("mixed parquet: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "mixed.parquet")); !os.IsNotExist(err) {
		t.Errorf("failed save left a file: %v", err)
	}
	if left, _ := filepath.Glob(filepath.Join(dir, ".*tmp*")); len(left) > 0 {
		t.Errorf("temporary files left: %v", left)
	}
}

func jsonOf(v any) string {
	b, _ := json.Marshal(v)
	var x any
	_ = json.Unmarshal(b, &x)
	b, _ = json.Marshal(x)
	return string(b)
}

// A Parquet file with pyarrow's layout for verl data: prompt as a LIST of structs, reward_model
// and extra_info as structs with typed fields (not JSON text).
type pyarrowStyleRow struct {
	DataSource  string    `parquet:"data_source"`
	Prompt      []Message `parquet:"prompt,list"`
	Ability     string    `parquet:"ability"`
	RewardModel struct {
		GroundTruth string `parquet:"ground_truth"`
		Style       string `parquet:"style"`
	} `parquet:"reward_model"`
	ExtraInfo struct {
		Index  int64  `parquet:"index"`
		Split  string `parquet:"split"`
		Answer string `parquet:"answer"`
	} `parquet:"extra_info"`
}

func TestParquetStructColumns(t *testing.T) {
	path := filepath.Join(t.TempDir(), "gsm8k.parquet")
	var rows []pyarrowStyleRow
	for i := 0; i < 3; i++ {
		var r pyarrowStyleRow
		r.DataSource = "openai/gsm8k"
		r.Prompt = []Message{{"user", "q" + string(rune('0'+i))}}
		r.Ability = "math"
		r.RewardModel.GroundTruth = "72"
		r.RewardModel.Style = "rule"
		r.ExtraInfo.Index = int64(i)
		r.ExtraInfo.Split = "train"
		rows = append(rows, r)
	}
	var buf bytes.Buffer
	w := parquet.NewGenericWriter[pyarrowStyleRow](&buf, parquet.Compression(&parquet.Snappy))
	if _, err := w.Write(rows); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	got, err := Load(ctx, path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 3 || got[2].Messages[0].Content != "q2" || got[1].GroundTruth != "72" || got[2].ExtraInfo["split"] != "train" {
		t.Fatalf("struct columns: %+v", got)
	}
	if fmt := jsonOf(got[2].ExtraInfo["index"]); fmt != "2" {
		t.Errorf("extra_info.index = %v", got[2].ExtraInfo["index"])
	}
	// Errors name the file and row.
	bad := filepath.Join(t.TempDir(), "bad.parquet")
	type noTruth struct {
		DataSource string `parquet:"data_source"`
		Prompt     string `parquet:"prompt"`
	}
	var b2 bytes.Buffer
	w2 := parquet.NewGenericWriter[noTruth](&b2)
	_, _ = w2.Write([]noTruth{{"math", "x"}})
	_ = w2.Close()
	_ = os.WriteFile(bad, b2.Bytes(), 0o644)
	if _, err := Load(ctx, bad, Options{}); err == nil || !strings.Contains(err.Error(), "bad.parquet: row 1: ground_truth: missing") {
		t.Errorf("parquet error: %v", err)
	}
	junk := filepath.Join(t.TempDir(), "junk.parquet")
	_ = os.WriteFile(junk, []byte("PAR1 not really"), 0o644)
	if _, err := Load(ctx, junk, Options{}); err == nil || !strings.Contains(err.Error(), "junk.parquet") {
		t.Errorf("junk parquet: %v", err)
	}
}

func TestSplitValidation(t *testing.T) {
	rows := make([]Row, 100)
	for i := range rows {
		rows[i] = Row{Prompt: "p", DataSource: "x", GroundTruth: "1", Index: i}
	}
	train, val, err := SplitValidation(rows, 0.1, 5)
	if err != nil || len(train) != 90 || len(val) != 10 {
		t.Fatalf("split: %d %d %v", len(train), len(val), err)
	}
	seen := map[int]bool{}
	for _, r := range append(append([]Row{}, train...), val...) {
		if seen[r.Index] {
			t.Fatalf("row %d in both splits", r.Index)
		}
		seen[r.Index] = true
	}
	_, val2, _ := SplitValidation(rows, 0.1, 5)
	if !reflect.DeepEqual(val, val2) {
		t.Error("same seed, different validation set")
	}
	for i := 1; i < len(val); i++ {
		if val[i].Index < val[i-1].Index {
			t.Error("validation rows not in file order")
		}
	}
	if _, _, err := SplitValidation(rows, 1, 0); err == nil {
		t.Error("fraction 1 accepted")
	}
}

func TestStreamShuffleAndResume(t *testing.T) {
	rows := make([]Row, 10)
	for i := range rows {
		rows[i] = Row{Index: i}
	}
	s, err := NewStream(rows, StreamConfig{Seed: 42})
	if err != nil {
		t.Fatal(err)
	}
	// Each epoch is a permutation; epochs differ.
	var epochs [3][]int
	for e := range epochs {
		seen := map[int]bool{}
		for i := 0; i < 10; i++ {
			r, _ := s.Next()
			epochs[e] = append(epochs[e], r.Index)
			seen[r.Index] = true
		}
		if len(seen) != 10 {
			t.Fatalf("epoch %d is not a permutation: %v", e, epochs[e])
		}
	}
	if reflect.DeepEqual(epochs[0], epochs[1]) {
		t.Errorf("epochs 0 and 1 in the same order: %v", epochs[0])
	}
	// Save mid-epoch, continue, restore into a fresh stream: same rows follow.
	s2, _ := NewStream(rows, StreamConfig{Seed: 42})
	_, _ = s2.NextN(13)
	st := s2.State()
	want, _ := s2.NextN(12)
	b, _ := json.Marshal(st)
	var st2 StreamState
	_ = json.Unmarshal(b, &st2)
	s3, _ := NewStream(rows, StreamConfig{Seed: 42})
	if err := s3.Restore(st2); err != nil {
		t.Fatal(err)
	}
	got, _ := s3.NextN(12)
	if !reflect.DeepEqual(got, want) {
		t.Errorf("after restore %v, want %v", idx(got), idx(want))
	}
	if idx(want)[0] != epochs[1][3] {
		t.Errorf("stream not reproducible: %v vs epoch 1 %v", idx(want), epochs[1])
	}
	// Restoring into a different set or seed is refused.
	s4, _ := NewStream(rows[:9], StreamConfig{Seed: 42})
	if err := s4.Restore(st); err == nil || !strings.Contains(err.Error(), "10 rows") {
		t.Errorf("restore into a smaller set: %v", err)
	}
	s5, _ := NewStream(rows, StreamConfig{Seed: 1})
	if err := s5.Restore(st); err == nil || !strings.Contains(err.Error(), "seed") {
		t.Errorf("restore with another seed: %v", err)
	}
	// Epoch limit and file order.
	s6, _ := NewStream(rows, StreamConfig{NoShuffle: true, Epochs: 2})
	all, err := s6.NextN(25)
	if !errors.Is(err, io.EOF) || len(all) != 20 || all[11].Index != 1 {
		t.Errorf("two epochs in order: %d rows, err %v", len(all), err)
	}
	if _, err := NewStream(nil, StreamConfig{}); err == nil {
		t.Error("empty stream accepted")
	}
}

func idx(rows []Row) []int {
	out := make([]int, len(rows))
	for i, r := range rows {
		out[i] = r.Index
	}
	return out
}

func FuzzParseJSONLRow(f *testing.F) {
	for _, line := range strings.Split(sampleJSONL, "\n") {
		f.Add(line)
	}
	f.Add(`{"prompt": {"list": [{"element": {"role": "user", "content": "x"}}]}, "data_source": "m", "ground_truth": 1}`)
	f.Add(`{"prompt": "x", "data_source": "m", "ground_truth": "1", "extra_info": "{\"a\": 1}"}`)
	f.Fuzz(func(t *testing.T, line string) {
		r, err := ParseJSONLRow([]byte(line), Options{})
		if err != nil {
			return
		}
		if (r.Prompt == "") == (r.Messages == nil) || r.DataSource == "" {
			t.Fatalf("accepted %q as %+v", line, r)
		}
		// What we accept survives a write and a read unchanged.
		var buf bytes.Buffer
		if err := WriteJSONL(&buf, []Row{r}); err != nil {
			t.Fatal(err)
		}
		r2, err := ParseJSONLRow(bytes.TrimSpace(buf.Bytes()), Options{})
		if err != nil {
			t.Fatalf("re-read of %q: %v", buf.String(), err)
		}
		if r2.Prompt != r.Prompt || !reflect.DeepEqual(r2.Messages, r.Messages) || r2.GroundTruth != r.GroundTruth || r2.DataSource != r.DataSource {
			t.Fatalf("round trip of %q: %+v vs %+v", line, r2, r)
		}
	})
}

// Damaged Parquet files are errors naming the file, never panics. (No fuzz target here:
// fuzzing finds that parquet-go v0.32 trusts the page sizes a file declares and allocates
// them, so a crafted file can exhaust memory; prompt files are trusted input. The row
// converter it feeds is the one FuzzParseJSONLRow covers.)
func TestDamagedParquet(t *testing.T) {
	var buf bytes.Buffer
	chat, _ := ReadJSONL(ctx, strings.NewReader(sampleJSONL), "s", Options{})
	if err := WriteParquet(&buf, []Row{chat[0], chat[3]}); err != nil {
		t.Fatal(err)
	}
	good := buf.Bytes()
	damaged := map[string][]byte{"empty": {}, "magic only": []byte("PAR1PAR1")}
	for _, cut := range []int{4, len(good) / 3, len(good) / 2, len(good) - 9, len(good) - 1} {
		damaged[fmt.Sprintf("cut at %d", cut)] = good[:cut]
	}
	flipped := bytes.Clone(good)
	flipped[len(flipped)-5] ^= 0xff // footer length
	damaged["bad footer length"] = flipped
	for name, b := range damaged {
		_, err := ReadParquetFrom(ctx, bytes.NewReader(b), int64(len(b)), "damaged.parquet", Options{})
		if err == nil || !strings.Contains(err.Error(), "damaged.parquet") {
			t.Errorf("%s: error %v", name, err)
		}
	}
	if rows, err := ReadParquetFrom(ctx, bytes.NewReader(good), int64(len(good)), "good.parquet", Options{}); err != nil || len(rows) != 2 {
		t.Errorf("good file: %d rows, %v", len(rows), err)
	}
}

// TestRowLines: rows know their line (JSONL, blank lines counted) and Parquet row, counted
// from 1, and At names them so.
func TestRowLines(t *testing.T) {
	in := "\n" + `{"data_source":"a","prompt":"p1","reward_model":{"ground_truth":"1"}}` + "\n\n" +
		`{"data_source":"a","prompt":"p2","reward_model":{"ground_truth":"2"}}` + "\n"
	rows, err := ReadJSONL(context.Background(), strings.NewReader(in), "x.jsonl", Options{})
	if err != nil {
		t.Fatal(err)
	}
	for i, want := range []string{"x.jsonl:2", "x.jsonl:4"} {
		if got := rows[i].At("x.jsonl"); got != want {
			t.Errorf("row %d At = %q, want %q", i, got, want)
		}
	}
	if got := (Row{Line: 3}).At("d/y.parquet"); got != "d/y.parquet row 3" {
		t.Errorf("parquet At = %q", got)
	}
	if got := (Row{Index: 4}).At("gen.jsonl"); got != "gen.jsonl:5" {
		t.Errorf("row not from a file: At = %q", got)
	}
}

// okRow is a valid row of exactly n bytes (n >= 60), its prompt padded with x.
func okRow(n int) string {
	const head, tail = `{"data_source":"m","ground_truth":"1","prompt":"`, `"}`
	return head + strings.Repeat("x", n-len(head)-len(tail)) + tail
}

// TestLongLines: a line over MaxLineBytes (its bytes before the newline; a \r counts) is an
// error naming file:line and its length, or, with SkipLong, skipped and reported; a line of
// exactly the limit is read. Sizes worked by hand from okRow.
func TestLongLines(t *testing.T) {
	type skip struct {
		line int
		size int64
	}
	cases := []struct {
		name    string
		in      string
		lines   []int  // lines of the rows read
		skipped []skip // with SkipLong
		err     string // without SkipLong
	}{
		{"at the limit", okRow(64) + "\n" + okRow(60) + "\n", []int{1, 2}, nil, ""},
		{"one over", okRow(60) + "\n" + okRow(65) + "\n" + okRow(64), []int{1, 3}, []skip{{2, 65}}, "long.jsonl:2: line of 65 bytes, over the limit of 64 bytes per line"},
		{"CRLF counts the CR", okRow(64) + "\r\n" + okRow(63) + "\r\n", []int{2}, []skip{{1, 65}}, "long.jsonl:1: line of 65 bytes"},
		{"last line without newline", "\n" + okRow(60) + "\n" + okRow(100), []int{2}, []skip{{3, 100}}, "long.jsonl:3: line of 100 bytes"},
		{"longer than the read buffer", okRow(200<<10) + "\n\n" + okRow(61) + "\n" + okRow(70) + "\n", []int{3}, []skip{{1, 200 << 10}, {4, 70}}, "long.jsonl:1: line of 204800 bytes"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var got []skip
			opts := Options{MaxLineBytes: 64, SkipLong: func(line int, size int64) { got = append(got, skip{line, size}) }}
			rows, err := ReadJSONL(ctx, strings.NewReader(c.in), "long.jsonl", opts)
			if err != nil {
				t.Fatal(err)
			}
			var lines []int
			for i, r := range rows {
				lines = append(lines, r.Line)
				if r.Index != i {
					t.Errorf("row %d has Index %d", i, r.Index)
				}
			}
			if !reflect.DeepEqual(lines, c.lines) || !reflect.DeepEqual(got, c.skipped) {
				t.Errorf("rows at lines %v, skipped %v; want %v, %v", lines, got, c.lines, c.skipped)
			}
			_, err = ReadJSONL(ctx, strings.NewReader(c.in), "long.jsonl", Options{MaxLineBytes: 64})
			if c.err == "" && err != nil || c.err != "" && (err == nil || !strings.Contains(err.Error(), c.err)) {
				t.Errorf("without SkipLong: error %v, want %q", err, c.err)
			}
		})
	}
}

// letters reads n bytes a, b, ..., z, a, ... made as they are read.
type letters struct{ off, n int64 }

func (l *letters) Read(p []byte) (int, error) {
	if l.off == l.n {
		return 0, io.EOF
	}
	k := int(min(int64(len(p)), l.n-l.off))
	for i := range k {
		p[i] = 'a' + byte((l.off+int64(i))%26)
	}
	l.off += int64(k)
	return k, nil
}

// newHugeLine reads a JSONL file whose second of three lines is a valid row with an n-byte
// prompt, made as it is read (the test holds no copy of it).
func newHugeLine(n int64) io.Reader {
	row := `{"data_source":"m","ground_truth":"1","prompt":"p"}` + "\n"
	return io.MultiReader(strings.NewReader(row+`{"data_source":"m","ground_truth":"1","prompt":"`), &letters{n: n},
		strings.NewReader(`"}`+"\n"+row))
}

// allocated is the bytes f allocates on the heap.
func allocated(f func()) uint64 {
	var a, b runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&a)
	f()
	runtime.ReadMemStats(&b)
	return b.TotalAlloc - a.TotalAlloc
}

// TestHugeLineCost: a valid 50 MB line costs reading at most twice the limit per line, not
// its size: it is passed over without being held (issue 30: it cost 58 times its size in the
// trainer; bufio.Scanner alone grew a 64 MiB buffer for it).
func TestHugeLineCost(t *testing.T) {
	// The reader itself, checked on a small line.
	b, err := io.ReadAll(newHugeLine(5))
	if err != nil || string(b) != "{\"data_source\":\"m\",\"ground_truth\":\"1\",\"prompt\":\"p\"}\n{\"data_source\":\"m\",\"ground_truth\":\"1\",\"prompt\":\"abcde\"}\n{\"data_source\":\"m\",\"ground_truth\":\"1\",\"prompt\":\"p\"}\n" {
		t.Fatalf("hugeLine(5) reads %q, %v", b, err)
	}
	const n = 50 << 20
	base := allocated(func() { ReadJSONL(ctx, newHugeLine(5), "small.jsonl", Options{}) })
	var skipped []int
	var rows []Row
	got := allocated(func() {
		rows, err = ReadJSONL(ctx, newHugeLine(n), "huge.jsonl", Options{SkipLong: func(line int, size int64) {
			skipped = append(skipped, line, int(size))
		}})
	})
	if err != nil || len(rows) != 2 || rows[1].Line != 3 {
		t.Fatalf("%d rows (want 2, the second at line 3), %v", len(rows), err)
	}
	if want := []int{2, n + 50}; !reflect.DeepEqual(skipped, want) {
		t.Errorf("skipped (line, size) %v, want %v", skipped, want)
	}
	if bound := base + 2*DefaultMaxLineBytes + 1<<20; got > bound {
		t.Errorf("reading a file with a %d-byte line allocated %d bytes (%d for the file without it), want at most %d", n, got, base, bound)
	}
	t.Logf("allocated %.1f MiB (%.2f MiB without the long line)", float64(got)/(1<<20), float64(base)/(1<<20))
}

// TestByteOrderMark: a UTF-8 byte-order mark at the start of a file is read away (Python's
// utf-8-sig); one elsewhere is an error as before.
func TestByteOrderMark(t *testing.T) {
	row := `{"data_source":"m","ground_truth":"1","prompt":"p"}`
	for _, c := range []struct{ name, in, err string }{
		{"BOM then a row", "\xef\xbb\xbf" + row + "\n" + row + "\n", ""},
		{"BOM, CRLF", "\xef\xbb\xbf" + row + "\r\n", ""},
		{"BOM then a blank line", "\xef\xbb\xbf\n" + row, ""},
		{"BOM on line 2", row + "\n\xef\xbb\xbf" + row, "bom.jsonl:2: not a JSON object"},
		{"two BOMs", "\xef\xbb\xbf\xef\xbb\xbf" + row, "bom.jsonl:1: not a JSON object"},
	} {
		rows, err := ReadJSONL(ctx, strings.NewReader(c.in), "bom.jsonl", Options{})
		if c.err != "" {
			if err == nil || !strings.Contains(err.Error(), c.err) {
				t.Errorf("%s: error %v, want %q", c.name, err, c.err)
			}
			continue
		}
		if err != nil || len(rows) == 0 || rows[0].Prompt != "p" {
			t.Errorf("%s: %+v, %v", c.name, rows, err)
		}
	}
	// A file saved with a BOM loads.
	p := filepath.Join(t.TempDir(), "bom.jsonl")
	if err := os.WriteFile(p, []byte("\xef\xbb\xbf"+row+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if rows, err := Load(ctx, p, Options{}); err != nil || len(rows) != 1 || rows[0].Line != 1 {
		t.Errorf("Load of a file with a BOM: %+v, %v", rows, err)
	}
}

// TestParquetLongRow: a Parquet row whose strings hold more than MaxLineBytes is skipped with
// SkipLong, or an error naming the file and row. Row 2's strings: "m" + 200 x + "rule" + "1"
// = 206 bytes (extra_info is empty).
func TestParquetLongRow(t *testing.T) {
	rows := []Row{{Prompt: "a", DataSource: "m", GroundTruth: "1"}, {Prompt: strings.Repeat("x", 200), DataSource: "m", GroundTruth: "1"},
		{Prompt: "c", DataSource: "m", GroundTruth: "1"}}
	var buf bytes.Buffer
	if err := WriteParquet(&buf, rows); err != nil {
		t.Fatal(err)
	}
	b := buf.Bytes()
	var skipped []int64
	got, err := ReadParquetFrom(ctx, bytes.NewReader(b), int64(len(b)), "p.parquet", Options{MaxLineBytes: 205,
		SkipLong: func(line int, size int64) { skipped = append(skipped, int64(line), size) }})
	if err != nil || len(got) != 2 || got[0].Prompt != "a" || got[1].Prompt != "c" || got[1].Line != 3 || got[1].Index != 1 {
		t.Fatalf("rows %+v, %v", got, err)
	}
	if want := []int64{2, 206}; !reflect.DeepEqual(skipped, want) {
		t.Errorf("skipped %v, want %v", skipped, want)
	}
	_, err = ReadParquetFrom(ctx, bytes.NewReader(b), int64(len(b)), "p.parquet", Options{MaxLineBytes: 205})
	if want := "p.parquet: row 2: 206 bytes of text, over the limit of 205 bytes per row"; err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("error %v, want %q", err, want)
	}
	if got, err := ReadParquetFrom(ctx, bytes.NewReader(b), int64(len(b)), "p.parquet", Options{MaxLineBytes: 206}); err != nil || len(got) != 3 {
		t.Errorf("at the limit: %d rows, %v", len(got), err)
	}
}

// FuzzReadJSONL checks the line reader against the simplest one: split the file at \n, drop a
// leading byte-order mark, and parse each line up to the limit with ParseJSONLRow. Rows, their
// lines, the lines skipped as too long, and whether the file is an error must agree.
func FuzzReadJSONL(f *testing.F) {
	f.Add([]byte(sampleJSONL), 64)
	f.Add([]byte("\xef\xbb\xbf"+okRow(60)+"\r\n\n"+okRow(70)+"\n"+okRow(61)), 64)
	f.Add([]byte(okRow(64)+"\n"+okRow(65)), 64)
	f.Add([]byte("\n\n  \n"), 1)
	f.Add([]byte(`{"prompt":"x","data_source":"m","ground_truth":1}`+"\n[1]\n"), 100)
	f.Fuzz(func(t *testing.T, in []byte, limit int) {
		if limit <= 0 || limit > 1<<20 {
			return
		}
		type skip struct {
			line int
			size int64
		}
		var got []skip
		rows, err := ReadJSONL(ctx, bytes.NewReader(in), "f.jsonl", Options{MaxLineBytes: limit,
			SkipLong: func(line int, size int64) { got = append(got, skip{line, size}) }})

		var want []skip
		var wantRows []Row
		var wantErr error
		text := bytes.TrimPrefix(in, utf8BOM)
		lines := bytes.Split(text, []byte("\n"))
		if len(lines[len(lines)-1]) == 0 {
			lines = lines[:len(lines)-1] // the newline ends the last line
		}
		for i, l := range lines {
			if len(l) > limit {
				want = append(want, skip{i + 1, int64(len(l))})
				continue
			}
			if l = bytes.TrimSpace(l); len(l) == 0 {
				continue
			}
			r, err := ParseJSONLRow(l, Options{})
			if err != nil {
				wantErr = fmt.Errorf("f.jsonl:%d: %w", i+1, err)
				break
			}
			r.Index, r.Line = len(wantRows), i+1
			wantRows = append(wantRows, r)
		}
		if (err == nil) != (wantErr == nil) || err != nil && err.Error() != wantErr.Error() {
			t.Fatalf("error %v, want %v", err, wantErr)
		}
		if err != nil {
			return
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("skipped %v, want %v", got, want)
		}
		if len(rows) != len(wantRows) {
			t.Fatalf("%d rows, want %d", len(rows), len(wantRows))
		}
		for i := range rows {
			if !reflect.DeepEqual(rows[i], wantRows[i]) {
				t.Fatalf("row %d: %+v, want %+v", i, rows[i], wantRows[i])
			}
		}
	})
}
