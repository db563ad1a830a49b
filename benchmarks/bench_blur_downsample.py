"""Benchmarks of bsrops.blur_downsample (CPU): providers x modes at the paper shapes.

Groups (BSR_BENCH_SIZE=paper, the default):
  blur_downsample/per_pixel      N=16, C=3, 128x128 -> 32x32, k=21, s=4, float32, reflect;
                                 per-output-pixel kernels (N, k*k, 32, 32), the PDM-style op
  blur_downsample/per_image      the same shapes with one (k, k) kernel per image (DAN BatchBlur)
  blur_downsample/per_image_pdm  per-image kernels at PDM's batch, N=32
  blur_downsample/per_image_s1   per-image kernels at stride 1 (BasicSR's and DAN's degradation blur)
  blur_downsample/shared_s1      one shared (k, k) kernel at stride 1
Providers: reference (the unfold reference for per-pixel kernels, the grouped-conv
reference for per-image and shared ones), compiled_reference (torch.compile of it), bsrops_cpu;
modes: forward, forward+backward (grads w.r.t. x and the kernel). Plus `kernel.clone()`
of the per-pixel kernel tensor: the bandwidth floor of the per-pixel forward.

extra_info: traffic_bytes (what the mode must read + write at least), effective_GBps
(traffic / median time), peak_extra_bytes (benchmarks/memory.py: a fresh subprocess,
peak RSS during one call minus the RSS before it).

    pytest benchmarks --benchmark-only                               # paper shapes
    BSR_BENCH_SIZE=smoke pytest benchmarks --benchmark-disable       # CI smoke run

The compile providers are skipped with --benchmark-disable and at smoke size. The
case builders below (make_case, make_copy_case, traffic_bytes) are also what
benchmarks/check_targets.py and benchmarks/memory.py run.
"""
import functools
import time

import pytest
import torch

import bsrops
from bsrops.reference import blur_downsample as ref
from memory import peak_extra_memory

SHAPES = {
    "paper": {
        "per_pixel": dict(n=16, c=3, h=128, w=128, k=21, s=4),
        "per_image": dict(n=16, c=3, h=128, w=128, k=21, s=4),
        "per_image_pdm": dict(n=32, c=3, h=128, w=128, k=21, s=4),
        "per_image_s1": dict(n=16, c=3, h=128, w=128, k=21, s=1),
        "shared_s1": dict(n=16, c=3, h=128, w=128, k=21, s=1),
    },
    "smoke": {
        "per_pixel": dict(n=2, c=3, h=24, w=24, k=7, s=4),
        "per_image": dict(n=2, c=3, h=24, w=24, k=7, s=4),
        "per_image_pdm": dict(n=3, c=3, h=24, w=24, k=7, s=4),
        "per_image_s1": dict(n=2, c=3, h=24, w=24, k=7, s=1),
        "shared_s1": dict(n=2, c=3, h=24, w=24, k=7, s=1),
    },
}
KINDS = tuple(SHAPES["paper"])
PROVIDERS = ("reference", "compiled_reference", "bsrops_cpu")
MODES = ("forward", "forward+backward")
# the forward and one gradient: what each half of the backward costs alone
GRADIENT_MODES = {"forward+backward": ("x", "kernel"), "fwd+grad x": ("x",), "fwd+grad kernel": ("kernel",)}
PADDING = "reflect"
ELEMENT = torch.float32


def shape(kind, size):
    return SHAPES[size][kind]


def kernel_layout(kind):
    return "per_pixel" if kind == "per_pixel" else "shared" if kind.startswith("shared") else "per_image"


def make_inputs(kind, size, requires_grad=False, seed=0):
    """x (N, C, H, W), the kernel (softmax over the k*k taps; per pixel (N, k*k, Ho, Wo), per image (N, k, k),
    shared (k, k)), grad_out, stride."""
    d = shape(kind, size)
    gen = torch.Generator().manual_seed(seed)
    out_h, out_w = -(-d["h"] // d["s"]), -(-d["w"] // d["s"])
    x = torch.randn(d["n"], d["c"], d["h"], d["w"], generator=gen, dtype=ELEMENT)
    layout = kernel_layout(kind)
    if layout == "per_pixel":
        logits = torch.randn(d["n"], d["k"] * d["k"], out_h, out_w, generator=gen, dtype=ELEMENT)
        kernel = torch.softmax(logits, dim=1)
    else:
        images = 1 if layout == "shared" else d["n"]
        logits = torch.randn(images, d["k"] * d["k"], generator=gen, dtype=ELEMENT)
        kernel = torch.softmax(logits, dim=1).view(images, d["k"], d["k"])
        kernel = kernel[0] if layout == "shared" else kernel
    grad_out = torch.randn(d["n"], d["c"], out_h, out_w, generator=gen, dtype=ELEMENT)
    x.requires_grad_(requires_grad)
    kernel.requires_grad_(requires_grad)
    return x, kernel, grad_out, d["s"]


def reference_fn(kind):
    return ref.blur_downsample_unfold if kind == "per_pixel" else ref.blur_downsample_conv


@functools.lru_cache(maxsize=None)
def compiled_reference_fn(kind):
    return torch.compile(reference_fn(kind), dynamic=False)


def provider_fn(kind, provider):
    if provider == "reference":
        return reference_fn(kind)
    if provider == "compiled_reference":
        return compiled_reference_fn(kind)
    if provider == "bsrops_cpu":
        return bsrops.blur_downsample
    raise ValueError(f"unknown provider {provider!r}")


def make_case(kind, provider, mode, size):
    """A zero-argument callable running `provider` once in `mode` on fresh inputs."""
    fn = provider_fn(kind, provider)
    backward = mode == "forward+backward"
    x, kernel, grad_out, stride = make_inputs(kind, size, requires_grad=backward)

    if not backward:
        def run():
            with torch.no_grad():
                return fn(x, kernel, stride, PADDING)
        return run

    def reset():
        x.grad = None
        kernel.grad = None

    def run():
        reset()
        out = fn(x, kernel, stride, PADDING)
        out.backward(grad_out)
        return out, x.grad, kernel.grad
    run.reset = reset
    return run


def make_copy_case(size):
    """kernel.clone() of the per-pixel kernel: reads and writes the op's biggest operand once."""
    _, kernel, _, _ = make_inputs("per_pixel", size)
    return kernel.clone


def tensor_bytes(kind, size, dtype=ELEMENT):
    """Bytes of x, kernel, out (= grad_out) of one case."""
    d = shape(kind, size)
    out_h, out_w = -(-d["h"] // d["s"]), -(-d["w"] // d["s"])
    taps = d["k"] * d["k"]
    elem = torch.finfo(dtype).bits // 8
    layout = kernel_layout(kind)
    kernel = d["n"] * taps * out_h * out_w if layout == "per_pixel" else taps if layout == "shared" else d["n"] * taps
    return {"x": d["n"] * d["c"] * d["h"] * d["w"] * elem, "kernel": kernel * elem,
            "out": d["n"] * d["c"] * out_h * out_w * elem}


def traffic_bytes(kind, mode, size, dtype=ELEMENT):
    """What the mode (MODES or GRADIENT_MODES) must read and write at least.

    forward: read x and the kernel, write out. The backward adds reading grad_out once and, per gradient,
    reading the other operand and writing the gradient (grad_x reads the kernel, grad_kernel reads x).
    """
    b = tensor_bytes(kind, size, dtype)
    forward = b["x"] + b["kernel"] + b["out"]
    if mode == "forward":
        return forward
    return forward + b["out"] + len(GRADIENT_MODES[mode]) * (b["kernel"] + b["x"])


def native_calls():
    calls = bsrops.kernel_calls()
    return calls.get("blur_downsample.cpu", 0), calls.get("_blur_downsample_backward.cpu", 0)


def _rounds(run, budget_s=1.5, cap=200):
    """Warm up once (compiles, fills caches) and size the rounds to the time budget."""
    start = time.perf_counter()
    run()
    first = time.perf_counter() - start
    start = time.perf_counter()
    run()
    second = time.perf_counter() - start
    return max(3, min(cap, int(budget_s / max(min(first, second), 1e-6))))


def _benchmark(benchmark, run, extra):
    benchmark.extra_info.update(extra)
    if benchmark.disabled:
        return benchmark.pedantic(run, rounds=1)
    result = benchmark.pedantic(run, rounds=_rounds(run), iterations=1, warmup_rounds=0)
    median = benchmark.stats.stats.median
    if "traffic_bytes" in extra and median > 0:
        benchmark.extra_info["effective_GBps"] = round(extra["traffic_bytes"] / median / 1e9, 3)
    return result


def _memory_info(benchmark, factory, *args, always=False):
    """Peak extra memory (bytes) via a fresh subprocess; with --benchmark-disable only when `always`."""
    if benchmark.disabled and not always:
        return {}
    info = peak_extra_memory(factory, *args)
    return {"peak_extra_bytes": info["peak_extra_bytes"], "memory_method": info["method"]}


def skip_compiled(benchmark, bench_size):
    """torch.compile providers: skipped (with the reason) with --benchmark-disable and at smoke size."""
    if benchmark.disabled:
        pytest.skip("torch.compile providers are skipped with --benchmark-disable (compilation takes minutes)")
    if bench_size == "smoke":
        pytest.skip("torch.compile providers are skipped at BSR_BENCH_SIZE=smoke")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("kind", KINDS)
def test_blur_downsample(benchmark, bench_size, kind, provider, mode):
    benchmark.group = f"blur_downsample/{kind}"
    benchmark.name = f"{provider} {mode}"
    if provider == "compiled_reference":
        skip_compiled(benchmark, bench_size)
    if provider == "bsrops_cpu":
        info = bsrops.backend_info("cpu")
        assert info["backend"] == "cpu", f"bsrops would not run its native cpu backend: {info}"
    d = shape(kind, bench_size)
    extra = {"kind": kind, "provider": provider, "mode": mode, "size": bench_size, **d,
             "threads": torch.get_num_threads(), "traffic_bytes": traffic_bytes(kind, mode, bench_size)}
    # the smoke run exercises the memory helper once (bsrops, per pixel, forward+backward)
    smoke_memory = provider == "bsrops_cpu" and kind == "per_pixel" and mode == "forward+backward"
    extra.update(_memory_info(benchmark, make_case, kind, provider, mode, bench_size, always=smoke_memory))
    run = make_case(kind, provider, mode, bench_size)
    before = native_calls()
    out = _benchmark(benchmark, run, extra)
    after = native_calls()
    if provider == "bsrops_cpu":
        assert after[0] > before[0], "bsrops.blur_downsample did not run its cpu kernel"
        if mode == "forward+backward":
            assert after[1] > before[1], "the backward did not run bsrops' cpu backward kernel"
            assert out[1] is not None and out[2] is not None
    else:
        assert after == before, "the reference provider must not run bsrops kernels"
    if smoke_memory:
        assert extra["peak_extra_bytes"] > 0


def test_kernel_clone(benchmark, bench_size):
    """The bandwidth floor of the per-pixel forward: one read and one write of the kernel tensor."""
    benchmark.group = "blur_downsample/per_pixel"
    benchmark.name = "kernel.clone (bandwidth floor)"
    kernel_bytes = tensor_bytes("per_pixel", bench_size)["kernel"]
    extra = {"kind": "per_pixel", "provider": "torch", "mode": "copy", "size": bench_size,
             "threads": torch.get_num_threads(), "traffic_bytes": 2 * kernel_bytes}
    extra.update(_memory_info(benchmark, make_copy_case, bench_size))
    out = _benchmark(benchmark, make_copy_case(bench_size), extra)
    assert out.numel() * out.element_size() == kernel_bytes
