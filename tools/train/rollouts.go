package main

import (
	"context"

	"github.com/prolong-rl/prolong/engine"
	"github.com/prolong-rl/prolong/grpo"
)

// newRollouts is where rollouts come from: the engine's continuous-batching generator on the
// policy itself (it always sees the latest weights).
func newRollouts(_ context.Context, _ options, policy *engine.Trainer) (grpo.RolloutSource, func(), error) {
	gen, err := engine.NewGenerator(policy.Model, engine.GeneratorOptions{})
	if err != nil {
		return nil, nil, err
	}
	return grpo.EngineRollouts{Gen: gen}, gen.Close, nil
}

// pushWeights sends the policy's new weights to rollout servers after a step; the in-process
// engine shares the policy's weights and needs nothing.
func pushWeights(_ context.Context, _ grpo.RolloutSource, _ *engine.Trainer) error { return nil }
