#!/usr/bin/python3
"""Independent check of an exported LoRA adapter: merge it into its base and compare with the
merged model the trainer exported beside it.

    /usr/bin/python3 scripts/check_lora_merge.py BASE_DIR EXPORT_DIR

BASE_DIR holds the base model.safetensors; EXPORT_DIR the exported merged model.safetensors
and adapter/ (adapter_config.json, adapter_model.safetensors). For every PEFT key
base_model.model.<module>.lora_A.weight (A [r, in]) and .lora_B.weight (B [out, r]) it forms
W + scaling * B @ A in float64, scaling = lora_alpha / r (lora_alpha / sqrt(r) with
use_rslora), as PEFT's get_delta_weight does, and compares every weight of the merged export
with the merge (rounded to float32): they must agree within 1 ulp of float32 (relative 2^-23
of the weight's largest magnitude); the weights without an adapter must equal the base's.
Prints one line and exits 0 when all agree, 1 otherwise. Reads safetensors with numpy only.
"""

import json
import math
import os
import struct
import sys

import numpy as np

DT = {"F32": "<f4", "F64": "<f8", "BF16": "<u2", "F16": "<f2"}


def read(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        blob = f.read()
    out = {}
    for k, v in header.items():
        if k == "__metadata__":
            continue
        lo, hi = v["data_offsets"]
        a = np.frombuffer(blob[lo:hi], dtype=DT[v["dtype"]])
        if v["dtype"] == "BF16":
            a = (a.astype(np.uint32) << 16).view(np.float32)
        out[k] = a.astype(np.float64).reshape(v["shape"])
    return out


def main():
    base_dir, export_dir = sys.argv[1], sys.argv[2]
    base = read(os.path.join(base_dir, "model.safetensors"))
    merged = read(os.path.join(export_dir, "model.safetensors"))
    ad_dir = os.path.join(export_dir, "adapter")
    with open(os.path.join(ad_dir, "adapter_config.json")) as f:
        cfg = json.load(f)
    assert cfg["peft_type"] == "LORA" and cfg["bias"] == "none", cfg
    r, alpha = cfg["r"], cfg["lora_alpha"]
    scaling = alpha / math.sqrt(r) if cfg.get("use_rslora") else alpha / r
    ad = read(os.path.join(ad_dir, "adapter_model.safetensors"))
    want = dict(base)
    adapted = 0
    prefix = "base_model.model."
    for k in ad:
        assert k.startswith(prefix), k
        if not k.endswith(".lora_A.weight"):
            continue
        mod = k[len(prefix):-len(".lora_A.weight")]
        A, B = ad[k], ad[prefix + mod + ".lora_B.weight"]
        assert A.shape[0] == r and B.shape[1] == r, (k, A.shape, B.shape)
        W = base[mod + ".weight"]
        assert W.shape == (B.shape[0], A.shape[1]), (mod, W.shape)
        want[mod + ".weight"] = W + scaling * (B @ A)
        adapted += 1
    assert sorted(want) == sorted(merged), (sorted(set(want) ^ set(merged)))
    worst, worst_name, moved = 0.0, "", 0.0
    for k in sorted(want):
        w32 = want[k].astype(np.float32).astype(np.float64)
        tol = 2.0 ** -23 * max(1e-30, float(np.abs(w32).max()))
        d = float(np.abs(w32 - merged[k]).max())
        moved = max(moved, float(np.abs(merged[k] - base[k]).max()))
        if d / tol > worst:
            worst, worst_name = d / tol, k
    ok = worst <= 1.0
    print(f"{'ok' if ok else 'MISMATCH'}: {adapted} adapted weights, scaling {scaling:g}, "
          f"largest difference {worst:.3g} ulp at {worst_name}, adapters move the weights by up to {moved:.3g}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
