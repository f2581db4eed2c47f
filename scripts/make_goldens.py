#!/usr/bin/python3
"""Golden test fixtures for the Prolong engine: tiny random Llama / Qwen2 / Qwen3 decoders.

Regenerate (from the repository root; needs only Debian's python3-torch and python3-numpy,
no transformers, no safetensors package):

    /usr/bin/python3 scripts/make_goldens.py

The script is deterministic (fixed seeds, one CPU thread): a second run rewrites the files
byte for byte. It implements by hand, in torch.float64, the forward pass of Hugging Face
transformers' modeling_llama.py / modeling_qwen2.py / modeling_qwen3.py (RMSNorm, q/k/v biases
for Qwen2, per-head q_norm/k_norm before RoPE for Qwen3, RoPE in the "rotate_half" convention
with rope_scaling "linear" and "llama3", causal GQA attention, SwiGLU MLP, final norm, lm_head
or tied embeddings). Weights are drawn in float32 (what is stored) and the oracle computes in
float64 on exactly those float32 values; outputs are stored as float32.

Output: engine/testdata/golden/<model>/ for model in qwen2, llama3, qwen3, llama2:

  config.json        HF-style config.json (keys transformers writes for that model_type).
  model.safetensors  every weight, dtype F32, HF tensor names (lm_head.weight is absent when
                     tie_word_embeddings is true).
  logits.safetensors for i in 0..3 (sequence lengths 1, 5, 13, 37):
                       "ids.{i}"    I32 [L]         random token ids
                       "logits.{i}" F32 [L, vocab]  full causal forward of that sequence alone,
                                                    positions 0..L-1
  greedy.json        {"prompts": [[...], [...]], "max_new_tokens": 16,
                      "continuations": [[...], [...]], "min_margin": m}
                     greedy (argmax) continuations, recomputing the full forward at each step;
                     m is the smallest top-1 minus top-2 logit gap over all steps (asserted
                     > MIN_MARGIN so a float32 engine must reproduce the tokens exactly).

safetensors layout (written by hand here): 8-byte little-endian u64 header length N, then N
bytes of JSON {"__metadata__": {"format": "pt"}, name: {"dtype", "shape", "data_offsets":
[begin, end]}, ...} padded with spaces to a multiple of 8, then the raw little-endian tensor
data, tensors in sorted name order, offsets relative to the start of the data.
"""

import json
import math
import os
import struct
import sys

import numpy as np
import torch

torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "engine", "testdata", "golden")

SEQ_LENS = [1, 5, 13, 37]
PROMPT_LENS = [3, 9]
MAX_NEW = 16
MIN_MARGIN = 1e-2  # stricter than the 1e-3 the tests need
MIN_DISTINCT = 6  # a greedy continuation must not be one token repeated
F64 = torch.float64

# ---------------------------------------------------------------------------------------------
# Configs, as transformers would write them (sorted keys, like save_pretrained).

MODELS = {
    "qwen2": dict(
        seed=1001,
        config={
            "architectures": ["Qwen2ForCausalLM"],
            "attention_dropout": 0.0,
            "bos_token_id": 1,
            "eos_token_id": 2,
            "hidden_act": "silu",
            "hidden_size": 64,
            "initializer_range": 0.02,
            "intermediate_size": 128,
            "max_position_embeddings": 512,
            "max_window_layers": 2,
            "model_type": "qwen2",
            "num_attention_heads": 4,
            "num_hidden_layers": 2,
            "num_key_value_heads": 2,
            "rms_norm_eps": 1e-06,
            "rope_scaling": None,
            "rope_theta": 10000.0,
            "sliding_window": 512,
            "tie_word_embeddings": False,
            "torch_dtype": "float32",
            "transformers_version": "4.51.0",
            "use_cache": True,
            "use_sliding_window": False,
            "vocab_size": 256,
        },
    ),
    "llama3": dict(
        seed=1002,
        config={
            "architectures": ["LlamaForCausalLM"],
            "attention_bias": False,
            "attention_dropout": 0.0,
            "bos_token_id": 1,
            "eos_token_id": [2, 3],
            "head_dim": 16,
            "hidden_act": "silu",
            "hidden_size": 64,
            "initializer_range": 0.02,
            "intermediate_size": 96,
            "max_position_embeddings": 512,
            "mlp_bias": False,
            "model_type": "llama",
            "num_attention_heads": 4,
            "num_hidden_layers": 2,
            "num_key_value_heads": 1,
            "pretraining_tp": 1,
            "rms_norm_eps": 1e-05,
            # original_max_position_embeddings 64 (not 32): with head_dim 16 and theta 5e5 the
            # wavelengths are 6.3, 32.4, 168, ... so 32 would leave the medium band empty;
            # with 64 the bands are < 16 (kept), 16..64 (smoothed), > 64 (divided by factor).
            "rope_scaling": {
                "factor": 8.0,
                "high_freq_factor": 4.0,
                "low_freq_factor": 1.0,
                "original_max_position_embeddings": 64,
                "rope_type": "llama3",
            },
            "rope_theta": 500000.0,
            "tie_word_embeddings": True,
            "torch_dtype": "float32",
            "transformers_version": "4.51.0",
            "use_cache": True,
            "vocab_size": 256,
        },
    ),
    "qwen3": dict(
        seed=1003,
        config={
            "architectures": ["Qwen3ForCausalLM"],
            "attention_bias": False,
            "attention_dropout": 0.0,
            "bos_token_id": 1,
            "eos_token_id": 2,
            "head_dim": 32,
            "hidden_act": "silu",
            "hidden_size": 64,
            "initializer_range": 0.02,
            "intermediate_size": 128,
            "max_position_embeddings": 512,
            "max_window_layers": 2,
            "model_type": "qwen3",
            "num_attention_heads": 4,
            "num_hidden_layers": 2,
            "num_key_value_heads": 2,
            "rms_norm_eps": 1e-06,
            "rope_scaling": None,
            "rope_theta": 1000000.0,
            "sliding_window": None,
            "tie_word_embeddings": False,
            "torch_dtype": "float32",
            "transformers_version": "4.51.0",
            "use_cache": True,
            "use_sliding_window": False,
            "vocab_size": 256,
        },
    ),
    "llama2": dict(
        seed=1004,
        config={
            "architectures": ["LlamaForCausalLM"],
            "attention_bias": False,
            "attention_dropout": 0.0,
            "bos_token_id": 1,
            "eos_token_id": 2,
            "hidden_act": "silu",
            "hidden_size": 48,
            "initializer_range": 0.02,
            "intermediate_size": 80,
            "max_position_embeddings": 512,
            "mlp_bias": False,
            "model_type": "llama",
            "num_attention_heads": 4,
            "num_hidden_layers": 2,
            "num_key_value_heads": 4,
            "pretraining_tp": 1,
            "rms_norm_eps": 1e-05,
            "rope_scaling": {"factor": 2.0, "type": "linear"},
            "rope_theta": 10000.0,
            "tie_word_embeddings": False,
            "torch_dtype": "float32",
            "transformers_version": "4.51.0",
            "use_cache": True,
            "vocab_size": 256,
        },
    ),
}


def dims(cfg):
    heads = cfg["num_attention_heads"]
    kv = cfg.get("num_key_value_heads", heads)
    hd = cfg.get("head_dim") or cfg["hidden_size"] // heads
    return heads, kv, hd


def has_qkv_bias(cfg):
    return cfg["model_type"] == "qwen2" or bool(cfg.get("attention_bias", False))


def has_qk_norm(cfg):
    return cfg["model_type"] == "qwen3"


# ---------------------------------------------------------------------------------------------
# Weights.


def make_weights(cfg, seed):
    """Random float32 weights with HF names; std chosen so logits are well spread."""
    g = torch.Generator().manual_seed(seed)
    H, V, I = cfg["hidden_size"], cfg["vocab_size"], cfg["intermediate_size"]
    heads, kv, hd = dims(cfg)

    def randn(*shape, std=1.0, mean=0.0):
        return (mean + std * torch.randn(*shape, generator=g, dtype=torch.float32)).contiguous()

    def mat(out, inp, gain=1.0):
        return randn(out, inp, std=gain / math.sqrt(inp))

    def norm(n):
        return randn(n, std=0.1, mean=1.0)

    w = {}
    # Tied models read logits off the embeddings. Large embeddings make greedy decoding repeat
    # one token (the residual stream is dominated by the input token's own embedding), so they
    # are small (std 1.6 / sqrt(hidden)) and the final norm weight (mean 2) spreads the logits.
    tied = cfg["tie_word_embeddings"]
    w["model.embed_tokens.weight"] = randn(V, H, std=1.6 / math.sqrt(H) if tied else 1.0)
    for l in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{l}."
        w[p + "input_layernorm.weight"] = norm(H)
        w[p + "self_attn.q_proj.weight"] = mat(heads * hd, H, 2.0)
        w[p + "self_attn.k_proj.weight"] = mat(kv * hd, H, 2.0)
        w[p + "self_attn.v_proj.weight"] = mat(kv * hd, H)
        w[p + "self_attn.o_proj.weight"] = mat(H, heads * hd)
        if has_qkv_bias(cfg):
            w[p + "self_attn.q_proj.bias"] = randn(heads * hd, std=0.1)
            w[p + "self_attn.k_proj.bias"] = randn(kv * hd, std=0.1)
            w[p + "self_attn.v_proj.bias"] = randn(kv * hd, std=0.1)
        if has_qk_norm(cfg):
            w[p + "self_attn.q_norm.weight"] = norm(hd)
            w[p + "self_attn.k_norm.weight"] = norm(hd)
        w[p + "post_attention_layernorm.weight"] = norm(H)
        w[p + "mlp.gate_proj.weight"] = mat(I, H)
        w[p + "mlp.up_proj.weight"] = mat(I, H)
        w[p + "mlp.down_proj.weight"] = mat(H, I)
    w["model.norm.weight"] = randn(H, std=0.2, mean=2.0) if tied else norm(H)
    if not cfg["tie_word_embeddings"]:
        w["lm_head.weight"] = mat(V, H, 3.0)
    return w


# ---------------------------------------------------------------------------------------------
# The HF forward pass, in float64.


def inv_freq(cfg):
    """HF rope init: default, linear (inv_freq / factor) or llama3 (_compute_llama3_parameters)."""
    _, _, hd = dims(cfg)
    base = cfg.get("rope_theta", 10000.0)
    inv = 1.0 / (base ** (torch.arange(0, hd, 2, dtype=torch.int64).to(F64) / hd))
    rs = cfg.get("rope_scaling")
    if rs is None:
        return inv
    kind = rs.get("rope_type", rs.get("type"))
    if kind == "linear":
        return inv / rs["factor"]
    if kind == "llama3":
        factor = rs["factor"]
        low, high = rs["low_freq_factor"], rs["high_freq_factor"]
        old = rs["original_max_position_embeddings"]
        low_wavelen = old / low
        high_wavelen = old / high
        wavelen = 2 * math.pi / inv
        inv_l = torch.where(wavelen > low_wavelen, inv / factor, inv)
        smooth = (old / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * inv_l / factor + smooth * inv_l
        medium = ~(wavelen < high_wavelen) * ~(wavelen > low_wavelen)
        # The fixture must exercise all three bands.
        assert bool((wavelen < high_wavelen).any()), "llama3: no high-frequency dims"
        assert bool(medium.any()), "llama3: no medium-frequency dims"
        assert bool((wavelen > low_wavelen).any()), "llama3: no low-frequency dims"
        return torch.where(medium, smoothed, inv_l)
    raise ValueError(f"rope type {kind}")


def rms_norm(x, w, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


def rope_scale(cfg):
    """The factor the cos and sin tables are multiplied by: 1 (yarn's attention factor is
    added by make_hf_fixtures.py)."""
    return 1.0


def forward(cfg, w, ids):
    """Logits [L, vocab] (float64) of one sequence, positions 0..L-1, causal."""
    eps = cfg["rms_norm_eps"]
    heads, kv, hd = dims(cfg)
    L = len(ids)
    W = {k: v.to(F64) for k, v in w.items()}
    x = W["model.embed_tokens.weight"][torch.tensor(ids, dtype=torch.int64)]  # [L, H]

    freqs = torch.outer(torch.arange(L, dtype=F64), inv_freq(cfg))  # [L, hd/2]
    emb = torch.cat((freqs, freqs), dim=-1)
    cos, sin = emb.cos() * rope_scale(cfg), emb.sin() * rope_scale(cfg)  # [L, hd]
    mask = torch.triu(torch.ones(L, L, dtype=torch.bool), diagonal=1)
    group = heads // kv

    for l in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{l}."
        h = rms_norm(x, W[p + "input_layernorm.weight"], eps)
        q = h @ W[p + "self_attn.q_proj.weight"].T
        k = h @ W[p + "self_attn.k_proj.weight"].T
        v = h @ W[p + "self_attn.v_proj.weight"].T
        if has_qkv_bias(cfg):
            q = q + W[p + "self_attn.q_proj.bias"]
            k = k + W[p + "self_attn.k_proj.bias"]
            v = v + W[p + "self_attn.v_proj.bias"]
        q = q.view(L, heads, hd)
        k = k.view(L, kv, hd)
        v = v.view(L, kv, hd)
        if has_qk_norm(cfg):
            q = rms_norm(q, W[p + "self_attn.q_norm.weight"], eps)
            k = rms_norm(k, W[p + "self_attn.k_norm.weight"], eps)
        c, s = cos[:, None, :], sin[:, None, :]
        q = q * c + rotate_half(q) * s
        k = k * c + rotate_half(k) * s
        out = torch.empty(L, heads, hd, dtype=F64)
        for hh in range(heads):
            kh = hh // group
            sc = (q[:, hh, :] @ k[:, kh, :].T) / math.sqrt(hd)  # [L, L]
            sc = sc.masked_fill(mask, float("-inf"))
            out[:, hh, :] = torch.softmax(sc, dim=-1) @ v[:, kh, :]
        x = x + out.reshape(L, heads * hd) @ W[p + "self_attn.o_proj.weight"].T
        h = rms_norm(x, W[p + "post_attention_layernorm.weight"], eps)
        gate = h @ W[p + "mlp.gate_proj.weight"].T
        up = h @ W[p + "mlp.up_proj.weight"].T
        x = x + (torch.nn.functional.silu(gate) * up) @ W[p + "mlp.down_proj.weight"].T
    x = rms_norm(x, W["model.norm.weight"], eps)
    head = W["model.embed_tokens.weight"] if cfg["tie_word_embeddings"] else W["lm_head.weight"]
    return x @ head.T


def greedy(cfg, w, prompt, n):
    seq = list(prompt)
    margin = math.inf
    for _ in range(n):
        last = forward(cfg, w, seq)[-1]
        top = torch.topk(last, 2).values
        margin = min(margin, float(top[0] - top[1]))
        seq.append(int(torch.argmax(last)))
    return seq[len(prompt):], margin


# ---------------------------------------------------------------------------------------------
# Writers.


def write_safetensors(path, tensors):
    """tensors: name -> (dtype string, numpy array little-endian of that dtype)."""
    header = {"__metadata__": {"format": "pt"}}
    blobs = []
    off = 0
    for name in sorted(tensors):
        dt, arr = tensors[name]
        data = np.ascontiguousarray(arr).tobytes()
        header[name] = {"dtype": dt, "shape": list(arr.shape), "data_offsets": [off, off + len(data)]}
        blobs.append(data)
        off += len(data)
    hb = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hb += b" " * (-len(hb) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hb)))
        f.write(hb)
        for b in blobs:
            f.write(b)


def f32(t):
    return ("F32", t.detach().to(torch.float32).numpy().astype("<f4"))


def i32(xs):
    return ("I32", np.asarray(xs, dtype="<i4"))


def write_json(path, obj):
    with open(path, "w") as f:
        f.write(json.dumps(obj, indent=2) + "\n")


# ---------------------------------------------------------------------------------------------


def build(name, spec):
    cfg, seed = spec["config"], spec["seed"]
    d = os.path.join(OUT, name)
    os.makedirs(d, exist_ok=True)
    w = make_weights(cfg, seed)
    V = cfg["vocab_size"]

    write_json(os.path.join(d, "config.json"), cfg)
    write_safetensors(os.path.join(d, "model.safetensors"), {k: f32(v) for k, v in w.items()})

    g = torch.Generator().manual_seed(seed + 1)
    tens = {}
    all_logits = []
    for i, L in enumerate(SEQ_LENS):
        ids = torch.randint(0, V, (L,), generator=g).tolist()
        logits = forward(cfg, w, ids)
        all_logits.append(logits)
        tens[f"ids.{i}"] = i32(ids)
        tens[f"logits.{i}"] = f32(logits)
    write_safetensors(os.path.join(d, "logits.safetensors"), tens)

    # Greedy prompts: draw candidate prompts from a fixed stream until each has a clear margin
    # at every step and a varied continuation (deterministic: same candidates, same order).
    prompts, conts, margins = [], [], []
    gp = torch.Generator().manual_seed(seed + 2)
    for plen in PROMPT_LENS:
        for _attempt in range(100):
            prompt = torch.randint(0, V, (plen,), generator=gp).tolist()
            cont, m = greedy(cfg, w, prompt, MAX_NEW)
            if m > MIN_MARGIN and len(set(cont)) >= MIN_DISTINCT:
                break
        else:
            raise AssertionError(f"{name}: no good prompt of length {plen}")
        prompts.append(prompt)
        conts.append(cont)
        margins.append(m)
    min_margin = min(margins)
    assert min_margin > 1e-3
    write_json(
        os.path.join(d, "greedy.json"),
        {
            "prompts": prompts,
            "max_new_tokens": MAX_NEW,
            "continuations": conts,
            "min_margin": round(min_margin, 6),
        },
    )

    cat = torch.cat(all_logits)
    print(
        f"{name:7s} max|logit|={float(cat.abs().max()):.3f} logit std={float(cat.std()):.3f} "
        f"mean per-row std={float(cat.std(dim=-1).mean()):.3f} greedy min_margin={min_margin:.4f} "
        f"distinct greedy tokens={[len(set(c)) for c in conts]}"
    )


def main():
    for name, spec in MODELS.items():
        build(name, spec)
    total = 0
    for root, _, files in os.walk(OUT):
        for fn in files:
            total += os.path.getsize(os.path.join(root, fn))
    print(f"total size of {os.path.relpath(OUT, ROOT)}: {total} bytes")


if __name__ == "__main__":
    sys.exit(main())
