package main

import (
	"errors"
	"fmt"
	"net/http"

	"github.com/prolong-rl/prolong/engine"
)

// chatProblem says why chat messages cannot be rendered: no tokenizer.json, no chat_template,
// or one the Jinja engine cannot compile. Nil when they can.
func (s *server) chatProblem() error {
	if s.tok == nil {
		return errors.New("the model directory has no tokenizer.json")
	}
	return s.tok.ChatTemplateProblem()
}

// chat serves POST /v1/chat/completions.
func (s *server) chat(w http.ResponseWriter, r *http.Request) {
	s.serveGeneration(w, r, s.parseChat)
}

// parseChat makes a generation request of a chat body: its messages rendered by the model's
// chat template, with the assistant's turn opened.
func (s *server) parseChat(body []byte) (*genRequest, *apiError) {
	req, smp, msgs, e := parseChatRequest(body, s.lim, s.cfg.VocabSize, s.chatProblem())
	if e == nil {
		smp.adapter, e = s.checkModel(req.Model)
	}
	if e != nil {
		return nil, e
	}
	for i, m := range msgs {
		if err := s.tok.Check(m.Content); err != nil {
			param := fmt.Sprintf("messages[%d].content", i)
			return nil, badRequest(param, "%s: %v", param, err)
		}
	}
	text, err := s.tok.ApplyChatTemplate(msgs, true)
	if err != nil {
		return nil, badRequest("messages", "%v", err)
	}
	if err := s.tok.Check(text); err != nil {
		return nil, badRequest("messages", "the chat template's rendering: %v", err)
	}
	p := prompt{ids: s.tok.EncodePlain(text), text: text}
	a := &chatAnswer{s: s, p: p, n: smp.n, withLP: req.Logprobs}
	if req.Logprobs && req.TopLogprobs != nil {
		a.k = *req.TopLogprobs
	}
	smp.topLogprobs = a.k
	return &genRequest{prompts: []prompt{p}, smp: smp, stream: req.Stream, idPrefix: "chatcmpl",
		answer: func(g *generation, id string, created int64) genAnswer {
			a.g, a.id, a.created = g, id, created
			return a
		}}, nil
}

// chatAnswer writes a chat completions answer.
type chatAnswer struct {
	s      *server
	p      prompt
	n      int  // samples
	withLP bool // logprobs asked for
	k      int  // top_logprobs

	g       *generation
	id      string
	created int64
}

// byteList is a token's UTF-8 bytes, as OpenAI lists them.
func byteList(t string) []int {
	bs := make([]int, len(t))
	for i := range t {
		bs[i] = int(t[i])
	}
	return bs
}

// logprobs renders tokens ids with their log-probs lps and, with k > 0, each position's k
// most likely tokens tops (the sampled token's own log-prob where it is one of them); nil
// without logprobs.
func (a *chatAnswer) logprobs(ids []int32, lps []float32, tops [][]alt) *chatLogprobs {
	if !a.withLP {
		return nil
	}
	out := &chatLogprobs{Content: []chatLogprob{}}
	for i, tid := range ids {
		t := a.s.tokenString(tid)
		e := chatLogprob{Token: t, Logprob: lps[i], Bytes: byteList(t), TopLogprobs: []chatTopAlt{}}
		if a.k > 0 {
			for _, alt := range tops[i] {
				lp := finiteLogprob(alt.lp)
				if alt.id == tid {
					lp = lps[i]
				}
				at := a.s.tokenString(alt.id)
				e.TopLogprobs = append(e.TopLogprobs, chatTopAlt{Token: at, Logprob: lp, Bytes: byteList(at)})
			}
		}
		out.Content = append(out.Content, e)
	}
	return out
}

// chunkOf is a stream's message of these choices.
func (a *chatAnswer) chunkOf(choices []chatChoice) chatResponse {
	return chatResponse{ID: a.id, Object: "chat.completion.chunk", Created: a.created, Model: a.g.name, WeightVersion: a.g.version, Choices: choices}
}

func (a *chatAnswer) streamHead() []any {
	out := make([]any, 0, a.n)
	for j := 0; j < a.n; j++ {
		out = append(out, a.chunkOf([]chatChoice{{Index: j, Delta: &chatOut{Role: "assistant"}, TokenIDs: []int32{}}}))
	}
	return out
}

func (a *chatAnswer) chunk(c *choiceState, delta string, tok engine.Event) any {
	return a.chunkOf([]chatChoice{{Index: c.index, Delta: &chatOut{Content: delta}, FinishReason: strp(c.finish), TokenIDs: []int32{tok.Token},
		Logprobs: a.logprobs([]int32{tok.Token}, []float32{tok.LogProb}, [][]alt{alts(tok)})}})
}

func (a *chatAnswer) streamTail([]*choiceState) any { return nil }

func (a *chatAnswer) whole(choices []*choiceState) any {
	resp := chatResponse{ID: a.id, Object: "chat.completion", Created: a.created, Model: a.g.name, WeightVersion: a.g.version, Usage: usageOf([]prompt{a.p}, choices)}
	for _, c := range choices {
		ids := c.ids
		if ids == nil {
			ids = []int32{}
		}
		resp.Choices = append(resp.Choices, chatChoice{Index: c.index, Message: &chatOut{Role: "assistant", Content: c.text},
			FinishReason: strp(c.finish), PromptTokenIDs: a.p.ids, TokenIDs: ids, Logprobs: a.logprobs(c.ids, c.lps, c.tops)})
	}
	return resp
}
