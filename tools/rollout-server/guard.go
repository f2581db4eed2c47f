package main

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"time"
)

// guard bounds what a client can hold: the request body must arrive within --body-timeout
// (POST /v1/weights: paced, see pacedBody), every write of the response must reach the client
// within --write-timeout, and a connection beyond --max-connections gets a health check and
// nothing else.
func (s *server) guard(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if onReserve(r.Context()) && !healthCheck(r) {
			w.Header().Set("Connection", "close")
			writeError(w, &apiError{Status: 503, Type: "server_error", Code: "too_many_connections",
				Message: "the server holds --max-connections connections; beyond them it answers GET /health and GET /metrics only"})
			return
		}
		rc := http.NewResponseController(w)
		if r.Body != nil && r.Body != http.NoBody {
			rc.SetReadDeadline(time.Now().Add(s.bodyTimeout))
			r.Body = &eofBody{ReadCloser: r.Body, rc: rc}
		}
		h.ServeHTTP(&deadlineWriter{ResponseWriter: w, rc: rc, timeout: s.writeTimeout}, r)
	})
}

func healthCheck(r *http.Request) bool {
	return r.Method == "GET" && (r.URL.Path == "/health" || r.URL.Path == "/metrics")
}

// eofBody lifts the body's read deadline once the whole body has arrived: after it, the HTTP
// server waits for the client's next bytes to notice a client that leaves, and a generation
// may run for longer than --body-timeout.
type eofBody struct {
	io.ReadCloser
	rc *http.ResponseController
}

func (b *eofBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if err == io.EOF {
		b.rc.SetReadDeadline(time.Time{})
	}
	return n, err
}

// deadlineWriter gives every write of a response --write-timeout to reach the client: a
// client that stops reading loses its connection (and its request, cancelled) instead of
// holding a serving slot.
type deadlineWriter struct {
	http.ResponseWriter
	rc      *http.ResponseController
	timeout time.Duration
}

func (w *deadlineWriter) Write(b []byte) (int, error) {
	w.rc.SetWriteDeadline(time.Now().Add(w.timeout))
	return w.ResponseWriter.Write(b)
}

// Flush sends what is buffered, within the deadline of the last Write.
func (w *deadlineWriter) Flush() { w.rc.Flush() }

// Unwrap is for http.ResponseController.
func (w *deadlineWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// pacedBody is a body that may take longer than --body-timeout, but must keep coming: each
// read must end by start + base + (bytes read so far) / rate.
type pacedBody struct {
	r     io.Reader
	rc    *http.ResponseController
	start time.Time
	base  time.Duration
	rate  float64 // bytes per second
	n     int64
}

func (p *pacedBody) Read(b []byte) (int, error) {
	p.rc.SetReadDeadline(p.start.Add(p.base + time.Duration(float64(p.n)/p.rate*float64(time.Second))))
	n, err := p.r.Read(b)
	p.n += int64(n)
	return n, err
}

// bodyError is the answer to a failed read of a request body; a body that did not arrive in
// time (what names the limit) is a 408.
func bodyError(w http.ResponseWriter, err error, what string) *apiError {
	var tooBig *http.MaxBytesError
	switch {
	case errors.As(err, &tooBig):
		return &apiError{Status: 413, Type: "invalid_request_error", Message: fmt.Sprintf("request body over %d bytes", tooBig.Limit)}
	case errors.Is(err, os.ErrDeadlineExceeded):
		w.Header().Set("Connection", "close")
		return &apiError{Status: 408, Type: "invalid_request_error", Code: "request_timeout", Message: "the request body did not arrive within " + what}
	}
	return badRequest("", "reading the body: %v", err)
}
