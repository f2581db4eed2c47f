// Package grpo runs the ProRL recipe: rollouts of n samples per prompt, verifiable rewards,
// group advantages, the clipped policy loss with KL to a reference policy, dynamic sampling
// and periodic reference resets, on top of the engine's generation and training paths.
package grpo
