#!/usr/bin/python3
"""Golden values for grpo.PolicyLoss: verl's policy loss, KL penalty and aggregation in PyTorch.

Regenerate (from the repository root; needs only Debian's python3-torch):

    /usr/bin/python3 scripts/make_loss_goldens.py

Deterministic (fixed seed, float64, one thread): a second run rewrites the file byte for byte.

It re-implements, with autograd, the formulas of verl's trainer/ppo/core_algos.py:
  compute_policy_loss   log ratio clamped to [-20, 20]; pg = max(-A*r, -A*clip(r, 1-lo, 1+hi));
                        dual clip: where(A < 0, min(-A*c, pg), pg)
  kl_penalty            "kl" (k1) logp-ref, "mse" (k2) 0.5*(logp-ref)^2,
                        "low_var_kl" (k3) clamp(exp(d) - d - 1, -10, 10), d = clamp(ref-logp, -20, 20)
  compute_policy_loss_gspo
                        GSPO-token: log s_t = sg[mean_t(logp - old)] + logp - sg[logp], bounded
                        above at 10; pg = max(-A*s_t, -A*clip(s_t, 1-lo, 1+hi)), aggregated
                        seq-mean-token-mean whatever the loss_agg_mode
  rollout correction    TIS: pg *= min(exp(clamp(old - rollout, -20, 20)), cap), detached
  agg_loss              token-mean, seq-mean-token-sum, seq-mean-token-mean
  actor loss            pg_loss + kl_coef * kl_loss - entropy_coeff * entropy_loss
and writes, per case, the inputs ([B, T] padded with a response mask), the loss and its parts,
the gradients d loss / d logp and d loss / d entropy (by autograd), and the metrics.

Output: grpo/testdata/loss_golden.json
"""

import json
import os

import torch

torch.set_num_threads(1)
torch.manual_seed(20250712)
torch.set_default_dtype(torch.float64)

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "grpo", "testdata", "loss_golden.json")


def masked_mean(x, mask):
    return (x * mask).sum() / mask.sum()


def agg_loss(loss_mat, mask, mode):
    if mode == "token-mean":
        return masked_mean(loss_mat, mask)
    if mode == "seq-mean-token-sum":
        return torch.mean(torch.sum(loss_mat * mask, dim=-1))
    if mode == "seq-mean-token-mean":
        return torch.mean(torch.sum(loss_mat * mask, dim=-1) / torch.sum(mask, dim=-1))
    raise ValueError(mode)


def kl_penalty(logp, ref, kind):
    if kind == "k1":
        return logp - ref
    if kind == "k2":
        return 0.5 * (logp - ref).square()
    if kind == "k3":
        kl = torch.clamp(ref - logp, min=-20, max=20)
        return torch.clamp(torch.exp(kl) - kl - 1, min=-10, max=10)
    raise ValueError(kind)


def policy_loss(old, logp, adv, mask, lo, hi, dual, mode):
    neg_kl = torch.clamp(logp - old, min=-20.0, max=20.0)
    ratio = torch.exp(neg_kl)
    ppo_kl = masked_mean(-neg_kl, mask)
    l1 = -adv * ratio
    l2 = -adv * torch.clamp(ratio, 1 - lo, 1 + hi)
    clip1 = torch.maximum(l1, l2)
    clipped = torch.gt(l2, l1).double()
    frac_low = masked_mean(clipped * (adv < 0).double(), mask)
    frac_high = masked_mean(clipped * (adv > 0).double(), mask)
    frac_dual = torch.zeros(())
    pg = clip1
    if dual > 0:
        l3 = -adv * dual
        clip2 = torch.min(l3, clip1)
        frac_dual = masked_mean(torch.gt(clip1, l3).double() * (adv < 0).double(), mask)
        pg = torch.where(adv < 0, clip2, clip1)
    return pg, frac_low, frac_high, frac_dual, ppo_kl, ratio


def gspo_loss(old, logp, adv, mask, lo, hi):
    neg_kl = logp - old
    seq_lr = torch.sum(neg_kl * mask, dim=-1) / torch.sum(mask, dim=-1).clamp(min=1)
    log_s = torch.clamp(logp - logp.detach() + seq_lr.detach().unsqueeze(-1), max=10.0)
    s = torch.exp(log_s)
    l1 = -adv * s
    l2 = -adv * torch.clamp(s, 1 - lo, 1 + hi)
    clipped = torch.gt(l2, l1).double()
    frac_low = masked_mean(clipped * (adv < 0).double(), mask)
    frac_high = masked_mean(clipped * (adv > 0).double(), mask)
    ppo_kl = masked_mean(-torch.clamp(neg_kl, min=-20.0, max=20.0), mask)
    return torch.maximum(l1, l2), frac_low, frac_high, torch.zeros(()), ppo_kl, s


def tis_weights(old, rollout, cap):
    return torch.clamp(torch.exp(torch.clamp(old - rollout, min=-20.0, max=20.0)), max=cap).detach()


def make_case(name, mode, kl_kind, kl_coef, dual, ent_coef, B=3, T=6, scale=1.0, policy="grpo", tis_cap=0.0):
    lengths = torch.randint(1, T + 1, (B,))
    mask = torch.zeros(B, T)
    for b in range(B):
        mask[b, : lengths[b]] = 1
    # A hole inside one response (a masked tool-output token, say).
    if lengths[0] >= 3:
        mask[0, 1] = 0
    logp = -(torch.randn(B, T).abs() * 1.5) - 0.05
    old = logp + torch.randn(B, T) * 0.35 * scale
    ref = logp + torch.randn(B, T) * 0.5 * scale
    adv = torch.randn(B, 1).expand(B, T).clone()
    ent = torch.rand(B, T) * 3
    logp.requires_grad_(True)
    ent.requires_grad_(True)
    lo, hi = 0.2, 0.4
    # GSPO's clip range is tiny (verl's recipe: 3e-4 / 4e-4); the sequence ratios of a case are
    # spread over a few per mille so that some are clipped and some are not.
    glo, ghi = 3e-4, 4e-4
    if policy == "gspo":
        old = logp.detach() + torch.randn(B, T) * 2e-3 * scale
        pg, frac_low, frac_high, frac_dual, ppo_kl, ratio = gspo_loss(old, logp, adv, mask, glo, ghi)
        pg_mode = "seq-mean-token-mean"
    else:
        pg, frac_low, frac_high, frac_dual, ppo_kl, ratio = policy_loss(old, logp, adv, mask, lo, hi, dual, mode)
        pg_mode = mode
    rollout = None
    if tis_cap > 0:  # the rollout engine's log-probs, off the trainer's by up to a few tenths
        rollout = old + torch.randn(B, T) * 0.6 * min(scale, 2.0)
        pg = pg * tis_weights(old, rollout, tis_cap)
    pg_loss = agg_loss(pg, mask, pg_mode)
    kld = kl_penalty(logp, ref, kl_kind)
    kl_loss = agg_loss(kld, mask, mode)
    ent_loss = agg_loss(ent, mask, mode)
    loss = pg_loss + kl_coef * kl_loss - ent_coef * ent_loss
    loss.backward()
    r = lambda t: [[float(v) for v in row] for row in t.detach()]
    return {
        "name": name,
        "policy_loss": policy,
        "agg": mode,
        "kl": kl_kind,
        "kl_coef": kl_coef,
        "dual_clip": dual,
        "entropy_coef": ent_coef,
        "clip_low": lo,
        "clip_high": hi,
        "gspo_clip_low": glo,
        "gspo_clip_high": ghi,
        "tis_cap": tis_cap,
        "rollout_logp": r(rollout) if rollout is not None else None,
        "logp": r(logp),
        "old_logp": r(old),
        "ref_logp": r(ref),
        "adv": r(adv),
        "entropy": r(ent),
        "mask": [[bool(v) for v in row] for row in mask],
        "loss": float(loss),
        "pg_loss": float(pg_loss),
        "kl_loss": float(kl_loss),
        "entropy_loss": float(ent_loss),
        "clip_frac_low": float(frac_low),
        "clip_frac_high": float(frac_high),
        "dual_clip_frac": float(frac_dual),
        "approx_kl": float(ppo_kl),
        "ratio_max": float(ratio.detach()[mask.bool()].max()),
        "dlogp": r(logp.grad),
        "dentropy": r(ent.grad),
    }


def main():
    cases = []
    i = 0
    for mode in ["token-mean", "seq-mean-token-sum", "seq-mean-token-mean"]:
        for kl_kind in ["k1", "k2", "k3"]:
            for rep in range(2):
                dual = 3.0 if (i % 2 == 0) else 0.0
                ent_coef = [0.0, 0.01, 0.2][i % 3]
                kl_coef = [1e-4, 0.05, 0.5][(i // 2) % 3]
                # Every third case has large log-ratio noise: hits the clip bounds, dual clip and
                # verl's clamps (log ratio at +-20, k3 value at 10).
                scale = 12.0 if i % 3 == 2 else 1.0
                cases.append(make_case(f"{mode}/{kl_kind}/{rep}", mode, kl_kind, kl_coef, dual, ent_coef, scale=scale))
                i += 1
    # GSPO (its pg term is seq-mean-token-mean whatever the mode; KL and entropy follow the
    # mode) and TIS on GRPO and on GSPO, caps 2 and 1.5.
    for j, mode in enumerate(["token-mean", "seq-mean-token-sum", "seq-mean-token-mean"]):
        for rep in range(2):
            scale = [0.3, 1.0][rep]
            tis = [0.0, 2.0][rep]
            cases.append(make_case(f"gspo/{mode}/{rep}", mode, "k3", [0.0, 0.05][rep], 0.0, [0.0, 0.01][rep], scale=scale, policy="gspo", tis_cap=tis))
    for j, mode in enumerate(["token-mean", "seq-mean-token-sum", "seq-mean-token-mean"]):
        dual = 3.0 if j != 1 else 0.0
        cases.append(make_case(f"tis/{mode}", mode, "k3", 1e-4, dual, 0.0, scale=[1.0, 12.0, 3.0][j], tis_cap=[2.0, 1.5, 2.0][j]))
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w") as f:
        json.dump({"generator": "scripts/make_loss_goldens.py", "torch": torch.__version__.split("+")[0], "cases": cases}, f, indent=None)
        f.write("\n")


if __name__ == "__main__":
    main()
