"""Checks the performance targets of the fused ops and training steps; exits 1 when one is missed.

    .venv/bin/python benchmarks/check_targets.py            # all targets, paper shapes
    .venv/bin/python benchmarks/check_targets.py --only per-pixel --repeats 21

Besides printing the table, a run writes it to benchmarks/results/cpu-<YYYY-MM-DD>.md (`--results DIR`
for another folder; a second run on the same day gets cpu-<date>-2.md, ...), with the machine (CPU model,
cores), the load average at start and end, the torch and bsrops builds, the allocator setting and the
command line. Measure on an otherwise idle machine: the ratios compare providers timed in one process.

Runs every comparison itself, in this one process: the providers of a comparison are
timed interleaved (A, B, A, B, ...) so that load from other processes hits them alike,
and compared by their median times; fast providers are run several times per round so
every provider gets enough samples. Peak extra memory comes from benchmarks/memory.py
(a fresh subprocess per measurement). The cases are the ones benchmarks/bench_*.py
time (paper shapes), so the table matches `pytest benchmarks --benchmark-only`.

The ratios depend on the allocator: with glibc's default malloc, large freed blocks go back
to the OS and every fresh tensor costs page faults, which weighs on the providers that
allocate most (the eager references); GLIBC_TUNABLES=glibc.malloc.mmap_threshold=4294967295:
glibc.malloc.trim_threshold=4294967295 (or jemalloc / tcmalloc) removes that cost. The
header says which one a table was measured with. The whole-block rows of dpcb and
patchgan_conv are timed in fresh processes, the eager and bsrops blocks interleaved there
(fresh_process.py), so that they do not carry the malloc history of the cases timed before
them; their notes give the ratio without page faults (the GLIBC_TUNABLES above) beside it.
BSR_LIVE_MEMORY=1 measures peak memory as live tensors (benchmarks/memory.py), independent
of the allocator's history; the block memory rows always count live tensors and note the
default allocator's RSS beside them.

Adding a target: write a function `f(ctx) -> list[Result]` and decorate it with
@target("what it checks"); ctx.time(...) and ctx.memory(...) do the measuring.
"""
import argparse
import dataclasses
import datetime
import os
import shlex
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.dirname(HERE)]

import torch  # noqa: E402

import bench_blur_downsample as bd  # noqa: E402
import bench_compat as compat_bench  # noqa: E402
import bench_data  # noqa: E402
import bench_overhead  # noqa: E402
import bench_usrnet_data_step as ud  # noqa: E402
import bench_dpcb as dpcb_bench  # noqa: E402
import bench_patchgan_conv as pg_bench  # noqa: E402
import bench_train_step as train_steps  # noqa: E402
import bsrops  # noqa: E402
import fresh_process  # noqa: E402
from memory import format_bytes, peak_extra_memory  # noqa: E402
from report import cpu_model, free_stem, load_average, markdown_table  # noqa: E402


@dataclasses.dataclass
class Result:
    target: str
    measured: float
    required: float
    op: str  # ">=" or "<=": measured op required passes
    unit: str = "x"
    shown: str = ""  # measured value as printed, when not just `measured unit`
    note: str = ""
    skipped: str = ""  # reason, when the target could not be measured

    @property
    def passed(self):
        if self.skipped:
            return None
        return self.measured >= self.required if self.op == ">=" else self.measured <= self.required

    def cells(self):
        measured = self.skipped and "skipped" or self.shown or f"{self.measured:.2f}{self.unit}"
        verdict = {True: "PASS", False: "FAIL", None: "SKIP"}[self.passed]
        return [self.target, measured, f"{self.op} {self.required:g}{self.unit}", verdict]


TARGETS = []  # (title, function)


def target(title):
    def register(fn):
        TARGETS.append((title, fn))
        return fn
    return register


class Context:
    def __init__(self, args):
        self.args = args
        self.log = []

    def note(self, line):
        self.log.append(line)
        print("  " + line, flush=True)

    def time(self, cases, repeats=None, round_s=0.05):
        """Median seconds per call of each zero-argument callable in `cases` (name -> fn).

        Each is warmed up twice (torch.compile compiles then); then `repeats` rounds run
        every case in turn, a case `inner` times per round, inner sized so a round of it
        lasts about `round_s`."""
        repeats = repeats or self.args.repeats
        inner = {}
        for name, fn in cases.items():
            fn()
            start = time.perf_counter()
            fn()
            inner[name] = max(1, min(50, int(round_s / max(time.perf_counter() - start, 1e-6))))
        samples = {name: [] for name in cases}
        for _ in range(repeats):
            for name, fn in cases.items():
                for _ in range(inner[name]):
                    start = time.perf_counter()
                    fn()
                    samples[name].append(time.perf_counter() - start)
        medians = {name: statistics.median(values) for name, values in samples.items()}
        for name, value in medians.items():
            self.note(f"{name}: median {value * 1e3:.2f} ms over {len(samples[name])} calls")
        return medians

    def fresh_times(self, cases, env=None):
        """fresh_process.median_times of cases {name: (factory, args)}, self.args.repeats rounds."""
        medians = fresh_process.median_times(cases, rounds=self.args.repeats, env=env,
                                             threads=self.args.threads)
        malloc = "without page faults" if env else "malloc as configured"
        for name, value in medians.items():
            self.note(f"{name} (fresh process, {malloc}): median {value * 1e3:.2f} ms over {self.args.repeats} calls")
        return medians

    def memory(self, factory, *args, live=None):
        info = peak_extra_memory(factory, *args, live=live)
        counted = "live tensors" if live else "as configured" if live is False else "children as announced"
        self.note(f"peak extra memory of {factory.__name__}{args}: {format_bytes(info['peak_extra_bytes'])} "
                  f"({info['method']}; {counted})")
        return info["peak_extra_bytes"]


# ---- blur_downsample CPU kernels ----

@target("blur_downsample per-pixel")
def blur_downsample_per_pixel(ctx):
    size = "paper"
    d = bd.shape("per_pixel", size)
    shape = f"N={d['n']} {d['h']}x{d['w']} k={d['k']} s={d['s']}"
    fb = "forward+backward"
    cases = {
        "reference (unfold) fwd+bwd": bd.make_case("per_pixel", "reference", fb, size),
        "bsrops cpu fwd+bwd": bd.make_case("per_pixel", "bsrops_cpu", fb, size),
        "bsrops cpu forward": bd.make_case("per_pixel", "bsrops_cpu", "forward", size),
        "kernel.clone()": bd.make_copy_case(size),
    }
    if not ctx.args.no_compile:
        ctx.note("compiling torch.compile(reference) (forward+backward), this takes a minute or two ...")
        cases["torch.compile(reference) fwd+bwd"] = bd.make_case("per_pixel", "compiled_reference", fb, size)
    calls = bsrops.kernel_calls()
    t = ctx.time(cases)
    after = bsrops.kernel_calls()
    assert after.get("_blur_downsample_backward.cpu", 0) > calls.get("_blur_downsample_backward.cpu", 0)
    ours = t["bsrops cpu fwd+bwd"]
    results = [Result(f"per-pixel fwd+bwd speedup vs unfold reference ({shape})",
                      t["reference (unfold) fwd+bwd"] / ours, 20, ">=",
                      note=f"{t['reference (unfold) fwd+bwd'] * 1e3:.1f} ms vs {ours * 1e3:.2f} ms")]
    if ctx.args.no_compile:
        results.append(Result("per-pixel fwd+bwd speedup vs torch.compile(reference)", 0, 5, ">=",
                              skipped="--no-compile"))
    else:
        compiled = t["torch.compile(reference) fwd+bwd"]
        results.append(Result("per-pixel fwd+bwd speedup vs torch.compile(reference)", compiled / ours, 5, ">=",
                              note=f"{compiled * 1e3:.1f} ms vs {ours * 1e3:.2f} ms"))
    b = bd.tensor_bytes("per_pixel", size)
    must = 2 * (b["x"] + b["kernel"] + b["out"])  # x, kernel, out, grad_out, grad_x, grad_kernel
    peak = ctx.memory(bd.make_case, "per_pixel", "bsrops_cpu", fb, size)
    results.append(Result("per-pixel fwd+bwd peak extra memory / bytes of x, K, out, grads", peak / must, 1.5, "<=",
                          shown=f"{peak / must:.2f}x ({format_bytes(peak)})",
                          note=f"tensors {format_bytes(must)}"))
    results.append(Result("per-pixel forward time / kernel.clone() time",
                          t["bsrops cpu forward"] / t["kernel.clone()"], 2, "<=",
                          note=f"{t['bsrops cpu forward'] * 1e3:.2f} ms vs {t['kernel.clone()'] * 1e3:.2f} ms"))
    return results


@target("blur_downsample per-image")
def blur_downsample_per_image(ctx):
    size = "paper"
    results = []
    fb = "forward+backward"
    for kind in ("per_image", "per_image_pdm"):
        d = bd.shape(kind, size)
        t = ctx.time({
            f"{kind} reference (grouped conv) fwd+bwd": bd.make_case(kind, "reference", fb, size),
            f"{kind} bsrops cpu fwd+bwd": bd.make_case(kind, "bsrops_cpu", fb, size),
        })
        ref_t, ours = t[f"{kind} reference (grouped conv) fwd+bwd"], t[f"{kind} bsrops cpu fwd+bwd"]
        results.append(Result(f"per-image fwd+bwd speedup vs grouped conv (N={d['n']})", ref_t / ours, 2, ">=",
                              note=f"{ref_t * 1e3:.1f} ms vs {ours * 1e3:.2f} ms"))
    return results


def stride_1_result(ctx, kind, mode, n_threads):
    """bsrops against the grouped convolution, one kind and mode at stride 1 (paper shape); the grouped
    convolution's forward+backward takes seconds there, so that mode runs at most 7 rounds."""
    size = "paper"
    d = bd.shape(kind, size)
    names = {provider: f"{kind} {provider} {mode}, {n_threads} thread(s)" for provider in ("reference", "bsrops_cpu")}
    calls = bsrops.kernel_calls()
    repeats = ctx.args.repeats if mode == "forward" else min(ctx.args.repeats, 7)
    t = ctx.time({name: bd.make_case(kind, provider, mode, size) for provider, name in names.items()}, repeats=repeats)
    assert bsrops.kernel_calls().get("blur_downsample.cpu", 0) > calls.get("blur_downsample.cpu", 0)
    theirs, ours = t[names["reference"]], t[names["bsrops_cpu"]]
    return Result(f"stride-1 {bd.kernel_layout(kind).replace('_', '-')} {mode} speedup vs grouped conv "
                  f"(N={d['n']} {d['h']}x{d['w']} k={d['k']}, {n_threads} thread{'s' if n_threads > 1 else ''})",
                  theirs / ours, 1.0, ">=", note=f"{theirs * 1e3:.2f} ms vs {ours * 1e3:.2f} ms")


@target("blur_downsample stride 1 (BasicSR and DAN degradation blur)")
def blur_downsample_stride_1(ctx):
    """The degradation blur of BasicSR and DAN: per-image and shared kernels at stride 1, forward (no grad) and
    forward+backward, at 1 and 2 torch threads, against the grouped convolution."""
    results = []
    threads = torch.get_num_threads()
    try:
        for n_threads in (1, 2):
            torch.set_num_threads(n_threads)
            for kind in ("per_image_s1", "shared_s1"):
                for mode in bd.MODES:
                    results.append(stride_1_result(ctx, kind, mode, n_threads))
    finally:
        torch.set_num_threads(threads)
    return results


# ---- usrnet_data_step ----

@target("usrnet_data_step chain and memory")
def usrnet_data_step_chain(ctx):
    size = "paper"
    d = ud.shape("chain", size)
    shape = f"N={d['n']} C={d['c']} HR {d['s'] * d['h']}x{d['s'] * d['w']} s={d['s']} k={d['k']}"
    fb = "forward+backward"
    calls = bsrops.kernel_calls()
    t = ctx.time({f"{provider} chain fwd+bwd": ud.make_case("chain", provider, fb, size)
                  for provider in ud.PROVIDERS}, repeats=min(ctx.args.repeats, 7))
    after = bsrops.kernel_calls()
    assert after.get("usrnet_solve.cpu", 0) > calls.get("usrnet_solve.cpu", 0)
    ours = t["bsrops chain fwd+bwd"]
    results = []
    for provider, required in (("official", 3), ("hoisted", 1.3)):
        theirs = t[f"{provider} chain fwd+bwd"]
        results.append(Result(f"{d['iterations']}-step chain fwd+bwd speedup vs {provider} ({shape})",
                              theirs / ours, required, ">=", note=f"{theirs * 1e3:.1f} ms vs {ours * 1e3:.1f} ms"))
    large = ud.shape("large", size)
    # live tensors: glibc's adaptive thresholds keep or return freed blocks depending on the process' history,
    # so the peak as configured swings from one fresh process to the next; the live count does not
    peaks = {provider: ctx.memory(ud.make_case, "large", provider, "forward", size, live=True)
             for provider in ("official", "bsrops")}
    results.append(Result(f"large image ({large['n']}x{large['c']}x{large['s'] * large['h']}x{large['s'] * large['w']}, "
                          f"{large['iterations']}-step chain forward) peak extra memory vs official",
                          peaks["bsrops"] / peaks["official"], 0.5, "<=",
                          shown=f"{peaks['bsrops'] / peaks['official']:.2f}x",
                          note=f"{format_bytes(peaks['bsrops'])} vs {format_bytes(peaks['official'])}"))
    return results


# ---- dpcb and patchgan_conv (fused part around oneDNN convolutions) ----

NO_PAGE_FAULTS = "glibc.malloc.mmap_threshold=4294967295:glibc.malloc.trim_threshold=4294967295"


def block_times(ctx, block, conv, mode):
    """(as configured, without page faults): median times of the eager ("reference") and bsrops blocks in
    `mode`, and for forward+backward of the convolutions alone ("convs"), each set interleaved in a fresh
    process (see fresh_process.py: timed after the other cases, the blocks would carry their malloc history)."""
    factory, args = block
    cases = {provider: (factory, args(provider, mode)) for provider in ("reference", "bsrops_cpu")}
    if mode == "forward+backward":
        cases["convs"] = conv
    return ctx.fresh_times(cases), ctx.fresh_times(cases, env={**os.environ, "GLIBC_TUNABLES": NO_PAGE_FAULTS})


def conv_block_results(ctx, label, fused_case, block, conv):
    """The targets of one conv block: fused part vs eager / torch.compile, whole block vs eager
    (forward+backward, inference), peak extra memory; the conv share as a note.

    fused_case(provider) -> callable; block = (make_case, args(provider, mode)) and conv = (make_conv_case,
    args): module-level factories, run in fresh processes."""
    cases = {"fused eager": fused_case("eager"), "fused bsrops": fused_case("bsrops_cpu")}
    if not ctx.args.no_compile:
        ctx.note("compiling torch.compile of the fused part, this takes a minute ...")
        cases["fused compiled"] = fused_case("compiled")
    t = ctx.time(cases)
    ours = t["fused bsrops"]
    results = [Result(f"{label}: fused part fwd+bwd speedup vs eager ops", t["fused eager"] / ours, 2, ">=",
                      note=f"{t['fused eager'] * 1e3:.2f} ms vs {ours * 1e3:.2f} ms")]
    if ctx.args.no_compile:
        results.append(Result(f"{label}: fused part vs torch.compile", 0, 1, ">=", skipped="--no-compile"))
    else:
        results.append(Result(f"{label}: fused part vs torch.compile (compiled / ours)", t["fused compiled"] / ours,
                              1, ">=", note=f"{t['fused compiled'] * 1e3:.2f} ms vs {ours * 1e3:.2f} ms"))
    for mode, key in (("fwd+bwd", "forward+backward"), ("inference", "inference")):
        times, quiet = block_times(ctx, block, conv, key)
        eager, fused = times["reference"], times["bsrops_cpu"]
        note = (f"{eager * 1e3:.1f} ms vs {fused * 1e3:.1f} ms; without page faults {quiet['reference'] * 1e3:.1f} "
                f"vs {quiet['bsrops_cpu'] * 1e3:.1f} ms = {quiet['reference'] / quiet['bsrops_cpu']:.2f}x")
        if key == "forward+backward":
            note += (f"; conv share of the eager block {times['convs'] / eager:.0%} "
                     f"({quiet['convs'] / quiet['reference']:.0%} without page faults)")
        results.append(Result(f"{label}: whole block {mode} speedup vs eager", eager / fused, 1, ">=", note=note))
    # The target counts live tensors (each measurement's large blocks unmapped when freed): the block's own
    # footprint. With glibc's default malloc the RSS also holds freed blocks the allocator kept, which depends
    # on the process' history: reported as a note.
    factory, args = block
    peaks = {live: [ctx.memory(factory, *args(provider, "forward+backward"), live=live)
                    for provider in ("reference", "bsrops_cpu")] for live in (True, False)}
    (eager_peak, our_peak), (eager_rss, our_rss) = peaks[True], peaks[False]
    results.append(Result(f"{label}: whole block fwd+bwd peak extra memory (live tensors) / eager's",
                          our_peak / eager_peak, 0.8, "<=", shown=f"{our_peak / eager_peak:.2f}x",
                          note=f"{format_bytes(our_peak)} vs {format_bytes(eager_peak)}; with the default malloc's "
                               f"RSS {format_bytes(our_rss)} vs {format_bytes(eager_rss)} = {our_rss / eager_rss:.2f}x"))
    return results


@target("dpcb fused part and block")
def dpcb_targets(ctx):
    size = "paper"
    results = []
    for kind in dpcb_bench.KINDS:
        d = dpcb_bench.shape(kind, size)
        label = f"dpcb {kind} (N={d['n']}, {d['c']} ch, {d['h']}x{d['w']}, cond {d['cond']}x{d['cond']})"
        results += conv_block_results(
            ctx, label,
            lambda provider: dpcb_bench.make_fused_case(kind, provider, size),
            (dpcb_bench.make_case, lambda provider, mode: (kind, provider, mode, size)),
            (dpcb_bench.make_conv_case, (kind, size)))
    return results


@target("patchgan_conv fused part and block")
def patchgan_targets(ctx):
    size = "paper"
    d = pg_bench.SHAPES[size]
    label = f"patchgan {d['cin']}->{d['cout']} {d['k']}x{d['k']} s{d['s']} instance on ({d['n']}, {d['cin']}, {d['h']}, {d['w']})"
    return conv_block_results(
        ctx, label,
        lambda provider: pg_bench.make_fused_case(provider, size),
        (pg_bench.make_case, lambda provider, mode: (provider, mode, size)),
        (pg_bench.make_conv_case, (size,)))


# ---- bsrops.compat against the originals' op sequences ----

COMPAT_LABELS = {
    "kair_datanet": "KAIR DataNet (USRNet data term)", "dan_batch_blur": "DAN BatchBlur per-image",
    "dan_dpcg": "DANv2 DPCG (Restorer group)", "basicsr_filter2d": "BasicSR filter2D per-image",
    "basicsr_filter2d_shared": "BasicSR filter2D shared (1, k, k)", "pdm_per_image_k21": "PDM-SR blur per-image",
    "pdm_per_image_k11": "PDM-SR blur per-image", "pdm_per_pixel_k21": "PDM-SR blur per-pixel",
    "pdm_per_pixel_k11": "PDM-SR blur per-pixel",
}


def compat_results(ctx, kind, mode, n_threads):
    """The providers of one kind and mode (bench_compat.py) timed interleaved in a fresh process at n_threads;
    compat and hoisted against the original's op sequence, per-pixel forward+backward also against unfold."""
    size = "paper"
    cases = {provider: (compat_bench.make_case, (kind, provider, mode, size))
             for provider in compat_bench.providers(kind)}
    rounds = ctx.args.repeats if mode == "forward" else min(ctx.args.repeats, 7)
    t = fresh_process.median_times(cases, rounds=rounds, threads=n_threads)
    for provider, value in t.items():
        ctx.note(f"{kind} {provider} {mode}, {n_threads} thread(s) (fresh process): median {value * 1e3:.2f} ms over "
                 f"{rounds} calls")
    where = f"{compat_bench.describe(kind, size)}, {n_threads} thread{'s' if n_threads > 1 else ''}"
    rows = [("compat", "original", 1.0)]
    if kind == "kair_datanet":
        rows.append(("hoisted", "original", 1.3))
    if "unfold" in t and mode == "forward+backward":
        rows.append(("compat", "unfold", 20))
    results = []
    for ours, theirs, required in rows:
        what = "bsrops.USRNetDataTerm hoisted" if ours == "hoisted" else "compat"
        against = "blur_downsample_unfold" if theirs == "unfold" else "original op sequence"
        results.append(Result(f"{COMPAT_LABELS[kind]} {mode}: {what} vs {against} ({where})", t[theirs] / t[ours],
                              required, ">=", note=f"{t[theirs] * 1e3:.2f} ms vs {t[ours] * 1e3:.2f} ms"))
    return results


@target("compat: the SR codebases' objects vs their originals' op sequences")
def compat_targets(ctx):
    """bsrops.compat's objects at each codebase's training shapes (bench_compat.py), forward and forward+backward,
    1 and 2 threads."""
    results = []
    for n_threads in (1, 2):
        for kind in compat_bench.KINDS:
            for mode in compat_bench.MODES:
                results += compat_results(ctx, kind, mode, n_threads)
    return results


# ---- host time per call ----

@target("host time per call of each op vs the eager ops it replaces")
def host_time_targets(ctx):
    """bench_overhead.py: forward+backward on tiny tensors, 1 thread, median host CPU time of 1000 calls."""
    results = []
    for op in bench_overhead.OPS:
        t = bench_overhead.host_times(op)
        ctx.note(f"{op}: bsrops {t['bsrops'] * 1e6:.0f} us, eager {t['eager'] * 1e6:.0f} us per call")
        results.append(Result(f"host time per call {op} (forward+backward, tiny tensors, 1 thread) <= 1.3x eager",
                              t["bsrops"] / t["eager"], 1.3, "<=",
                              note=f"{t['bsrops'] * 1e6:.0f} us vs {t['eager'] * 1e6:.0f} us"))
    return results


# ---- USRNet training step ----

@target("USRNet training step, reference vs default backend")
def usrnet_train_step(ctx):
    results = []
    for size in ("demo",):  # the paper model's step takes tens of seconds on 2 cores: see the pytest benchmark
        # every round as many steps as the other comparisons: the ops are a few percent of this step on the CPU,
        # so the ratio sits near 1 and three rounds left it to chance
        t = ctx.time({f"{size} {b}": train_steps.make_case("usrnet", size, b) for b in train_steps.BACKENDS})
        ratio = t[f"{size} reference"] / t[f"{size} default"]
        results.append(Result(f"USRNet train step ({size} shapes) reference / default time", ratio, 1.0, ">=",
                              note=f"default {t[f'{size} default']:.3f} s, reference {t[f'{size} reference']:.3f} s"))
    return results


# ---- DANv2 training step ----

@target("DANv2 training step")
def dan_train_step(ctx):
    """bsrops (native DPCB, blur_downsample) vs every op on the reference backend; at the demo
    shape by default (--dan-size paper: the setting-1 x4 shape)."""
    size = ctx.args.dan_size
    d = train_steps.CASES["dan"].shapes[size]
    t = ctx.time({"reference": train_steps.make_case("dan", size, "reference"),
                  "bsrops": train_steps.make_case("dan", size, "default")})
    return [Result(f"DANv2 train step speedup vs BSROPS_BACKEND=reference ({size}: batch {d['batch']}, HR {d['patch']})",
                   t["reference"] / t["bsrops"], 1.0, ">=",
                   note=f"{t['reference'] * 1e3:.0f} ms vs {t['bsrops'] * 1e3:.0f} ms")]


# ---- data pipeline ----

@target("data pipeline: paper presets' loaders, prepared form")
def data_pipeline(ctx):
    """bench_data.measure at paper size: each paper preset's DataLoader alone, 2 workers, on 100 generated
    DIV2K-sized images, read from the prepared form and by decoding; the first batch of a fresh process."""
    results = bench_data.measure("paper", report=ctx.note)
    rows = []
    for method, required in (("usrnet", 1000), ("pdm", 1000), ("dan", 300)):
        (prepared, cpu), (decoded, _) = results[method, "prepared"], results[method, "decoded"]
        rows.append(Result(f"{method} paper loader, prepared form, 2 workers ({bench_data.describe(method, 'paper')})",
                           prepared, required, ">=", unit=" samples/s", shown=f"{prepared:.0f} samples/s",
                           note=f"{bench_data.format_cpu(cpu)} per sample (main process and workers); decoding every "
                                f"crop's file instead: {decoded:.1f} samples/s ({prepared / decoded:.0f}x fewer)"))
    first = results["first_batch"]
    rows.append(Result("first batch of a fresh process, 100 prepared DIV2K-sized images", first, 10, "<=", unit=" s",
                       shown=f"{first:.2f} s", note=f"preparing the 100 HR + 100 LR images: {results['prepare']:.1f} s"))
    return rows


def format_table(results):
    """The results as a Markdown table, then their notes as a list."""
    table = markdown_table(["target", "measured", "required", "pass"], [r.cells() for r in results])
    notes = [f"- {r.target}: {r.note}" for r in results if r.note]
    return "\n".join([table] + ([""] + notes if notes else []))


def run_header(argv):
    """What a table was measured with: machine, torch and bsrops builds, allocator, command."""
    memory = "live tensors (BSR_LIVE_MEMORY=1)" if os.environ.get("BSR_LIVE_MEMORY") == "1" else "as configured"
    command = shlex.join(["python", os.path.relpath(os.path.abspath(__file__))] + list(argv))
    return [
        f"machine: {cpu_model()}, {os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads",
        f"torch {torch.__version__}; bsrops {bsrops.build_info()}",
        # the allocator decides how much page faults cost the providers that allocate most
        f"allocator: GLIBC_TUNABLES={os.environ.get('GLIBC_TUNABLES', '(unset: default glibc malloc)')}; "
        f"memory children: {memory}",
        f"command: {command}",
    ]


def results_path(folder, day):
    """folder/cpu-<day>.md, or cpu-<day>-<n>.md when earlier runs of that day are there (never overwritten)."""
    return free_stem(folder, f"cpu-{day}", (".md",)) + ".md"


def write_results(folder, header, loads, table, summary):
    """The results file of one run (Markdown); returns its path."""
    day = datetime.date.today().isoformat()
    os.makedirs(folder, exist_ok=True)
    path = results_path(folder, day)
    lines = [f"# check_targets.py, CPU, {day}", ""] + [f"- {line}" for line in header]
    lines.append(f"- load average (1 min): {loads[0]:.2f} at start, {loads[1]:.2f} at end")
    with open(path, "w") as out:
        out.write("\n".join(lines + ["", table, "", summary, ""]))
    return path


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", action="append", default=[], help="run targets whose title contains this")
    parser.add_argument("--repeats", type=int, default=15, help="timing rounds per comparison (default 15)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--no-compile", action="store_true",
                        help="skip the torch.compile comparisons (reported as SKIP, not as a pass)")
    parser.add_argument("--dan-size", default="demo", choices=sorted(train_steps.CASES["dan"].shapes),
                        help="shape of the DANv2 training step (default demo)")
    parser.add_argument("--results", default=os.path.join(HERE, "results"), metavar="DIR",
                        help="folder of the results file cpu-<date>.md (default benchmarks/results)")
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    ctx = Context(args)
    results = []
    header = run_header(argv)
    start_load = load_average()
    print("\n".join(header), flush=True)
    print(f"load average (1 min) at start: {start_load:.2f}", flush=True)
    # every target measures the native kernels: a missing build must not pass as the reference backend
    assert bsrops.backend_info("cpu")["backend"] == "cpu", "bsrops' native cpu backend is not active"
    for title, fn in TARGETS:
        if args.only and not any(word.lower() in title.lower() for word in args.only):
            continue
        print(f"\n{title}", flush=True)
        results += fn(ctx)
    table = format_table(results)
    failed = [r for r in results if r.passed is False]
    skipped = [r for r in results if r.passed is None]
    summary = f"{len(results) - len(failed) - len(skipped)} passed, {len(failed)} failed, {len(skipped)} skipped"
    print(f"\n{table}\n\n{summary}")
    path = write_results(args.results, header, (start_load, load_average()), table, summary)
    print(f"results written to {path}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
