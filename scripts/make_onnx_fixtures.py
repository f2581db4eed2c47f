#!/usr/bin/python3
"""ONNX fixtures for the onnx package's import tests: tiny decoders exported the way users'
files are made.

Regenerate (from the repository root; needs Debian's python3-torch, python3-onnx and
python3-numpy, nothing from pip):

    /usr/bin/python3 scripts/make_onnx_fixtures.py

The weights are those of the engine's golden models (engine/testdata/golden/<model>/
model.safetensors, made by scripts/make_goldens.py), so the tests compare imported weights
with those files bit for bit and need no second copy. The modules below follow Hugging Face
transformers' module naming and math (modeling_llama.py / modeling_qwen2.py / modeling_qwen3.py,
eager attention), written by hand because Debian has no transformers package; torch 1.13's
torch.onnx.export traces them exactly as it traces the HF classes, so the graphs have the
same shapes: node names like /model/layers.0/self_attn/q_proj/MatMul, linear weights folded
into anonymous transposed initializers (onnx::MatMul_123, [in, out]) when constant folding is
on, named ones behind Transpose nodes when it is off.

Output, onnx/testdata/<fixture>/:

  qwen2_past      torch.onnx.export with past_key_values (optimum's I/O names: input_ids,
                  attention_mask, position_ids, past_key_values.{i}.key/.value -> logits,
                  present.{i}.key/.value), RoPE from cos/sin cache buffers indexed by
                  position_ids (transformers < 4.38), constant folding on: anonymous
                  transposed weights. No config.json: the importer infers it.
  llama3_nopast   torch.onnx.export without past (input_ids, attention_mask -> logits), Llama 3
                  rope scaling, tied embeddings (lm_head is an anonymous transposed copy of
                  the embedding). config.json beside it (rope_scaling cannot be inferred).
  qwen3_past_ext  with past_key_values, RoPE from the inv_freq buffer (transformers >= 4.38),
                  constant folding off (weights keep their HF names, behind Transpose nodes),
                  saved with external data (model.onnx + model.onnx.data). No config.json.
  fuzz/FuzzImport/torch_tiny, genai_tiny
                  seeds for FuzzImport: a 1-layer torch export (as qwen2_past) and a genai graph
                  (as genai_qwen2) of a vocabulary-8, width-8 model, in Go's corpus format.
  genai_qwen2     an onnxruntime-genai builder-style graph (its names: model.layers.N.attn.
                  qkv_proj.MatMul.weight fused [in, q+k+v], ...attn.o_proj.MatMul.weight,
                  ...mlp.gate_proj.MatMul.weight, SimplifiedLayerNormalization,
                  SkipSimplifiedLayerNormalization, RotaryEmbedding and GroupQueryAttention
                  from com.microsoft, its I/O names and a cos/sin cache), made with
                  onnx.helper, and the genai_config.json the builder writes beside it.

The script is deterministic: a second run writes the same bytes.
"""

import json
import math
import os
import struct
import sys

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_goldens as mg  # noqa: E402  (inv_freq, dims: the same HF math as the goldens)

torch.set_num_threads(1)
torch.manual_seed(0)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GOLDEN = os.path.join(ROOT, "engine", "testdata", "golden")
OUT = os.path.join(ROOT, "onnx", "testdata")
OPSET = 17


def read_safetensors(path):
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    body = data[8 + n :]
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        assert info["dtype"] == "F32", name
        a, b = info["data_offsets"]
        arr = np.frombuffer(body[a:b], dtype="<f4").reshape(info["shape"])
        out[name] = torch.from_numpy(arr.copy())
    return out


def load_golden(name):
    d = os.path.join(GOLDEN, name)
    with open(os.path.join(d, "config.json")) as f:
        cfg = json.load(f)
    return cfg, read_safetensors(os.path.join(d, "model.safetensors"))


# ---------------------------------------------------------------------------------------------
# HF-style modules (float32, as exported).


class RMSNorm(torch.nn.Module):
    def __init__(self, n, eps):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(n))
        self.variance_epsilon = eps

    def forward(self, x):
        var = x.pow(2).mean(-1, keepdim=True)
        x = x * torch.rsqrt(var + self.variance_epsilon)
        return self.weight * x


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


class RotaryEmbedding(torch.nn.Module):
    """cache=True: transformers < 4.38 (cos_cached/sin_cached [max_pos, hd] gathered by
    position_ids); cache=False: >= 4.38 (inv_freq @ position_ids in the graph)."""

    def __init__(self, cfg, cache):
        super().__init__()
        inv = mg.inv_freq(cfg).to(torch.float32)
        self.cache = cache
        if cache:
            t = torch.arange(cfg["max_position_embeddings"], dtype=torch.float32)
            freqs = torch.outer(t, inv)
            emb = torch.cat((freqs, freqs), dim=-1)
            self.register_buffer("cos_cached", emb.cos(), persistent=False)
            self.register_buffer("sin_cached", emb.sin(), persistent=False)
        else:
            self.register_buffer("inv_freq", inv, persistent=False)

    def forward(self, position_ids):  # [B, S] -> cos, sin [B, S, hd]
        if self.cache:
            return self.cos_cached[position_ids], self.sin_cached[position_ids]
        inv = self.inv_freq[None, :, None].expand(position_ids.shape[0], -1, 1)
        freqs = (inv @ position_ids[:, None, :].float()).transpose(1, 2)
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos(), emb.sin()


class Attention(torch.nn.Module):
    def __init__(self, cfg):
        super().__init__()
        heads, kv, hd = mg.dims(cfg)
        self.heads, self.kv, self.hd = heads, kv, hd
        bias = mg.has_qkv_bias(cfg)
        H = cfg["hidden_size"]
        self.q_proj = torch.nn.Linear(H, heads * hd, bias=bias)
        self.k_proj = torch.nn.Linear(H, kv * hd, bias=bias)
        self.v_proj = torch.nn.Linear(H, kv * hd, bias=bias)
        self.o_proj = torch.nn.Linear(heads * hd, H, bias=False)
        self.qk_norm = mg.has_qk_norm(cfg)
        if self.qk_norm:
            self.q_norm = RMSNorm(hd, cfg["rms_norm_eps"])
            self.k_norm = RMSNorm(hd, cfg["rms_norm_eps"])

    def forward(self, x, cos, sin, mask, past):
        b, s, _ = x.shape
        q = self.q_proj(x).view(b, s, -1, self.hd)
        k = self.k_proj(x).view(b, s, -1, self.hd)
        v = self.v_proj(x).view(b, s, -1, self.hd)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # [B, h, S, hd]
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        if past is not None:
            k = torch.cat((past[0], k), dim=2)
            v = torch.cat((past[1], v), dim=2)
        present = (k, v)
        g = self.heads // self.kv
        t = k.shape[2]
        # repeat_kv: [B, kv, T, hd] -> [B, kv*g, T, hd]
        kk = k[:, :, None, :, :].expand(b, self.kv, g, t, self.hd).reshape(b, self.heads, t, self.hd)
        vv = v[:, :, None, :, :].expand(b, self.kv, g, t, self.hd).reshape(b, self.heads, t, self.hd)
        sc = torch.matmul(q, kk.transpose(2, 3)) / math.sqrt(self.hd) + mask
        p = torch.softmax(sc, dim=-1, dtype=torch.float32)
        o = torch.matmul(p, vv).transpose(1, 2).reshape(b, s, -1)
        return self.o_proj(o), present


class MLP(torch.nn.Module):
    def __init__(self, cfg):
        super().__init__()
        H, I = cfg["hidden_size"], cfg["intermediate_size"]
        self.gate_proj = torch.nn.Linear(H, I, bias=False)
        self.up_proj = torch.nn.Linear(H, I, bias=False)
        self.down_proj = torch.nn.Linear(I, H, bias=False)
        self.act_fn = torch.nn.SiLU()

    def forward(self, x):
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(torch.nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.self_attn = Attention(cfg)
        self.mlp = MLP(cfg)
        self.input_layernorm = RMSNorm(cfg["hidden_size"], cfg["rms_norm_eps"])
        self.post_attention_layernorm = RMSNorm(cfg["hidden_size"], cfg["rms_norm_eps"])

    def forward(self, x, cos, sin, mask, past):
        a, present = self.self_attn(self.input_layernorm(x), cos, sin, mask, past)
        x = x + a
        return x + self.mlp(self.post_attention_layernorm(x)), present


class Model(torch.nn.Module):
    def __init__(self, cfg, rope_cache):
        super().__init__()
        self.embed_tokens = torch.nn.Embedding(cfg["vocab_size"], cfg["hidden_size"])
        self.layers = torch.nn.ModuleList([DecoderLayer(cfg) for _ in range(cfg["num_hidden_layers"])])
        self.norm = RMSNorm(cfg["hidden_size"], cfg["rms_norm_eps"])
        self.rotary_emb = RotaryEmbedding(cfg, rope_cache)


class ForCausalLM(torch.nn.Module):
    """forward(input_ids, attention_mask[, position_ids, past k, past v, ...]) ->
    logits[, present k, present v, ...], as optimum exports it."""

    def __init__(self, cfg, weights, rope_cache, with_past):
        super().__init__()
        self.cfg = cfg
        self.with_past = with_past
        self.model = Model(cfg, rope_cache)
        self.lm_head = torch.nn.Linear(cfg["hidden_size"], cfg["vocab_size"], bias=False)
        missing = set(weights)
        params = dict(self.named_parameters())
        for name, p in params.items():
            if name == "lm_head.weight" and cfg["tie_word_embeddings"]:
                continue
            p.data.copy_(weights[name])
            missing.discard(name)
        assert not missing, missing
        if cfg["tie_word_embeddings"]:
            self.lm_head.weight = self.model.embed_tokens.weight

    def forward(self, input_ids, attention_mask, *rest):
        b, s = input_ids.shape
        if self.with_past:
            position_ids, flat = rest[0], rest[1:]
            past = [(flat[2 * i], flat[2 * i + 1]) for i in range(len(flat) // 2)]
            p = past[0][0].shape[2]
        else:
            position_ids = torch.arange(s, dtype=torch.int64)[None, :].expand(b, s)
            past = [None] * len(self.model.layers)
            p = 0
        t = p + s
        # HF's 4D mask: query i (position p+i) sees key j when j <= p+i and attention_mask[b, j].
        qpos = torch.arange(s, dtype=torch.int64)[:, None] + p
        kpos = torch.arange(t, dtype=torch.int64)[None, :]
        allowed = (kpos <= qpos)[None, None, :, :] & attention_mask[:, None, None, :].bool()
        mask = torch.zeros(allowed.shape, dtype=torch.float32).masked_fill(~allowed, torch.finfo(torch.float32).min)
        x = self.model.embed_tokens(input_ids)
        cos, sin = self.model.rotary_emb(position_ids)
        presents = []
        for layer, pkv in zip(self.model.layers, past):
            x, present = layer(x, cos, sin, mask, pkv)
            presents.extend(present)
        logits = self.lm_head(self.model.norm(x))
        if self.with_past:
            return (logits, *presents)
        return logits


def torch_export(name, golden, rope_cache, with_past, fold, external, config_json, out=None):
    cfg, w = load_golden(golden) if isinstance(golden, str) else golden
    m = ForCausalLM(cfg, w, rope_cache, with_past).eval()
    heads, kv, hd = mg.dims(cfg)
    L = cfg["num_hidden_layers"]
    b, s, p = 2, 3, 4
    g = torch.Generator().manual_seed(7)
    ids = torch.randint(0, cfg["vocab_size"], (b, s), generator=g)
    args = [ids, torch.ones(b, p + s, dtype=torch.int64)]
    in_names = ["input_ids", "attention_mask"]
    out_names = ["logits"]
    axes = {"input_ids": {0: "batch_size", 1: "sequence_length"},
            "attention_mask": {0: "batch_size", 1: "past_sequence_length + sequence_length"},
            "logits": {0: "batch_size", 1: "sequence_length"}}
    if with_past:
        args.append(torch.arange(p, p + s, dtype=torch.int64)[None, :].expand(b, s).contiguous())
        in_names.append("position_ids")
        axes["position_ids"] = {0: "batch_size", 1: "sequence_length"}
        for i in range(L):
            for kvn in ("key", "value"):
                args.append(torch.randn(b, kv, p, hd, generator=g))
                n = f"past_key_values.{i}.{kvn}"
                in_names.append(n)
                axes[n] = {0: "batch_size", 2: "past_sequence_length"}
                n = f"present.{i}.{kvn}"
                out_names.append(n)
                axes[n] = {0: "batch_size", 2: "past_sequence_length + 1"}
    else:
        args[1] = torch.ones(b, s, dtype=torch.int64)
        axes["attention_mask"] = {0: "batch_size", 1: "sequence_length"}
    d = out or os.path.join(OUT, name)
    os.makedirs(d, exist_ok=True)
    if out is None:
        for fn in os.listdir(d):
            os.remove(os.path.join(d, fn))
    path = os.path.join(d, "model.onnx")
    with torch.no_grad():
        torch.onnx.export(m, tuple(args), path, input_names=in_names, output_names=out_names,
                          dynamic_axes=axes, opset_version=OPSET, do_constant_folding=fold)
    if external:
        model = onnx.load(path)
        onnx.save_model(model, path, save_as_external_data=True, all_tensors_to_one_file=True,
                        location="model.onnx.data", size_threshold=1024)
    if config_json:
        mg.write_json(os.path.join(d, "config.json"), cfg)
    onnx.checker.check_model(path)
    if out is None:
        report(name, d)
    return path


# ---------------------------------------------------------------------------------------------
# onnxruntime-genai builder style (src/python/py/models/builder.py): fused qkv MatMul with
# weights stored [in, out], SimplifiedLayerNormalization / SkipSimplifiedLayerNormalization,
# RotaryEmbedding with cos/sin caches [max_len, hd/2], GroupQueryAttention (com.microsoft) with
# seqlens_k / total_sequence_length computed from attention_mask.


def genai_export(name, golden, out=None):
    cfg, w = load_golden(golden) if isinstance(golden, str) else golden
    heads, kv, hd = mg.dims(cfg)
    H, V, L = cfg["hidden_size"], cfg["vocab_size"], cfg["num_hidden_layers"]
    eps = cfg["rms_norm_eps"]
    max_len = cfg["max_position_embeddings"]
    nodes, inits = [], []

    def init(n, arr, dtype=np.float32):
        inits.append(numpy_helper.from_array(np.ascontiguousarray(np.asarray(arr, dtype=dtype)), n))
        return n

    def node(op, ins, outs, nm, domain="", **attrs):
        nodes.append(helper.make_node(op, ins, outs, name=nm, domain=domain or None, **attrs))
        return outs

    def W(n):
        return w[n].numpy()

    inv = mg.inv_freq(cfg).to(torch.float32)
    freqs = torch.outer(torch.arange(max_len, dtype=torch.float32), inv)
    init("cos_cache", freqs.cos().numpy())
    init("sin_cache", freqs.sin().numpy())
    init("model.embed_tokens.weight", W("model.embed_tokens.weight"))
    node("Gather", ["model.embed_tokens.weight", "input_ids"], ["/model/embed_tokens/Gather/output_0"],
         "/model/embed_tokens/Gather")
    # seqlens_k = sum(attention_mask) - 1 (int32), total_sequence_length = shape(mask)[1] (int32).
    init("/model/constants/TensorProto.INT64/1D/1", [1], np.int64)
    init("/model/constants/TensorProto.INT64/0D/1", 1, np.int64)
    node("ReduceSum", ["attention_mask", "/model/constants/TensorProto.INT64/1D/1"],
         ["/model/attn_mask_reformat/attn_mask_subgraph/ReduceSum/output_0"],
         "/model/attn_mask_reformat/attn_mask_subgraph/ReduceSum", keepdims=0)
    node("Sub", ["/model/attn_mask_reformat/attn_mask_subgraph/ReduceSum/output_0",
                 "/model/constants/TensorProto.INT64/0D/1"],
         ["/model/attn_mask_reformat/attn_mask_subgraph/Sub/output_0"],
         "/model/attn_mask_reformat/attn_mask_subgraph/Sub")
    node("Cast", ["/model/attn_mask_reformat/attn_mask_subgraph/Sub/output_0"],
         ["/model/attn_mask_reformat/attn_mask_subgraph/Sub/Cast/output_0"],
         "/model/attn_mask_reformat/attn_mask_subgraph/Sub/Cast", to=TensorProto.INT32)
    node("Shape", ["attention_mask"], ["/model/attn_mask_reformat/attn_mask_subgraph/Shape/output_0"],
         "/model/attn_mask_reformat/attn_mask_subgraph/Shape")
    node("Gather", ["/model/attn_mask_reformat/attn_mask_subgraph/Shape/output_0",
                    "/model/constants/TensorProto.INT64/0D/1"],
         ["/model/attn_mask_reformat/attn_mask_subgraph/Gather/output_0"],
         "/model/attn_mask_reformat/attn_mask_subgraph/Gather", axis=0)
    node("Cast", ["/model/attn_mask_reformat/attn_mask_subgraph/Gather/output_0"],
         ["/model/attn_mask_reformat/attn_mask_subgraph/Gather/Cast/output_0"],
         "/model/attn_mask_reformat/attn_mask_subgraph/Gather/Cast", to=TensorProto.INT32)
    seqlens = "/model/attn_mask_reformat/attn_mask_subgraph/Sub/Cast/output_0"
    total = "/model/attn_mask_reformat/attn_mask_subgraph/Gather/Cast/output_0"

    x = "/model/embed_tokens/Gather/output_0"
    skip = None
    q_dim, kv_dim = heads * hd, kv * hd
    for l in range(L):
        p = f"model.layers.{l}."
        s = f"/model/layers.{l}"
        ln = init(p + "input_layernorm.weight", W(p + "input_layernorm.weight"))
        if skip is None:
            h = node("SimplifiedLayerNormalization", [x, ln], [f"{s}/input_layernorm/LayerNorm/output_0"],
                     f"{s}/input_layernorm/LayerNorm", axis=-1, epsilon=eps, stash_type=1)[0]
        else:
            outs = node("SkipSimplifiedLayerNormalization", [skip, x, ln],
                        [f"{s}/input_layernorm/SkipLayerNorm/output_0", "", "",
                         f"{s}/input_layernorm/SkipLayerNorm/output_3"],
                        f"{s}/input_layernorm/SkipLayerNorm", domain="com.microsoft", epsilon=eps)
            h, x = outs[0], outs[3]
        qkv_w = np.concatenate([W(p + f"self_attn.{n}_proj.weight") for n in "qkv"], axis=0).T
        init(p + "attn.qkv_proj.MatMul.weight", qkv_w)
        qkv = node("MatMul", [h, p + "attn.qkv_proj.MatMul.weight"], [f"{s}/attn/qkv_proj/MatMul/output_0"],
                   f"{s}/attn/qkv_proj/MatMul")[0]
        if mg.has_qkv_bias(cfg):
            qkv_b = np.concatenate([W(p + f"self_attn.{n}_proj.bias") for n in "qkv"])
            init(p + "attn.qkv_proj.Add.bias", qkv_b)
            qkv = node("Add", [qkv, p + "attn.qkv_proj.Add.bias"], [f"{s}/attn/qkv_proj/Add/output_0"],
                       f"{s}/attn/qkv_proj/Add")[0]
        node("Split", [qkv, init(f"{s}/attn/split_sizes", [q_dim, kv_dim, kv_dim], np.int64)],
             [f"{s}/attn/q/output_0", f"{s}/attn/k/output_0", f"{s}/attn/v/output_0"],
             f"{s}/attn/Split", axis=-1)
        q = node("RotaryEmbedding", [f"{s}/attn/q/output_0", "position_ids", "cos_cache", "sin_cache"],
                 [f"{s}/attn/q_rotary/RotaryEmbedding/output_0"], f"{s}/attn/q_rotary/RotaryEmbedding",
                 domain="com.microsoft", interleaved=0, num_heads=heads, rotary_embedding_dim=hd)[0]
        k = node("RotaryEmbedding", [f"{s}/attn/k/output_0", "position_ids", "cos_cache", "sin_cache"],
                 [f"{s}/attn/k_rotary/RotaryEmbedding/output_0"], f"{s}/attn/k_rotary/RotaryEmbedding",
                 domain="com.microsoft", interleaved=0, num_heads=kv, rotary_embedding_dim=hd)[0]
        node("GroupQueryAttention",
             [q, k, f"{s}/attn/v/output_0", f"past_key_values.{l}.key", f"past_key_values.{l}.value",
              seqlens, total],
             [f"{s}/attn/GroupQueryAttention/output_0", f"present.{l}.key", f"present.{l}.value"],
             f"{s}/attn/GroupQueryAttention", domain="com.microsoft", num_heads=heads, kv_num_heads=kv,
             scale=1.0 / math.sqrt(hd), do_rotary=0)
        init(p + "attn.o_proj.MatMul.weight", W(p + "self_attn.o_proj.weight").T)
        o = node("MatMul", [f"{s}/attn/GroupQueryAttention/output_0", p + "attn.o_proj.MatMul.weight"],
                 [f"{s}/attn/o_proj/MatMul/output_0"], f"{s}/attn/o_proj/MatMul")[0]
        ln2 = init(p + "post_attention_layernorm.weight", W(p + "post_attention_layernorm.weight"))
        h, _, _, x = node("SkipSimplifiedLayerNormalization", [x, o, ln2],
                          [f"{s}/post_attention_layernorm/SkipLayerNorm/output_0", "", "",
                           f"{s}/post_attention_layernorm/SkipLayerNorm/output_3"],
                          f"{s}/post_attention_layernorm/SkipLayerNorm", domain="com.microsoft", epsilon=eps)
        for n in ("gate", "up"):
            init(p + f"mlp.{n}_proj.MatMul.weight", W(p + f"mlp.{n}_proj.weight").T)
            node("MatMul", [h, p + f"mlp.{n}_proj.MatMul.weight"], [f"{s}/mlp/{n}_proj/MatMul/output_0"],
                 f"{s}/mlp/{n}_proj/MatMul")
        g = f"{s}/mlp/gate_proj/MatMul/output_0"
        node("Sigmoid", [g], [f"{s}/mlp/act_fn/Sigmoid/output_0"], f"{s}/mlp/act_fn/Sigmoid")
        node("Mul", [g, f"{s}/mlp/act_fn/Sigmoid/output_0"], [f"{s}/mlp/act_fn/Mul/output_0"], f"{s}/mlp/act_fn/Mul")
        node("Mul", [f"{s}/mlp/act_fn/Mul/output_0", f"{s}/mlp/up_proj/MatMul/output_0"],
             [f"{s}/mlp/Mul/output_0"], f"{s}/mlp/Mul")
        init(p + "mlp.down_proj.MatMul.weight", W(p + "mlp.down_proj.weight").T)
        skip = node("MatMul", [f"{s}/mlp/Mul/output_0", p + "mlp.down_proj.MatMul.weight"],
                    [f"{s}/mlp/down_proj/MatMul/output_0"], f"{s}/mlp/down_proj/MatMul")[0]
    init("model.norm.weight", W("model.norm.weight"))
    h = node("SkipSimplifiedLayerNormalization", [skip, x, "model.norm.weight"],
             ["/model/norm/SkipLayerNorm/output_0", "", "", "/model/norm/SkipLayerNorm/output_3"],
             "/model/norm/SkipLayerNorm", domain="com.microsoft", epsilon=eps)[0]
    head = "model.embed_tokens.weight" if cfg["tie_word_embeddings"] else "lm_head.weight"
    init("lm_head.MatMul.weight", W(head).T)
    node("MatMul", [h, "lm_head.MatMul.weight"], ["logits"], "/lm_head/MatMul")

    inputs = [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch_size", "sequence_length"]),
              helper.make_tensor_value_info("attention_mask", TensorProto.INT64,
                                            ["batch_size", "total_sequence_length"]),
              helper.make_tensor_value_info("position_ids", TensorProto.INT64, ["batch_size", "sequence_length"])]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch_size", "sequence_length", V])]
    for l in range(L):
        for kvn in ("key", "value"):
            inputs.append(helper.make_tensor_value_info(f"past_key_values.{l}.{kvn}", TensorProto.FLOAT,
                                                        ["batch_size", kv, "past_sequence_length", hd]))
            outputs.append(helper.make_tensor_value_info(f"present.{l}.{kvn}", TensorProto.FLOAT,
                                                         ["batch_size", kv, "total_sequence_length", hd]))
    graph = helper.make_graph(nodes, "main_graph", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)],
                              producer_name="onnxruntime-genai", ir_version=8)
    if out is not None:
        onnx.save(model, out)
        return out
    d = os.path.join(OUT, name)
    os.makedirs(d, exist_ok=True)
    for fn in os.listdir(d):
        os.remove(os.path.join(d, fn))
    onnx.save(model, os.path.join(d, "model.onnx"))
    mg.write_json(os.path.join(d, "genai_config.json"), {
        "model": {
            "type": cfg["model_type"], "vocab_size": V, "context_length": max_len,
            "bos_token_id": cfg.get("bos_token_id"), "eos_token_id": cfg.get("eos_token_id"),
            "decoder": {"filename": "model.onnx", "hidden_size": H, "head_size": hd,
                        "num_attention_heads": heads, "num_key_value_heads": kv, "num_hidden_layers": L,
                        "inputs": {"input_ids": "input_ids", "attention_mask": "attention_mask",
                                   "position_ids": "position_ids",
                                   "past_key_names": "past_key_values.%d.key",
                                   "past_value_names": "past_key_values.%d.value"},
                        "outputs": {"logits": "logits", "present_key_names": "present.%d.key",
                                    "present_value_names": "present.%d.value"}},
        },
        "search": {"max_length": max_len},
    })
    report(name, d)


# ---------------------------------------------------------------------------------------------
# Fuzz seeds: the same kinds of graphs at a tiny size, in Go's fuzz corpus format
# (onnx/testdata/fuzz/FuzzImport/<name>), so the fuzzer mutates torch and genai graphs too.

TINY = {
    "architectures": ["Qwen2ForCausalLM"], "hidden_act": "silu", "hidden_size": 8,
    "intermediate_size": 8, "max_position_embeddings": 8, "model_type": "qwen2",
    "num_attention_heads": 2, "num_hidden_layers": 1, "num_key_value_heads": 1,
    "rms_norm_eps": 1e-06, "rope_scaling": None, "rope_theta": 10000.0,
    "tie_word_embeddings": False, "vocab_size": 8,
}


def tiny_weights(cfg):
    g = torch.Generator().manual_seed(5)
    heads, kv, hd = mg.dims(cfg)
    H, V, I = cfg["hidden_size"], cfg["vocab_size"], cfg["intermediate_size"]
    shapes = {"model.embed_tokens.weight": (V, H), "model.norm.weight": (H,), "lm_head.weight": (V, H)}
    p = "model.layers.0."
    shapes.update({p + "input_layernorm.weight": (H,), p + "post_attention_layernorm.weight": (H,),
                   p + "self_attn.q_proj.weight": (heads * hd, H), p + "self_attn.k_proj.weight": (kv * hd, H),
                   p + "self_attn.v_proj.weight": (kv * hd, H), p + "self_attn.o_proj.weight": (H, heads * hd),
                   p + "self_attn.q_proj.bias": (heads * hd,), p + "self_attn.k_proj.bias": (kv * hd,),
                   p + "self_attn.v_proj.bias": (kv * hd,), p + "mlp.gate_proj.weight": (I, H),
                   p + "mlp.up_proj.weight": (I, H), p + "mlp.down_proj.weight": (H, I)})
    return {n: torch.randn(*s, generator=g) for n, s in sorted(shapes.items())}


def go_fuzz_file(path, data):
    lit = "".join(chr(b) if 0x20 <= b < 0x7F and b not in (0x22, 0x5C) else "\\x%02x" % b for b in data)
    with open(path, "w") as f:
        f.write('go test fuzz v1\n[]byte("' + lit + '")\n')


def fuzz_seeds():
    import tempfile
    d = os.path.join(OUT, "fuzz", "FuzzImport")
    os.makedirs(d, exist_ok=True)
    cw = (TINY, tiny_weights(TINY))
    with tempfile.TemporaryDirectory() as tmp:
        for name, path in [
            ("torch_tiny", torch_export("", cw, rope_cache=True, with_past=True, fold=True, external=False,
                                        config_json=False, out=tmp)),
            ("genai_tiny", genai_export("", cw, out=os.path.join(tmp, "genai.onnx"))),
        ]:
            with open(path, "rb") as f:
                data = f.read()
            go_fuzz_file(os.path.join(d, name), data)
            print(f"fuzz seed {name:10s} {len(data):8d} bytes")


def report(name, d):
    files = sorted(os.listdir(d))
    size = sum(os.path.getsize(os.path.join(d, f)) for f in files)
    print(f"{name:15s} {size:8d} bytes: {', '.join(files)}")


def main():
    torch_export("qwen2_past", "qwen2", rope_cache=True, with_past=True, fold=True, external=False, config_json=False)
    torch_export("llama3_nopast", "llama3", rope_cache=False, with_past=False, fold=True, external=False,
                 config_json=True)
    torch_export("qwen3_past_ext", "qwen3", rope_cache=False, with_past=True, fold=False, external=True,
                 config_json=False)
    genai_export("genai_qwen2", "qwen2")
    fuzz_seeds()


if __name__ == "__main__":
    sys.exit(main())
