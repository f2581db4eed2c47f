package reward

import (
	"context"
	"strings"
)

// Format checks the shape of a reasoning response: "<think>...</think>" followed by a final part
// holding "<answer>...</answer>" (nothing but spaces after it) or a complete \boxed{...}. Score
// 1 when the shape is right, else 0 with the reason. Combine it with a correctness reward
// through Sum.
type Format struct {
	// ThinkPrefilled is for chat templates that put "<think>" into the prompt: the response then
	// starts inside the thinking and must not open <think> again.
	ThinkPrefilled bool
	// NoThink drops the requirement of a <think> block (answer shape only).
	NoThink bool
}

// Score implements Reward.
func (f Format) Score(_ context.Context, response, _ string, _ map[string]any) (Result, error) {
	if reason := f.check(response); reason != "" {
		return Result{Reason: reason}, nil
	}
	return Result{Score: 1}, nil
}

func (f Format) check(response string) string {
	final := response
	if !f.NoThink {
		opens, closes := strings.Count(response, "<think>"), strings.Count(response, "</think>")
		body := strings.TrimSpace(response)
		if f.ThinkPrefilled {
			if opens != 0 {
				return "<think> repeated after a prefilled <think>"
			}
		} else {
			if opens != 1 {
				return "want exactly one <think>"
			}
			if !strings.HasPrefix(body, "<think>") {
				return "response does not start with <think>"
			}
		}
		if closes != 1 {
			return "want exactly one </think>"
		}
		i := strings.Index(response, "</think>")
		if strings.TrimSpace(response[:i]) == "<think>" || strings.TrimSpace(response[:i]) == "" {
			return "empty thinking"
		}
		final = response[i+len("</think>"):]
	}
	if strings.Contains(final, "<answer>") || strings.Contains(final, "</answer>") {
		if strings.Count(final, "<answer>") != 1 || strings.Count(final, "</answer>") != 1 {
			return "want exactly one <answer>...</answer>"
		}
		ans, ok := AnswerTag(final)
		if !ok {
			return "</answer> before <answer>"
		}
		if ans == "" {
			return "empty <answer>"
		}
		if strings.TrimSpace(final[strings.Index(final, "</answer>")+len("</answer>"):]) != "" {
			return "text after </answer>"
		}
		return ""
	}
	if _, ok := LastBoxed(final); ok {
		return ""
	}
	return "no <answer>...</answer> or \\boxed{} after the thinking"
}
