"""USR_DA's mechanism at demo scale: the full method against its no-domain-adaptation ablation.

    python benchmarks/usrda_mechanism.py [--iters N] [--seeds 0 1 2] [--runs DIR] [--report FILE.md]

For each seed, trains the `usrda` demo preset twice with the same seed (so the same initial weights and
the same crops): `usrda.domain_adaptation=true` (the method) and `false` (the same networks trained on the
source-domain bicubic pairs only: bsr/methods/usrda.py). Both runs get N iterations; the demo's learning
rate milestones are scaled from its own iteration count to N. Each final model is evaluated on the demo's
target-domain validation images (held-out photos degraded by the demo's unknown degradation,
bsr/data/demo_set.py), PSNR on RGB and on Y with the method's border, next to bicubic upsampling.
Writes a markdown table (per seed, mean ± sample std, and the paired difference full − ablation) to
--report (default benchmarks/results/usrda-mechanism-cpu-<date>.md); run folders go to --runs.
"""
import argparse
import datetime
import os
import platform
import statistics
import sys
import time

import torch

from bsr import config, data
from bsr.engine import Engine
from bsr.evaluate import bicubic
from bsr.validation import run_validation

MODES = {"full": "true", "no-DA": "false"}
METRICS = (("psnr_rgb", "PSNR-RGB"), ("psnr_y", "PSNR-Y"))


def run_config(seed, adapt, iters):
    """The demo preset with `seed`, usrda.domain_adaptation = `adapt` ("true"/"false"), `iters` iterations,
    milestones scaled to `iters`, no intermediate validation or checkpoints."""
    demo = config.load("usrda", "demo")
    milestones = [m * iters // demo.train.iters for m in demo.train.milestones]
    return config.load("usrda", "demo", overrides=[
        f"seed={seed}", f"usrda.domain_adaptation={adapt}", f"train.iters={iters}", f"train.milestones={milestones}",
        "train.val_every=0", f"train.save_every={iters}", "train.ckpt_every=0", f"train.log_every={max(iters // 4, 1)}"])


def train_and_score(cfg, out_dir):
    """Train one run; -> ({psnr_rgb, psnr_y} of the final model on the validation images, seconds, engine)."""
    start = time.perf_counter()
    engine = Engine(cfg, out_dir)
    if engine.train() != "done":
        raise SystemExit(f"run {out_dir} was interrupted")
    seconds = time.perf_counter() - start
    items = data.validation_items(cfg, engine.method)
    _, mean = run_validation(engine.method, items)
    return {key: mean[key] for key, _ in METRICS}, seconds, engine


def mean_std(values):
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}" if len(values) > 1 else f"{values[0]:.2f}"


def report(results, reference, args, seconds):
    """The markdown report of results[mode][seed] = metrics, the bicubic `reference` and run times."""
    seeds = args.seeds
    lines = [f"# USR_DA mechanism at demo scale ({datetime.date.today().isoformat()})", "",
             f"`python benchmarks/usrda_mechanism.py --iters {args.iters} --seeds {' '.join(map(str, seeds))}` "
             f"(torch {torch.__version__}, torch threads: {torch.get_num_threads()}, {platform.machine()} CPU). "
             f"`usrda` demo preset (narrow networks, perceptual terms off), {args.iters} iterations per run, "
             "milestones scaled from the demo's 800; full = the method, no-DA = `usrda.domain_adaptation=false` "
             "(same networks and initial weights, source bicubic pairs only, L1). Validation: the demo's "
             "target-domain images (chelsea, retina; the demo's unknown degradation), PSNR in dB.", ""]
    for key, title in METRICS:
        lines += [f"## {title}", "", "| seed | full | no-DA | full − no-DA |", "|---|---|---|---|"]
        for seed in seeds:
            full, ablation = results["full"][seed][key], results["no-DA"][seed][key]
            lines.append(f"| {seed} | {full:.2f} | {ablation:.2f} | {full - ablation:+.2f} |")
        full = [results["full"][s][key] for s in seeds]
        ablation = [results["no-DA"][s][key] for s in seeds]
        diff = [f - a for f, a in zip(full, ablation)]
        lines += [f"| mean ± std | {mean_std(full)} | {mean_std(ablation)} | {mean_std(diff)} |",
                  f"| bicubic | {reference[key]:.2f} | {reference[key]:.2f} | |", ""]
    lines += ["Wall time per run (s): " + "; ".join(
        f"{mode} {', '.join(f'{seconds[mode][s]:.0f}' for s in seeds)}" for mode in MODES), ""]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iters", type=int, default=400, help="iterations per run (default 400)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--runs", default="/tmp/usrda-mechanism", help="folder of the run directories")
    parser.add_argument("--report", help="markdown output (default benchmarks/results/usrda-mechanism-cpu-<date>.md)")
    args = parser.parse_args(argv)
    report_path = args.report or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                              f"usrda-mechanism-cpu-{datetime.date.today().isoformat()}.md")
    results = {mode: {} for mode in MODES}
    seconds = {mode: {} for mode in MODES}
    reference = None
    for seed in args.seeds:
        for mode, adapt in MODES.items():
            cfg = run_config(seed, adapt, args.iters)
            metrics, seconds[mode][seed], engine = train_and_score(cfg, os.path.join(args.runs, f"{mode}-seed{seed}"))
            results[mode][seed] = metrics
            print(f"{mode} seed {seed}: " + ", ".join(f"{t} {metrics[k]:.2f}" for k, t in METRICS)
                  + f" ({seconds[mode][seed]:.0f} s)", flush=True)
            if reference is None:
                _, reference = run_validation(engine.method, data.validation_items(cfg, engine.method),
                                              sr_fn=bicubic(engine.method))
    text = report(results, reference, args, seconds)
    with open(report_path, "w") as f:
        f.write(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
