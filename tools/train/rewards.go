package main

// The rewards of a --model run: the built-in verifiable rewards routed by data_source, or a
// reward program / server of the user's (--reward-cmd, --reward-url), and the table printed at
// the start that says which reward each data_source gets.

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"

	"github.com/prolong-rl/prolong/grpo"
	"github.com/prolong-rl/prolong/grpo/data"
	"github.com/prolong-rl/prolong/grpo/reward"
)

// rewardProgram starts --reward-cmd (or connects --reward-url) and routes to it the
// data_sources of --reward-for, or every data_source of rows; it returns what ends it (nil
// without a reward program).
func rewardProgram(o options, reg *reward.Registry, rows []data.Row) (func() error, error) {
	var rw reward.Reward
	closeFn := func() error { return nil }
	switch {
	case o.RewardCmd != "" && o.RewardURL != "":
		return nil, errors.New("--reward-cmd and --reward-url: give one")
	case o.RewardCmd != "":
		p, err := reward.NewProgram(reward.ProgramConfig{Command: o.RewardCmd, Timeout: o.RewardTimeout})
		if err != nil {
			return nil, fmt.Errorf("--reward-cmd: %w", err)
		}
		rw, closeFn = p, p.Close
	case o.RewardURL != "":
		e, err := reward.NewEndpoint(reward.EndpointConfig{URL: o.RewardURL, Timeout: o.RewardTimeout})
		if err != nil {
			return nil, fmt.Errorf("--reward-url: %w", err)
		}
		rw = e
	default:
		if len(o.RewardFor) > 0 {
			return nil, errors.New("--reward-for names the data_sources of --reward-cmd or --reward-url: give one of them")
		}
		return nil, nil
	}
	kinds := o.RewardFor
	if len(kinds) == 0 {
		for _, r := range rows {
			if !slices.Contains(kinds, r.DataSource) {
				kinds = append(kinds, r.DataSource)
			}
		}
	}
	for _, k := range kinds {
		if err := reg.Register(k, rw); err != nil {
			closeFn()
			return nil, fmt.Errorf("--reward-for: %w", err)
		}
	}
	return closeFn, nil
}

// batchReward scores a round's responses with reg in one call (reward programs get them as
// one batch).
func batchReward(reg *reward.Registry) grpo.BatchRewardFunc {
	return func(ctx context.Context, qs []grpo.RewardRequest) ([]float64, error) {
		reqs := make([]reward.Request, len(qs))
		for i, q := range qs {
			reqs[i] = reward.Request{Kind: q.Prompt.Kind, Prompt: q.Prompt.Text, Response: q.Response, GroundTruth: q.Prompt.GroundTruth, Meta: q.Prompt.Meta}
		}
		res, err := reg.ScoreBatch(ctx, reqs)
		if err != nil {
			return nil, err
		}
		scores := make([]float64, len(res))
		for i, r := range res {
			scores[i] = r.Score
		}
		return scores, nil
	}
}

// rewardName names the built-in reward rw and says in a few words what it reads in a response.
func rewardName(rw reward.Reward) (name, reads string) {
	switch r := rw.(type) {
	case *reward.Math:
		return reward.KindMath, `the final answer in \boxed{} (or after "the answer is"), compared as math`
	case reward.TaskReward:
		return reward.KindLogic + "/" + r.Family.Name(), "the <answer>...</answer> tag, checked against the puzzle"
	case reward.Logic:
		return reward.KindLogic, "the <answer>...</answer> tag, checked against extra_info's puzzle family"
	case *reward.Code:
		return reward.KindCode, "a Python code block, run against the tests in a sandbox"
	case reward.IFEval:
		return reward.KindIFEval, "the response, checked against the instruction's constraints"
	case reward.Format:
		return reward.KindFormat, "the <think>/<answer> format"
	case reward.Choice:
		return reward.KindChoice, "the chosen option letter"
	case *reward.Program:
		return "--reward-cmd", "what your program reads"
	case *reward.Endpoint:
		return "--reward-url", "what your server reads"
	}
	return fmt.Sprintf("%T", rw), "the response"
}

// printRewardRoutes says which reward each data_source of the prompts gets, with the number of
// training and held-out prompts, so that a mis-routed data set shows before the run.
func printRewardRoutes(reg *reward.Registry, train, held []grpo.Prompt) {
	counts := map[string]*[2]int{}
	for i, ps := range [][]grpo.Prompt{train, held} {
		for _, p := range ps {
			if counts[p.Kind] == nil {
				counts[p.Kind] = new([2]int)
			}
			counts[p.Kind][i]++
		}
	}
	kinds := slices.Sorted(maps.Keys(counts))
	fmt.Println("rewards by data_source (train / held-out prompts):")
	for _, k := range kinds {
		rw, _, _ := reg.Lookup(k)
		name, reads := rewardName(rw)
		fmt.Printf("  %-20s -> %-16s %5d / %-5d reads %s\n", k, name, counts[k][0], counts[k][1], reads)
	}
}
