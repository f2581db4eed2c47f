package main

import (
	"context"
	"fmt"
	"os"

	"github.com/prolong-rl/prolong/engine"
	"github.com/prolong-rl/prolong/grpo"
	"github.com/prolong-rl/prolong/grpo/remote"
)

// newRollouts is where rollouts come from: the engine's continuous-batching generator on the
// policy itself (it always sees the latest weights), or --rollout-servers, which get the
// policy's weights now and after every step.
func newRollouts(ctx context.Context, o options, policy *engine.Trainer) (grpo.RolloutSource, func(), error) {
	if len(o.rolloutServers) > 0 {
		c, err := remote.New(o.rolloutServers, os.Getenv("PROLONG_API_KEY"))
		if err != nil {
			return nil, nil, fmt.Errorf("--rollout-servers: %w", err)
		}
		if c.APIKey == "" {
			return nil, nil, fmt.Errorf("--rollout-servers: set PROLONG_API_KEY to the servers' --api-key (weight updates need it)")
		}
		r := &remoteRollouts{c}
		if err := pushWeights(ctx, r, policy); err != nil { // the servers start from the policy
			return nil, nil, err
		}
		return r, func() {}, nil
	}
	gen, err := engine.NewGenerator(policy.Model, engine.GeneratorOptions{})
	if err != nil {
		return nil, nil, err
	}
	return grpo.EngineRollouts{Gen: gen}, gen.Close, nil
}

// remoteRollouts are rollout servers.
type remoteRollouts struct{ *remote.Client }

// pushWeights sends the policy's new weights to rollout servers after a step (the in-process
// engine shares the policy's weights and needs nothing).
func pushWeights(ctx context.Context, rs grpo.RolloutSource, policy *engine.Trainer) error {
	r, ok := rs.(*remoteRollouts)
	if !ok {
		return nil
	}
	w, err := policy.Model.HostWeights()
	if err != nil {
		return err
	}
	if err := r.PushWeights(ctx, w, 0); err != nil {
		return fmt.Errorf("--rollout-servers: %w", err)
	}
	return nil
}
