#!/usr/bin/python3
"""Gradient and AdamW golden fixtures for the Prolong engine's training path.

Regenerate (from the repository root; Debian's python3-torch and python3-numpy only):

    /usr/bin/python3 scripts/make_grad_goldens.py

Deterministic (fixed seeds, one CPU thread, deterministic algorithms): a rerun rewrites the
files byte for byte, given the same BLAS (the committed files were made with Debian's default
reference libblas.so.3; under OpenBLAS a few llama3 values differ in the last F32 bit, ~4e-9
relative, since float64 summation order differs and 10 AdamW steps amplify it). The model math is scripts/make_goldens.py's hand-written float64 port of
the Hugging Face forward pass (imported from it, not copied); the weights are the committed
engine/testdata/golden/<model>/model.safetensors (F32), read back and promoted to float64
leaf tensors requiring grad. Everything (forward, backward, gradient clipping, AdamW) runs in
float64; results are stored as F32.

Models: qwen2 (q/k/v biases, untied lm_head), llama3 (tied embeddings: lm_head IS
model.embed_tokens.weight, one parameter whose gradient includes the LM-head part; llama3 rope
scaling), qwen3 (per-head q_norm/k_norm).

Batch (same shape for each model, ids drawn per model): 3 sequences of lengths 7, 13, 20, each
forwarded on its own, causally, at positions 0..L-1 (no padding, no cross-sequence attention).
start s (>= 1) is the first scored token index: tokens t = s .. L-1 are scored, token t by the
logits at position t-1, logp_t = log_softmax(logits[t-1])[ids[t]] (temperature 1),
H_t = -sum_v p_v log p_v with p = softmax(logits[t-1]). Sequence i has n_i = L_i - s_i scored
tokens, in order t = s_i .. L_i-1.

Output: engine/testdata/gradgolden/<model>/ for model in qwen2, llama3, qwen3:

  batch.json          {"model", "seqs": [[ids]...], "starts": [...], "n_scored": [...],
                       "token_weights": [[w_t]...], "entropy_weights": [[e_t]...],
                       "losses": {...}, "optimizer": {...}, "notes": [...]}
                      weights lists have n_i entries each (entry j is token t = s_i + j).
  sft.safetensors     "loss" F32 [1]: loss (a) = mean over all N = sum_i n_i scored tokens of
                      the batch of -logp_t.
                      "grad.<HF name>" F32 [shape of that weight] = d loss(a) / d weight, for
                      every parameter of model.safetensors.
  weighted.safetensors "loss" F32 [1]: loss (b) = sum_i sum_t token_weight_t * logp_t
                      + sum_i sum_t entropy_weight_t * H_t (plain sums, no normalisation).
                      "grad.<HF name>" as above, of loss (b).
                      "logp.<i>", "entropy.<i>" F32 [n_i]: logp_t and H_t of sequence i.
  adamw.safetensors   "<HF name>" F32: every weight after 10 steps of
                      torch.optim.AdamW(lr=1e-3, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
                      on loss (a) starting from model.safetensors, each step:
                      zero_grad; loss.backward(); clip_grad_norm_(params, 0.5); opt.step().
                      "loss.<k>" F32 [1], k = 0..9: loss (a) at the weights before step k's
                      update; "loss.10": loss (a) at the final weights.
                      "gradnorm.<k>" F32 [1], k = 0..9: global L2 norm of all gradients of
                      step k before clipping (what clip_grad_norm_ returns).
                      The optimizer state and parameters are float64 throughout.
"""

import json
import math
import os
import re
import struct
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_goldens as mg  # noqa: E402  (sets 1 thread + deterministic algorithms)

ROOT = mg.ROOT
GOLDEN = os.path.join(ROOT, "engine", "testdata", "golden")
OUT = os.path.join(ROOT, "engine", "testdata", "gradgolden")
F64 = torch.float64

NAMES = ["qwen2", "llama3", "qwen3"]
SEQ_LENS = [7, 13, 20]
STARTS = [1, 4, 9]
LR, BETAS, EPS, WD = 1e-3, (0.9, 0.95), 1e-8, 0.1
MAX_NORM = 0.5
STEPS = 10


# ---------------------------------------------------------------------------------------------
# I/O.


def read_safetensors(path):
    """name -> float32 numpy array (F32 only, which is all make_goldens.py writes)."""
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    data = raw[8 + n :]
    out = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        assert meta["dtype"] == "F32", (name, meta["dtype"])
        b, e = meta["data_offsets"]
        out[name] = np.frombuffer(data[b:e], dtype="<f4").reshape(meta["shape"]).copy()
    return out


def write_json(path, obj):
    """Like make_goldens.write_json (indent 2) but with lists of numbers on one line."""
    text = json.dumps(obj, indent=2)
    text = re.sub(r"\[\s*([-+0-9.eE,\s]+?)\s*\]",
                  lambda m: "[" + ", ".join(x.strip() for x in m.group(1).split(",")) + "]", text)
    with open(path, "w") as f:
        f.write(text + "\n")


def scalar(x):
    return mg.f32(torch.tensor([float(x)], dtype=F64))


# ---------------------------------------------------------------------------------------------
# Losses.


def seq_stats(cfg, w, ids, start):
    """(logp [n], entropy [n]) float64 of the scored tokens ids[start:] of one sequence."""
    logits = mg.forward(cfg, w, ids)  # [L, V]
    lp = torch.log_softmax(logits[start - 1 : -1], dim=-1)  # rows for t = start..L-1
    tgt = torch.tensor(ids[start:], dtype=torch.int64)
    logp = lp.gather(1, tgt[:, None])[:, 0]
    ent = -(lp.exp() * lp).sum(-1)
    return logp, ent


def loss_sft(cfg, w, batch):
    lps = [seq_stats(cfg, w, ids, s)[0] for ids, s in zip(batch["seqs"], batch["starts"])]
    return -torch.cat(lps).mean()


def loss_weighted(cfg, w, batch, keep=None):
    total = torch.zeros((), dtype=F64)
    for i, (ids, s) in enumerate(zip(batch["seqs"], batch["starts"])):
        logp, ent = seq_stats(cfg, w, ids, s)
        tw = torch.tensor(batch["token_weights"][i], dtype=F64)
        ew = torch.tensor(batch["entropy_weights"][i], dtype=F64)
        total = total + (tw * logp).sum() + (ew * ent).sum()
        if keep is not None:
            keep.append((logp.detach(), ent.detach()))
    return total


# ---------------------------------------------------------------------------------------------
# Sanity checks: the autograd gradients agree with finite differences.


def check_grads(name, cfg, w, batch, lossfn, grads, gen):
    """torch.autograd.gradcheck on a couple of small parameters (all their entries) and a
    central finite-difference probe on entries of the big matrices."""
    small = ["model.norm.weight", "model.layers.1.input_layernorm.weight"]
    if mg.has_qk_norm(cfg):
        small.append("model.layers.0.self_attn.k_norm.weight")
    if mg.has_qkv_bias(cfg):
        small.append("model.layers.1.self_attn.k_proj.bias")
    base = {k: v.detach() for k, v in w.items()}
    for pname in small:

        def f(x, pname=pname):
            w2 = dict(base)
            w2[pname] = x
            return lossfn(cfg, w2, batch)

        x = base[pname].clone().requires_grad_(True)
        assert torch.autograd.gradcheck(f, (x,), eps=1e-6, atol=1e-7, rtol=1e-5), (name, pname)

    big = ["model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight",
           "model.layers.0.self_attn.v_proj.weight", "model.layers.1.mlp.down_proj.weight"]
    if not cfg["tie_word_embeddings"]:
        big.append("lm_head.weight")
    h = 1e-5
    worst = 0.0
    with torch.no_grad():
        for pname in big:
            g = grads[pname]
            flat = g.reshape(-1)
            idx = [int(flat.abs().argmax())]
            idx += torch.randint(0, flat.numel(), (2,), generator=gen).tolist()
            if pname == "model.embed_tokens.weight" and cfg["tie_word_embeddings"]:
                # A row of a vocab entry that is never an input token: its gradient is the
                # LM-head part alone (nonzero only because the embedding is tied).
                used = {t for ids in batch["seqs"] for t in ids}
                row = min(set(range(cfg["vocab_size"])) - used)
                idx.append(row * g.shape[1] + int(g[row].abs().argmax()))
                assert float(g[row].abs().max()) > 1e-6, "tied LM-head gradient missing"
            for j in idx:
                p = base[pname].reshape(-1)
                old = float(p[j])
                p[j] = old + h
                up = float(lossfn(cfg, base, batch))
                p[j] = old - h
                dn = float(lossfn(cfg, base, batch))
                p[j] = old
                fd = (up - dn) / (2 * h)
                an = float(flat[j])
                err = abs(fd - an) / max(1e-3, abs(an))
                worst = max(worst, err)
                assert err < 1e-5, (name, pname, j, fd, an)
    return worst


# ---------------------------------------------------------------------------------------------


def make_batch(cfg, seed):
    g = torch.Generator().manual_seed(seed)
    V = cfg["vocab_size"]
    seqs = [torch.randint(0, V, (L,), generator=g).tolist() for L in SEQ_LENS]
    n = [L - s for L, s in zip(SEQ_LENS, STARTS)]
    # Rounded to 4 decimals so the JSON is readable; the losses use exactly these float64
    # values (json round-trips Python floats exactly).
    tw = [[round(float(x), 4) for x in torch.randn(k, generator=g, dtype=F64)] for k in n]
    ew = [[round(float(x), 4) for x in 0.05 + 0.45 * torch.rand(k, generator=g, dtype=F64)] for k in n]
    return {"seqs": seqs, "starts": list(STARTS), "n_scored": n,
            "token_weights": tw, "entropy_weights": ew}


def manual_adamw(w0, grads_per_step):
    """Reference AdamW (torch 1.13 single-tensor path) to double-check torch.optim.AdamW."""
    p = {k: v.detach().clone() for k, v in w0.items()}
    m = {k: torch.zeros_like(v) for k, v in p.items()}
    v2 = {k: torch.zeros_like(v) for k, v in p.items()}
    b1, b2 = BETAS
    for step, g in enumerate(grads_per_step, start=1):
        for k in p:
            p[k] = p[k] * (1 - LR * WD)
            m[k] = b1 * m[k] + (1 - b1) * g[k]
            v2[k] = b2 * v2[k] + (1 - b2) * g[k] * g[k]
            denom = v2[k].sqrt() / math.sqrt(1 - b2**step) + EPS
            p[k] = p[k] - (LR / (1 - b1**step)) * m[k] / denom
    return p


def build(name):
    d_in = os.path.join(GOLDEN, name)
    with open(os.path.join(d_in, "config.json")) as f:
        cfg = json.load(f)
    seed = mg.MODELS[name]["seed"]
    w32 = read_safetensors(os.path.join(d_in, "model.safetensors"))
    # The committed file is what make_goldens.py draws (guards against a stale checkout).
    ref = mg.make_weights(mg.MODELS[name]["config"], seed)
    assert sorted(ref) == sorted(w32), name
    for k in ref:
        assert np.array_equal(ref[k].numpy(), w32[k]), (name, k)
    assert ("lm_head.weight" in w32) == (not cfg["tie_word_embeddings"])
    names = sorted(w32)

    def fresh():
        return {k: torch.tensor(w32[k], dtype=F64).requires_grad_(True) for k in names}

    batch = make_batch(cfg, seed + 500)
    gen = torch.Generator().manual_seed(seed + 600)
    out = os.path.join(OUT, name)
    os.makedirs(out, exist_ok=True)

    # (a) SFT cross-entropy.
    w = fresh()
    la = loss_sft(cfg, w, batch)
    ga = torch.autograd.grad(la, [w[k] for k in names])
    ga = dict(zip(names, ga))
    wa = check_grads(name, cfg, w, batch, loss_sft, ga, gen)
    t = {"loss": scalar(la)}
    t.update({"grad." + k: mg.f32(ga[k]) for k in names})
    mg.write_safetensors(os.path.join(out, "sft.safetensors"), t)

    # (b) weighted logp + entropy.
    w = fresh()
    keep = []
    lb = loss_weighted(cfg, w, batch, keep)
    gb = dict(zip(names, torch.autograd.grad(lb, [w[k] for k in names])))
    wb = check_grads(name, cfg, w, batch, loss_weighted, gb, gen)
    t = {"loss": scalar(lb)}
    t.update({"grad." + k: mg.f32(gb[k]) for k in names})
    for i, (logp, ent) in enumerate(keep):
        t[f"logp.{i}"] = mg.f32(logp)
        t[f"entropy.{i}"] = mg.f32(ent)
        assert bool((ent > 0).all()) and bool((logp < 0).all())
    # Cross-check: the SFT loss is minus the mean of these logps.
    assert abs(float(-torch.cat([k[0] for k in keep]).mean()) - float(la)) < 1e-12
    mg.write_safetensors(os.path.join(out, "weighted.safetensors"), t)

    # AdamW, 10 steps on loss (a), float64.
    w = fresh()
    params = [w[k] for k in names]  # tied: embed_tokens is the only embedding/head parameter
    opt = torch.optim.AdamW(params, lr=LR, betas=BETAS, eps=EPS, weight_decay=WD)
    t = {}
    losses, norms, clipped = [], [], []
    for k in range(STEPS):
        opt.zero_grad()
        loss = loss_sft(cfg, w, batch)
        loss.backward()
        gn = torch.nn.utils.clip_grad_norm_(params, MAX_NORM)
        clipped.append({n: w[n].grad.detach().clone() for n in names})
        opt.step()
        losses.append(float(loss))
        norms.append(float(gn))
        t[f"loss.{k}"] = scalar(loss)
        t[f"gradnorm.{k}"] = scalar(gn)
    with torch.no_grad():
        final = float(loss_sft(cfg, w, batch))
    t[f"loss.{STEPS}"] = scalar(final)
    for n in names:
        t[n] = mg.f32(w[n])
    mg.write_safetensors(os.path.join(out, "adamw.safetensors"), t)
    # Double-check torch's AdamW against the formula documented in batch.json.
    man = manual_adamw({n: torch.tensor(w32[n], dtype=F64) for n in names}, clipped)
    for n in names:
        assert torch.allclose(man[n], w[n].detach(), rtol=0, atol=1e-13), (name, n)
    assert final < losses[0], (name, losses, final)

    tied = cfg["tie_word_embeddings"]
    doc = {
        "model": name,
        "seqs": batch["seqs"],
        "starts": batch["starts"],
        "n_scored": batch["n_scored"],
        "token_weights": batch["token_weights"],
        "entropy_weights": batch["entropy_weights"],
        "scoring": (
            "Each sequence is its own causal forward at positions 0..L-1 (no padding, no "
            "cross-sequence attention). Tokens t = start..L-1 are scored, token t by the logits "
            "at position t-1: logp_t = log_softmax(logits[t-1])[ids[t]] at temperature 1, "
            "H_t = -sum_v p_v log p_v, p = softmax(logits[t-1]). Entry j of token_weights[i] / "
            "entropy_weights[i] / logp.i / entropy.i is token t = starts[i] + j."
        ),
        "losses": {
            "sft": "sft.safetensors: loss = -(1/N) sum_i sum_t logp_t, N = sum(n_scored) = "
                   f"{sum(batch['n_scored'])}; grad.<name> = d loss / d <name>.",
            "weighted": "weighted.safetensors: loss = sum_i sum_t token_weights[i][j] * logp_t "
                        "+ sum_i sum_t entropy_weights[i][j] * H_t (plain sums); grad.<name> = "
                        "d loss / d <name>; logp.<i>, entropy.<i> per sequence.",
        },
        "optimizer": {
            "file": "adamw.safetensors",
            "loss": "sft",
            "steps": STEPS,
            "torch": "torch.optim.AdamW(params, lr=0.001, betas=(0.9, 0.95), eps=1e-8, "
                     "weight_decay=0.1), one param group (decay applies to every parameter, "
                     "norms and biases included); each step: zero_grad(); loss.backward(); "
                     "g = clip_grad_norm_(params, 0.5); opt.step()",
            "lr": LR, "beta1": BETAS[0], "beta2": BETAS[1], "eps": EPS, "weight_decay": WD,
            "max_grad_norm": MAX_NORM,
            "clip": "norm = sqrt(sum over all parameters of sum g^2) (pre-clip, stored as "
                    "gradnorm.<k>); every g *= min(1, 0.5 / (norm + 1e-6))",
            "update": "step k = 1..10 (1-based): p *= 1 - lr*wd; m = b1*m + (1-b1)*g; "
                      "v = b2*v + (1-b2)*g*g; p -= (lr / (1 - b1^k)) * m / "
                      "(sqrt(v) / sqrt(1 - b2^k) + eps); m, v start at 0",
            "precision": "forward, backward, clipping, optimizer state and parameters all in "
                         "float64 (initial weights are the exact float32 values of "
                         "model.safetensors); results rounded to F32 only when saved, so a "
                         "float32/float64 engine comparison at ~1e-5 tests the engine, not "
                         "the reference",
            "outputs": "<HF name>: weights after the 10 steps; loss.<k> (k = 0..9): loss "
                       "before step k's update; loss.10: loss at the final weights; "
                       "gradnorm.<k>: pre-clip global gradient norm of step k",
        },
        "tied_embeddings": tied,
        "notes": [
            "Weights are the committed engine/testdata/golden/" + name + "/model.safetensors.",
            "All stored tensors are F32, computed in float64 by scripts/make_grad_goldens.py.",
            "Tolerances: the same computation run by torch 1.13 entirely in float32 gives "
            "gradients within ~1e-6 (qwen2, qwen3) / ~1.3e-5 (llama3, max|grad| 4.9) of these, "
            "but after 10 AdamW steps weights within only 4.4e-5 (qwen2), 3.7e-4 (qwen3), "
            "5e-3 (llama3): AdamW normalises each entry's update (~lr*sign(g) early on), so "
            "float32 gradient noise on small-|g| entries moves weights by up to ~lr. A 1e-5 "
            "check of adamw.safetensors needs a float64 forward/backward/optimizer; a float32 "
            "engine should check its optimizer in isolation (e.g. step 1 from sft.safetensors "
            "grads: clip with gradnorm.0, update with m = v = 0).",
        ]
        + (["Tied: lm_head = model.embed_tokens.weight, ONE parameter; grad.model.embed_tokens"
            ".weight includes the LM-head part, AdamW updates it once."] if tied else []),
    }
    write_json(os.path.join(out, "batch.json"), doc)
    print(f"{name:7s} sft={float(la):.6f} weighted={float(lb):.6f} "
          f"adamw loss {losses[0]:.6f} -> {final:.6f} gradnorm0={norms[0]:.4f} "
          f"fd max rel err {max(wa, wb):.2e}")


def main():
    for name in NAMES:
        build(name)
    total = 0
    for root, _, files in os.walk(OUT):
        for fn in files:
            total += os.path.getsize(os.path.join(root, fn))
    print(f"total size of {os.path.relpath(OUT, ROOT)}: {total} bytes")


if __name__ == "__main__":
    sys.exit(main())
