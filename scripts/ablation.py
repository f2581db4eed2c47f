#!/usr/bin/env python3
"""Ablation of the ProRL ingredients on the default job; writes docs/ablation.md.

Runs `go run ./tools/train` with the same seeds and steps, first adding one ingredient at a
time — plain GRPO (symmetric clip 0.2, no dynamic sampling, no reference reset), + clip-higher
(eps_high 0.4), + dynamic sampling, + reference reset (every 100 steps: the default job) — then
the default job with one option each of what practitioners add to GRPO (GSPO, Clip-Cov, KL-Cov,
an entropy bonus, DAPO's soft overlong punishment, masking truncated responses, TIS, overlapped
rollouts), then the default job on two local rollout servers, synchronous and overlapped (the
script starts the servers), and tabulates held-out accuracy, policy entropy and KL (for the
servers: step, rollout and update times, and the rollout/trainer mismatch) at equal steps from
each run's metrics.jsonl.

    python3 scripts/ablation.py [--seeds 1,2] [--steps 200] [--sections recipe,options,servers] [--out runs/ablation] [--reuse]

Runs go seed by seed (every row of seed 1 first); a finished run is kept, so a stopped
ablation continues where it stopped. --reuse tabulates what has run (rows not run yet show -).
Standard library only (no numpy); takes about 5-8 minutes per run on 2 cores.
"""
import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading

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

# The default job generating on two local rollout servers (tools/rollout-server, started by this
# script for each run), waiting for each weight update or overlapped with it.
SERVERS = [
    ("synchronous", ["--overlap", "off"]),
    ("overlapped", ["--overlap", "on"]),
]
SERVER_KEY = "ablation"


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


def train(a, tmp, section, name, flags, seed):
    """Runs one row's seed unless it has finished (an interrupted run starts over); the servers
    section's runs get two fresh rollout servers each."""
    out = run_dir(a.out, section, name, seed)
    mpath = os.path.join(out, "metrics.jsonl")
    if finished(mpath, a.steps):
        return
    if os.path.exists(mpath):
        os.remove(mpath)
    prog = [a.bin] if a.bin else ["go", "run", "./tools/train"]
    cmd = prog + ["--quiet", "--seed", str(seed), "--steps", str(a.steps), "--out", out] + a.extra + flags
    env = dict(os.environ)
    with contextlib.ExitStack() as stack:
        if section == "servers":
            server_setup(a, tmp)
            urls = stack.enter_context(rollout_servers(a))
            cmd += ["--rollout-servers", ",".join(urls)]
            env["PROLONG_API_KEY"] = SERVER_KEY
        print("+", " ".join(cmd), file=sys.stderr, flush=True)
        subprocess.run(cmd, cwd=ROOT, check=True, env=env)


def plot(a, runs):
    """Draws the servers section's plots of runs [(name, dirs)] with scripts/prolongedplot into
    DOC's folder/ablation: held-out pass@k, the step's wall time and the rollout/trainer mismatch
    against the step; returns their paths relative to the document."""
    if not runs:
        return []
    plots = os.path.join(os.path.dirname(a.doc), "ablation")
    prog = [a.plot_bin] if a.plot_bin else ["go", "run", "./scripts/prolongedplot"]
    cmd = prog + ["-out", plots, "-smooth", "5", "-plots", "passk,timing,mismatch"] + [f"-run={name}={','.join(dirs)}" for name, dirs in runs]
    out = subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, text=True).stdout.split()
    return [os.path.relpath(p, os.path.dirname(a.doc)) for p in out]


def timing(recs):
    """Means over the steps after the first of timing_s/step, timing_s/gen, train_s and
    rollout_corr/kl, and the step's time as a share of its rollouts plus its update."""
    rs = [r for r in recs if r["step"] > 1]
    mean = lambda key: sum(r.get(key, 0) for r in rs) / max(1, len(rs))
    step, gen, train = mean("timing_s/step"), mean("timing_s/gen"), mean("train_s")
    return step, gen, train, step / (gen + train) if gen + train else None, mean("rollout_corr/kl")


@contextlib.contextmanager
def rollout_servers(a, count=2):
    """Starts count tools/rollout-server processes on free loopback ports with the key
    SERVER_KEY, serving a.server_model (the trainer sends its own weights before the first
    rollout); yields their URLs and stops them."""
    procs, urls = [], []
    try:
        for _ in range(count):
            p = subprocess.Popen([a.server_bin, "--model", a.server_model, "--addr", "127.0.0.1:0", "--api-key", SERVER_KEY, "--device", "cpu"],
                                 cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            procs.append(p)
            for line in p.stdout:
                if line.startswith("rollout-server listening on "):
                    urls.append(line.split()[-1])
                    threading.Thread(target=p.stdout.read, daemon=True).start()  # drain the rest
                    break
            else:
                sys.exit(f"ablation: {a.server_bin} exited before listening (model {a.server_model})")
        yield urls
    finally:
        for p in procs:
            p.terminate()
            p.wait()


def server_setup(a, tmp):
    """Builds tools/rollout-server and, unless --server-model is given, a model of the runs' shape
    for the servers to start from (a 1-step run's checkpoint, with the --extra flags)."""
    a.server_bin = a.server_bin or os.path.join(tmp, "rollout-server")
    if not os.path.exists(a.server_bin):
        subprocess.run(["go", "build", "-o", a.server_bin, "./tools/rollout-server"], cwd=ROOT, check=True)
    if not a.server_model:
        out = os.path.join(tmp, "server-model")
        prog = [a.bin] if a.bin else ["go", "run", "./tools/train"]
        # --extra first (it may choose the task, and so the vocabulary), then the flags that
        # keep this run short.
        subprocess.run(prog + a.extra + ["--quiet", "--sft-steps", "1", "--steps", "1", "--prompts", "2", "--n", "2", "--eval-size", "1", "--out", out],
                       cwd=ROOT, check=True)
        a.server_model = os.path.join(out, "checkpoints", "step-000001")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", default="1")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--out", default=os.path.join(ROOT, "runs", "ablation"))
    ap.add_argument("--doc", default=os.path.join(ROOT, "docs", "ablation.md"))
    ap.add_argument("--reuse", action="store_true", help="tabulate existing runs without training")
    ap.add_argument("--sections", default="recipe,options,servers",
                    help="which tables to run and write: recipe (one ingredient at a time), options (the default job with one option), "
                         "servers (synchronous and overlapped rollouts on two rollout servers); a table left out keeps its text in the existing --doc")
    ap.add_argument("--bin", help="a built tools/train binary to run instead of `go run ./tools/train`")
    ap.add_argument("--server-bin", help="servers section: a built tools/rollout-server binary (default: built into a temporary directory)")
    ap.add_argument("--server-model", help="servers section: the model the servers start from (default: a 1-step run of the default job)")
    ap.add_argument("--plot-bin", help="servers section: a built scripts/prolongedplot binary instead of `go run`")
    ap.add_argument("--machine", default=cpu_kind(),
                    help="the CPU the tables' runs ran on, as their text names it (default: this machine's, from /proc/cpuinfo)")
    ap.add_argument("--extra", default="", help="more tools/train flags for every run, space-separated (e.g. '--eval-size 20')")
    a = ap.parse_args()
    a.extra = a.extra.split()
    a.server_plots = []
    seeds = [int(s) for s in a.seeds.split(",")]
    chosen = a.sections.split(",")
    sections = [(sec, cfgs) for name, sec, cfgs in [("recipe", "", CONFIGS), ("options", "options", OPTIONS), ("servers", "servers", SERVERS)]
                if name in chosen]
    if not a.reuse:
        with tempfile.TemporaryDirectory() as tmp:
            for seed in seeds:  # seed by seed: a stopped ablation still compares every row
                for section, configs in sections:
                    for name, flags in configs:
                        train(a, tmp, section, name, flags, seed)
    tables, done_dirs = {}, {}
    for section, configs in sections:
        rows = []
        for name, flags in configs:
            per_seed = []
            for seed in seeds:
                mpath = os.path.join(run_dir(a.out, section, name, seed), "metrics.jsonl")
                done = finished(mpath, a.steps)
                if done:
                    done_dirs.setdefault((section, name), []).append(os.path.dirname(mpath))
                row = summary(read(mpath), a.steps) if done else (None,) * 5
                if section == "servers":
                    row = row[:3] + (timing(read(mpath)) if done else (None,) * 5)
                per_seed.append(row)
            rows.append((name, flags, per_seed))
        tables[section or "recipe"] = rows
    if "servers" in tables:
        a.server_plots = plot(a, [(name, done_dirs[("servers", name)]) for name, _ in SERVERS if ("servers", name) in done_dirs])
    os.makedirs(os.path.dirname(a.doc), exist_ok=True)
    old = split_doc(open(a.doc).read() if os.path.exists(a.doc) else "")
    text = {"recipe": recipe_text, "options": options_text, "servers": servers_text}
    with open(a.doc, "w") as f:
        for part in ("recipe", "options", "servers"):  # a table not chosen keeps its text as it was
            f.write(text[part](a, tables[part]) if part in tables else old.get(part, ""))
    print(open(a.doc).read())


HEADINGS = {"options": "\n## Options on top of the default job\n", "servers": "\n## Overlapped rollouts on two rollout servers\n"}


def cpu_kind():
    """AVX-512 or AVX2: the CPU kernels' path on this machine, which decides their rounding."""
    try:
        flags = open("/proc/cpuinfo").read().split()
    except OSError:
        return "an unknown CPU"
    return "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "neither AVX-512 nor AVX2"


def machine_text(a):
    return (f"Run on a CPU with {a.machine}: the CPU kernels' AVX-512 and AVX2 paths round differently, so one seed's\n"
            "run differs between the two machine types; compare rows within one table.\n")


def split_doc(doc):
    """Splits an existing ablation.md into its recipe, options and servers parts."""
    parts = {}
    for part in ("servers", "options"):
        if HEADINGS[part] in doc:
            doc, parts[part] = doc.split(HEADINGS[part], 1)
            parts[part] = HEADINGS[part] + parts[part]
    parts["recipe"] = doc
    return parts


def cell(vals, fmt):
    """The mean of the values given (None: not run), then each seed's value in brackets."""
    vals = [v for v in vals if v is not None]
    if not vals:
        return "-"
    m = sum(vals) / len(vals)
    if len(vals) == 1:
        return fmt.format(m)
    return fmt.format(m) + " [" + ", ".join(fmt.format(v) for v in vals) + "]"


def table(a, rows, head):
    out = f"| {head} | flags | accuracy at 0 | at {a.steps // 2} | at {a.steps} | entropy | KL to ref |\n"
    out += "| --- | --- | --- | --- | --- | --- | --- |\n"
    for name, flags, per in rows:
        cols = list(zip(*per))
        out += (f"| {name} | `{' '.join(flags) or '(defaults)'}` | {cell(cols[0], '{:.1%}')} | {cell(cols[1], '{:.1%}')} | "
                f"{cell(cols[2], '{:.1%}')} | {cell(cols[3], '{:.3f}')} | {cell(cols[4], '{:.4f}')} |\n")
    return out


def recipe_text(a, rows):
    return ("# Ablation: what each ProRL ingredient does on the default job\n\n"
            f"Regenerate with `python3 scripts/ablation.py --seeds {a.seeds} --steps {a.steps}` (about 5-8 minutes per run and seed on 2 cores).\n"
            "Each row adds one ingredient to the row above; everything else is the default job (`go run ./tools/train`).\n"
            "Held-out accuracy is pass@1 at temperature 0.6, top-p 0.95, averaged over 4 samples of 200 held-out problems;\n"
            f"entropy and KL are means over the last 25 of {a.steps} steps. Seeds: {a.seeds} (mean; per-seed values in brackets).\n"
            + machine_text(a) + "\n"
            + table(a, rows, "recipe"))


def options_text(a, rows):
    return (HEADINGS["options"] + "\n"
            f"Each row is the default job with one option, seeds {a.seeds}, {a.steps} steps (today's defaults, dual clip 3\n"
            "among them: the default job row is run again with them). `-`: not run yet; a value without brackets: one seed.\n"
            f"Regenerate with `python3 scripts/ablation.py --sections options --seeds {a.seeds} --steps {a.steps}`.\n"
            + machine_text(a) + "\n"
            + table(a, rows, "option") + "\n" + options_verdict(a, rows)
            + "TIS (cap 2) alone ends with the default job's weights: rollouts generated in process on the current weights\n"
            "have the trainer's log-probs to the last bit, so every TIS weight is 1; TIS acts on stale or foreign rollouts\n"
            "(overlapped rollouts, rollout servers: the table below).\n")


def options_verdict(a, rows):
    """Compares each option's held-out accuracy at the last step with the default job's (the
    first row): within the seed spread where their ranges over seeds overlap."""
    def final(per):
        return [r[2] for r in per if r[2] is not None]
    base = final(rows[0][2])
    if len(base) < 2:
        return "The comparison with the default job needs at least 2 finished seeds of it.\n\n"
    within, above, below = [], [], []
    for name, _, per in rows[1:]:
        vals = final(per)
        if len(vals) < 2:
            continue
        (above if min(vals) > max(base) else below if max(vals) < min(base) else within).append(name)
    say = lambda names: ", ".join(names) or "none"
    return (f"At step {a.steps}, against the default job's seeds [{min(base):.1%}, {max(base):.1%}]: within the seed spread "
            f"(the ranges overlap): {say(within)}; above it: {say(above)}; below it: {say(below)}.\n")


def servers_text(a, rows):
    out = (HEADINGS["servers"] + "\n"
           f"The default job generating on two local `tools/rollout-server`s (started by the script for each run, on the\n"
           f"same cores as the trainer), seeds {a.seeds}, {a.steps} steps: synchronous (each step waits for its rollouts, then\n"
           "for the weight update to reach the servers) or overlapped (step s+1's rollouts generated on the servers while\n"
           "step s trains, one step stale, TIS cap 2). Times are means over the steps after the first: the step's wall time,\n"
           "its rollouts (`timing_s/gen`) and its update (`train_s`), and the step as a share of rollouts plus update, which\n"
           "does not move with the machine's load as much as the seconds do; `rollout_corr/kl` is the logged mismatch\n"
           "between the rollouts' and the trainer's log-probs. Regenerate with\n"
           f"`python3 scripts/ablation.py --sections servers --seeds {a.seeds} --steps {a.steps}`.\n"
           + machine_text(a) + "\n"
           f"| rollouts | flags | accuracy at 0 | at {a.steps // 2} | at {a.steps} | `timing_s/step` | `timing_s/gen` | `train_s` | step / (gen + train) | `rollout_corr/kl` |\n"
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n")
    for name, flags, per in rows:
        cols = list(zip(*per))
        fmts = ["{:.1%}"] * 3 + ["{:.2f} s"] * 3 + ["{:.2f}", "{:.1e}"]
        out += f"| {name} | `{' '.join(flags)}` | " + " | ".join(cell(c, fm) for c, fm in zip(cols, fmts)) + " |\n"
    if a.server_plots:
        out += ("\nThe same runs against the step (mean over seeds, band from the lowest to the highest seed; training curves\n"
                "averaged over ±5 steps):\n\n")
        out += "".join(f"![{os.path.splitext(os.path.basename(p))[0]}]({p})\n" for p in a.server_plots)
    return out


if __name__ == "__main__":
    main()
