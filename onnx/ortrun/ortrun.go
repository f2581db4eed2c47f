//go:build cgo

// Package ortrun drives an exported decoder (onnx.Export's KV-cache graph) in ONNX Runtime:
// the independent peer that tools and tests compare the engine with. It needs cgo and ONNX
// Runtime's shared library (scripts/setup-ort.sh fetches one).
package ortrun

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"

	ort "github.com/yalue/onnxruntime_go"

	"github.com/prolong-rl/prolong/engine"
)

// LibPath is where ONNX Runtime's library is looked for: $ONNXRUNTIME_LIB, or where
// scripts/setup-ort.sh puts it.
func LibPath() string {
	if p := os.Getenv("ONNXRUNTIME_LIB"); p != "" {
		return p
	}
	cache := os.Getenv("PROLONG_CACHE")
	if cache == "" {
		home, _ := os.UserHomeDir()
		cache = filepath.Join(home, ".cache", "prolong")
	}
	return filepath.Join(cache, "ort-1.24.1", "package", "bin", "napi-v6", "linux", "x64", "libonnxruntime.so.1")
}

var (
	initOnce sync.Once
	initErr  error
)

// Init loads ONNX Runtime once (from LibPath).
func Init() error {
	initOnce.Do(func() {
		p := LibPath()
		if _, err := os.Stat(p); err != nil {
			initErr = fmt.Errorf("ONNX Runtime library %s: %w (run scripts/setup-ort.sh or set ONNXRUNTIME_LIB)", p, err)
			return
		}
		ort.SetSharedLibraryPath(p)
		initErr = ort.InitializeEnvironment(ort.WithLogLevelError())
	})
	return initErr
}

// Session is one exported decoder loaded in ONNX Runtime.
type Session struct {
	cfg  *engine.Config
	sess *ort.DynamicAdvancedSession
}

// Open loads model (an onnx.Export graph of config cfg).
func Open(model string, cfg *engine.Config) (*Session, error) {
	if err := Init(); err != nil {
		return nil, err
	}
	in := []string{"input_ids", "attention_mask", "position_ids"}
	outs := []string{"logits"}
	for i := 0; i < cfg.NumHiddenLayers; i++ {
		for _, kv := range []string{"key", "value"} {
			in = append(in, fmt.Sprintf("past_key_values.%d.%s", i, kv))
			outs = append(outs, fmt.Sprintf("present.%d.%s", i, kv))
		}
	}
	opts, err := ort.NewSessionOptions()
	if err != nil {
		return nil, err
	}
	defer opts.Destroy()
	s, err := ort.NewDynamicAdvancedSession(model, in, outs, opts)
	if err != nil {
		return nil, fmt.Errorf("ONNX Runtime cannot load %s: %w", model, err)
	}
	return &Session{cfg: cfg, sess: s}, nil
}

// Close releases the session.
func (s *Session) Close() { s.sess.Destroy() }

// Greedy decodes one sequence greedily with the KV cache fed back between calls: the prompt in
// one call with an empty past, then one token per call, until a stop token (kept) or max new
// tokens.
func (s *Session) Greedy(prompt []int32, maxNew int, stop []int32) ([]int32, error) {
	if len(prompt) == 0 {
		return nil, errors.New("ortrun: empty prompt")
	}
	d := s.newDecode(1)
	ids := [][]int32{prompt}
	var out []int32
	for len(out) < maxNew {
		next, err := d.step(ids)
		if err != nil {
			return nil, err
		}
		tok := next[0]
		out = append(out, tok)
		if slices.Contains(stop, tok) {
			break
		}
		ids = [][]int32{{tok}}
	}
	return out, nil
}

// GreedyBatch decodes prompts of one length together, as one batch of the graph (batch_size =
// len(prompts)): the prompts in one call, then maxNew-1 calls of one token per sequence, with
// no stop tokens. It returns each sequence's maxNew tokens.
func (s *Session) GreedyBatch(prompts [][]int32, maxNew int) ([][]int32, error) {
	if len(prompts) == 0 || len(prompts[0]) == 0 {
		return nil, errors.New("ortrun: empty batch or prompt")
	}
	for i, p := range prompts {
		if len(p) != len(prompts[0]) {
			return nil, fmt.Errorf("ortrun: prompt %d has %d tokens, prompt 0 %d: one length per batch", i, len(p), len(prompts[0]))
		}
	}
	d := s.newDecode(len(prompts))
	out := make([][]int32, len(prompts))
	ids := prompts
	for step := 0; step < maxNew; step++ {
		next, err := d.step(ids)
		if err != nil {
			return nil, err
		}
		ids = make([][]int32, len(next))
		for i, tok := range next {
			out[i] = append(out[i], tok)
			ids[i] = []int32{tok}
		}
	}
	return out, nil
}

// decode is a batch of sequences in progress: their KV cache, fed back between calls.
type decode struct {
	s     *Session
	batch int
	past  int
	kv    [][]float32 // per layer key, value: [batch, KV heads, past, head dim]
}

func (s *Session) newDecode(batch int) *decode {
	kv := make([][]float32, 2*s.cfg.NumHiddenLayers)
	for i := range kv {
		kv[i] = []float32{}
	}
	return &decode{s: s, batch: batch, kv: kv}
}

// step runs ids (batch rows of one length) after the cached past and returns each row's
// greedy next token; the cache grows by the rows.
func (d *decode) step(ids [][]int32) ([]int32, error) {
	c := d.s.cfg
	b, n := int64(d.batch), int64(len(ids[0]))
	flat, pos, mask := make([]int64, 0, b*n), make([]int64, 0, b*n), make([]int64, b*(int64(d.past)+n))
	for _, row := range ids {
		for j, id := range row {
			flat, pos = append(flat, int64(id)), append(pos, int64(d.past+j))
		}
	}
	for j := range mask {
		mask[j] = 1
	}
	inputs := make([]ort.Value, 0, 3+len(d.kv))
	outputs := make([]ort.Value, 1+len(d.kv))
	defer func() {
		for _, v := range append(inputs, outputs...) {
			if v != nil {
				v.Destroy()
			}
		}
	}()
	add := func(v ort.Value, err error) error {
		if err == nil {
			inputs = append(inputs, v)
		}
		return err
	}
	errs := []error{
		add(ort.NewTensor(ort.NewShape(b, n), flat)),
		add(ort.NewTensor(ort.NewShape(b, int64(d.past)+n), mask)),
		add(ort.NewTensor(ort.NewShape(b, n), pos)),
	}
	for i := range d.kv {
		errs = append(errs, add(ort.NewTensor(ort.NewShape(b, int64(c.NumKeyValueHeads), int64(d.past), int64(c.HeadDim)), d.kv[i])))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	if err := d.s.sess.Run(inputs, outputs); err != nil {
		return nil, fmt.Errorf("ortrun: run: %w", err)
	}
	logits := outputs[0].(*ort.Tensor[float32]).GetData() // [batch, n, V]
	V := c.VocabSize
	next := make([]int32, d.batch)
	for i := range next {
		row := logits[(int64(i)*n+n-1)*int64(V):][:V]
		best := 0
		for j, v := range row {
			if v > row[best] {
				best = j
			}
		}
		next[i] = int32(best)
	}
	want := d.batch * (d.past + int(n)) * c.NumKeyValueHeads * c.HeadDim
	for i := range d.kv {
		data := outputs[1+i].(*ort.Tensor[float32]).GetData()
		if len(data) != want {
			return nil, fmt.Errorf("ortrun: present %d has %d values, want %d", i, len(data), want)
		}
		d.kv[i] = append(d.kv[i][:0:0], data...)
	}
	d.past += int(n)
	return next, nil
}

// Logits runs any decoder ONNX file in ONNX Runtime on one sequence from position 0 and returns
// the logits of every position ([len(ids)*vocab] row-major) and the vocabulary size. It feeds
// what the graph asks for by the names optimum, onnxruntime-genai and onnx.Export use:
// input_ids, attention_mask, position_ids, and empty float32 past_key_values.* tensors; the
// output is "logits".
func Logits(model string, ids []int32) ([]float32, int, error) {
	if err := Init(); err != nil {
		return nil, 0, err
	}
	if len(ids) == 0 {
		return nil, 0, errors.New("ortrun: empty sequence")
	}
	ins, outs, err := ort.GetInputOutputInfo(model)
	if err != nil {
		return nil, 0, fmt.Errorf("ONNX Runtime cannot read %s: %w", model, err)
	}
	n := int64(len(ids))
	var names []string
	var values []ort.Value
	defer func() {
		for _, v := range values {
			v.Destroy()
		}
	}()
	ints := func(f func(j int) int64) []int64 {
		d := make([]int64, n)
		for j := range d {
			d[j] = f(j)
		}
		return d
	}
	for _, in := range ins {
		var v ort.Value
		var err error
		switch {
		case in.Name == "input_ids":
			v, err = ort.NewTensor(ort.NewShape(1, n), ints(func(j int) int64 { return int64(ids[j]) }))
		case in.Name == "attention_mask":
			v, err = ort.NewTensor(ort.NewShape(1, n), ints(func(int) int64 { return 1 }))
		case in.Name == "position_ids":
			v, err = ort.NewTensor(ort.NewShape(1, n), ints(func(j int) int64 { return int64(j) }))
		case strings.HasPrefix(in.Name, "past_key_values.") || strings.HasPrefix(in.Name, "past."):
			if in.DataType != ort.TensorElementDataTypeFloat {
				return nil, 0, fmt.Errorf("ortrun: %s input %s is not float32", model, in.Name)
			}
			// [batch, kv heads, past length, head dim]: the batch is 1, the past empty.
			dims := append(ort.Shape(nil), in.Dimensions...)
			seenBatch := false
			for k, d := range dims {
				if d < 0 {
					if !seenBatch {
						dims[k], seenBatch = 1, true
					} else {
						dims[k] = 0
					}
				}
			}
			v, err = ort.NewTensor(dims, []float32{})
		default:
			return nil, 0, fmt.Errorf("ortrun: %s has an input %q this runner does not know how to feed", model, in.Name)
		}
		if err != nil {
			return nil, 0, fmt.Errorf("ortrun: input %s: %w", in.Name, err)
		}
		names, values = append(names, in.Name), append(values, v)
	}
	hasLogits := false
	for _, o := range outs {
		hasLogits = hasLogits || o.Name == "logits"
	}
	if !hasLogits {
		return nil, 0, fmt.Errorf("ortrun: %s has no output named logits", model)
	}
	opts, err := ort.NewSessionOptions()
	if err != nil {
		return nil, 0, err
	}
	defer opts.Destroy()
	sess, err := ort.NewDynamicAdvancedSession(model, names, []string{"logits"}, opts)
	if err != nil {
		return nil, 0, fmt.Errorf("ONNX Runtime cannot load %s: %w", model, err)
	}
	defer sess.Destroy()
	out := []ort.Value{nil}
	if err := sess.Run(values, out); err != nil {
		return nil, 0, fmt.Errorf("ortrun: run %s: %w", model, err)
	}
	defer out[0].Destroy()
	t, ok := out[0].(*ort.Tensor[float32])
	if !ok {
		return nil, 0, fmt.Errorf("ortrun: %s: logits are not float32", model)
	}
	shape := t.GetShape()
	if len(shape) != 3 || shape[0] != 1 || shape[1] != n {
		return nil, 0, fmt.Errorf("ortrun: %s: logits of shape %v, want [1, %d, vocab]", model, shape, n)
	}
	return append([]float32(nil), t.GetData()...), int(shape[2]), nil
}
