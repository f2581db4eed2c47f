package main

import (
	"context"
	"fmt"
	"os"

	"github.com/prolong-rl/prolong/engine"
	"github.com/prolong-rl/prolong/grpo"
	"github.com/prolong-rl/prolong/grpo/remote"
)

// remoteRolloutSource is where rollouts come from with --rollout-servers: the servers, which
// get the policy's weights from grpo.Run before the first evaluation and after every step.
// Without --rollout-servers it is nil: grpo.Run generates with the engine on the policy itself.
func remoteRolloutSource(o options) func(context.Context, *engine.Model) (grpo.RolloutSource, func(), error) {
	if len(o.RolloutServers) == 0 {
		return nil
	}
	return func(context.Context, *engine.Model) (grpo.RolloutSource, func(), error) {
		c, err := remote.New(o.RolloutServers, os.Getenv("PROLONG_API_KEY"))
		if err != nil {
			return nil, nil, fmt.Errorf("--rollout-servers: %w", err)
		}
		if c.APIKey == "" {
			return nil, nil, fmt.Errorf("--rollout-servers: set PROLONG_API_KEY to the servers' --api-key (weight updates need it)")
		}
		return &remoteRollouts{c}, func() {}, nil
	}
}

// remoteRollouts are rollout servers.
type remoteRollouts struct{ *remote.Client }

// SyncWeights implements grpo.WeightSync: it sends the policy's weights to the servers (a LoRA
// policy's merged: the servers run a plain model).
func (r *remoteRollouts) SyncWeights(ctx context.Context, policy *engine.Model) error {
	w, err := policy.MergedWeights()
	if err != nil {
		return err
	}
	if err := r.PushWeights(ctx, w, 0); err != nil {
		return fmt.Errorf("--rollout-servers: %w", err)
	}
	return nil
}
