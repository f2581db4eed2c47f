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
