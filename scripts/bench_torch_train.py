#!/usr/bin/python3
"""PyTorch CPU baseline for the engine's training path: one step = forward + backward +
(optional global-norm gradient clipping) + AdamW step of a Qwen2-shaped decoder, float32
(--autocast-bf16: the forward under bf16 autocast, as PyTorch users train on CPUs with bf16).

    /usr/bin/python3 scripts/bench_torch_train.py --batch 4 --seq 128 --threads 2

The model is the Hugging Face Qwen2 math of scripts/make_goldens.py (RMSNorm, q/k/v biases,
RoPE rotate_half, causal GQA attention, SwiGLU MLP, final norm, untied lm_head unless --tied)
written as a batched nn.Module: every linear layer is one matmul over all B*L tokens, attention
is batched per (sequence, head) with the KV heads expanded to the query heads (torch 1.13 has
no F.scaled_dot_product_attention; with a newer torch --sdpa uses it). Loss: mean cross-entropy
of every next token (positions 0..L-2 predict tokens 1..L-1). Random init (seed), random ids.

Debian's torch has no BLAS of its own: matmuls go through libblas.so.3. The reference (netlib)
BLAS that update-alternatives may point at runs ~5 GFLOPS, so a meaningful baseline needs an
optimised one, e.g. `apt-get install libopenblas0-pthread` (which takes over the alternative)
or, without changing the system default, LD_LIBRARY_PATH=/usr/lib/x86_64-linux-gnu/openblas-pthread.
The JSON reports the library actually loaded ("blas"). --threads sets torch's intra-op threads
and OMP/OPENBLAS/MKL_NUM_THREADS (before torch is imported).

W warmup steps are run untimed, then N timed steps. Prints ONE JSON line on stdout:
  tok_per_s  B*L / step_s (tokens of the batch processed per training step per second)
  step_s     mean wall time of a timed step (step_s_min, step_s_max alongside; forward_s,
             backward_s, clip_s, adamw_s: its phases, forward including the loss)
  threads, torch (version), params (number of parameters) and the shape arguments.
"""

import argparse
import contextlib
import json
import math
import os
import sys
import time


def _threads_from_argv():
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--threads", type=int, default=os.cpu_count())
    return pre.parse_known_args()[0].threads


# The BLAS torch calls (Debian: whatever libblas.so.3 is, e.g. OpenBLAS) keeps its own thread
# pool, sized from the environment when it is loaded: set it before importing torch.
for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_v] = str(_threads_from_argv())

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402


class RMSNorm(nn.Module):
    def __init__(self, n, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n))
        self.eps = eps

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


class Layer(nn.Module):
    def __init__(self, a):
        super().__init__()
        H, hd = a.hidden, a.head_dim
        self.heads, self.kv, self.hd = a.heads, a.kv_heads, hd
        self.sdpa = a.sdpa
        self.input_layernorm = RMSNorm(H, a.eps)
        self.q_proj = nn.Linear(H, a.heads * hd, bias=True)
        self.k_proj = nn.Linear(H, a.kv_heads * hd, bias=True)
        self.v_proj = nn.Linear(H, a.kv_heads * hd, bias=True)
        self.o_proj = nn.Linear(a.heads * hd, H, bias=False)
        self.post_attention_layernorm = RMSNorm(H, a.eps)
        self.gate_proj = nn.Linear(H, a.intermediate, bias=False)
        self.up_proj = nn.Linear(H, a.intermediate, bias=False)
        self.down_proj = nn.Linear(a.intermediate, H, bias=False)

    def forward(self, x, cos, sin, mask):
        B, L, _ = x.shape
        nh, nkv, hd = self.heads, self.kv, self.hd
        h = self.input_layernorm(x)
        q = self.q_proj(h).view(B, L, nh, hd).transpose(1, 2)  # [B, nh, L, hd]
        k = self.k_proj(h).view(B, L, nkv, hd).transpose(1, 2)
        v = self.v_proj(h).view(B, L, nkv, hd).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        g = nh // nkv  # HF repeat_kv: query head i uses kv head i // g
        k = k[:, :, None].expand(B, nkv, g, L, hd).reshape(B, nh, L, hd)
        v = v[:, :, None].expand(B, nkv, g, L, hd).reshape(B, nh, L, hd)
        if self.sdpa:
            o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            s = torch.matmul(q, k.transpose(-1, -2)) * (1.0 / math.sqrt(hd)) + mask
            o = torch.matmul(torch.softmax(s, dim=-1), v)
        o = o.transpose(1, 2).reshape(B, L, nh * hd)
        x = x + self.o_proj(o)
        h = self.post_attention_layernorm(x)
        return x + self.down_proj(F.silu(self.gate_proj(h)) * self.up_proj(h))


class Qwen2(nn.Module):
    def __init__(self, a):
        super().__init__()
        self.embed_tokens = nn.Embedding(a.vocab, a.hidden)
        self.layers = nn.ModuleList([Layer(a) for _ in range(a.layers)])
        self.norm = RMSNorm(a.hidden, a.eps)
        self.tied = a.tied
        if not a.tied:
            self.lm_head = nn.Linear(a.hidden, a.vocab, bias=False)
        hd = a.head_dim
        inv = 1.0 / (a.rope_theta ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd))
        fr = torch.outer(torch.arange(a.seq, dtype=torch.float64), inv)
        emb = torch.cat((fr, fr), dim=-1)
        self.register_buffer("cos", emb.cos().float(), persistent=False)
        self.register_buffer("sin", emb.sin().float(), persistent=False)
        mask = torch.full((a.seq, a.seq), float("-inf")).triu(1)
        self.register_buffer("mask", mask, persistent=False)
        # HF init: normal(0, initializer_range) for linear/embedding weights, zero biases.
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=0.02)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)

    def forward(self, ids):
        L = ids.shape[1]
        x = self.embed_tokens(ids)
        cos, sin, mask = self.cos[:L], self.sin[:L], self.mask[:L, :L]
        for layer in self.layers:
            x = layer(x, cos, sin, mask)
        x = self.norm(x)
        w = self.embed_tokens.weight if self.tied else self.lm_head.weight
        return F.linear(x, w)


def blas_library():
    """The BLAS shared object loaded in this process (Debian's torch links libblas.so.3, which
    update-alternatives or LD_LIBRARY_PATH points at reference BLAS, OpenBLAS, BLIS, MKL...)."""
    libs = set()
    with open("/proc/self/maps") as f:
        for line in f:
            path = line.split()[-1] if len(line.split()) >= 6 else ""
            base = os.path.basename(path)
            if "blas" in base or "mkl_rt" in base or "blis" in base:
                libs.add(os.path.realpath(path))
    return sorted(libs)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--hidden", type=int, default=768)
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--kv-heads", type=int, default=2)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--intermediate", type=int, default=2048)
    p.add_argument("--rope-theta", type=float, default=1e6)
    p.add_argument("--eps", type=float, default=1e-6)
    p.add_argument("--tied", action="store_true", help="tie lm_head to the embeddings")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--steps", type=int, default=15, help="timed steps")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--clip", type=float, default=1.0, help="global grad-norm clip; 0: none")
    p.add_argument("--sdpa", action="store_true",
                   help="F.scaled_dot_product_attention (torch >= 2.0 only)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--autocast-bf16", action="store_true",
                   help="run the forward and the loss under torch.autocast(\"cpu\", torch.bfloat16): "
                   "matmuls in bf16 (oneDNN: AMX or AVX512_BF16 where the CPU has them), "
                   "parameters, gradients and AdamW in float32")
    a = p.parse_args()
    if a.sdpa and not hasattr(F, "scaled_dot_product_attention"):
        p.error(f"--sdpa: torch {torch.__version__} has no F.scaled_dot_product_attention")
    assert a.heads % a.kv_heads == 0 and a.steps >= 1

    torch.set_num_threads(a.threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass
    torch.manual_seed(a.seed)
    model = Qwen2(a)
    params = [q for q in model.parameters()]
    n_params = sum(q.numel() for q in params)
    opt = torch.optim.AdamW(params, lr=a.lr, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    g = torch.Generator().manual_seed(a.seed + 1)
    ids = torch.randint(0, a.vocab, (a.batch, a.seq), generator=g)

    def autocast():
        if a.autocast_bf16:
            return torch.autocast(device_type="cpu", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def step():
        """One training step; returns (loss, [forward_s, backward_s, clip_s, adamw_s])."""
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        with autocast():
            logits = model(ids)
            loss = F.cross_entropy(logits[:, :-1].reshape(-1, a.vocab).float(), ids[:, 1:].reshape(-1))
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        if a.clip > 0:
            torch.nn.utils.clip_grad_norm_(params, a.clip)
        t3 = time.perf_counter()
        opt.step()
        t4 = time.perf_counter()
        return float(loss), [t1 - t0, t2 - t1, t3 - t2, t4 - t3]

    losses, times, phases = [], [], [0.0, 0.0, 0.0, 0.0]
    for i in range(a.warmup + a.steps):
        t0 = time.perf_counter()
        loss, ph = step()
        dt = time.perf_counter() - t0
        losses.append(loss)
        if i >= a.warmup:
            times.append(dt)
            phases = [x + y for x, y in zip(phases, ph)]
    step_s = sum(times) / len(times)
    print(json.dumps({
        "tok_per_s": round(a.batch * a.seq / step_s, 2),
        "step_s": round(step_s, 4),
        "step_s_min": round(min(times), 4),
        "step_s_max": round(max(times), 4),
        "forward_s": round(phases[0] / a.steps, 4), "backward_s": round(phases[1] / a.steps, 4),
        "clip_s": round(phases[2] / a.steps, 4), "adamw_s": round(phases[3] / a.steps, 4),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "params": n_params,
        "batch": a.batch, "seq": a.seq, "steps": a.steps, "warmup": a.warmup,
        "vocab": a.vocab, "hidden": a.hidden, "layers": a.layers, "heads": a.heads,
        "kv_heads": a.kv_heads, "head_dim": a.head_dim, "intermediate": a.intermediate,
        "tied": a.tied, "clip": a.clip, "attention": "sdpa" if a.sdpa else "matmul-softmax",
        "loss_first": round(losses[0], 4), "loss_last": round(losses[-1], 4),
        "blas": blas_library(),
        "autocast": "bf16" if a.autocast_bf16 else "",
    }))


if __name__ == "__main__":
    sys.exit(main())
