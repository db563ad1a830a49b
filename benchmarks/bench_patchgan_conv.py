"""Benchmarks of bsrops.patchgan_conv (CPU): the whole PatchGAN block and its fused part alone.

Group (BSR_BENCH_SIZE=paper, the default): patchgan_conv/instance - conv 64->128, 4x4,
stride 2, padding 1 on x (16, 64, 64, 64) -> (16, 128, 32, 32), instance norm (no affine),
LeakyReLU(0.2), float32: the second block of the pix2pix / RealSR NLayer discriminator.
Whole block, providers: reference (nn.Conv2d, nn.InstanceNorm2d, nn.LeakyReLU(0.2, True),
eager), compiled_reference (torch.compile of it), bsrops_cpu (bsrops.nn.PatchGANConv);
modes: forward, forward+backward (grads of x and the conv's parameters), inference.
Fused part alone (`fused`, forward+backward): the work around the conv - on the conv output
y the norm + activation and their backward, then the layout changes of the op's
channels_last conv backward (grad_y and x to channels_last, grad_x back to NCHW) - as
F.instance_norm + in-place LeakyReLU, their autograd backward and torch's layout copies
(eager), torch.compile of that (compiled), and bsrops' `_patchgan_norm_act` +
`_patchgan_norm_act_backward` + `_relayout` (bsrops_cpu). Also `conv alone`
forward+backward (NCHW, as eager runs it), for the conv share.

Where the time goes and why the fusion helps (the arithmetic; measured figures:
benchmarks/results/): the conv is 16*1024*128*64*16 = 2.15 GMAC forward and twice that backward
(data + weight gradients), 6.4 GMAC = 12.9 GFLOP in all. The norm + activation work on 8 MiB
tensors (y, out, grad_out, grad_y); in units of one such tensor read or written, eager runs ~13
(instance-norm statistics 1, normalise 2, LeakyReLU 2, LeakyReLU backward 3, norm backward
reductions 2 + input gradient 3) and the fused kernels 6 (statistics 1, write out 1 - the 4 KB
planes stay in L1 between the passes -, backward: read grad_out and out, write gz into grad_y's
memory 3, then the reductions and grad_y in place from L1), with 2 instead of 4 tensor-sized
allocations. The op's conv backward runs in channels_last (oneDNN's NCHW backward holds ~3
y-sized reorder buffers): grad_y leaves the norm's backward in channels_last (1 transpose of
y's size), x goes to channels_last for the weight gradient and grad_x back (2 of x's, twice y's
size). The conv dominates the block's time, so the fused part's gain shows as a smaller one for
the block. On a GPU the saved traffic (7 units of 8.4 MB) is about what the op's extra launches
and per-call overhead cost (benchmarks/gpu_suite.py measures it on a device).
"""
import functools

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import bsrops
from bench_blur_downsample import _benchmark, _memory_info, skip_compiled
from bsrops.nn import PatchGANConv

SHAPES = {
    "paper": dict(n=16, cin=64, cout=128, h=64, w=64, k=4, s=2, p=1),
    "smoke": dict(n=2, cin=4, cout=8, h=12, w=12, k=4, s=2, p=1),
}
PROVIDERS = ("reference", "compiled_reference", "bsrops_cpu")
MODES = ("forward", "forward+backward", "inference")
FUSED_PROVIDERS = ("eager", "compiled", "bsrops_cpu")
SLOPE = 0.2


def make_modules(size):
    d = SHAPES[size]
    torch.manual_seed(0)
    ours = PatchGANConv(d["cin"], d["cout"], d["k"], d["s"], d["p"], "instance")
    reference = nn.Sequential(nn.Conv2d(d["cin"], d["cout"], d["k"], d["s"], d["p"]), nn.InstanceNorm2d(d["cout"]),
                              nn.LeakyReLU(SLOPE, True))
    reference[0].load_state_dict(ours.conv.state_dict())
    return ours, reference


@functools.lru_cache(maxsize=None)
def _compiled(size):
    _, reference = make_modules(size)
    return torch.compile(reference, dynamic=False)


def make_input(size, seed=0):
    """The block's input x (N, Cin, H, W)."""
    d = SHAPES[size]
    return torch.randn(d["n"], d["cin"], d["h"], d["w"], generator=torch.Generator().manual_seed(seed))


def make_case(provider, mode, size):
    """A zero-argument callable running the whole block once in `mode`."""
    ours, reference = make_modules(size)
    module = {"bsrops_cpu": ours, "reference": reference}.get(provider)
    if provider == "compiled_reference":
        module = _compiled(size)
    x = make_input(size)
    if mode == "inference":
        def run():
            with torch.inference_mode():
                return module(x)
        return run
    backward = mode == "forward+backward"
    x.requires_grad_(backward)
    grad = None

    def reset():
        x.grad = None
        module.zero_grad(set_to_none=True)

    def run():
        nonlocal grad
        reset()
        out = module(x)
        if backward:
            grad = torch.randn_like(out) if grad is None else grad
            out.backward(grad)
            return out, x.grad
        return out
    run.reset = reset
    return run


def _eager_layout_changes(grad_y, x, grad_x_cl):
    """grad_y and x to channels_last, grad_x (here a channels_last stand-in) back to NCHW, in torch."""
    cl = torch.channels_last
    return grad_y.contiguous(memory_format=cl), x.contiguous(memory_format=cl), grad_x_cl.contiguous()


def eager_fused_part(y, grad, x, grad_x_cl):
    y.grad = None
    out = F.leaky_relu(F.instance_norm(y), SLOPE, inplace=True)
    out.backward(grad)
    return out, *_eager_layout_changes(y.grad, x, grad_x_cl)


def bsrops_fused_part(y, grad, x, grad_x_cl):
    ops = torch.ops.bsrops
    out, mean, rstd = ops._patchgan_norm_act(y, None, None, None, None, "instance", True, 0.1, 1e-5, SLOPE, True)
    grad_y, _, _ = ops._patchgan_norm_act_backward(grad, y, out, mean, rstd, None, "instance", True, SLOPE, True,
                                                   [True, False, False])
    return (out, ops._relayout(grad_y, None, True), ops._relayout(x, None, True),
            ops._relayout(grad_x_cl, None, False))


@functools.lru_cache(maxsize=None)
def _compiled_fused():
    def fn(y, grad, x, grad_x_cl):
        out = F.leaky_relu(F.instance_norm(y), SLOPE)
        (grad_y,) = torch.autograd.grad(out, y, grad)
        return out, *_eager_layout_changes(grad_y, x, grad_x_cl)
    return torch.compile(fn, dynamic=False)


def make_fused_case(provider, size):
    d = SHAPES[size]
    gen = torch.Generator().manual_seed(1)
    out_h = (d["h"] + 2 * d["p"] - d["k"]) // d["s"] + 1
    y = torch.randn(d["n"], d["cout"], out_h, out_h, generator=gen)
    grad = torch.randn(y.shape, generator=gen)
    x = torch.randn(d["n"], d["cin"], d["h"], d["w"], generator=gen)
    grad_x_cl = torch.randn(x.shape, generator=gen).contiguous(memory_format=torch.channels_last)
    if provider == "bsrops_cpu":
        return lambda: bsrops_fused_part(y, grad, x, grad_x_cl)
    y.requires_grad_()
    if provider == "eager":
        return lambda: eager_fused_part(y, grad, x, grad_x_cl)
    compiled = _compiled_fused()
    return lambda: compiled(y, grad, x, grad_x_cl)


def make_conv_case(size):
    _, reference = make_modules(size)
    conv = reference[0]
    d = SHAPES[size]
    x = torch.randn(d["n"], d["cin"], d["h"], d["w"], requires_grad=True)

    def run():
        conv.zero_grad(set_to_none=True)
        x.grad = None
        out = conv(x)
        out.backward(torch.ones_like(out))
        return x.grad
    return run


def _calls():
    return sum(v for k, v in bsrops.kernel_calls().items() if k.startswith("_patchgan") and k.endswith(".cpu"))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("provider", PROVIDERS)
def test_patchgan_block(benchmark, bench_size, provider, mode):
    benchmark.group = "patchgan_conv/instance"
    benchmark.name = f"{provider} {mode}"
    if provider == "compiled_reference":
        skip_compiled(benchmark, bench_size)
    extra = {"provider": provider, "mode": mode, "size": bench_size, **SHAPES[bench_size],
             "threads": torch.get_num_threads()}
    smoke_memory = provider == "bsrops_cpu" and mode == "forward+backward"
    extra.update(_memory_info(benchmark, make_case, provider, mode, bench_size, always=smoke_memory))
    before = _calls()
    _benchmark(benchmark, make_case(provider, mode, bench_size), extra)
    assert (_calls() > before) == (provider == "bsrops_cpu"), "bsrops' cpu kernels must run for bsrops_cpu only"


@pytest.mark.parametrize("provider", FUSED_PROVIDERS)
def test_patchgan_fused_part(benchmark, bench_size, provider):
    benchmark.group = "patchgan_conv/fused"
    benchmark.name = f"{provider} forward+backward"
    if provider == "compiled":
        skip_compiled(benchmark, bench_size)
    out = _benchmark(benchmark, make_fused_case(provider, bench_size), {"provider": provider})
    assert out[1] is not None


def test_patchgan_conv_alone(benchmark, bench_size):
    benchmark.group = "patchgan_conv/instance"
    benchmark.name = "conv alone forward+backward"
    _benchmark(benchmark, make_conv_case(bench_size), {})
