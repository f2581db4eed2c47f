package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"

	"github.com/prolong-rl/prolong/engine"
	"github.com/prolong-rl/prolong/grpo"
	"github.com/prolong-rl/prolong/grpo/modeldir"
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
		return &remoteRollouts{Client: c}, func() {}, nil
	}
}

// remoteRollouts are rollout servers.
type remoteRollouts struct {
	*remote.Client
	baseSent bool // a LoRA run's frozen base is on the servers
}

// SyncWeights implements grpo.WeightSync: it sends the policy's weights to the servers. A
// LoRA policy sends its frozen base once, at the first sync, and from then on its adapters
// only, which the servers run over that base.
func (r *remoteRollouts) SyncWeights(ctx context.Context, policy *engine.Model) error {
	if policy.Adapters != nil {
		if !r.baseSent {
			base, err := policy.HostWeights()
			if err != nil {
				return err
			}
			if err := r.PushWeights(ctx, base, 0); err != nil {
				return fmt.Errorf("--rollout-servers: the frozen base: %w", err)
			}
			r.baseSent = true
		}
		ad, err := policy.AdapterWeights()
		if err != nil {
			return err
		}
		cfg, err := json.Marshal(modeldir.NewAdapterConfig(policy.Adapters.Config, ""))
		if err != nil {
			return err
		}
		if err := r.PushAdapters(ctx, cfg, ad, 0); err != nil {
			return fmt.Errorf("--rollout-servers: %w", err)
		}
		return nil
	}
	w, err := policy.HostWeights()
	if err != nil {
		return err
	}
	if err := r.PushWeights(ctx, w, 0); err != nil {
		return fmt.Errorf("--rollout-servers: %w", err)
	}
	return nil
}
