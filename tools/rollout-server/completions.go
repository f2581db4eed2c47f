package main

import (
	"context"
	"fmt"
	"net/http"

	"github.com/prolong-rl/prolong/engine"
)

// completions serves POST /v1/completions.
func (s *server) completions(w http.ResponseWriter, r *http.Request) {
	s.serveGeneration(w, r, s.parseCompletions)
}

// parseCompletions makes a generation request of a completions body: its prompts (text,
// token ids, or a list of either) and, with echo and logprobs, the prompts' own log-probs.
func (s *server) parseCompletions(body []byte) (*genRequest, *apiError) {
	pc, e := parseCompletionRequest(body, s.lim, s.cfg.VocabSize, s.tok != nil)
	if e == nil {
		pc.smp.adapter, e = s.checkModel(pc.req.Model)
	}
	if e != nil {
		return nil, e
	}
	var prompts []prompt
	for i, t := range pc.texts {
		label := "prompt"
		if pc.req.Prompt[0] == '[' {
			label = fmt.Sprintf("prompt[%d]", i)
		}
		ids, e := s.encodeText(label, t)
		if e != nil {
			return nil, e
		}
		prompts = append(prompts, prompt{ids: ids, text: t})
	}
	for _, ids := range pc.ids {
		prompts = append(prompts, prompt{ids: ids, text: s.decode(ids)})
	}
	a := &completionAnswer{s: s, req: &pc.req, prompts: prompts, n: pc.smp.n, withLP: pc.req.Logprobs != nil}
	if a.withLP {
		a.k = *pc.req.Logprobs
	}
	smp := pc.smp
	smp.topLogprobs = a.k
	g := &genRequest{prompts: prompts, smp: smp, stream: pc.req.Stream, idPrefix: "cmpl",
		answer: func(g *generation, id string, created int64) genAnswer {
			a.g, a.id, a.created = g, id, created
			return a
		}}
	if pc.req.Echo && a.withLP {
		g.prepare = func(ctx context.Context) (e *apiError) {
			a.promptLPs, a.promptTops, e = s.promptLogprobs(ctx, s.schedOf(smp.adapter), prompts, a.k)
			return e
		}
	}
	return g, nil
}

// completionAnswer writes a completions answer.
type completionAnswer struct {
	s       *server
	req     *completionRequest
	prompts []prompt
	n       int  // samples per prompt
	withLP  bool // logprobs asked for
	k       int  // alternatives per position (vLLM's logprobs)
	// promptLPs (echo with logprobs): each prompt's log-probs from its second token on, and
	// promptTops its k most likely tokens there.
	promptLPs  [][]float32
	promptTops [][][]alt

	g       *generation
	id      string
	created int64
}

// response is a completions response of these choices.
func (a *completionAnswer) response(choices []completionChoice) completionResponse {
	return completionResponse{ID: a.id, Object: "text_completion", Created: a.created, Model: a.g.name, WeightVersion: a.g.version, Choices: choices}
}

// logprobs renders tokens ids with their log-probs lps (nil: null) and, with k > 0, each
// position's k most likely tokens tops, starting at text offset offset.
func (a *completionAnswer) logprobs(ids []int32, lps []*float32, tops [][]alt, offset int) *completionLogprobs {
	out := &completionLogprobs{Tokens: []string{}, TokenLogprobs: []*float32{}, TopLogprobs: []topLogprob{}, TextOffset: []int{}}
	for i, tid := range ids {
		tok := a.s.tokenString(tid)
		out.Tokens = append(out.Tokens, tok)
		out.TokenLogprobs = append(out.TokenLogprobs, lps[i])
		out.TextOffset = append(out.TextOffset, offset)
		offset += len(tok)
		if lps[i] == nil {
			out.TopLogprobs = append(out.TopLogprobs, nil)
			continue
		}
		top := topLogprob{{tok, *lps[i]}} // the chosen token first, then the k most likely
		if a.k > 0 {
			for _, alt := range tops[i] {
				if alt.id != tid {
					top = append(top, tokenLogprob{a.s.tokenString(alt.id), finiteLogprob(alt.lp)})
				}
			}
		}
		out.TopLogprobs = append(out.TopLogprobs, top)
	}
	return out
}

// ptrs points at each of lps.
func ptrs(lps []float32) []*float32 {
	out := make([]*float32, len(lps))
	for i := range lps {
		out[i] = &lps[i]
	}
	return out
}

// echoLogprobs is prompt i's log-probs: its first token has none (null), as vLLM and OpenAI
// answer.
func (a *completionAnswer) echoLogprobs(i int) *completionLogprobs {
	var tops [][]alt
	if a.k > 0 {
		tops = append([][]alt{nil}, a.promptTops[i]...)
	}
	return a.logprobs(a.prompts[i].ids, append([]*float32{nil}, ptrs(a.promptLPs[i])...), tops, 0)
}

func (a *completionAnswer) streamHead() []any {
	if !a.req.Echo {
		return nil
	}
	var out []any
	for i, p := range a.prompts {
		for j := 0; j < a.n; j++ {
			var lp *completionLogprobs
			if a.withLP {
				lp = a.echoLogprobs(i)
				lp.TextOffset = nil
			}
			out = append(out, a.response([]completionChoice{{Index: i*a.n + j, Text: p.text, PromptTokenIDs: p.ids, TokenIDs: []int32{}, Logprobs: lp}}))
		}
	}
	return out
}

func (a *completionAnswer) chunk(c *choiceState, delta string, tok engine.Event) any {
	var lp *completionLogprobs
	if a.withLP {
		lp = a.logprobs([]int32{tok.Token}, []*float32{&tok.LogProb}, [][]alt{alts(tok)}, c.sent-len(delta))
	}
	return a.response([]completionChoice{{Index: c.index, Text: delta, FinishReason: strp(c.finish), TokenIDs: []int32{tok.Token}, Logprobs: lp}})
}

func (a *completionAnswer) streamTail(choices []*choiceState) any {
	if a.req.StreamOptions == nil || !a.req.StreamOptions.IncludeUsage {
		return nil
	}
	resp := a.response([]completionChoice{})
	resp.Usage = usageOf(a.prompts, choices)
	return resp
}

func (a *completionAnswer) whole(choices []*choiceState) any {
	resp := a.response(nil)
	for _, c := range choices {
		p := a.prompts[c.promptID]
		text := c.text
		ch := completionChoice{Index: c.index, FinishReason: strp(c.finish), TokenIDs: c.ids, PromptTokenIDs: p.ids}
		if c.ids == nil {
			ch.TokenIDs = []int32{}
		}
		if a.withLP {
			ch.Logprobs = a.logprobs(c.ids, ptrs(c.lps), c.tops, 0)
		}
		if a.req.Echo {
			text = p.text + text
			if ch.Logprobs != nil {
				pre := a.echoLogprobs(c.promptID)
				pre.Tokens = append(pre.Tokens, ch.Logprobs.Tokens...)
				pre.TokenLogprobs = append(pre.TokenLogprobs, ch.Logprobs.TokenLogprobs...)
				pre.TopLogprobs = append(pre.TopLogprobs, ch.Logprobs.TopLogprobs...)
				pre.TextOffset = nil
				ch.Logprobs = pre
			}
		}
		ch.Text = text
		resp.Choices = append(resp.Choices, ch)
	}
	resp.Usage = usageOf(a.prompts, choices)
	return resp
}
