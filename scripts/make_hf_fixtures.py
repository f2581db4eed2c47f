#!/usr/bin/python3
"""Model directories as transformers 4 and transformers 5 write them, with PyTorch logits.

Regenerate (from the repository root; Debian's python3-torch and python3-numpy only):

    /usr/bin/python3 scripts/make_hf_fixtures.py

Deterministic (fixed seeds, one thread): a rerun rewrites the files byte for byte. The model
math, the weights' distribution and the writers are those of scripts/make_goldens.py (imported:
a hand-written float64 port of transformers' Llama / Qwen2 / Qwen3 forward pass); this script
adds yarn RoPE frequencies (transformers' _compute_yarn_parameters) and writes each config in
both forms, by hand, with the field names each version's save_pretrained uses:

  transformers 4 (config.tf4.json): top-level "rope_theta" and "rope_scaling" (null or an
      object with "rope_type"), "torch_dtype", "transformers_version": "4.51.0".
  transformers 5 (config.json): "rope_parameters" holding "rope_theta" and "rope_type"
      ("default" when unscaled) plus the scaling keys, no top-level rope_theta / rope_scaling,
      "dtype" instead of "torch_dtype", "layer_types" (one "full_attention" per layer) for
      Qwen2 and Qwen3, "pad_token_id": null, "transformers_version": "5.17.0".

Output: checkpoints/testdata/hf/<model>/ for each model below:

  config.json             the transformers 5 form
  config.tf4.json         the transformers 4 form of the same model
  generation_config.json  bos/eos/pad token ids, as save_pretrained writes it
  model.safetensors       F32 weights, HF names (no lm_head.weight when tied)
  logits.safetensors      "ids.{i}" I32 [L] and "logits.{i}" F32 [L, vocab] for L = 1, 7, 19
  greedy.json             {"prompts", "max_new_tokens", "continuations", "min_margin"}, as
                          in make_goldens.py

Models: qwen2 (untied lm_head), qwen2-tied, qwen3-headdim (head_dim 16 with hidden 32 and 4
heads, so head_dim != hidden/heads), llama3 (llama3 rope scaling, tied) and qwen2-yarn (yarn
with "attention_factor": 1.0) and qwen2-yarn-af (yarn with HF's default attention factor).
"""

import math
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_goldens as mg  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "checkpoints", "testdata", "hf")
SEQ_LENS = [1, 7, 19]
PROMPT_LENS = [3, 8]
MAX_NEW = 12


def common(model_type, arch, **kw):
    cfg = {
        "architectures": [arch],
        "attention_dropout": 0.0,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "hidden_act": "silu",
        "hidden_size": 32,
        "initializer_range": 0.02,
        "intermediate_size": 64,
        "max_position_embeddings": 512,
        "model_type": model_type,
        "num_attention_heads": 4,
        "num_hidden_layers": 2,
        "num_key_value_heads": 2,
        "rms_norm_eps": 1e-06,
        "rope_scaling": None,
        "rope_theta": 10000.0,
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
        "transformers_version": "4.51.0",
        "use_cache": True,
        "vocab_size": 96,
    }
    if model_type in ("qwen2", "qwen3"):
        cfg.update({"max_window_layers": 2, "sliding_window": None, "use_sliding_window": False})
    if model_type == "llama":
        cfg.update({"attention_bias": False, "mlp_bias": False, "pretraining_tp": 1})
    if model_type == "qwen3":
        cfg["attention_bias"] = False
    cfg.update(kw)
    return dict(sorted(cfg.items()))


MODELS = {
    "qwen2": dict(seed=2001, config=common("qwen2", "Qwen2ForCausalLM")),
    "qwen2-tied": dict(seed=2002, config=common("qwen2", "Qwen2ForCausalLM", tie_word_embeddings=True,
                                                rope_theta=1000000.0, eos_token_id=[2, 3])),
    "qwen3-headdim": dict(seed=2003, config=common("qwen3", "Qwen3ForCausalLM", head_dim=16,
                                                   rope_theta=1000000.0)),
    "llama3": dict(seed=2004, config=common("llama", "LlamaForCausalLM", head_dim=16, num_key_value_heads=1,
                                            rms_norm_eps=1e-05, rope_theta=500000.0, tie_word_embeddings=True,
                                            rope_scaling={"factor": 8.0, "high_freq_factor": 4.0,
                                                          "low_freq_factor": 1.0,
                                                          "original_max_position_embeddings": 64,
                                                          "rope_type": "llama3"})),
    "qwen2-yarn": dict(seed=2005, config=common("qwen2", "Qwen2ForCausalLM", num_attention_heads=2,
                                                num_key_value_heads=1,
                                                rope_scaling={"attention_factor": 1.0, "factor": 4.0,
                                                              "original_max_position_embeddings": 256,
                                                              "rope_type": "yarn"})),
    # yarn with HF's default attention factor, 0.1·ln(factor) + 1, on the cos and sin tables
    "qwen2-yarn-af": dict(seed=2006, config=common("qwen2", "Qwen2ForCausalLM", num_attention_heads=2,
                                                   num_key_value_heads=1,
                                                   rope_scaling={"factor": 4.0,
                                                                 "original_max_position_embeddings": 256,
                                                                 "rope_type": "yarn"})),
}

base_inv_freq = mg.inv_freq


def yarn_mscale(scale, mscale=1.0):
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


def rope_scale(cfg):
    """yarn's attention factor (transformers' _compute_yarn_parameters), else 1."""
    rs = cfg.get("rope_scaling")
    if not rs or rs.get("rope_type", rs.get("type")) != "yarn":
        return 1.0
    if rs.get("attention_factor") is not None:
        return rs["attention_factor"]
    if rs.get("mscale") and rs.get("mscale_all_dim"):
        return yarn_mscale(rs["factor"], rs["mscale"]) / yarn_mscale(rs["factor"], rs["mscale_all_dim"])
    return yarn_mscale(rs["factor"])


mg.rope_scale = rope_scale  # forward() looks it up at call time


def inv_freq(cfg):
    """make_goldens' frequencies plus yarn (transformers' _compute_yarn_parameters, float64)."""
    rs = cfg.get("rope_scaling")
    if not rs or rs.get("rope_type", rs.get("type")) != "yarn":
        return base_inv_freq(cfg)
    _, _, dim = mg.dims(cfg)
    base = cfg["rope_theta"]
    factor = rs["factor"]
    orig = rs.get("original_max_position_embeddings") or cfg["max_position_embeddings"]
    beta_fast = rs.get("beta_fast") or 32
    beta_slow = rs.get("beta_slow") or 1

    def corr(rot):
        return (dim * math.log(orig / (rot * 2 * math.pi))) / (2 * math.log(base))

    low, high = math.floor(corr(beta_fast)), math.ceil(corr(beta_slow))
    if rs.get("truncate", True) is False:
        low, high = corr(beta_fast), corr(beta_slow)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001
    ramp = torch.clamp((torch.arange(dim // 2, dtype=mg.F64) - low) / (high - low), 0, 1)
    pos = base ** (torch.arange(0, dim, 2, dtype=mg.F64) / dim)
    extrap = 1 - ramp
    assert bool((extrap > 0).any()) and bool((extrap < 1).any()), "yarn: the ramp must mix"
    return (1.0 / (factor * pos)) * (1 - extrap) + (1.0 / pos) * extrap


mg.inv_freq = inv_freq  # forward() looks it up at call time


def tf5(cfg):
    """The transformers 5 form of a transformers 4 config."""
    out = dict(cfg)
    rp = {"rope_theta": out.pop("rope_theta")}
    rs = out.pop("rope_scaling")
    if rs:
        rp.update(rs)
    else:
        rp["rope_type"] = "default"
    out["rope_parameters"] = dict(sorted(rp.items()))
    out["dtype"] = out.pop("torch_dtype")
    out["pad_token_id"] = None
    out["transformers_version"] = "5.17.0"
    if cfg["model_type"] in ("qwen2", "qwen3"):
        out["layer_types"] = ["full_attention"] * cfg["num_hidden_layers"]
    return dict(sorted(out.items()))


def build(name, spec):
    cfg, seed = spec["config"], spec["seed"]
    d = os.path.join(OUT, name)
    os.makedirs(d, exist_ok=True)
    w = mg.make_weights(cfg, seed)
    V = cfg["vocab_size"]
    mg.write_json(os.path.join(d, "config.json"), tf5(cfg))
    mg.write_json(os.path.join(d, "config.tf4.json"), cfg)
    mg.write_json(os.path.join(d, "generation_config.json"), {
        "bos_token_id": cfg["bos_token_id"], "eos_token_id": cfg["eos_token_id"],
        "transformers_version": "5.17.0"})
    mg.write_safetensors(os.path.join(d, "model.safetensors"), {k: mg.f32(v) for k, v in w.items()})

    g = torch.Generator().manual_seed(seed + 1)
    tens = {}
    for i, L in enumerate(SEQ_LENS):
        ids = torch.randint(0, V, (L,), generator=g).tolist()
        tens[f"ids.{i}"] = mg.i32(ids)
        tens[f"logits.{i}"] = mg.f32(mg.forward(cfg, w, ids))
    mg.write_safetensors(os.path.join(d, "logits.safetensors"), tens)

    prompts, conts, margins = [], [], []
    gp = torch.Generator().manual_seed(seed + 2)
    for plen in PROMPT_LENS:
        for _attempt in range(200):
            prompt = torch.randint(0, V, (plen,), generator=gp).tolist()
            cont, m = mg.greedy(cfg, w, prompt, MAX_NEW)
            if m > mg.MIN_MARGIN and len(set(cont)) >= mg.MIN_DISTINCT:
                break
        else:
            raise AssertionError(f"{name}: no good prompt of length {plen}")
        prompts.append(prompt)
        conts.append(cont)
        margins.append(m)
    mg.write_json(os.path.join(d, "greedy.json"), {
        "prompts": prompts, "max_new_tokens": MAX_NEW, "continuations": conts,
        "min_margin": round(min(margins), 6)})
    print(f"{name:14s} greedy min_margin={min(margins):.4f}")


def main():
    torch.set_num_threads(1)
    for name, spec in MODELS.items():
        build(name, spec)
    total = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(OUT) for f in fs)
    print(f"total size of {os.path.relpath(OUT, ROOT)}: {total} bytes")


if __name__ == "__main__":
    sys.exit(main())
