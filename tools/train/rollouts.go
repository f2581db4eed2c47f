package main

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"strings"

	"github.com/prolong-rl/prolong/engine"
	"github.com/prolong-rl/prolong/grpo"
	"github.com/prolong-rl/prolong/grpo/modeldir"
	"github.com/prolong-rl/prolong/grpo/remote"
)

// remoteRolloutSource is where rollouts come from with --rollout-servers: the servers, which
// get the policy's weights from grpo.Run before the first evaluation and after every step.
// Rank rank of a data-parallel run of size ranks sends its prompts to its share of the servers
// (grpo.ServerShare), tagged "rank R" (the requests' user field), and logs which; rank 0
// pushes the weights to all of them. Without --rollout-servers it is nil: grpo.Run generates
// with the engine on the policy itself.
func remoteRolloutSource(o options, rank, size int) func(context.Context, *engine.Model) (grpo.RolloutSource, func(), error) {
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
		r := &remoteRollouts{Client: c, gen: c}
		if size > 1 {
			lo, hi := grpo.ServerShare(len(c.URLs), rank, size)
			g, err := remote.New(c.URLs[lo:hi], c.APIKey)
			if err != nil {
				return nil, nil, fmt.Errorf("--rollout-servers: rank %d's share: %w", rank, err)
			}
			g.User = fmt.Sprintf("rank %d", rank)
			r.gen = g
			slog.Info("dist: rollout servers", "rank", rank, "size", size, "servers", strings.Join(g.URLs, ","))
		}
		return r, func() {}, nil
	}
}

// remoteRollouts are rollout servers.
type remoteRollouts struct {
	*remote.Client                // all the servers: weights go to each
	gen            *remote.Client // the servers this rank generates on
	baseSent       bool           // a LoRA run's frozen base is on the servers
}

// Rollout implements grpo.RolloutSource on this rank's servers.
func (r *remoteRollouts) Rollout(ctx context.Context, prompts []grpo.Prompt, p engine.SamplingParams) ([][]engine.Sample, error) {
	return r.gen.Rollout(ctx, prompts, p)
}

// WeightVersion is the weight version this rank's servers last reported.
func (r *remoteRollouts) WeightVersion() uint64 { return r.gen.WeightVersion() }

// Retries is the number of this rank's requests retried because a server was at capacity.
func (r *remoteRollouts) Retries() uint64 { return r.gen.Retries() }

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
