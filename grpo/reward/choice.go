package reward

import (
	"context"
	"fmt"
	"regexp"
	"strings"
)

// Choice scores multiple-choice answers (ProRL's STEM kind, GPQA style): 1 when the chosen
// option letter equals the ground truth's, else 0. The choice is read from the final part of
// the response: the last \boxed{...}, else the last <answer>...</answer>, else the last
// "answer is (X)" phrase; it may be written "C", "(C)", "C)" or "C. text". Registered as
// "stem" and "choice" by NewDefault.
type Choice struct{}

var choiceRe = regexp.MustCompile(`^\(?\s*([A-Za-z])\s*(?:\)|\.|:|$|\s)`)

// optionLetter reads an option letter from an extracted answer, upper-cased.
func optionLetter(s string) (string, bool) {
	s = strings.TrimSpace(s)
	s = strings.TrimPrefix(s, `\text{`)
	s = strings.TrimSuffix(s, "}")
	m := choiceRe.FindStringSubmatch(s)
	if m == nil {
		return "", false
	}
	return strings.ToUpper(m[1]), true
}

// Score implements Reward.
func (Choice) Score(_ context.Context, response, groundTruth string, _ map[string]any) (Result, error) {
	want, ok := optionLetter(groundTruth)
	if !ok {
		return Result{}, fmt.Errorf("choice: ground truth %q is not an option letter", groundTruth)
	}
	final := FinalPart(response)
	ans, ok := LastBoxed(final)
	if !ok {
		ans, ok = AnswerTag(final)
	}
	if !ok {
		ans, ok = AnswerIsPhrase(final)
	}
	if !ok {
		return Result{Reason: "no final answer"}, nil
	}
	got, ok := optionLetter(ans)
	if !ok {
		return Result{Answer: ans, Reason: "answer is not an option letter"}, nil
	}
	if got != want {
		return Result{Answer: got, Reason: "wrong option"}, nil
	}
	return Result{Score: 1, Answer: got}, nil
}
