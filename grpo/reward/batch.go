package reward

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
)

// Request is one response to score in a batch, as a reward program sees it (the JSON names are
// those of a verl row).
type Request struct {
	// Kind is the task kind (data_source) that routes the request.
	Kind        string         `json:"data_source"`
	Prompt      string         `json:"prompt"`
	Response    string         `json:"response"`
	GroundTruth string         `json:"ground_truth"`
	Meta        map[string]any `json:"extra_info"`
}

// BatchReward scores many responses in one call: one Result per request, in order. Program and
// Endpoint implement it; Registry.ScoreBatch calls it once per kind.
type BatchReward interface {
	ScoreBatch(ctx context.Context, reqs []Request) ([]Result, error)
}

// RowError is an error about one row of a batch: its index in the batch and its data_source.
type RowError struct {
	Row        int
	DataSource string
	Err        error
}

// Error says which row and what is wrong.
func (e *RowError) Error() string {
	return fmt.Sprintf("row %d (data_source %q): %v", e.Row, e.DataSource, e.Err)
}

// Unwrap returns the cause.
func (e *RowError) Unwrap() error { return e.Err }

// ScoreBatch scores a batch of requests, each routed by its Kind: the requests of a kind whose
// Reward is a BatchReward go to it in one call (in their order in reqs), the others are scored
// one by one. Every score is checked to lie in [0, 1]. An error names the request (its index
// in reqs) and the kind.
func (r *Registry) ScoreBatch(ctx context.Context, reqs []Request) ([]Result, error) {
	type group struct {
		rw  Reward
		idx []int // indices in reqs
	}
	groups := map[string]*group{}
	var order []string // matched kinds in order of first appearance
	for i, q := range reqs {
		rw, matched, ok := r.Lookup(q.Kind)
		if !ok {
			return nil, fmt.Errorf("reward: request %d: no reward for kind %q (registered: %s)", i, q.Kind, strings.Join(r.Kinds(), ", "))
		}
		if groups[matched] == nil {
			groups[matched] = &group{rw: rw}
			order = append(order, matched)
		}
		groups[matched].idx = append(groups[matched].idx, i)
	}
	out := make([]Result, len(reqs))
	for _, kind := range order {
		g := groups[kind]
		if err := scoreGroup(ctx, kind, g.rw, reqs, g.idx, out); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// scoreGroup scores the requests reqs[idx] of one kind into out[idx].
func scoreGroup(ctx context.Context, kind string, rw Reward, reqs []Request, idx []int, out []Result) error {
	if br, ok := rw.(BatchReward); ok {
		sub := make([]Request, len(idx))
		for j, i := range idx {
			sub[j] = reqs[i]
		}
		res, err := br.ScoreBatch(ctx, sub)
		if err != nil {
			var re *RowError
			if errors.As(err, &re) && re.Row >= 0 && re.Row < len(idx) {
				return fmt.Errorf("reward: kind %q, request %d: %w", kind, idx[re.Row], err)
			}
			return fmt.Errorf("reward: kind %q (%d requests): %w", kind, len(idx), err)
		}
		if len(res) != len(idx) {
			return fmt.Errorf("reward: kind %q: %d results for %d requests", kind, len(res), len(idx))
		}
		for j, i := range idx {
			out[i] = res[j]
		}
	} else {
		for _, i := range idx {
			q := reqs[i]
			res, err := rw.Score(ctx, q.Response, q.GroundTruth, q.Meta)
			if err != nil {
				return fmt.Errorf("reward: kind %q, request %d: %w", kind, i, err)
			}
			out[i] = res
		}
	}
	for _, i := range idx {
		if s := out[i].Score; !(s >= 0 && s <= 1) {
			return fmt.Errorf("reward: kind %q, request %d: score %v, outside [0, 1]", kind, i, s)
		}
	}
	return nil
}

// The wire format shared by Program and Endpoint: one request is {"batch": [Request...]}, one
// answer {"results": [{"score": x, ...}...]}, the same count in the same order.

// encodeBatch renders reqs as one request line, ending in a newline; "<" and ">" of chat
// templates are kept as they are.
func encodeBatch(reqs []Request) ([]byte, error) {
	wire := make([]Request, len(reqs))
	for i, q := range reqs {
		wire[i] = q
		if wire[i].Meta == nil {
			wire[i].Meta = map[string]any{} // {} rather than null for the user's program
		}
	}
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(struct {
		Batch []Request `json:"batch"`
	}{wire}); err != nil {
		return nil, fmt.Errorf("encoding the batch: %w", err)
	}
	return b.Bytes(), nil
}

// errUnparsed marks an answer that is not the JSON object {"results": [...]} at all (after
// which a child process's output can no longer be trusted to be in step).
var errUnparsed = errors.New("malformed answer")

// decodeAnswer parses the answer to reqs: an error names the row at fault, or the batch when
// the answer as a whole is wrong.
func decodeAnswer(answer []byte, reqs []Request) ([]Result, error) {
	var ans struct {
		Results *[]json.RawMessage `json:"results"`
	}
	if err := json.Unmarshal(answer, &ans); err != nil {
		return nil, fmt.Errorf("%w: not a JSON object (%v): %s", errUnparsed, err, clip(answer, 200))
	}
	if ans.Results == nil {
		return nil, fmt.Errorf("%w: no \"results\" list: %s", errUnparsed, clip(answer, 200))
	}
	if n := len(*ans.Results); n != len(reqs) {
		return nil, fmt.Errorf("%d results for a batch of %d rows", n, len(reqs))
	}
	out := make([]Result, len(reqs))
	for i, raw := range *ans.Results {
		res, err := decodeResult(raw)
		if err != nil {
			return nil, &RowError{Row: i, DataSource: reqs[i].Kind, Err: err}
		}
		out[i] = res
	}
	return out, nil
}

// decodeResult parses one row's result: {"score": number in [0, 1], ...}; the other fields go
// to Details.
func decodeResult(raw json.RawMessage) (Result, error) {
	var fields map[string]any
	if err := json.Unmarshal(raw, &fields); err != nil || fields == nil {
		return Result{}, fmt.Errorf("result is not a JSON object: %s", clip(raw, 100))
	}
	v, ok := fields["score"]
	if !ok {
		return Result{}, fmt.Errorf("result has no \"score\": %s", clip(raw, 100))
	}
	s, ok := v.(float64)
	if !ok {
		b, _ := json.Marshal(v)
		return Result{}, fmt.Errorf("score %s is not a number", b)
	}
	if !(s >= 0 && s <= 1) {
		return Result{}, fmt.Errorf("score %v is outside [0, 1]", s)
	}
	delete(fields, "score")
	if len(fields) == 0 {
		fields = nil
	}
	return Result{Score: s, Details: fields}, nil
}

// describeBatch names a batch for an error: its size and its data_sources.
func describeBatch(reqs []Request) string {
	seen := map[string]bool{}
	var kinds []string
	for _, q := range reqs {
		if !seen[q.Kind] {
			seen[q.Kind] = true
			kinds = append(kinds, fmt.Sprintf("%q", q.Kind))
		}
	}
	sort.Strings(kinds)
	if len(kinds) > 5 {
		kinds = append(kinds[:5], "...")
	}
	return fmt.Sprintf("batch of %d rows (data_source %s)", len(reqs), strings.Join(kinds, ", "))
}

// clip quotes the first n bytes of b.
func clip(b []byte, n int) string {
	if len(b) > n {
		return fmt.Sprintf("%q...", b[:n])
	}
	return fmt.Sprintf("%q", b)
}
