"""Every bsrops op on one GPU against its PyTorch references, three timers per row, in one run.

    python3 benchmarks/gpu_suite.py --build --results $OUT   # on a CUDA machine: build bsrops._C there, then run
    python3 benchmarks/gpu_suite.py                          # bsrops._C already built for this device
    python3 benchmarks/gpu_suite.py --only usrnet --compile all
    python3 benchmarks/gpu_suite.py --dry-run --results /tmp/suite   # every case on the CPU at smoke sizes (CI)

--build compiles bsrops._C in place against the installed torch for this device's architecture only
(TORCH_CUDA_ARCH_LIST from torch.cuda.get_device_capability(), MAX_JOBS = the CPU count), then runs the
suite in a fresh process that loads it (the building process, which imported bsrops before the build,
finds no _C and warns so). The build's seconds go into the results.

Cases, in float32 and then bfloat16, at the benchmarks' paper shapes (smoke shapes in the dry run):
- blur per-pixel (bench_blur_downsample.py): forward, forward+backward, the forward with each gradient
  alone; plus kernel.clone() of the per-pixel kernel, the bandwidth floor of the forward;
- blur per-image at N=16 and N=32 (stride 4), per-image and shared at stride 1: forward, forward+backward;
- USRNet's K=8 data-step chain (bench_usrnet_data_step.py): forward, forward+backward (grads of z, alphas);
- the conv blocks: DPCB Restorer and Estimator (bench_dpcb.py), PatchGAN (bench_patchgan_conv.py): forward
  without grad, forward+backward (input and parameter gradients).
bfloat16: the blur and USRNet inputs are bfloat16 tensors (USRNet's references solve on float32 copies:
torch.fft has no bfloat16); the conv blocks run float32 inputs and parameters under torch.autocast(bfloat16),
as mixed-precision training does. float32 convolutions and matmuls run without TF32.

Providers: eager (the PyTorch reference: unfold, grouped conv, USRNet's official chain, the eager modules;
USRNet's hoisted chain beside it), compiled (torch.compile of eager; --compile headline, the default, compiles
the float32 forward+backward cases only), and bsrops on each backend: cuda and triton (the dry run: cpu).

Columns:
- wall: CUDA events around back-to-back calls, the inputs rotated over as many sets (inputs and output
  gradients) as put twice the L2 cache between two uses of one set; the median per call over the rounds;
- GPU: the same calls, backward included, captured in one CUDA graph and replayed: device time without launch
  gaps, i.e. what CUDA graphs give the provider;
- host: time per call on the CPU while the GPU is kept busy (torch.cuda._sleep ahead of the calls); the note
  "waited" marks a call that waited for the GPU (a synchronisation inside it);
- GB/s: the case's traffic (the bench modules' traffic_bytes; none for the conv blocks, where convolutions
  dominate) over wall, and its % of a device-to-device copy measured at the start;
- x eager, x compiled: wall speed-ups against eager (USRNet: the official chain) and compiled;
- max err: max |out - ref| / max |ref| over the outputs and every gradient taken, ref being eager run in
  float64 on the CPU from the same inputs (the autocast cases: from the float32 inputs and parameters); a
  gradient that is zero in exact arithmetic is measured against the row's largest |ref| (max_error);
- peak MiB: the allocator's peak during one call above what was allocated before it (outputs and gradients
  included).
The dry run times wall with the CPU clock and reports GPU, host and peak memory as n/a; what cannot run on the
CPU (cuda, Triton, torch.compile) is listed as skipped with the reason. Every row also records which bsrops
kernels ran; a row whose bsrops call fell back to the reference kernels is an error.

Writes gpu-<device>-<date>.md and .json to benchmarks/results/ (--results DIR; a second run that day gets
-2, ...), rewritten after every case, so an interrupted run leaves the cases it finished.
"""
import argparse
import contextlib
import dataclasses
import datetime
import importlib.metadata
import json
import math
import os
import re
import shlex
import statistics
import subprocess
import sys
import time
from typing import Callable, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path[:0] = [HERE, ROOT]

import torch  # noqa: E402

import bench_blur_downsample as bd  # noqa: E402
import bench_dpcb as dpcb_bench  # noqa: E402
import bench_patchgan_conv as pg_bench  # noqa: E402
import bench_usrnet_data_step as ud  # noqa: E402
import bsrops  # noqa: E402
from report import cpu_model, free_stem, markdown_table  # noqa: E402

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
MAX_SETS = 32
COLUMNS = ("family", "mode", "dtype", "provider", "wall µs", "GPU µs", "host µs", "GB/s", "% copy", "x eager",
           "x compiled", "max err", "peak MiB", "note")


@dataclasses.dataclass
class Provider:
    """fn(*inputs) -> tuple of outputs; params: parameters whose gradients forward+backward takes too;
    traffic: bytes per call where they are not the case's; checked: compared with the float64 reference."""
    fn: Callable
    params: tuple = ()
    traffic: Optional[int] = None
    checked: bool = True


@dataclasses.dataclass
class Workload:
    """One op at one shape.

    make_set(seed) -> (inputs, output gradients), CPU float32 tensors; reference(device, dtype) -> the eager
    Provider for inputs of `dtype` (float64 on the CPU: the ground truth); ours(device) -> the same computation
    through bsrops; others(mode, dtype) -> more providers by name; modes: mode -> indices of the inputs whose
    gradients it takes (None: forward without grad); traffic(mode, dtype) -> bytes or None; autocast: bfloat16
    runs float32 tensors under torch.autocast (else the inputs are bfloat16)."""
    family: str
    shape: str
    make_set: Callable
    reference: Callable
    ours: Callable
    modes: dict
    traffic: Callable = lambda mode, dtype: None
    others: Callable = lambda mode, dtype: {}
    autocast: bool = False
    eager_name: str = "eager"


# ---- the cases ----

def blur_workload(family, kind, size):
    d = bd.shape(kind, size)
    reference_fn = bd.reference_fn(kind)

    def make_set(seed):
        x, kernel, grad_out, _ = bd.make_inputs(kind, size, seed=seed)
        return [x, kernel], [grad_out]

    def others(mode, dtype):
        if kind != "per_pixel" or mode != "forward":
            return {}
        floor = 2 * bd.tensor_bytes(kind, size, dtype)["kernel"]
        return {"kernel.clone()": Provider(lambda x, kernel: (kernel.clone(),), traffic=floor, checked=False)}

    index = {"x": 0, "kernel": 1}
    gradient_modes = bd.GRADIENT_MODES if kind == "per_pixel" else {"forward+backward": ("x", "kernel")}
    return Workload(
        family, f"N={d['n']} C={d['c']} {d['h']}x{d['w']} k={d['k']} s={d['s']}, {bd.kernel_layout(kind)} kernel",
        make_set,
        reference=lambda device, dtype: Provider(lambda x, kernel: (reference_fn(x, kernel, d["s"], bd.PADDING),)),
        ours=lambda device: Provider(lambda x, kernel: (bsrops.blur_downsample(x, kernel, d["s"], bd.PADDING),)),
        modes={"forward": None, **{mode: tuple(index[g] for g in grads) for mode, grads in gradient_modes.items()}},
        traffic=lambda mode, dtype: bd.traffic_bytes(kind, mode, size, dtype), others=others)


def solved_in_float32(fn):
    """fn run on float32 copies of half-precision inputs, its outputs in the inputs' dtype."""
    def run(*inputs):
        return tuple(out.to(inputs[0].dtype) for out in fn(*(t.float() for t in inputs)))
    return run


def usrnet_workload(size):
    d = ud.shape("chain", size)

    def chain(name, dtype=torch.float32):
        fn = lambda z, y, kernel, alphas: (ud.CHAINS[name](z, y, kernel, alphas, d["s"]),)  # noqa: E731
        return solved_in_float32(fn) if dtype in (torch.float16, torch.bfloat16) else fn

    def make_set(seed):
        z, y, kernel, alphas, grad_out = ud.make_inputs("chain", size, seed)
        return [z, y, kernel, alphas], [grad_out]

    return Workload(
        f"usrnet chain K={d['iterations']}",
        f"N={d['n']} C={d['c']} HR {d['s'] * d['h']}x{d['s'] * d['w']} s={d['s']} k={d['k']}", make_set,
        reference=lambda device, dtype: Provider(chain("official", dtype)),
        ours=lambda device: Provider(chain("bsrops")),
        modes={"forward": None, "forward+backward": (0, 3)},
        traffic=lambda mode, dtype: ud.traffic_bytes("chain", mode, size, dtype),
        others=lambda mode, dtype: {"hoisted": Provider(chain("hoisted", dtype))}, eager_name="official")


def named_params(module):
    return tuple(p for _, p in sorted(module.named_parameters()))


def module_provider(module, call):
    return Provider(lambda *inputs: tuple(call(module, *inputs)), params=named_params(module))


def output_gradients(seed, *shapes):
    gen = torch.Generator().manual_seed(10_000 + seed)
    return [torch.randn(shape, generator=gen) for shape in shapes]


def dpcb_workload(kind, size):
    d = dpcb_bench.shape(kind, size)

    def make_set(seed):
        x_img, x_cond = dpcb_bench.make_inputs(kind, size, seed)
        return [x_img, x_cond], output_gradients(seed, x_img.shape, x_cond.shape)

    return Workload(
        f"dpcb {kind}", f"N={d['n']} {d['c']} ch {d['h']}x{d['w']}, condition {d['cond']}x{d['cond']}", make_set,
        reference=lambda device, dtype: module_provider(dpcb_bench.make_modules(kind, size)[1].to(device, dtype),
                                                        lambda m, a, b: m([a, b])),
        ours=lambda device: module_provider(dpcb_bench.make_modules(kind, size)[0].to(device), lambda m, a, b: m(a, b)),
        modes={"forward": None, "forward+backward": (0, 1)}, autocast=True)


def patchgan_workload(size):
    d = pg_bench.SHAPES[size]
    out = (d["h"] + 2 * d["p"] - d["k"]) // d["s"] + 1

    def make_set(seed):
        return [pg_bench.make_input(size, seed)], output_gradients(seed, (d["n"], d["cout"], out, out))

    return Workload(
        "patchgan", f"({d['n']}, {d['cin']}, {d['h']}, {d['w']}) -> {d['cout']} ch, {d['k']}x{d['k']} s{d['s']}, "
        f"instance norm", make_set,
        reference=lambda device, dtype: module_provider(pg_bench.make_modules(size)[1].to(device, dtype),
                                                        lambda m, x: (m(x),)),
        ours=lambda device: module_provider(pg_bench.make_modules(size)[0].to(device), lambda m, x: (m(x),)),
        modes={"forward": None, "forward+backward": (0,)}, autocast=True)


def workloads(size):
    d = {kind: bd.shape(kind, size) for kind in bd.KINDS}
    return [blur_workload("blur per-pixel", "per_pixel", size),
            blur_workload(f"blur per-image N={d['per_image']['n']}", "per_image", size),
            blur_workload(f"blur per-image N={d['per_image_pdm']['n']}", "per_image_pdm", size),
            blur_workload("blur per-image s=1", "per_image_s1", size),
            blur_workload("blur shared s=1", "shared_s1", size),
            usrnet_workload(size),
            dpcb_workload("restorer", size), dpcb_workload("estimator", size), patchgan_workload(size)]


# ---- running one provider ----

def make_call(provider, wanted, autocast):
    """call(inputs, grad_outs) -> outputs, then the gradients of the inputs at `wanted` and of the parameters
    (wanted None: the forward without grad); autocast: the dtype the forward runs under torch.autocast, or None."""
    def forward(inputs):
        if autocast is None:
            return provider.fn(*inputs)
        with torch.autocast(inputs[0].device.type, autocast):
            return provider.fn(*inputs)

    def call(inputs, grad_outs):
        if wanted is None:
            with torch.no_grad():
                return forward(inputs)
        outs = forward(inputs)
        grads = [g if g.dtype == o.dtype else g.to(o.dtype) for g, o in zip(grad_outs, outs)]
        targets = [inputs[i] for i in wanted] + list(provider.params)
        return outs + torch.autograd.grad(outs, targets, grads)
    return call


def leaves(inputs, wanted):
    return [t.detach().requires_grad_(wanted is not None and i in wanted) for i, t in enumerate(inputs)]


def float64_reference(workload, wanted, inputs, grad_outs):
    """The eager reference in float64 on the CPU from `inputs`: outputs and gradients."""
    cpu = torch.device("cpu")
    provider = workload.reference(cpu, torch.float64)
    as64 = [t.detach().to(cpu, torch.float64) for t in inputs]
    outs = make_call(provider, wanted, None)(leaves(as64, wanted), [g.to(cpu, torch.float64) for g in grad_outs])
    return [t.detach() for t in outs]


def max_error(actual, expected):
    """Max over the tensors of max |a - e| / max |e|; a tensor that is zero in exact arithmetic (under 1e-9 of the
    largest |e|, as the gradient of a conv bias before instance norm) is measured against the largest |e|."""
    scales = [e.abs().max().item() for e in expected]
    largest = max(scales)
    return max((a.detach().cpu().double() - e).abs().max().item() / (scale if scale > 1e-9 * largest else largest)
               for a, e, scale in zip(actual, expected, scales))


class Clock:
    """Seconds from start() to stop(): CUDA events on a CUDA device, the CPU's clock otherwise."""

    def __init__(self, device):
        self.cuda = device.type == "cuda"

    def start(self):
        if self.cuda:
            self.begin = torch.cuda.Event(enable_timing=True)
            self.begin.record()
        else:
            self.begin = time.perf_counter()

    def stop(self):
        if not self.cuda:
            return time.perf_counter() - self.begin
        end = torch.cuda.Event(enable_timing=True)
        end.record()
        end.synchronize()
        return self.begin.elapsed_time(end) / 1e3


def wall_time(call, sets, clock, rounds):
    """Median seconds per call of rounds of back-to-back calls, one per input set."""
    samples = []
    for _ in range(rounds):
        clock.start()
        for inputs, grad_outs in sets:
            call(inputs, grad_outs)
        samples.append(clock.stop() / len(sets))
    return statistics.median(samples)


def graph_time(call, sets, clock, rounds):
    """Median seconds per call of one CUDA graph of a call per input set, replayed."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # a warm-up on a side stream, as capture requires
        call(*sets[0])
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        kept = [call(inputs, grad_outs) for inputs, grad_outs in sets]
    samples = []
    for _ in range(rounds):
        clock.start()
        graph.replay()
        samples.append(clock.stop() / len(sets))
    del kept, graph
    return statistics.median(samples)


def host_time(call, sets, wall_s, sleep_rate, rounds):
    """(median CPU seconds per call while the GPU is busy, whether a call waited for the GPU): before each round
    torch.cuda._sleep keeps the GPU busy for four times the wall time of the round's calls; a call that
    synchronises waits for it, which the event after the sleep shows complete."""
    calls, samples, waited = sets[:2], [], False
    for _ in range(rounds):
        torch.cuda.synchronize()
        torch.cuda._sleep(int(sleep_rate * (4 * len(calls) * wall_s + 2e-3)))
        busy = torch.cuda.Event()
        busy.record()
        start = time.perf_counter()
        for inputs, grad_outs in calls:
            call(inputs, grad_outs)
        samples.append((time.perf_counter() - start) / len(calls))
        waited = waited or busy.query()
    torch.cuda.synchronize()
    return statistics.median(samples), waited


def sleep_cycles_per_second():
    """The rate of torch.cuda._sleep's cycles, measured with CUDA events."""
    torch.cuda._sleep(1000)
    clock = Clock(torch.device("cuda"))
    clock.start()
    torch.cuda._sleep(10_000_000)
    return 10_000_000 / clock.stop()


def copy_bandwidth(device, clock, mebibytes):
    """Bytes per second of a device-to-device copy (read + written), median of 10."""
    src = torch.randn(mebibytes * 2 ** 18, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    samples = []
    for _ in range(10):
        clock.start()
        dst.copy_(src)
        samples.append(clock.stop())
    return 2 * src.numel() * src.element_size() / statistics.median(samples)


@contextlib.contextmanager
def peak_memory(device, into):
    """into["peak_mib"]: the allocator's peak in the block above what was allocated before it (CUDA only)."""
    if device.type != "cuda":
        yield
        return
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    yield
    torch.cuda.synchronize()
    into["peak_mib"] = (torch.cuda.max_memory_allocated() - before) / 2 ** 20


def measure(row, call, sets, reference64, provider, env):
    """Fill `row` with one provider's error, kernels, peak memory and timers."""
    calls = bsrops.kernel_calls()
    outs = call(*sets[0])  # the first call: torch.compile compiles here
    ran = sorted(k for k, v in bsrops.kernel_calls().items() if v > calls.get(k, 0))
    row["kernels"] = ran
    if any(name.endswith(".reference") for name in ran):
        raise RuntimeError(f"fell back to the reference kernels: {ran}")
    if provider.checked:
        if len(outs) != len(reference64):
            raise RuntimeError(f"{len(outs)} outputs and gradients against the reference's {len(reference64)}")
        row["max_err"] = max_error(outs, reference64)
    del outs
    for inputs, grad_outs in sets:  # warm-up: every set once
        call(inputs, grad_outs)
    with peak_memory(env.device, row):
        call(*sets[0])
    wall = wall_time(call, sets, env.clock, env.rounds)
    row["wall_us"] = wall * 1e6
    if row["traffic_bytes"]:
        row["GBps"] = row["traffic_bytes"] / wall / 1e9
        row["pct_copy"] = 100 * row["traffic_bytes"] / wall / env.copy_bps
    if env.device.type == "cuda":
        try:
            row["gpu_us"] = graph_time(call, sets, env.clock, env.rounds) * 1e6
        except Exception as error:  # not capturable: the other timers still hold
            row["notes"].append(f"no CUDA graph: {describe(error)}")
            with contextlib.suppress(RuntimeError):
                torch.cuda.synchronize()
        host, waited = host_time(call, sets, wall, env.sleep_rate, env.rounds)
        row["host_us"] = host * 1e6
        if waited:
            row["notes"].append("host waited for the GPU")


def describe(error):
    """The exception's type and the first line of its message, at most 200 characters."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0] if lines else ''}"[:200]


# ---- the suite ----

@dataclasses.dataclass
class Environment:
    device: torch.device
    clock: Clock
    rounds: int
    copy_bps: float
    sleep_rate: float
    args: argparse.Namespace


def backends(device):
    """{bsrops backend: None, or why it cannot run here}."""
    if device.type == "cpu":
        native = None if bsrops.backend_info("cpu")["backend"] == "cpu" else "bsrops._C is not loaded"
        return {"cpu": native, "cuda": "no CUDA device (--dry-run)",
                "triton": "Triton kernels run on a CUDA device (the CPU interpreter is far too slow for the suite)"}
    native = None if bsrops.backend_info("cuda")["backend"] == "cuda" else \
        "bsrops._C has no CUDA kernels for this device (run with --build)"
    return {"cuda": native, "triton": None}


@dataclasses.dataclass
class Case:
    """One workload in one mode and dtype: its input sets (leaves requiring the mode's gradients, output
    gradients) and the float64 reference's outputs and gradients."""
    workload: Workload
    mode: str
    dtype_name: str
    sets: list
    reference64: list

    @property
    def dtype(self):
        return DTYPES[self.dtype_name]

    @property
    def tensor_dtype(self):
        """The inputs' dtype: float32 for the autocast workloads, else the case's dtype."""
        return torch.float32 if self.workload.autocast else self.dtype

    @property
    def wanted(self):
        return self.workload.modes[self.mode]


def make_case(workload, mode, dtype_name, base_sets):
    """The Case on `base_sets` (input_sets)."""
    wanted = workload.modes[mode]
    sets = [(leaves(inputs, wanted), grad_outs) for inputs, grad_outs in base_sets]
    return Case(workload, mode, dtype_name, sets, float64_reference(workload, wanted, *sets[0]))


def compile_skipped(case, env):
    """Why `case` has no torch.compile row, or None."""
    if env.device.type == "cpu":
        return "torch.compile is skipped in the dry run (minutes of compiling on the CPU)"
    policy = env.args.compile
    if policy == "none" or policy == "headline" and (case.mode, case.dtype_name) != ("forward+backward", "float32"):
        return f"--compile {policy}"
    return None


def providers(case, env):
    """{name: Provider, or why it is not measured} of a case, eager first. torch.compile's row is measured after
    every case's other rows (compiled_provider); until then it says so."""
    found = {case.workload.eager_name: case.workload.reference(env.device, case.tensor_dtype),
             **case.workload.others(case.mode, case.tensor_dtype)}
    found["compiled"] = compile_skipped(case, env) or f"not reached: --budget-s {env.args.budget_s:g} spent first"
    for backend, unavailable in backends(env.device).items():
        found[backend] = unavailable or case.workload.ours(env.device)
    return found


def compiled_provider(case, env):
    """torch.compile of the case's eager provider."""
    torch._dynamo.reset()  # a fresh cache per case: no recompile limit across shapes and modes
    eager = case.workload.reference(env.device, case.tensor_dtype)
    return Provider(torch.compile(eager.fn, dynamic=False), eager.params)


def new_row(workload, mode, dtype_name, name):
    return {"family": workload.family, "shape": workload.shape, "mode": mode, "dtype": dtype_name, "provider": name,
            "status": "skipped", "reason": "", "notes": [], "kernels": [], "traffic_bytes": None, "wall_us": None,
            "gpu_us": None, "host_us": None, "GBps": None, "pct_copy": None, "x_eager": None, "x_compiled": None,
            "max_err": None, "peak_mib": None}


def input_sets(workload, dtype, env):
    """Enough input sets on the device that twice the L2 cache lies between two uses of one (2 on the CPU)."""
    def make(seed):
        inputs, grad_outs = workload.make_set(seed)
        to = (lambda t: t.to(env.device)) if workload.autocast else (lambda t: t.to(env.device, dtype))  # noqa: E731
        return [to(t) for t in inputs], [to(g) for g in grad_outs]
    first = make(0)
    count = 2
    if env.device.type == "cuda":
        size = sum(t.numel() * t.element_size() for part in first for t in part)
        l2 = torch.cuda.get_device_properties(env.device).L2_cache_size
        count = max(2, min(MAX_SETS, math.ceil(2 * l2 / size) + 1))
    return [first] + [make(seed) for seed in range(1, count)]


def run_provider(case, name, provider, env):
    """The row of one provider of a case: measured, or skipped (provider: the reason) or failed."""
    row = new_row(case.workload, case.mode, case.dtype_name, name)
    if isinstance(provider, str):
        row["reason"] = provider
        return row
    row["traffic_bytes"] = provider.traffic or case.workload.traffic(case.mode, case.tensor_dtype)
    autocast = case.dtype if case.tensor_dtype != case.dtype else None
    backend = bsrops.use_backend(name) if name in bsrops.BACKENDS else contextlib.nullcontext()
    try:
        with backend:
            measure(row, make_call(provider, case.wanted, autocast), case.sets, case.reference64, provider, env)
        row["status"] = "ok"
    except Exception as error:
        row["status"], row["reason"] = "error", describe(error)
        if env.device.type == "cuda":
            with contextlib.suppress(RuntimeError):  # a broken CUDA context shows as the error of every later row
                torch.cuda.synchronize()
    print(format_progress(row), flush=True)
    return row


def speedups(rows, eager_name):
    """x_eager and x_compiled of a case's rows, from their wall times."""
    walls = {row["provider"]: row["wall_us"] for row in rows}
    for row in rows:
        if row["wall_us"]:
            for key, name in (("x_eager", eager_name), ("x_compiled", "compiled")):
                row[key] = walls[name] / row["wall_us"] if walls.get(name) else None


def number(value, spec):
    return "n/a" if value is None else format(value, spec)


def cells(row, reason):
    """The table cells of a row; `reason` stands for its skip or error reason."""
    if row["status"] != "ok":
        return [row["family"], row["mode"], row["dtype"], row["provider"]] + [""] * 9 + [f"{row['status']} {reason}"]
    speed = lambda v: number(v, ".2f") + ("x" if v is not None else "")  # noqa: E731
    return [row["family"], row["mode"], row["dtype"], row["provider"], number(row["wall_us"], ".1f"),
            number(row["gpu_us"], ".1f"), number(row["host_us"], ".1f"), number(row["GBps"], ".1f"),
            number(row["pct_copy"], ".0f"), speed(row["x_eager"]), speed(row["x_compiled"]),
            number(row["max_err"], ".1e"), number(row["peak_mib"], ".1f"), "; ".join(row["notes"])]


def format_progress(row):
    return " | ".join(cell for cell in cells(row, row["reason"]) if cell)


def device_slug(device):
    name = "cpu dry run" if device.type == "cpu" else torch.cuda.get_device_name(device)
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def package_version(name):
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def environment_info(env, argv, build_s):
    """What the results were measured with."""
    info = {"date": datetime.date.today().isoformat(), "dry_run": env.device.type == "cpu",
            "torch": torch.__version__, "cuda": torch.version.cuda, "triton": package_version("triton"),
            "bsrops": bsrops.build_info(),
            "host": f"{cpu_model()}, {os.cpu_count()} CPUs", "copy_GBps": env.copy_bps / 1e9,
            "build_s": build_s, "tf32": False, "rounds": env.rounds, "compile": env.args.compile,
            "command": shlex.join(["python3", os.path.relpath(os.path.abspath(__file__))] + list(argv))}
    if env.device.type == "cuda":
        props = torch.cuda.get_device_properties(env.device)
        info.update(device=props.name, capability=f"{props.major}.{props.minor}", sms=props.multi_processor_count,
                    l2_bytes=props.L2_cache_size)
    else:
        info["device"] = "CPU (dry run, smoke shapes)"
    return info


def write_results(stem, info, workload_list, rows, seconds):
    """stem.json (everything) and stem.md (the table, the shapes and the setup)."""
    info = {**info, "seconds": seconds}
    with open(stem + ".json", "w") as out:
        json.dump({"environment": info, "shapes": {w.family: w.shape for w in workload_list}, "rows": rows}, out,
                  indent=1)
    setup = [f"- {key}: {value:.1f}" if isinstance(value, float) else f"- {key}: {value}"
             for key, value in info.items()]
    reasons = list(dict.fromkeys(row["reason"] for row in rows if row["reason"]))
    table = markdown_table(list(COLUMNS), [cells(row, f"[{reasons.index(row['reason']) + 1}]" if row["reason"] else "")
                                           for row in rows])
    notes = [f"{n}. {reason}" for n, reason in enumerate(reasons, 1)]
    shapes = [f"- {w.family}: {w.shape}" for w in workload_list]
    with open(stem + ".md", "w") as out:
        out.write("\n".join([f"# gpu_suite.py, {info['device']}, {info['date']}", ""] + setup + ["", table, ""] +
                            notes + ["", "Shapes:", ""] + shapes + [""]))


def build_native():
    """Build bsrops._C in place for this device's architecture only, against the installed torch; its seconds."""
    if not torch.cuda.is_available():
        sys.exit("gpu_suite.py --build: no CUDA device to build for; --dry-run runs every case on the CPU")
    major, minor = torch.cuda.get_device_capability()
    env = {**os.environ, "TORCH_CUDA_ARCH_LIST": f"{major}.{minor}", "BSROPS_WITH_CUDA": "1",
           "BSROPS_REQUIRE_EXT": "1", "MAX_JOBS": str(os.cpu_count())}
    print(f"building bsrops._C for compute capability {major}.{minor} ...", flush=True)
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace"], cwd=ROOT, env=env,
                          capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"the build failed (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    seconds = time.monotonic() - start
    print(f"built in {seconds:.0f} s", flush=True)
    return seconds


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="every case on the CPU at smoke shapes")
    parser.add_argument("--build", action="store_true", help="build bsrops._C for this device first")
    parser.add_argument("--build-seconds", type=float, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--only", action="append", default=[], help="cases whose family contains this")
    parser.add_argument("--compile", choices=("headline", "all", "none"), default="headline",
                        help="torch.compile rows: the float32 forward+backward cases (default), all cases, none")
    parser.add_argument("--rounds", type=int, default=5, help="timing rounds per row (default 5; dry run 1)")
    parser.add_argument("--budget-s", type=float, default=200,
                        help="seconds for the cases; those left when they are spent are skipped (default 200)")
    parser.add_argument("--results", default=os.path.join(HERE, "results"), metavar="DIR",
                        help="folder of gpu-<device>-<date>.md/.json (default benchmarks/results)")
    return parser.parse_args(argv)


def setup_device(args):
    """(device, Clock, rounds, copy bytes/s, sleep rate) for the run."""
    if args.dry_run:
        device = torch.device("cpu")
        return device, Clock(device), 1, copy_bandwidth(device, Clock(device), 16), None
    if not torch.cuda.is_available():
        sys.exit("gpu_suite.py: no CUDA device; --dry-run runs every case on the CPU")
    if os.environ.get("TRITON_INTERPRET") == "1":
        sys.exit("gpu_suite.py: TRITON_INTERPRET=1 would interpret the Triton kernels; unset it")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.benchmark = True
    device = torch.device("cuda")
    return device, Clock(device), args.rounds, copy_bandwidth(device, Clock(device), 1024), sleep_cycles_per_second()


def run_suite(args, argv):
    """Every case of the selected workloads, dtype by dtype, then the torch.compile rows, within --budget-s; the
    results files rewritten after each workload and each compiled row."""
    device, clock, rounds, copy_bps, sleep_rate = setup_device(args)
    env = Environment(device, clock, rounds, copy_bps, sleep_rate, args)
    chosen = [w for w in workloads("smoke" if args.dry_run else "paper")
              if not args.only or any(word.lower() in w.family.lower() for word in args.only)]
    info = environment_info(env, argv, args.build_seconds)
    os.makedirs(args.results, exist_ok=True)
    stem = free_stem(args.results, f"gpu-{device_slug(device)}-{info['date']}", (".md", ".json"))
    print(f"{info['device']}: copy {info['copy_GBps']:.0f} GB/s; torch {torch.__version__}; "
          f"bsrops {info['bsrops']}", flush=True)
    start, rows, to_compile = time.monotonic(), [], []
    spent = lambda: time.monotonic() - start > args.budget_s  # noqa: E731
    save = lambda: write_results(stem, info, chosen, rows, time.monotonic() - start)  # noqa: E731
    for dtype_name in DTYPES:
        for workload in chosen:
            base_sets = None
            for mode in workload.modes:
                if spent():
                    rows.append(new_row(workload, mode, dtype_name, "all"))
                    rows[-1]["reason"] = f"not reached: --budget-s {args.budget_s:g} spent first"
                    continue
                base_sets = base_sets or input_sets(workload, DTYPES[dtype_name], env)
                case = make_case(workload, mode, dtype_name, base_sets)
                case_rows = [run_provider(case, name, provider, env) for name, provider in providers(case, env).items()]
                speedups(case_rows, workload.eager_name)
                rows += case_rows
                if compile_skipped(case, env) is None:
                    to_compile.append((case, case_rows))
            del base_sets
            save()
    for case, case_rows in to_compile:
        if spent():
            break
        compiled = next(row for row in case_rows if row["provider"] == "compiled")
        compiled.update(run_provider(case, "compiled", compiled_provider(case, env), env))
        speedups(case_rows, case.workload.eager_name)
        save()
    print(f"results written to {stem}.md and {stem}.json ({time.monotonic() - start:.0f} s)")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    if args.build:
        seconds = build_native()
        rest = [a for a in argv if a != "--build"] + ["--build-seconds", f"{seconds:.1f}"]
        return subprocess.call([sys.executable, os.path.abspath(__file__)] + rest)
    threads = torch.get_num_threads()
    if args.dry_run:  # it checks code paths: one thread keeps it quick on a busy machine
        torch.set_num_threads(1)
    try:
        run_suite(args, argv)
    finally:
        torch.set_num_threads(threads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
