"""Benchmarks of bsrops.dpcb (CPU): the whole DANv2 block and its fused part alone.

Groups (BSR_BENCH_SIZE=paper, the default):
  dpcb/restorer   N=8, 64 ch, 64x64 image, 1x1 condition (k1=3, k2=1), float32
  dpcb/estimator  N=8, 32 ch, 64x64 image and condition (k1=3, k2=3), float32
Whole block, providers: reference (the official module structure, eager, in-place
LeakyReLU), compiled_reference (torch.compile of it), bsrops_cpu (bsrops.nn.DPCB); modes:
forward (autograd recording), forward+backward (all input and parameter gradients),
inference (torch.inference_mode).
Fused part alone (`fused/*`, forward+backward): the work bsrops.dpcb does around its four
convolutions, on the op's layouts (x_img, x_cond and the incoming gradients NCHW, the
convolution side channels_last): x_img (and an image-sized x_cond) moved to channels_last
for the first convolutions, forward and again backward; the modulation and both residual
adds; their backward (grad_f1, the reduced grad_f2); the LeakyReLU backwards; the input
gradients back to NCHW plus the residual gradient. Providers: that work as eager PyTorch
ops (eager; its LeakyReLU forwards are their own passes), torch.compile of those
(compiled), and the op's kernels (bsrops_cpu; on CPU float32 its forward LeakyReLUs are
oneDNN post-ops of the first convs, so they are not separate passes there and not timed).
Also `convs`: the four convolutions alone (NCHW, as eager runs them), forward+backward,
for the conv share.

Where the time goes (the arithmetic; measured figures: benchmarks/results/). Restorer shape: a
3x3 64->64 conv on 8x64x64 is 8*4096*64*64*9 = 1.21 GMAC; forward+backward runs the two
image-path convs forward plus their data and weight gradients (the first conv's data gradient
is needed for x_img): 6 conv-sized passes, 7.2 GMAC = 14.5 GFLOP (the 1x1 condition path is
negligible). In units of one 8 MiB image tensor read or written, the eager NCHW block's
elementwise part moves ~18 units (LeakyReLU 2, modulation 2 + 3, grad_f1 2, grad_img*f1 2 + its
sum 1, LeakyReLU backward 3, residual gradient 3), and oneDNN's NCHW convolutions reorder to and
from their blocked layout inside (2 units per forward, 2-4 per backward, with 2 image-sized
buffers per backward). The op moves 16 units (to channels_last 2 + 2, epilogue 3, its backward
3, LeakyReLU backward 3, gradient back to NCHW with the residual 3) and its channels_last
convolutions reorder nothing. The fused part gains over the same work in eager ops through its
register-blocked transposes and its fewer passes; the whole block through the convolutions'
missing reorders and through memory, since the convolutions dominate its time.
Estimator shape (both paths 32 ch, full resolution, 3x3; 4 MiB tensors): the op moves 33
units (to channels_last 4 + 4, epilogue 6, grad_f2 4, grad_f1 3, LeakyReLU backwards 6,
gradients back 6) against the eager block's ~34: the transposes eat the fusion's savings, and
at 32 channels channels_last convolutions gain less than at 64, so the block runs at about
eager's speed with less memory.
On a GPU the same traffic is a few tens of microseconds at HBM bandwidth, comparable to the
op's extra launches and Python glue per call: there the convolutions keep the caller's layout
(benchmarks/gpu_suite.py measures the blocks on a device).
Inference (bsrops runs _dpcb_inference, see ops/dpcb.py). Estimator shape: four 32->32 3x3
convs of 0.30 GMAC are almost all of the block; eager's elementwise part moves 13 units of
4 MiB (LeakyReLUs 2 x 2, mul 3, adds 3 + 3), the op 7 units in place (addcmul 4, add_ 3), its
LeakyReLUs oneDNN post-ops: a gain of a few percent of the block at best, plus one image-sized
allocation fewer than eager's 4 (fewer page faults). Restorer shape (64 ch): the same
arithmetic on 8 MiB tensors.
Whole-block timings vary between processes through the page faults of freshly allocated
tensors (glibc's default malloc returns large blocks to the OS);
GLIBC_TUNABLES=glibc.malloc.mmap_threshold=...:glibc.malloc.trim_threshold=... set high (or
jemalloc/tcmalloc) removes them.

extra_info: peak_extra_bytes (benchmarks/memory.py: a fresh subprocess, peak RSS during one
call minus the RSS before it).
"""
import functools

import pytest
import torch
import torch.nn.functional as F

import bsrops
from bench_blur_downsample import _benchmark, _memory_info, skip_compiled
from bsrops.nn import DPCB
from bsrops.ops._common import uses_onednn_post_ops
from bsrops.reference.dpcb import DPCBReference

SHAPES = {
    "paper": {"restorer": dict(n=8, c=64, h=64, w=64, k1=3, k2=1, cond=1),
              "estimator": dict(n=8, c=32, h=64, w=64, k1=3, k2=3, cond=64)},
    "smoke": {"restorer": dict(n=2, c=8, h=8, w=8, k1=3, k2=1, cond=1),
              "estimator": dict(n=2, c=4, h=8, w=8, k1=3, k2=3, cond=8)},
}
KINDS = ("restorer", "estimator")
PROVIDERS = ("reference", "compiled_reference", "bsrops_cpu")
MODES = ("forward", "forward+backward", "inference")
FUSED_PROVIDERS = ("eager", "compiled", "bsrops_cpu")
SLOPE = 0.2


def shape(kind, size):
    return SHAPES[size][kind]


def make_inputs(kind, size, seed=0):
    d = shape(kind, size)
    gen = torch.Generator().manual_seed(seed)
    x_img = torch.randn(d["n"], d["c"], d["h"], d["w"], generator=gen)
    x_cond = torch.randn(d["n"], d["c"], d["cond"], d["cond"] if d["cond"] > 1 else 1, generator=gen)
    return x_img, x_cond


def make_modules(kind, size):
    d = shape(kind, size)
    torch.manual_seed(0)
    ours = DPCB(d["c"], d["c"], d["k1"], d["k2"])
    reference = DPCBReference(d["c"], d["c"], d["k1"], d["k2"])
    reference.load_state_dict(ours.state_dict())
    return ours, reference


@functools.lru_cache(maxsize=None)
def _compiled(kind, size):
    _, reference = make_modules(kind, size)
    return torch.compile(lambda a, b: tuple(reference([a, b])), dynamic=False), reference


def block_fn(kind, provider, size):
    """(fn(x_img, x_cond) -> (out_img, out_cond), module)."""
    ours, reference = make_modules(kind, size)
    if provider == "bsrops_cpu":
        return ours, ours
    if provider == "reference":
        return (lambda a, b: tuple(reference([a, b]))), reference
    if provider == "compiled_reference":
        return _compiled(kind, size)
    raise ValueError(f"unknown provider {provider!r}")


def make_case(kind, provider, mode, size):
    """A zero-argument callable running the whole block once in `mode`."""
    fn, module = block_fn(kind, provider, size)
    x_img, x_cond = make_inputs(kind, size)
    if mode == "inference":
        def run():
            with torch.inference_mode():
                return fn(x_img, x_cond)
        return run
    backward = mode == "forward+backward"
    x_img.requires_grad_(backward)
    x_cond.requires_grad_(backward)
    grads = [torch.randn_like(x_img), torch.randn_like(x_cond)]

    def reset():
        x_img.grad = x_cond.grad = None
        module.zero_grad(set_to_none=True)

    def run():
        reset()
        outs = fn(x_img, x_cond)
        if backward:
            torch.autograd.backward(outs, grads)
            return outs, x_img.grad, x_cond.grad
        return outs
    run.reset = reset
    return run


# ---- the fused part alone ----

def eager_fused_part(x_img, a1, f1, x_cond, a2, f2, grad_img, grad_cond, grad_h1, grad_h2):
    """The same work as bsrops_fused_part in eager PyTorch ops, on the same layouts (x_img, x_cond and
    the incoming gradients NCHW, the convolution side channels_last), forward then backward, up to the
    input gradients (conv gradient + residual gradient). Eager's LeakyReLU forward is its own pass."""
    cl, nchw = torch.channels_last, torch.contiguous_format
    relayouts = [t for t in (x_img, x_cond) if not t.is_contiguous(memory_format=cl)]
    h1 = F.leaky_relu(a1, SLOPE, inplace=True)
    h2 = F.leaky_relu(a2, SLOPE, inplace=True)
    moved = [x.contiguous(memory_format=cl) for x in relayouts]
    out_img, out_cond = (x_img + f1 * f2).contiguous(memory_format=nchw), (x_cond + f2).contiguous(memory_format=nchw)
    grad_f1 = (grad_img * f2).contiguous(memory_format=cl)
    product = grad_img * f1
    grad_f2 = ((product.sum((2, 3), keepdim=True) if f2.shape != f1.shape else product) + grad_cond)
    grad_a1 = torch.ops.aten.leaky_relu_backward(grad_h1, h1, SLOPE, True)
    grad_a2 = torch.ops.aten.leaky_relu_backward(grad_h2, h2, SLOPE, True)
    moved_again = [x.contiguous(memory_format=cl) for x in relayouts]
    # grad_a1, grad_a2 stand in for the first convolutions' input gradients; the moved inputs are returned so
    # that torch.compile cannot drop them as dead code
    return (out_img, out_cond, grad_f1, grad_f2.contiguous(memory_format=cl),
            (grad_a1 + grad_img).contiguous(memory_format=nchw), (grad_a2 + grad_cond).contiguous(memory_format=nchw),
            moved, moved_again)


def bsrops_fused_part(x_img, a1, f1, x_cond, a2, f2, grad_img, grad_cond, grad_h1, grad_h2):
    """What bsrops.dpcb runs around its convolutions (ops/dpcb.py), on its layouts: x_img, x_cond and the
    incoming gradients NCHW (the caller's), everything on the convolution side channels_last. The forward
    LeakyReLUs are oneDNN post-ops of the first convolutions on CPU float32 (not separate passes there, not
    timed); the inputs are moved to channels_last for the first convolutions, forward and again backward
    (they are not kept: memory); the epilogue and its backward read and write each tensor in its layout;
    the input gradients come back to NCHW with the residual gradient added in the same pass."""
    ops = torch.ops.bsrops
    relayouts = [t for t in (x_img, x_cond) if not t.is_contiguous(memory_format=torch.channels_last)]
    if not uses_onednn_post_ops(a1):
        ops._leaky_relu_(a1, SLOPE)
        ops._leaky_relu_(a2, SLOPE)
    moved = [ops._relayout(x, None, True) for x in relayouts]  # forward: the first convolutions' inputs
    out_img, out_cond = ops._dpcb_epilogue(x_img, f1, x_cond, f2)
    if f2.shape != f1.shape:
        grad_f1, grad_f2 = ops._dpcb_epilogue_backward(grad_img, grad_cond, f1, f2, True)
    else:
        grad_f2 = ops._dpcb_epilogue_backward(grad_img, grad_cond, f1, None, True)[1]
        grad_f1 = ops._dpcb_epilogue_backward(grad_img, grad_cond, None, f2, True)[0]
    ops._leaky_relu_backward_(grad_h1, a1, SLOPE)  # in place, as in the op's backward
    ops._leaky_relu_backward_(grad_h2, a2, SLOPE)
    # backward: the first convolutions' inputs for their weight gradients
    moved_again = [ops._relayout(x, None, True) for x in relayouts]
    # grad_h1, grad_h2 stand in for the first convolutions' (channels_last) input gradients
    return (out_img, out_cond, grad_f1, grad_f2, ops._relayout(grad_h1, grad_img, False),
            ops._relayout(grad_h2, grad_cond, False), moved, moved_again)


@functools.lru_cache(maxsize=None)
def _compiled_fused():
    return torch.compile(eager_fused_part, dynamic=False)


def fused_inputs(kind, size):
    """x_img, a1, f1, x_cond, a2, f2, grad_img, grad_cond, grad_h1, grad_h2 in the op's layouts: the
    convolution-side tensors (a, f, grad_h) channels_last, the others NCHW. The pre-activations a1, a2 are non-negative so that the in-place
    LeakyReLUs (and the in-place backward masks) are idempotent when a provider reruns on the same buffers
    (otherwise values decay to denormals); the kernels are branch-free vectorised selects, so their speed
    does not depend on the signs."""
    d = shape(kind, size)
    gen = torch.Generator().manual_seed(1)
    image = (d["n"], d["c"], d["h"], d["w"])
    cond = (d["n"], d["c"], d["cond"], d["cond"])
    make = lambda s: torch.randn(s, generator=gen)  # noqa: E731
    conv = lambda t: t.contiguous(memory_format=torch.channels_last)  # noqa: E731
    return [make(image), conv(make(image).abs()), conv(make(image)), make(cond), conv(make(cond).abs()),
            conv(make(cond)), make(image), make(cond), conv(make(image)), conv(make(cond))]


def make_fused_case(kind, provider, size):
    """The fused part, forward+backward (the in-place ops rerun on their own outputs: see fused_inputs)."""
    fn = {"eager": eager_fused_part, "compiled": _compiled_fused() if provider == "compiled" else None,
          "bsrops_cpu": bsrops_fused_part}[provider]
    args = fused_inputs(kind, size)
    return lambda: fn(*args)


def make_conv_case(kind, size):
    """The four convolutions alone, forward+backward (data and weight gradients), for the conv share."""
    _, reference = make_modules(kind, size)
    convs = [reference.body1[0], reference.body1[2], reference.body2[0], reference.body2[2]]
    x_img, x_cond = make_inputs(kind, size)
    x_img.requires_grad_()
    x_cond.requires_grad_()

    def run():
        reference.zero_grad(set_to_none=True)
        x_img.grad = x_cond.grad = None
        outs = [convs[1](convs[0](x_img)), convs[3](convs[2](x_cond))]
        torch.autograd.backward(outs, [torch.ones_like(o) for o in outs])
        return x_img.grad
    return run


def _calls():
    return sum(v for k, v in bsrops.kernel_calls().items() if k.endswith(".cpu") and ("dpcb" in k or "leaky" in k))


def _bsrops_inference_ran(run):
    """Whether run() went through bsrops._dpcb_inference (on CPU float32 it runs no bsrops kernel: its
    LeakyReLUs are oneDNN post-ops, its residual adds torch's in-place ops)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        run()
    return any(event.name == "bsrops::_dpcb_inference" for event in profile.events())


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("kind", KINDS)
def test_dpcb_block(benchmark, bench_size, kind, provider, mode):
    benchmark.group = f"dpcb/{kind}"
    benchmark.name = f"{provider} {mode}"
    if provider == "compiled_reference":
        skip_compiled(benchmark, bench_size)
    extra = {"kind": kind, "provider": provider, "mode": mode, "size": bench_size, **shape(kind, bench_size),
             "threads": torch.get_num_threads()}
    smoke_memory = provider == "bsrops_cpu" and mode == "forward+backward" and kind == "restorer"
    extra.update(_memory_info(benchmark, make_case, kind, provider, mode, bench_size, always=smoke_memory))
    case = make_case(kind, provider, mode, bench_size)
    if mode == "inference":
        assert _bsrops_inference_ran(case) == (provider == "bsrops_cpu"), "bsrops must run for bsrops_cpu only"
    before = _calls()
    _benchmark(benchmark, case, extra)
    ran = _calls() > before
    if mode != "inference":
        assert ran == (provider == "bsrops_cpu"), "bsrops' cpu kernels must run for bsrops_cpu only"


@pytest.mark.parametrize("provider", FUSED_PROVIDERS)
@pytest.mark.parametrize("kind", KINDS)
def test_dpcb_fused_part(benchmark, bench_size, kind, provider):
    benchmark.group = f"dpcb/fused/{kind}"
    benchmark.name = f"{provider} forward+backward"
    if provider == "compiled":
        skip_compiled(benchmark, bench_size)
    out = _benchmark(benchmark, make_fused_case(kind, provider, bench_size), {"kind": kind, "provider": provider})
    assert len(out) == 8


@pytest.mark.parametrize("kind", KINDS)
def test_dpcb_convs(benchmark, bench_size, kind):
    benchmark.group = f"dpcb/{kind}"
    benchmark.name = "convs alone forward+backward"
    _benchmark(benchmark, make_conv_case(kind, bench_size), {"kind": kind})


def test_block_times_in_a_fresh_process(bench_size):
    """check_targets' whole-block rows: fresh_process.median_times runs the cases in a child process."""
    import bench_blur_downsample
    import fresh_process

    cases = {provider: (make_case, ("estimator", provider, "inference", bench_size)) for provider in ("reference", "bsrops_cpu")}
    times = fresh_process.median_times(cases, rounds=2)
    assert set(times) == set(cases) and all(t > 0 for t in times.values()), times
    with pytest.raises(RuntimeError, match="unknown provider 'nope'"):  # the child's error comes back
        fresh_process.median_times({"bad": (make_case, ("estimator", "nope", "inference", bench_size))}, rounds=1)
    with pytest.raises(ValueError, match="from one file"):
        fresh_process.median_times({"a": cases["reference"], "b": (bench_blur_downsample.make_case, ())})
