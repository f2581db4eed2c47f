#!/usr/bin/env python3
"""Ablation of the ProRL ingredients on the default job; writes docs/ablation.md.

Runs `go run ./tools/train` with the same seeds and steps, first adding one ingredient at a
time — plain GRPO (symmetric clip 0.2, no dynamic sampling, no reference reset), + clip-higher
(eps_high 0.4), + dynamic sampling, + reference reset (every 100 steps: the default job) — then
the default job with one option each of what practitioners add to GRPO (GSPO, Clip-Cov, KL-Cov,
an entropy bonus, DAPO's soft overlong punishment, masking truncated responses, TIS, overlapped
rollouts), and tabulates held-out accuracy, policy entropy and KL at equal steps from each run's
metrics.jsonl.

    python3 scripts/ablation.py [--seeds 1,2] [--steps 200] [--out runs/ablation] [--reuse]

Runs go seed by seed (every row of seed 1 first); a finished run is kept, so a stopped
ablation continues where it stopped. --reuse tabulates what has run (rows not run yet show -).
Standard library only (no numpy); takes about 5-8 minutes per run on 2 cores.
"""
import argparse
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CONFIGS = [
    ("plain GRPO", ["--clip-high", "0.2", "--no-dynamic-sampling", "--ref-reset-every", "0"]),
    ("+ clip-higher", ["--no-dynamic-sampling", "--ref-reset-every", "0"]),
    ("+ dynamic sampling", ["--ref-reset-every", "0"]),
    ("+ reference reset (default job)", []),
]

# The default job (today's defaults, dual clip 3 included) with one option each.
OPTIONS = [
    ("default job", []),
    ("GSPO", ["--policy-loss", "gspo"]),
    ("Clip-Cov", ["--policy-loss", "clip-cov"]),
    ("KL-Cov", ["--policy-loss", "kl-cov"]),
    ("entropy bonus 0.001", ["--entropy-coef", "0.001"]),
    ("DAPO soft overlong (buffer 8)", ["--overlong-buffer", "8", "--overlong-penalty", "1"]),
    ("mask truncated", ["--mask-truncated"]),
    ("TIS (cap 2)", ["--tis-cap", "2"]),
    ("overlapped rollouts (in-process)", ["--overlap", "on"]),
]


def run_dir(out, section, name, seed):
    slug = name.replace(" ", "_").replace("+", "plus").replace("(", "").replace(")", "")
    return os.path.join(out, section, slug, f"seed{seed}") if section else os.path.join(out, slug, f"seed{seed}")


def finished(mpath, steps):
    return os.path.exists(mpath) and any(r["step"] == steps for r in read(mpath))


def read(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def summary(recs, steps):
    evals = {r["step"]: r["eval"]["accuracy"] for r in recs if r.get("eval")}
    # metrics.jsonl names: verl's (actor/entropy, actor/kl_loss), or those of older runs.
    get = lambda r, name, old: r[name] if name in r else r[old]
    ent = [get(r, "actor/entropy", "entropy") for r in recs if r["step"] > steps - 25 and not r.get("skipped_no_signal") and r["step"] > 0]
    kl = [get(r, "actor/kl_loss", "kl") for r in recs if r["step"] > steps - 25 and r["step"] > 0]
    return evals.get(0), evals.get(steps // 2), evals.get(steps), sum(ent) / max(1, len(ent)), sum(kl) / max(1, len(kl))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", default="1")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--out", default=os.path.join(ROOT, "runs", "ablation"))
    ap.add_argument("--doc", default=os.path.join(ROOT, "docs", "ablation.md"))
    ap.add_argument("--reuse", action="store_true", help="tabulate existing runs without training")
    ap.add_argument("--sections", default="recipe,options",
                    help="which tables to run and write: recipe (one ingredient at a time), options (the default job with one option); "
                         "a table left out keeps its text in the existing --doc")
    ap.add_argument("--bin", help="a built tools/train binary to run instead of `go run ./tools/train`")
    a = ap.parse_args()
    seeds = [int(s) for s in a.seeds.split(",")]
    chosen = a.sections.split(",")
    sections = [(sec, cfgs) for name, sec, cfgs in [("recipe", "", CONFIGS), ("options", "options", OPTIONS)] if name in chosen]
    if not a.reuse:
        for seed in seeds:  # seed by seed: a stopped ablation still compares every row
            for section, configs in sections:
                for name, flags in configs:
                    out = run_dir(a.out, section, name, seed)
                    mpath = os.path.join(out, "metrics.jsonl")
                    if finished(mpath, a.steps):  # a finished run is kept
                        continue
                    if os.path.exists(mpath):
                        os.remove(mpath)  # an interrupted run starts over
                    prog = [a.bin] if a.bin else ["go", "run", "./tools/train"]
                    cmd = prog + ["--quiet", "--seed", str(seed), "--steps", str(a.steps), "--out", out] + flags
                    print("+", " ".join(cmd), file=sys.stderr, flush=True)
                    subprocess.run(cmd, cwd=ROOT, check=True)
    tables = {}
    for section, configs in sections:
        rows = []
        for name, flags in configs:
            per_seed = []
            for seed in seeds:
                mpath = os.path.join(run_dir(a.out, section, name, seed), "metrics.jsonl")
                per_seed.append(summary(read(mpath), a.steps) if finished(mpath, a.steps) else (None,) * 5)
            rows.append((name, flags, per_seed))
        tables[section or "recipe"] = rows
    os.makedirs(os.path.dirname(a.doc), exist_ok=True)
    heading = "\n## Options on top of the default job\n"
    old = open(a.doc).read() if os.path.exists(a.doc) else ""
    with open(a.doc, "w") as f:
        if "recipe" not in tables:  # keep the recipe table's text as it was
            f.write(old.split(heading)[0])
        else:
            f.write("# Ablation: what each ProRL ingredient does on the default job\n\n")
            f.write(f"Regenerate with `python3 scripts/ablation.py --seeds {a.seeds} --steps {a.steps}` (about 5-8 minutes per run and seed on 2 cores).\n")
            f.write("Each row adds one ingredient to the row above; everything else is the default job (`go run ./tools/train`).\n")
            f.write("Held-out accuracy is pass@1 at temperature 0.6, top-p 0.95, averaged over 4 samples of 200 held-out problems;\n")
            f.write(f"entropy and KL are means over the last 25 of {a.steps} steps. Seeds: {a.seeds} (mean; per-seed values in brackets).\n\n")
        def cell(vals, fmt):
            vals = [v for v in vals if v is not None]
            if not vals:
                return "-"
            m = sum(vals) / len(vals)
            if len(vals) == 1:
                return fmt.format(m)
            return fmt.format(m) + " [" + ", ".join(fmt.format(v) for v in vals) + "]"

        def table(rows, head):
            f.write(f"| {head} | flags | accuracy at 0 | at {a.steps // 2} | at {a.steps} | entropy | KL to ref |\n")
            f.write("| --- | --- | --- | --- | --- | --- | --- |\n")
            for name, flags, per in rows:
                cols = list(zip(*per))
                f.write(f"| {name} | `{' '.join(flags) or '(defaults)'}` | {cell(cols[0], '{:.1%}')} | {cell(cols[1], '{:.1%}')} | "
                        f"{cell(cols[2], '{:.1%}')} | {cell(cols[3], '{:.3f}')} | {cell(cols[4], '{:.4f}')} |\n")

        if "recipe" in tables:
            table(tables["recipe"], "recipe")
        if "options" in tables:
            f.write(heading + "\n")
            f.write(f"Each row is the default job with one option, seeds {a.seeds}, {a.steps} steps (today's defaults, dual clip 3\n")
            f.write("among them: the default job row is run again with them). `-`: not run yet; a value without brackets: one seed.\n")
            f.write(f"Regenerate with `python3 scripts/ablation.py --sections options --seeds {a.seeds} --steps {a.steps}`.\n\n")
            table(tables["options"], "option")
    print(open(a.doc).read())


if __name__ == "__main__":
    main()
