#!/usr/bin/python3
"""Independent check of a Hugging Face model directory written by Prolong's checkpoints package.

Usage: /usr/bin/python3 scripts/check_checkpoint.py OUT_DIR REFERENCE_DIR

Reads OUT_DIR (config.json, model.safetensors or model.safetensors.index.json + shards) with a
safetensors reader written here from the format description (struct + json + numpy; bf16
widened as uint16 << 16), and compares every tensor with REFERENCE_DIR/model.safetensors (an
F32 model written by PyTorch, e.g. engine/testdata/golden/qwen2):

- config.json names the transformers class for its model_type and torch_dtype for the stored
  dtype; the sizes agree with the reference config.json;
- the tensor names are the reference's (less lm_head.weight when embeddings are tied), with
  the same shapes;
- the values are the reference's, rounded to the stored dtype by an independent reference:
  F32 bit for bit, F16 by numpy's astype(float16), BF16 by torch's .to(torch.bfloat16)
  (numpy bit arithmetic when torch is missing).

Needs only Debian's python3-numpy (and python3-torch for the BF16 reference). Exits non-zero
with a message naming the file and tensor on the first mismatch.
"""
import json
import os
import struct
import sys

import numpy as np

ARCH = {"qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM", "llama": "LlamaForCausalLM"}
TORCH_DTYPE = {"F32": "float32", "BF16": "bfloat16", "F16": "float16"}
SIZES = {"F32": 4, "F16": 2, "BF16": 2}


def fail(msg):
    print("FAIL: " + msg)
    sys.exit(1)


def read_safetensors(path):
    """Returns ({name: float32 array}, {name: dtype}, metadata), validating the layout."""
    with open(path, "rb") as f:
        raw = f.read()
    if len(raw) < 8:
        fail(f"{path}: too short")
    (n,) = struct.unpack("<Q", raw[:8])
    if n % 8 != 0:
        fail(f"{path}: header length {n} is not a multiple of 8")
    if 8 + n > len(raw):
        fail(f"{path}: header length {n} beyond the file")
    hb = raw[8 : 8 + n]
    if hb.rstrip(b" ") != hb.rstrip(b" \t\r\n") or not hb.startswith(b"{"):
        fail(f"{path}: header must be a JSON object padded with spaces")
    header = json.loads(hb.decode("utf-8"))
    data = raw[8 + n :]
    meta = header.pop("__metadata__", {})
    end = 0
    out, dtypes = {}, {}
    for name, info in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0]):
        lo, hi = info["data_offsets"]
        dt = info["dtype"]
        if dt not in SIZES:
            fail(f"{path}: tensor {name}: dtype {dt}")
        if lo != end:
            fail(f"{path}: tensor {name} starts at {lo}, previous ended at {end}")
        count = int(np.prod(info["shape"], dtype=np.int64))
        if hi - lo != count * SIZES[dt]:
            fail(f"{path}: tensor {name}: {hi - lo} bytes for shape {info['shape']} of {dt}")
        end = hi
        buf = data[lo:hi]
        if dt == "F32":
            arr = np.frombuffer(buf, dtype="<f4").astype(np.float32)
        elif dt == "F16":
            arr = np.frombuffer(buf, dtype="<f2").astype(np.float32)
        else:
            arr = (np.frombuffer(buf, dtype="<u2").astype(np.uint32) << 16).view(np.float32)
        out[name] = arr.reshape(info["shape"])
        dtypes[name] = dt
    if end != len(data):
        fail(f"{path}: tensors end at {end}, data region has {len(data)} bytes")
    return out, dtypes, meta


def read_dir(d):
    index = os.path.join(d, "model.safetensors.index.json")
    if not os.path.exists(index):
        t, dt, _ = read_safetensors(os.path.join(d, "model.safetensors"))
        return t, dt, ["model.safetensors"]
    with open(index) as f:
        idx = json.load(f)
    files = sorted(set(idx["weight_map"].values()))
    tensors, dtypes = {}, {}
    total = 0
    for fn in files:
        t, dt, _ = read_safetensors(os.path.join(d, fn))
        for name in t:
            if idx["weight_map"].get(name) != fn:
                fail(f"{fn}: tensor {name} not listed for this file in the index")
            total += t[name].size * SIZES[dt[name]]
        tensors.update(t)
        dtypes.update(dt)
    if set(tensors) != set(idx["weight_map"]):
        fail(f"{index}: weight_map lists {sorted(set(idx['weight_map']) - set(tensors))} not found in the shards")
    if idx.get("metadata", {}).get("total_size") != total:
        fail(f"{index}: total_size {idx.get('metadata')} but the shards hold {total} bytes")
    return tensors, dtypes, files


def rounded(ref, dt):
    """ref (float32) rounded to dt and widened back, by independent references."""
    if dt == "F32":
        return ref
    if dt == "F16":
        return ref.astype(np.float16).astype(np.float32)
    try:
        import torch

        return torch.from_numpy(ref.copy()).to(torch.bfloat16).to(torch.float32).numpy()
    except ImportError:
        b = ref.view(np.uint32).astype(np.uint64)
        b = (b + 0x7FFF + ((b >> 16) & 1)) >> 16
        return (b.astype(np.uint32) << 16).view(np.float32)


def main():
    if len(sys.argv) != 3:
        print(__doc__)
        sys.exit(2)
    out_dir, ref_dir = sys.argv[1], sys.argv[2]
    with open(os.path.join(out_dir, "config.json")) as f:
        cfg = json.load(f)
    with open(os.path.join(ref_dir, "config.json")) as f:
        ref_cfg = json.load(f)
    for k in ("model_type", "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
              "num_key_value_heads", "intermediate_size", "tie_word_embeddings", "rope_theta", "rms_norm_eps"):
        if cfg.get(k) != ref_cfg.get(k):
            fail(f"config.json: field {k} is {cfg.get(k)!r}, reference {ref_cfg.get(k)!r}")
    if cfg.get("architectures") != [ARCH[cfg["model_type"]]]:
        fail(f"config.json: architectures {cfg.get('architectures')}")
    with open(os.path.join(out_dir, "generation_config.json")) as f:
        json.load(f)

    tensors, dtypes, files = read_dir(out_dir)
    ref, _, _ = read_safetensors(os.path.join(ref_dir, "model.safetensors"))
    if cfg["tie_word_embeddings"]:
        ref.pop("lm_head.weight", None)
    if set(tensors) != set(ref):
        fail(f"names differ: only written {sorted(set(tensors) - set(ref))}, only reference {sorted(set(ref) - set(tensors))}")
    stored = set(dtypes.values())
    if len(stored) != 1:
        fail(f"mixed dtypes {stored}")
    dt = stored.pop()
    if cfg.get("torch_dtype") != TORCH_DTYPE[dt]:
        fail(f"config.json: torch_dtype {cfg.get('torch_dtype')!r} for {dt} tensors")
    for name in sorted(ref):
        got, want = tensors[name], rounded(ref[name], dt)
        if got.shape != want.shape:
            fail(f"tensor {name}: shape {got.shape}, reference {want.shape}")
        if not np.array_equal(got.view(np.uint32), want.view(np.uint32)):
            i = int(np.argmax(got.view(np.uint32) != want.view(np.uint32)))
            fail(f"tensor {name}: element {i} is {got.reshape(-1)[i]!r}, reference {want.reshape(-1)[i]!r}")
    print(f"OK: {len(tensors)} tensors, {dt}, files {files}, all equal to the reference")


if __name__ == "__main__":
    main()
