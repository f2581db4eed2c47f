package reward

import (
	"context"
	"encoding/json"
	"fmt"
	"regexp"
	"strings"
	"unicode"
)

// IFEval scores instruction following: the fraction of verifiable constraints the response
// (its final part, after any thinking) meets. The constraints come from meta["constraints"]
// or, when that is absent, from the ground truth as JSON: a list of objects with a "type" and
// its parameters, e.g.
//
//	[{"type": "word_count", "min": 50, "max": 100}, {"type": "no_commas"},
//	 {"type": "include_keywords", "keywords": ["graph"]}, {"type": "ends_with", "phrase": "Done."}]
//
// Types: word_count {min, max}, sentence_count {min, max}, paragraph_count {count} (blank-line
// separated), bullet_points {count} (lines starting "* " or "- "), include_keywords
// {keywords}, exclude_keywords {keywords}, keyword_frequency {keyword, min, max},
// no_commas, json_format, lowercase, uppercase, starts_with {phrase}, ends_with {phrase},
// title (a <<title>>), quotation (wrapped in double quotes), max_chars {max}.
// Keywords match case-insensitively as whole words. A malformed constraint is an error naming
// its index and type.
type IFEval struct{}

// Constraint is one verifiable instruction.
type Constraint struct {
	Type     string   `json:"type"`
	Min      *int     `json:"min,omitempty"`
	Max      *int     `json:"max,omitempty"`
	Count    *int     `json:"count,omitempty"`
	Keywords []string `json:"keywords,omitempty"`
	Keyword  string   `json:"keyword,omitempty"`
	Phrase   string   `json:"phrase,omitempty"`
}

// Score implements Reward.
func (IFEval) Score(_ context.Context, response, groundTruth string, meta map[string]any) (Result, error) {
	cons, err := constraintsFrom(groundTruth, meta)
	if err != nil {
		return Result{}, err
	}
	text := strings.TrimSpace(FinalPart(response))
	met := 0
	var failed []string
	for i, c := range cons {
		ok, err := c.check(text)
		if err != nil {
			return Result{}, fmt.Errorf("ifeval: constraint %d (%s): %w", i, c.Type, err)
		}
		if ok {
			met++
		} else {
			failed = append(failed, c.Type)
		}
	}
	res := Result{Score: float64(met) / float64(len(cons)), Details: map[string]any{"met": met, "total": len(cons)}}
	if len(failed) > 0 {
		res.Reason = "not met: " + strings.Join(failed, ", ")
	}
	return res, nil
}

func constraintsFrom(groundTruth string, meta map[string]any) ([]Constraint, error) {
	var raw []byte
	src := "ground truth"
	if v, ok := meta["constraints"]; ok {
		src = `meta["constraints"]`
		switch v := v.(type) {
		case string:
			raw = []byte(v)
		default:
			b, err := json.Marshal(v)
			if err != nil {
				return nil, fmt.Errorf("ifeval: %s: %w", src, err)
			}
			raw = b
		}
	} else {
		raw = []byte(groundTruth)
	}
	var cons []Constraint
	if err := json.Unmarshal(raw, &cons); err != nil {
		return nil, fmt.Errorf("ifeval: %s is not a JSON list of constraints: %w", src, err)
	}
	if len(cons) == 0 {
		return nil, fmt.Errorf("ifeval: %s has no constraints", src)
	}
	return cons, nil
}

var (
	sentenceEndRe = regexp.MustCompile(`[.!?]+(\s|$)`)
	titleRe       = regexp.MustCompile(`<<[^<>\n]+>>`)
)

func words(s string) []string {
	return strings.FieldsFunc(s, func(r rune) bool { return !unicode.IsLetter(r) && !unicode.IsDigit(r) && r != '\'' && r != '-' })
}

func inRange(n int, c Constraint) (bool, error) {
	if c.Min == nil && c.Max == nil {
		return false, fmt.Errorf("needs min and/or max")
	}
	if c.Min != nil && n < *c.Min {
		return false, nil
	}
	if c.Max != nil && n > *c.Max {
		return false, nil
	}
	return true, nil
}

// countWord counts the occurrences of a keyword (one or more words) as whole words,
// case-insensitively.
func countWord(text, kw string) int {
	k := words(strings.ToLower(kw))
	if len(k) == 0 {
		return 0
	}
	t := words(strings.ToLower(text))
	n := 0
	for i := 0; i+len(k) <= len(t); i++ {
		match := true
		for j := range k {
			if t[i+j] != k[j] {
				match = false
				break
			}
		}
		if match {
			n++
		}
	}
	return n
}

func (c Constraint) check(text string) (bool, error) {
	switch c.Type {
	case "word_count":
		return inRange(len(words(text)), c)
	case "sentence_count":
		return inRange(len(sentenceEndRe.FindAllStringIndex(text, -1)), c)
	case "max_chars":
		if c.Max == nil {
			return false, fmt.Errorf("needs max")
		}
		return len([]rune(text)) <= *c.Max, nil
	case "paragraph_count":
		if c.Count == nil {
			return false, fmt.Errorf("needs count")
		}
		n := 0
		for _, p := range regexp.MustCompile(`\n\s*\n`).Split(text, -1) {
			if strings.TrimSpace(p) != "" {
				n++
			}
		}
		return n == *c.Count, nil
	case "bullet_points":
		if c.Count == nil {
			return false, fmt.Errorf("needs count")
		}
		n := 0
		for _, line := range strings.Split(text, "\n") {
			l := strings.TrimSpace(line)
			if strings.HasPrefix(l, "* ") || strings.HasPrefix(l, "- ") {
				n++
			}
		}
		return n == *c.Count, nil
	case "include_keywords", "exclude_keywords":
		if len(c.Keywords) == 0 {
			return false, fmt.Errorf("needs keywords")
		}
		for _, kw := range c.Keywords {
			has := countWord(text, kw) > 0
			if has != (c.Type == "include_keywords") {
				return false, nil
			}
		}
		return true, nil
	case "keyword_frequency":
		if c.Keyword == "" {
			return false, fmt.Errorf("needs keyword")
		}
		return inRange(countWord(text, c.Keyword), c)
	case "no_commas":
		return !strings.ContainsAny(text, ",，"), nil
	case "json_format":
		t := strings.TrimSpace(text)
		if body, ok := CodeBlock(t); ok && strings.HasPrefix(t, "```") {
			t = strings.TrimSpace(body)
		}
		return json.Valid([]byte(t)) && (strings.HasPrefix(t, "{") || strings.HasPrefix(t, "[")), nil
	case "lowercase":
		return text != "" && strings.ToLower(text) == text, nil
	case "uppercase":
		return text != "" && strings.ToUpper(text) == text, nil
	case "starts_with", "ends_with":
		if c.Phrase == "" {
			return false, fmt.Errorf("needs phrase")
		}
		if c.Type == "starts_with" {
			return strings.HasPrefix(strings.ToLower(text), strings.ToLower(c.Phrase)), nil
		}
		return strings.HasSuffix(strings.ToLower(text), strings.ToLower(strings.TrimSpace(c.Phrase))), nil
	case "title":
		return titleRe.MatchString(text), nil
	case "quotation":
		return len(text) >= 2 && strings.HasPrefix(text, `"`) && strings.HasSuffix(text, `"`), nil
	}
	return false, fmt.Errorf("unknown constraint type %q", c.Type)
}
