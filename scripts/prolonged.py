#!/usr/bin/env python3
"""Prolonged RL in miniature: the ProRL recipe against plain GRPO on the task suite; writes
docs/prolonged.md.

Runs `go run ./tools/train --task suite` (the default model, warm-started on the suite's
training mix: arithmetic chains and countdown, held out at and above the training difficulty)
for each configuration and seed, adding one ingredient at a time — plain GRPO (symmetric clip
0.2, no KL, no reference reset, no dynamic sampling), + clip-higher (eps_high 0.4), + KL to the
reference and reference resets, the full recipe (+ dynamic sampling) — and writes pass@1 and
pass@k (k up to --eval-samples, unbiased estimator) per held-out set against the step, entropy
against the step, and per training family entropy, KL to the reference and response length
against the step (plots with the seed spread, drawn by scripts/prolongedplot), tables of final
values with their spread, and a verdict computed from them.

    python3 scripts/prolonged.py [--seeds 1,2,3] [--steps 200] [--background] [--doc-only]

With the defaults: 12 runs (4 configurations x 3 seeds), each a warm start (600 SFT steps) and
200 GRPO steps of 16 prompts x 8 samples (12,800 rollouts per family) with 9 evaluations of
4 x 32 problems x 64 samples: about 8-10 minutes a run on 2 idle cores, about 2 hours in all.

Resumable: a run whose last step is logged is kept; an interrupted one starts over. With
--background it detaches and logs to OUT/grid.log. With --doc-only it trains nothing and writes
the document from the runs finished so far, listing the others as missing (each row says how
many seeds it has). The document's verdict compares the full recipe's final pass@k and entropy
with plain GRPO's, calling a difference beyond the seed spread only where one's lowest seed is
above the other's highest. Standard library only.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

NO_KL = ["--kl-coef", "0", "--ref-reset-every", "0"]
CONFIGS = [
    ("plain GRPO", ["--clip-high", "0.2", "--no-dynamic-sampling"] + NO_KL),
    ("+ clip-higher", ["--no-dynamic-sampling"] + NO_KL),
    ("+ KL and reference resets", ["--no-dynamic-sampling"]),
    ("full recipe (+ dynamic sampling)", []),
]


def slug(name):
    return "".join(c if c.isalnum() else "_" for c in name.replace("+", "plus")).strip("_")


def read(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def complete(out, steps):
    mpath = os.path.join(out, "metrics.jsonl")
    return os.path.exists(mpath) and any(r["step"] == steps and r.get("eval") for r in read(mpath))


def run_flags(a, seed, cfg_flags):
    return ["--task", "suite", "--quiet", "--seed", str(seed), "--steps", str(a.steps),
            "--prompts", str(a.prompts), "--n", str(a.n), "--eval-every", str(a.eval_every),
            "--eval-size", str(a.eval_size), "--eval-samples", str(a.eval_samples),
            "--ref-reset-every", str(a.reset_every)] + a.extra + cfg_flags  # later flags win


def train(a, seed, flags, out):
    if complete(out, a.steps):
        return
    if os.path.exists(out):
        shutil.rmtree(out)  # an interrupted run starts over
    prog = [a.bin] if a.bin else ["go", "run", "./tools/train"]
    cmd = prog + run_flags(a, seed, flags) + ["--out", out]
    print("+", " ".join(cmd), file=sys.stderr, flush=True)
    subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)


def last_step(out):
    """The last step a run directory's metrics log holds, or None without one."""
    mpath = os.path.join(out, "metrics.jsonl")
    recs = read(mpath) if os.path.exists(mpath) else []
    return recs[-1]["step"] if recs else None


def final(recs, steps):
    """The final evaluation's pass@k per held-out set, the starting one's, and the means of the
    entropy and KL (overall and per family) over the first and the last tenth of the steps."""
    evals = {r["step"]: r["eval"] for r in recs if r.get("eval")}
    w = max(1, steps // 10)
    first = [r for r in recs if 0 < r["step"] <= w]
    last = [r for r in recs if r["step"] > steps - w]
    f = {"start": evals.get(0, {}).get("pass_at_k_by_kind", {}), "end": evals.get(steps, {}).get("pass_at_k_by_kind", {})}
    for when, rs in (("first", first), ("last", last)):
        trained = [r for r in rs if not r.get("skipped_no_signal")]
        f[when] = {"entropy": mean([r["actor/entropy"] for r in trained if "actor/entropy" in r]),
                   "kl": mean([r["actor/kl_loss"] for r in trained if "actor/kl_loss" in r])}
        for key, name in (("actor/entropy_by_kind", "entropy"), ("actor/kl_loss_by_kind", "kl")):
            for fam in sorted({k for r in rs for k in r.get(key, {})}):
                f[when][f"{name} {fam}"] = mean([r[key][fam] for r in rs if fam in r.get(key, {})])
    return f


def mean(xs):
    return sum(xs) / len(xs) if xs else None


def spread(vals):
    """(mean, lowest, highest, n) of the values that are not None, or None without any."""
    vals = [v for v in vals if v is not None]
    return (mean(vals), min(vals), max(vals), len(vals)) if vals else None


def cell(vals, fmt):
    s = spread(vals)
    if s is None:
        return "-"
    m, lo, hi, n = s
    return fmt.format(m) if n == 1 else f"{fmt.format(m)} ({fmt.format(lo)}–{fmt.format(hi)})"


def compare(a, b):
    """How spread a stands to spread b: "above" or "below" beyond the seed spread (a's lowest
    seed above b's highest, or a's highest below b's lowest), "within" where the ranges
    overlap, None where either has fewer than 2 seeds (no spread to judge by)."""
    if a is None or b is None or a[3] < 2 or b[3] < 2:
        return None
    return "above" if a[1] > b[2] else "below" if a[2] < b[1] else "within"


def span(steps, first):
    """The first or the last tenth of the steps in words: "steps 191–200" (or "step 10")."""
    w = max(1, steps // 10)
    lo, hi = (1, w) if first else (steps - w + 1, steps)
    return f"step {lo}" if lo == hi else f"steps {lo}–{hi}"


def say(s, fmt):
    return "-" if s is None else f"{fmt.format(s[0])} [{fmt.format(s[1])}, {fmt.format(s[2])}] (n={s[3]})"


PLAIN, FULL = CONFIGS[0][0], CONFIGS[-1][0]
WORDS = {"above": "**above** plain GRPO's beyond the seed spread", "below": "**below** plain GRPO's beyond the seed spread",
         "within": "within the seed spread (the ranges overlap)", None: "not judged (fewer than 2 seeds with a value)"}


RULE = ("(The verdict is computed: yes where the full recipe's final pass@k at the largest k is above plain GRPO's beyond the "
        "seed spread on at least one held-out set and below it on none, and its entropy over the last tenth of the steps is "
        "above plain GRPO's beyond the spread; no where its pass@k is above on no held-out set; mixed otherwise. Beyond the "
        "seed spread means the ranges over seeds do not overlap.)\n")


def verdict(summaries, sets, steps, k):
    """The verdict paragraph, from the final figures of the full recipe and plain GRPO."""
    per = dict(summaries)
    full, plain = per.get(FULL, []), per.get(PLAIN, [])
    if len(full) < 2 or len(plain) < 2:
        return (f"Not judged yet: the verdict needs at least 2 finished seeds of both {PLAIN} (has {len(plain)}) and "
                f"{FULL} (has {len(full)}).\n")
    lines, got = [], {}
    for s in sets:
        for kk in (k, "1"):
            a, b = (spread([p["end"].get(s, {}).get(kk) for p in ps]) for ps in (full, plain))
            got[s, kk] = compare(a, b)
            lines.append(f"- {s}, pass@{kk} at step {steps}: full recipe {say(a, '{:.1%}')} vs plain GRPO {say(b, '{:.1%}')}: "
                         f"{WORDS[got[s, kk]]}.")
    ent = {}
    keys = ["entropy"] + sorted({key for p in full + plain for key in p["last"] if key.startswith("entropy ")})
    for key in keys:
        a, b = (spread([p["last"].get(key) for p in ps]) for ps in (full, plain))
        f0, p0 = (spread([p["first"].get(key) for p in ps]) for ps in (full, plain))
        ent[key] = compare(a, b)
        lines.append(f"- {key}, mean over {span(steps, False)}: full recipe {say(a, '{:.3f}')} vs plain GRPO {say(b, '{:.3f}')}: "
                     f"{WORDS[ent[key]]} (over {span(steps, True)}: {say(f0, '{:.3f}')} vs {say(p0, '{:.3f}')}).")
    up = [s for s in sets if got[s, k] == "above"]
    down = [s for s in sets if got[s, k] == "below"]
    head = (f"On {len(up)} of {len(sets)} held-out sets ({', '.join(up) or 'none'}) the full recipe's final pass@{k} is above "
            f"plain GRPO's beyond the seed spread (its lowest seed above plain GRPO's highest)")
    head += f"; on {len(down)} ({', '.join(down)}) it is below beyond the spread" if down else ""
    head += f"; its entropy at the end is {WORDS[ent['entropy']].replace('**', '')}."
    if up and not down and ent["entropy"] == "above":
        word = "yes"
    elif not up:
        word = "no (a negative result)"
        head += (f" What was tried: the {len(CONFIGS)} configurations in the table above, {len(plain)} seeds of plain GRPO and "
                 f"{len(full)} of the full recipe, {steps} steps each; the figures and plots below show what happened.")
    else:
        word = "mixed"
    return f"**Verdict: {word}.** {head}\n\n" + "\n".join(lines) + "\n\n" + RULE


def write_doc(a, runs):
    """Writes a.doc from the complete runs of runs [(name, dirs)]; the rest are listed missing."""
    done = [(name, [d for d in dirs if complete(d, a.steps)]) for name, dirs in runs]
    missing = [(name, d) for name, dirs in runs for d in dirs if not complete(d, a.steps)]
    files = plot(a, [(name, dirs) for name, dirs in done if dirs])
    summaries = [(name, [final(read(os.path.join(d, "metrics.jsonl")), a.steps) for d in dirs]) for name, dirs in done]
    sets = sorted({s for _, per in summaries for f in per for s in f["end"]})
    ks = {kk for _, per in summaries for f in per for byk in f["end"].values() for kk in byk}
    k = str(max(map(int, ks))) if ks else str(a.eval_samples)
    fams = sorted({key for _, per in summaries for f in per for key in f["last"] if key.startswith("entropy ")})
    with open(a.doc, "w") as f:
        f.write("# Prolonged RL in miniature: the ProRL recipe against plain GRPO\n\n")
        f.write(f"Generated by `python3 scripts/prolonged.py {' '.join(a.argv)}`".rstrip() + "; do not edit by hand.\n\n")
        f.write(f"The default model, warm-started on the task suite (`--task suite`), trained {a.steps} steps of {a.prompts} prompts x {a.n} samples, "
                f"seeds {a.seeds}. Held-out sets: each family at its training difficulty (`/in`) and above it (`/above`), "
                f"{a.eval_size} problems each, {a.eval_samples} samples per problem at temperature 0.6, top-p 0.95; "
                "pass@k by the unbiased estimator. Values are means over the finished seeds (n), (lowest–highest seed) in parentheses.\n\n")
        f.write("| configuration | flags | seeds finished |\n| --- | --- | --- |\n")
        for (name, flags), (_, dirs) in zip(CONFIGS, done):
            f.write(f"| {name} | `{' '.join(flags) or '(defaults)'}` | {len(dirs)} of {len(a.seeds.split(','))} |\n")
        if missing:
            f.write(f"\nNot finished (no evaluation at step {a.steps}), so left out of every figure below:\n\n")
            for name, d in missing:
                at = last_step(d)
                f.write(f"- {name}, {os.path.basename(d)}: " + ("not started" if at is None else f"logged up to step {at}") + "\n")
        f.write("\n## Verdict\n\n" + verdict(summaries, sets, a.steps, k))
        for s in sets:
            f.write(f"\n## {s}\n\n| configuration | n | pass@1 at 0 | pass@1 at {a.steps} | pass@{k} at 0 | pass@{k} at {a.steps} |\n"
                    "| --- | --- | --- | --- | --- | --- |\n")
            for name, per in summaries:
                g = lambda when, kk: [p[when].get(s, {}).get(kk) for p in per]
                f.write(f"| {name} | {len(per)} | {cell(g('start', '1'), '{:.1%}')} | {cell(g('end', '1'), '{:.1%}')} | "
                        f"{cell(g('start', k), '{:.1%}')} | {cell(g('end', k), '{:.1%}')} |\n")
        f.write(f"\n## Entropy and KL\n\nMeans over {span(a.steps, False)} (entropy and KL per token of the "
                "training samples; per family: that family's tokens).\n\n")
        f.write("| configuration | n | entropy | KL to the reference |" + "".join(f" {x} |" for x in fams) + "\n")
        f.write("| --- " * (4 + len(fams)) + "|\n")
        for name, per in summaries:
            f.write(f"| {name} | {len(per)} | {cell([p['last']['entropy'] for p in per], '{:.3f}')} | "
                    f"{cell([p['last']['kl'] for p in per], '{:.4f}')} |" + "".join(f" {cell([p['last'].get(x) for p in per], '{:.3f}')} |" for x in fams) + "\n")
        f.write("\n## Plots\n\nEach curve is a configuration's mean over its finished seeds; the band spans its lowest to highest seed."
                + (f" Training curves (entropy, KL, response length per step) average each seed over ±{smooth(a)} steps first."
                   if smooth(a) else "") + "\n\n")
        for path in files:
            rel = os.path.relpath(path if os.path.isabs(path) else os.path.join(ROOT, path), os.path.dirname(os.path.abspath(a.doc)))
            f.write(f"![{os.path.basename(path)}]({rel})\n\n")


def smooth(a):
    return a.steps // 40


def plot(a, runs):
    """Draws the plots of runs [(name, dirs)] with scripts/prolongedplot; returns their paths."""
    if not runs:
        return []
    plots = os.path.join(os.path.dirname(a.doc), "prolonged")
    prog = [a.plot_bin] if a.plot_bin else ["go", "run", "./scripts/prolongedplot"]
    cmd = prog + ["-out", plots, f"-smooth={smooth(a)}"] + [f"-run={name}={','.join(dirs)}" for name, dirs in runs]
    return subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, text=True).stdout.split()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", default="1,2,3")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--eval-every", type=int, default=25)
    ap.add_argument("--eval-size", type=int, default=32, help="problems per held-out set")
    ap.add_argument("--eval-samples", type=int, default=64, help="samples per held-out problem: pass@k up to this k")
    ap.add_argument("--reset-every", type=int, default=50, help="reference reset period of the configurations with resets")
    ap.add_argument("--out", default=os.path.join(ROOT, "runs", "prolonged"))
    ap.add_argument("--doc", default=os.path.join(ROOT, "docs", "prolonged.md"))
    ap.add_argument("--bin", help="a built tools/train binary to run instead of `go run ./tools/train`")
    ap.add_argument("--plot-bin", help="a built scripts/prolongedplot binary instead of `go run`")
    ap.add_argument("--extra", default="", help="more tools/train flags for every run, space-separated (e.g. '--sft-steps 10')")
    ap.add_argument("--background", action="store_true", help="detach, logging to OUT/grid.log")
    ap.add_argument("--doc-only", action="store_true", help="train nothing: write the document from the runs finished under --out")
    a = ap.parse_args()
    a.argv = [x for x in sys.argv[1:] if x != "--background"]
    a.extra = a.extra.split()
    if a.background:
        os.makedirs(a.out, exist_ok=True)
        log = open(os.path.join(a.out, "grid.log"), "a")
        p = subprocess.Popen([sys.executable, os.path.abspath(__file__)] + a.argv, cwd=ROOT, stdout=log, stderr=log, start_new_session=True)
        print(f"running in the background as process {p.pid}; log: {log.name}")
        return
    seeds = a.seeds.split(",")
    runs = [(name, [os.path.join(a.out, slug(name), f"seed{seed}") for seed in seeds]) for name, _ in CONFIGS]
    # Seed by seed, every configuration: a grid stopped early still compares them all.
    # Configurations without resets pass --ref-reset-every 0 after the common flags.
    for i, seed in enumerate([] if a.doc_only else seeds):
        for (_, flags), (_, dirs) in zip(CONFIGS, runs):
            train(a, int(seed), flags, dirs[i])
    os.makedirs(os.path.dirname(os.path.abspath(a.doc)), exist_ok=True)
    write_doc(a, runs)
    print(f"wrote {a.doc}", file=sys.stderr)


if __name__ == "__main__":
    main()
