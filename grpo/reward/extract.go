package reward

import (
	"regexp"
	"strings"
)

// Answer extraction from model outputs. All functions work on arbitrary (adversarial) text in
// time linear in its length.

// FinalPart returns the part of a response after its reasoning: the text after the last
// </think> when there is one. A response that opens <think> and never closes it (cut off at the
// length limit) has no final part: it returns "". A response with no think tags is returned
// whole.
func FinalPart(response string) string {
	if i := strings.LastIndex(response, "</think>"); i >= 0 {
		return response[i+len("</think>"):]
	}
	if strings.Contains(response, "<think>") {
		return ""
	}
	return response
}

// AnswerTag returns the content of the last complete <answer>...</answer> in s, trimmed.
func AnswerTag(s string) (string, bool) {
	end := strings.LastIndex(s, "</answer>")
	if end < 0 {
		return "", false
	}
	start := strings.LastIndex(s[:end], "<answer>")
	if start < 0 {
		return "", false
	}
	return strings.TrimSpace(s[start+len("<answer>") : end]), true
}

// LastBoxed returns the content of the last \boxed{...} (or \fbox{...}) in s, with nested
// braces matched; escaped braces \{ and \} do not count as grouping. "\boxed 5" (no braces)
// gives "5". When the last box is not closed (a cut-off response), it reports no answer rather
// than falling back to an earlier box.
func LastBoxed(s string) (string, bool) {
	i := max(strings.LastIndex(s, `\boxed`), strings.LastIndex(s, `\fbox`))
	if i < 0 {
		return "", false
	}
	rest := s[i:]
	if strings.HasPrefix(rest, `\boxed`) {
		rest = rest[len(`\boxed`):]
	} else {
		rest = rest[len(`\fbox`):]
	}
	if strings.HasPrefix(rest, " ") {
		// \boxed 5: up to the next space, $ or end.
		rest = strings.TrimLeft(rest, " ")
		end := strings.IndexAny(rest, " $\n")
		if end < 0 {
			end = len(rest)
		}
		ans := strings.TrimSpace(rest[:end])
		return ans, ans != ""
	}
	if !strings.HasPrefix(rest, "{") {
		return "", false
	}
	depth := 0
	for j := 0; j < len(rest); j++ {
		switch rest[j] {
		case '\\':
			if j+1 < len(rest) && (rest[j+1] == '{' || rest[j+1] == '}') {
				j++
			}
		case '{':
			depth++
		case '}':
			depth--
			if depth == 0 {
				return strings.TrimSpace(rest[1:j]), true
			}
		}
	}
	return "", false
}

var answerIsRe = regexp.MustCompile(`(?i)(?:final answer|the answer)\s*(?:is|:)\s*:?\s*`)

// AnswerIsPhrase returns what follows the last "the answer is" / "final answer:" phrase, up to
// the end of its line, without surrounding $ signs and a final period.
func AnswerIsPhrase(s string) (string, bool) {
	locs := answerIsRe.FindAllStringIndex(s, -1)
	if len(locs) == 0 {
		return "", false
	}
	rest := s[locs[len(locs)-1][1]:]
	if nl := strings.IndexByte(rest, '\n'); nl >= 0 {
		rest = rest[:nl]
	}
	rest = strings.TrimSpace(rest)
	rest = strings.TrimSuffix(rest, ".")
	rest = strings.TrimSpace(rest)
	if strings.HasPrefix(rest, "$") && strings.HasSuffix(rest, "$") && len(rest) >= 2 {
		rest = strings.Trim(rest, "$")
	}
	rest = strings.TrimSpace(rest)
	if b, ok := LastBoxed(rest); ok {
		rest = b
	}
	return rest, rest != ""
}

// CodeBlock returns the last fenced code block of s (```python ... ``` or ``` ... ```); an
// unclosed final fence counts as no block.
func CodeBlock(s string) (string, bool) {
	var last string
	found := false
	for {
		i := strings.Index(s, "```")
		if i < 0 {
			return last, found
		}
		body := s[i+3:]
		// Skip the info string (language) up to the end of the line.
		nl := strings.IndexByte(body, '\n')
		if nl < 0 {
			return last, found
		}
		body = body[nl+1:]
		j := strings.Index(body, "```")
		if j < 0 {
			return last, found
		}
		last, found = body[:j], true
		s = body[j+3:]
	}
}
