"""A reward program for Prolong (tools/train --reward-cmd 'python3 reward.py').

Protocol (docs/reward-programs.md): Prolong writes one JSON line per batch on stdin,
    {"batch": [{"data_source": ..., "prompt": ..., "response": ..., "ground_truth": ...,
                "extra_info": {...}}, ...]}
and reads one JSON line per batch on stdout,
    {"results": [{"score": 0.0 to 1.0, ...any other fields...}, ...]}
with one result per row, in order. Print nothing else on stdout; use stderr for logs.

compute_score has the signature of a verl custom reward function: a float, or a dict with
"score" and any other fields, may be returned.
"""
import json
import re
import sys

NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def compute_score(data_source, solution_str, ground_truth, extra_info=None):
    """1 when the last number in the response equals the ground truth, else 0."""
    numbers = NUMBER.findall(solution_str.replace(",", ""))
    pred = numbers[-1] if numbers else None
    try:
        correct = pred is not None and float(pred) == float(ground_truth)
    except ValueError:  # a ground truth that is not a number: compare the text
        correct = pred == ground_truth.strip()
    return {"score": 1.0 if correct else 0.0, "pred": pred, "response_chars": len(solution_str)}


def score_row(row):
    result = compute_score(row["data_source"], row["response"], row["ground_truth"], row["extra_info"])
    if not isinstance(result, dict):
        result = {"score": float(result)}
    return result


def main():
    print("reward.py: ready", file=sys.stderr)  # stderr goes to Prolong's log
    for line in sys.stdin:
        batch = json.loads(line)["batch"]
        results = [score_row(row) for row in batch]
        print(json.dumps({"results": results}), flush=True)


if __name__ == "__main__":
    main()
