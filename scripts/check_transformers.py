"""Load an export of ours with Hugging Face transformers and check it against ONNX Runtime.

    python3 scripts/check_transformers.py DIR [DIR ...]

DIR is a directory written by tools/train or tools/export (config.json, model.safetensors,
tokenizer files, generation_config.json, model.onnx). For each it loads the model and the
tokenizer with transformers' Auto classes (the point: the files we write load in the installed
transformers, 4 or 5), runs a prompt through it, runs the same ids through model.onnx in ONNX
Runtime (an independent reader of the same weights), and prints one JSON line: the versions, the
largest logit difference, whether the greedy next tokens agree, and 8 greedy tokens of
transformers' generate(). The exit status is 1 when a directory fails to load or the two
disagree (max |diff| above 1e-3 or another argmax).

It needs torch, transformers and onnxruntime: it runs on the GPU machine (scripts/gpu-check.sh),
whose python3 has them; this machine's Debian python3 has none of transformers or onnxruntime.
"""
import json
import sys

import numpy as np
import onnxruntime as ort
import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer


def check(d):
    tok = AutoTokenizer.from_pretrained(d)
    model = AutoModelForCausalLM.from_pretrained(d, torch_dtype=torch.float32).eval()
    ids = tok("12+7-5=", return_tensors="pt").input_ids
    if ids.shape[1] == 0:
        ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        hf = model(ids).logits[0].numpy()
        gen = model.generate(ids, max_new_tokens=8, do_sample=False)[0, ids.shape[1]:].tolist()
    cfg = model.config
    sess = ort.InferenceSession(f"{d}/model.onnx", providers=["CPUExecutionProvider"])
    heads = cfg.num_key_value_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    n = ids.shape[1]
    feed = {"input_ids": ids.numpy().astype(np.int64), "attention_mask": np.ones((1, n), np.int64),
            "position_ids": np.arange(n, dtype=np.int64)[None]}
    for i in range(cfg.num_hidden_layers):
        for kv in ("key", "value"):
            feed[f"past_key_values.{i}.{kv}"] = np.zeros((1, heads, 0, head_dim), np.float32)
    names = [i.name for i in sess.get_inputs()]
    onnx = sess.run(["logits"], {k: v for k, v in feed.items() if k in names})[0][0]
    diff = float(np.abs(onnx - hf).max())
    same = bool((onnx.argmax(-1) == hf.argmax(-1)).all())
    return {"dir": d, "transformers": transformers.__version__, "onnxruntime": ort.__version__,
            "class": type(model).__name__, "max_abs_logit_diff": diff, "argmax_agree": same,
            "greedy": gen, "ok": diff <= 1e-3 and same}


def main():
    bad = 0
    for d in sys.argv[1:]:
        try:
            r = check(d)
        except Exception as e:  # a directory that does not load is the finding
            r = {"dir": d, "ok": False, "error": f"{type(e).__name__}: {e}"}
        bad += not r["ok"]
        print(json.dumps(r), flush=True)
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
