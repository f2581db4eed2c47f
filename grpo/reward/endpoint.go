package reward

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"time"
)

// EndpointConfig says where a reward server is.
type EndpointConfig struct {
	// URL is where batches are POSTed (http or https).
	URL string
	// Timeout bounds one batch, from sending the request to reading the whole answer; 0 means
	// 60 s.
	Timeout time.Duration
	// Client sends the requests; nil means http.DefaultClient.
	Client *http.Client
}

// maxAnswerBytes bounds a reward server's answer.
const maxAnswerBytes = 64 << 20

// Endpoint is a reward server: each batch is POSTed to its URL as the JSON {"batch": [...]} and
// answered by the JSON {"results": [...]} with a 2xx status, as a Program's lines are (see the
// package documentation). It is safe for concurrent use.
type Endpoint struct {
	cfg EndpointConfig
}

// NewEndpoint checks the configuration of a reward server client; it does not contact the
// server.
func NewEndpoint(cfg EndpointConfig) (*Endpoint, error) {
	u, err := url.Parse(cfg.URL)
	if err != nil {
		return nil, fmt.Errorf("reward server: URL %q: %w", cfg.URL, err)
	}
	if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("reward server: URL %q: want http://host:port/path or https://...", cfg.URL)
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 60 * time.Second
	}
	if cfg.Client == nil {
		cfg.Client = http.DefaultClient
	}
	return &Endpoint{cfg: cfg}, nil
}

// Score implements Reward with a batch of one, whose data_source and prompt are empty
// (Registry.Score fills in the data_source).
func (e *Endpoint) Score(ctx context.Context, response, groundTruth string, meta map[string]any) (Result, error) {
	res, err := e.ScoreBatch(ctx, []Request{{Response: response, GroundTruth: groundTruth, Meta: meta}})
	if err != nil {
		return Result{}, err
	}
	return res[0], nil
}

// ScoreBatch implements BatchReward: one POST per batch. An error names the row at fault (a
// *RowError) or, when the whole answer is wrong or missing, the batch.
func (e *Endpoint) ScoreBatch(ctx context.Context, reqs []Request) ([]Result, error) {
	if len(reqs) == 0 {
		return nil, nil
	}
	res, err := e.post(ctx, reqs)
	if err != nil {
		var re *RowError
		if errors.As(err, &re) {
			return nil, fmt.Errorf("reward server %s: %w", e.cfg.URL, err)
		}
		return nil, fmt.Errorf("reward server %s: %s: %w", e.cfg.URL, describeBatch(reqs), err)
	}
	return res, nil
}

func (e *Endpoint) post(ctx context.Context, reqs []Request) ([]Result, error) {
	body, err := encodeBatch(reqs)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, e.cfg.Timeout)
	defer cancel()
	hreq, err := http.NewRequestWithContext(ctx, http.MethodPost, e.cfg.URL, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	hreq.Header.Set("Content-Type", "application/json")
	resp, err := e.cfg.Client.Do(hreq)
	if err != nil {
		return nil, e.explain(ctx, err)
	}
	defer resp.Body.Close()
	answer, err := io.ReadAll(io.LimitReader(resp.Body, maxAnswerBytes+1))
	if err != nil {
		return nil, e.explain(ctx, fmt.Errorf("reading the answer: %w", err))
	}
	if resp.StatusCode/100 != 2 {
		return nil, fmt.Errorf("HTTP status %s; the body begins %s", resp.Status, clip(answer, 300))
	}
	if len(answer) > maxAnswerBytes {
		return nil, fmt.Errorf("answer longer than %d bytes", maxAnswerBytes)
	}
	return decodeAnswer(answer, reqs)
}

// explain says that a failed request ran out of time, when it did.
func (e *Endpoint) explain(ctx context.Context, err error) error {
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return fmt.Errorf("no answer within %v (the timeout or the caller's deadline): %w", e.cfg.Timeout, err)
	}
	return err
}
