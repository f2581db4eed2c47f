#!/usr/bin/python3
"""LoRA golden fixtures for the Prolong engine, written from PEFT's formulas (peft is not needed).

Regenerate (from the repository root; Debian's python3-torch):

    /usr/bin/python3 scripts/make_lora_goldens.py

PEFT (huggingface/peft, src/peft/tuners/lora/layer.py, class Linear) computes, for a targeted
nn.Linear with weight W [out, in] (and bias):

    result = base_layer(x) + lora_B(lora_A(dropout(x))) * scaling
    scaling = lora_alpha / r            (use_rslora: lora_alpha / sqrt(r))
    reset_lora_parameters: kaiming_uniform_(lora_A.weight, a=sqrt(5)); zeros_(lora_B.weight)

lora_A.weight is [r, in], lora_B.weight [out, r]. Here each targeted weight of
scripts/make_goldens.py's float64 forward is replaced by an object whose `h @ W.T` evaluates
PEFT's unmerged formula h @ W.T + ((h @ A.T) @ B.T) * scaling (dropout 0), so the reference
never forms W + s*B*A. The base models are the committed engine/testdata/golden/<model>/.

Output: engine/testdata/loragolden/<model>/
  lora.json            {"r", "lora_alpha", "use_rslora", "target_modules", "scaling", batch
                        as scripts/make_grad_goldens.py makes it (seqs, starts, weights)}
  adapter.safetensors  A and B under the engine's names (PEFT's keys without
                       "base_model.model."): A from kaiming_uniform_(a=sqrt(5)) and B drawn
                       N(0, 0.02^2) (nonzero, so the adapters change the logits)
  forward.safetensors  "logits.<i>" [L_i, V] of sequence i with the adapters (float64 -> F32);
                       "sft.loss", "sft.grad.<adapter name>": mean -logp of the scored tokens and
                       its gradient; "weighted.loss", "weighted.grad.<name>": the token-weighted
                       logp + entropy loss and its gradient (base weights frozen)
  adamw.safetensors    "init.<name>": PEFT's initial adapters (A kaiming-uniform, B zero);
                       "<name>": after 10 steps of torch.optim.AdamW(lr=1e-2, betas=(0.9, 0.95),
                       eps=1e-8, weight_decay=0.1) over the adapters only, on the SFT loss, each
                       step: zero_grad; backward; clip_grad_norm_(adapters, 0.5); step;
                       "loss.<k>", "gradnorm.<k>" (k = 0..9)
  dropout.safetensors  "sft.loss", "sft.grad.<name>", "weighted.loss", "weighted.grad.<name>"
                       as in forward.safetensors, with PEFT's lora_dropout (p = lora.json's
                       "lora_dropout") in training mode on every adapter's input: x replaced by
                       x * keep / (1 - p), keep the engine's mask (engine/dropout.go, rebuilt
                       here from its spec, not read from the engine) under seed lora.json's
                       "dropout_seed", optimizer step 0, micro-batch 0: stream
                       layer<<4 | index of the module in q,k,v,o,gate,up,down; element i of the
                       packed batch's [T, in] input (sequences one after another)
Everything runs in float64; central finite differences check the autograd gradients of A and B.
"""

import json
import math
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_goldens as mg  # noqa: E402
import make_grad_goldens as gg  # noqa: E402

F64 = torch.float64
OUT = os.path.join(mg.ROOT, "engine", "testdata", "loragolden")
MODULES = {"q_proj": "self_attn.q_proj", "k_proj": "self_attn.k_proj", "v_proj": "self_attn.v_proj",
           "o_proj": "self_attn.o_proj", "gate_proj": "mlp.gate_proj", "up_proj": "mlp.up_proj",
           "down_proj": "mlp.down_proj"}
CASES = {
    "qwen2": {"r": 4, "alpha": 8.0, "rslora": False, "targets": list(MODULES),  # all-linear
              "dropout": 0.25, "dropout_seed": 11},
    "llama3": {"r": 3, "alpha": 5.0, "rslora": True, "targets": ["q_proj", "v_proj", "down_proj"],
               "dropout": 0.1, "dropout_seed": 5},
}
LR, BETAS, EPS, WD, MAX_NORM, STEPS = 1e-2, (0.9, 0.95), 1e-8, 0.1, 0.5, 10


class LoraLinearT:
    """Stands for W.T of a PEFT-adapted linear layer: h @ this = h@W.T + (h@A.T)@B.T * s."""

    def __init__(self, W, A, B, s):
        self.W, self.A, self.B, self.s = W, A, B, s

    def to(self, _dtype):
        return self

    def __rmatmul__(self, h):
        return h @ self.W.T + ((h @ self.A.T) @ self.B.T) * self.s


class LoraLinear:
    def __init__(self, W, A, B, s):
        self.T = LoraLinearT(W, A, B, s)

    def to(self, _dtype):
        return self


# The engine's dropout mask (engine/dropout.go), from its spec: SplitMix64.
M64 = (1 << 64) - 1
GAMMA = 0x9E3779B97F4A7C15


def mix(z):
    """SplitMix64's finaliser of a Python int or a numpy uint64 array (wrapping mod 2^64)."""
    if isinstance(z, int):
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
        return z ^ (z >> 31)
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def keep_mask(p, seed, stream, first, rows, cols):
    """keep [rows, cols] (float64 0/1) of elements first .. first + rows*cols - 1."""
    key = mix(seed ^ mix(stream))
    thr = math.floor(p * (1 << 24) + 0.5)  # Go's math.Round, half away from zero
    i = np.arange(first, first + rows * cols, dtype=np.uint64)
    with np.errstate(over="ignore"):
        u = mix(np.uint64(key) + (i + np.uint64(1)) * np.uint64(GAMMA)) >> np.uint64(40)
    return torch.tensor((u >= thr).reshape(rows, cols), dtype=F64)


class DropLoraLinearT(LoraLinearT):
    """LoraLinearT in PEFT's training mode: h @ this = h@W.T + (drop(h)@A.T)@B.T * s, with
    drop(h) = h * keep / (1-p), keep the engine's mask of rows off.. of the packed batch."""

    def __init__(self, W, A, B, s, p, seed, stream, off):
        super().__init__(W, A, B, s)
        self.p, self.seed, self.stream, self.off = p, seed, stream, off

    def __rmatmul__(self, h):
        L, K = h.shape
        keep = keep_mask(self.p, self.seed, self.stream, self.off * K, L, K)
        hd = h * keep / (1 - self.p)
        return h @ self.W.T + ((hd @ self.A.T) @ self.B.T) * self.s


def adapted_drop(base, ad, s, p, seed, off):
    """adapted() with PEFT's dropout for the sequence at row off of the packed batch (step 0,
    micro-batch 0)."""
    w = dict(base)
    order = list(MODULES)
    for n in ad:
        if n.endswith(".lora_A.weight"):
            m = n[: -len(".lora_A.weight")]
            layer = int(m.split(".")[2])
            stream = layer << 4 | order.index(m.rsplit(".", 1)[1])
            lin = LoraLinear(base[m + ".weight"], ad[n], ad[m + ".lora_B.weight"], s)
            lin.T = DropLoraLinearT(base[m + ".weight"], ad[n], ad[m + ".lora_B.weight"], s, p, seed, stream, off)
            w[m + ".weight"] = lin
    return w


def loss_sft_drop(cfg, base, ad, s, p, seed, batch):
    lps, off = [], 0
    for ids, st in zip(batch["seqs"], batch["starts"]):
        lps.append(gg.seq_stats(cfg, adapted_drop(base, ad, s, p, seed, off), ids, st)[0])
        off += len(ids)
    return -torch.cat(lps).mean()


def loss_weighted_drop(cfg, base, ad, s, p, seed, batch):
    total, off = torch.zeros((), dtype=F64), 0
    for i, (ids, st) in enumerate(zip(batch["seqs"], batch["starts"])):
        logp, ent = gg.seq_stats(cfg, adapted_drop(base, ad, s, p, seed, off), ids, st)
        tw = torch.tensor(batch["token_weights"][i], dtype=F64)
        ew = torch.tensor(batch["entropy_weights"][i], dtype=F64)
        total = total + (tw * logp).sum() + (ew * ent).sum()
        off += len(ids)
    return total


def rt32(t):
    """t rounded to float32 and back: the values the fixture stores."""
    return t.detach().to(torch.float32).to(F64)


def adapter_names(cfg, case):
    out = []
    for l in range(cfg["num_hidden_layers"]):
        for t in MODULES:
            if t in case["targets"]:
                base = f"model.layers.{l}.{MODULES[t]}"
                out += [base + ".lora_A.weight", base + ".lora_B.weight"]
    return out


def scaling(case):
    return case["alpha"] / (math.sqrt(case["r"]) if case["rslora"] else case["r"])


def adapted(base, ad, s):
    w = dict(base)
    for n in ad:
        if n.endswith(".lora_A.weight"):
            m = n[: -len(".lora_A.weight")]
            w[m + ".weight"] = LoraLinear(base[m + ".weight"], ad[n], ad[m + ".lora_B.weight"], s)
    return w


def init_adapters(cfg, case, gen, b_std):
    ad = {}
    for n in adapter_names(cfg, case):
        m = n.rsplit(".lora_", 1)[0]
        out_f, in_f = base_shape(cfg, m)
        if n.endswith("lora_A.weight"):
            a = torch.empty(case["r"], in_f, dtype=F64)
            # nn.init.kaiming_uniform_(a=sqrt(5)) drawn from gen: bound = gain*sqrt(3/fan_in),
            # gain = sqrt(2/(1+5)), i.e. U(-1/sqrt(in), 1/sqrt(in)).
            gain = math.sqrt(2.0 / (1 + 5))
            bound = gain * math.sqrt(3.0 / in_f)
            a.uniform_(-bound, bound, generator=gen)
            ad[n] = a
        else:
            ad[n] = torch.randn(out_f, case["r"], dtype=F64, generator=gen) * b_std
    return ad


def base_shape(cfg, module):
    heads, kv, hd = mg.dims(cfg)
    D, I = cfg["hidden_size"], cfg["intermediate_size"]
    t = module.rsplit(".", 1)[1]
    return {"q_proj": (heads * hd, D), "k_proj": (kv * hd, D), "v_proj": (kv * hd, D),
            "o_proj": (D, heads * hd), "gate_proj": (I, D), "up_proj": (I, D), "down_proj": (D, I)}[t]


def fd_check(lossfn, ad, grads, gen):
    h, worst = 1e-6, 0.0
    with torch.no_grad():
        for n in list(ad)[:4] + list(ad)[-2:]:
            flat = ad[n].reshape(-1)
            g = grads[n].reshape(-1)
            for j in [int(g.abs().argmax())] + torch.randint(0, flat.numel(), (2,), generator=gen).tolist():
                old = float(flat[j])
                flat[j] = old + h
                up = float(lossfn())
                flat[j] = old - h
                dn = float(lossfn())
                flat[j] = old
                fd, an = (up - dn) / (2 * h), float(g[j])
                err = abs(fd - an) / max(1e-4, abs(an))
                worst = max(worst, err)
                assert err < 1e-5, (n, j, fd, an)
    return worst


def build(name, case):
    d_in = os.path.join(mg.ROOT, "engine", "testdata", "golden", name)
    with open(os.path.join(d_in, "config.json")) as f:
        cfg = json.load(f)
    w32 = gg.read_safetensors(os.path.join(d_in, "model.safetensors"))
    base = {k: torch.tensor(v, dtype=F64) for k, v in w32.items()}
    seed = mg.MODELS[name]["seed"]
    batch = gg.make_batch(cfg, seed + 700)
    gen = torch.Generator().manual_seed(seed + 800)
    s = scaling(case)
    names = adapter_names(cfg, case)
    out = os.path.join(OUT, name)
    os.makedirs(out, exist_ok=True)

    ad0 = init_adapters(cfg, case, gen, 0.02)
    mg.write_safetensors(os.path.join(out, "adapter.safetensors"), {n: mg.f32(ad0[n]) for n in names})
    ad = {n: rt32(ad0[n]).requires_grad_(True) for n in names}  # the stored values

    t = {}
    with torch.no_grad():
        w = adapted(base, ad, s)
        for i, ids in enumerate(batch["seqs"]):
            t[f"logits.{i}"] = mg.f32(mg.forward(cfg, w, ids))
    worst = 0.0
    for tag, fn in (("sft", gg.loss_sft), ("weighted", gg.loss_weighted)):
        loss = fn(cfg, adapted(base, ad, s), batch)
        grads = dict(zip(names, torch.autograd.grad(loss, [ad[n] for n in names])))
        worst = max(worst, fd_check(lambda: fn(cfg, adapted(base, ad, s), batch), ad, grads, gen))
        t[tag + ".loss"] = gg.scalar(loss)
        t.update({f"{tag}.grad.{n}": mg.f32(grads[n]) for n in names})
    mg.write_safetensors(os.path.join(out, "forward.safetensors"), t)

    # Ten AdamW steps from PEFT's initialisation (B = 0), adapters only.
    init = init_adapters(cfg, case, gen, 0.0)
    p = {n: rt32(init[n]).requires_grad_(True) for n in names}
    opt = torch.optim.AdamW([p[n] for n in names], lr=LR, betas=BETAS, eps=EPS, weight_decay=WD)
    t = {"init." + n: mg.f32(init[n]) for n in names}
    losses = []
    for k in range(STEPS):
        opt.zero_grad()
        loss = gg.loss_sft(cfg, adapted(base, p, s), batch)
        loss.backward()
        gn = torch.nn.utils.clip_grad_norm_([p[n] for n in names], MAX_NORM)
        opt.step()
        losses.append(float(loss))
        t[f"loss.{k}"] = gg.scalar(loss)
        t[f"gradnorm.{k}"] = gg.scalar(gn)
    t.update({n: mg.f32(p[n]) for n in names})
    mg.write_safetensors(os.path.join(out, "adamw.safetensors"), t)
    assert losses[-1] < losses[0], losses

    # PEFT's lora_dropout in training mode, with the engine's masks; the nonzero adapters.
    p, dseed = case["dropout"], case["dropout_seed"]
    t = {}
    dgen = torch.Generator().manual_seed(seed + 900)
    for tag, fn in (("sft", loss_sft_drop), ("weighted", loss_weighted_drop)):
        loss = fn(cfg, base, ad, s, p, dseed, batch)
        grads = dict(zip(names, torch.autograd.grad(loss, [ad[n] for n in names])))
        worst = max(worst, fd_check(lambda: fn(cfg, base, ad, s, p, dseed, batch), ad, grads, dgen))
        nodrop = gg.loss_sft if tag == "sft" else gg.loss_weighted
        with torch.no_grad():
            moved = abs(float(loss) - float(nodrop(cfg, adapted(base, ad, s), batch)))
        assert moved > 1e-6, (tag, moved)  # the masks change the loss
        t[tag + ".loss"] = gg.scalar(loss)
        t.update({f"{tag}.grad.{n}": mg.f32(grads[n]) for n in names})
    mg.write_safetensors(os.path.join(out, "dropout.safetensors"), t)

    doc = {"model": name, "r": case["r"], "lora_alpha": case["alpha"], "use_rslora": case["rslora"],
           "target_modules": case["targets"], "scaling": s,
           "lora_dropout": p, "dropout_seed": dseed,
           "seqs": batch["seqs"], "starts": batch["starts"], "n_scored": batch["n_scored"],
           "token_weights": batch["token_weights"], "entropy_weights": batch["entropy_weights"],
           "optimizer": {"lr": LR, "beta1": BETAS[0], "beta2": BETAS[1], "eps": EPS,
                         "weight_decay": WD, "max_grad_norm": MAX_NORM, "steps": STEPS}}
    gg.write_json(os.path.join(out, "lora.json"), doc)
    print(f"{name}: r={case['r']} scaling={s:.4f} loss {losses[0]:.6f} -> {losses[-1]:.6f} "
          f"fd max rel err {worst:.2e}")


def main():
    for name, case in CASES.items():
        build(name, case)


if __name__ == "__main__":
    main()
