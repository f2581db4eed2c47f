package main

import (
	"context"
	"net/http"
	"time"

	"github.com/prolong-rl/prolong/engine"
)

// genRequest is what an endpoint (completions, chat) makes of a request body: the prompts, how
// to sample them, and how to answer. serveGeneration runs the steps the endpoints share.
type genRequest struct {
	prompts []prompt
	// smp is how to sample, topLogprobs included (the alternatives per token the answer shows).
	smp    sampling
	stream bool
	// idPrefix begins the response's id ("cmpl", "chatcmpl").
	idPrefix string
	// prepare, when set, runs while the weights are held, before the prompts are submitted
	// (completions' echo scores the prompts), so that both come from one weight version.
	prepare func(ctx context.Context) *apiError
	// answer makes the writer of the answer once the prompts are submitted.
	answer func(g *generation, id string, created int64) genAnswer
}

// genAnswer writes one request's answer in its endpoint's format.
type genAnswer interface {
	// streamHead is what a stream sends before the first token (echoed prompts, roles).
	streamHead() []any
	// chunk is a stream's message for one token of choice c (delta is its new text).
	chunk(c *choiceState, delta string, tok engine.Event) any
	// streamTail is a stream's last message before [DONE] (usage), or nil.
	streamTail(choices []*choiceState) any
	// whole is the answer to a request that is not streamed.
	whole(choices []*choiceState) any
}

// serveGeneration answers a generation request: it reads the body, lets parse (the endpoint)
// make the request of it, waits for a slot, submits the prompts on one weight version, and
// streams the tokens or answers once with all of them.
func (s *server) serveGeneration(w http.ResponseWriter, r *http.Request, parse func(body []byte) (*genRequest, *apiError)) {
	body, e := s.readBody(w, r, s.maxBody)
	if e != nil {
		writeError(w, e)
		return
	}
	req, e := parse(body)
	if e != nil {
		writeError(w, e)
		return
	}
	free, e := s.acquire()
	if e != nil {
		writeError(w, e)
		return
	}
	defer free()
	ctx := r.Context()
	release := s.hold()
	defer release()
	if req.prepare != nil {
		if e := req.prepare(ctx); e != nil {
			writeError(w, e)
			return
		}
	}
	g, e := s.submit(ctx, req.prompts, req.smp)
	if e != nil {
		writeError(w, e)
		return
	}
	release() // the top log-probs come with the tokens: nothing more is computed on these weights
	ans := req.answer(g, newID(req.idPrefix), time.Now().Unix())
	if req.stream {
		ev := newSSE(w)
		for _, m := range ans.streamHead() {
			ev.send(m)
		}
		// Each chunk carries its token's log-probs, as vLLM streams them.
		choices, e := s.run(g, func(c *choiceState, delta string, tok engine.Event) error {
			return ev.send(ans.chunk(c, delta, tok))
		})
		if e != nil {
			ev.send(map[string]any{"error": e})
		} else if tail := ans.streamTail(choices); tail != nil {
			ev.send(tail)
		}
		ev.done()
		return
	}
	choices, e := s.run(g, func(*choiceState, string, engine.Event) error { return nil })
	if e != nil {
		writeError(w, e)
		return
	}
	free() // the generation is done: the slot does not wait for the client to take the answer
	writeJSON(w, 200, ans.whole(choices))
}
