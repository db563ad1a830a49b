"""bsrops.blur_downsample's kernel layouts beyond the op's own three: a shared (1, k, k) kernel broadcast over the
batch, PDM's per-image (N, k*k, 1, 1), per-channel (N, C, k, k) and one kernel for all channels (N, 1, k, k).
Values and gradients (x and the kernel, in its own shape) against the float64 loop reference, over strides, odd
and even k, flips, every padding and empty batches, on every backend the CPU reaches; the layouts reach the native
kernels as views, not copies; shapes with two readings need kernel_layout."""
import itertools
import os

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import bsrops
from bsrops.reference.blur_downsample import PADDINGS, blur_downsample_loop, geometry
from test_blur_downsample import calls_delta
from tolerances import assert_close_to_float64
from triton_sm90 import TRITON_ERROR

TRITON = [] if TRITON_ERROR or os.environ.get("TRITON_INTERPRET") != "1" else ["triton"]
LAYOUTS = ("shared_1", "per_image_pdm", "per_channel", "per_channel_1")
KERNEL_LAYOUT = {"shared_1": "shared", "per_image_pdm": "per_image", "per_channel": "per_channel",
                 "per_channel_1": "per_channel"}


def make_kernel(layout, n, c, k, dtype=torch.float64):
    shape = {"shared_1": (1, k, k), "per_image_pdm": (n, k * k, 1, 1), "per_channel": (n, c, k, k),
             "per_channel_1": (n, 1, k, k)}[layout]
    return torch.rand(shape, dtype=dtype)


def loop_reference(x, kernel, layout, stride, padding, flip):
    """The layout written out with the float64 loop's own layouts (per image, per pixel, per channel image)."""
    n, c, height, width = x.shape
    if layout == "shared_1":
        return blur_downsample_loop(x, kernel[0], stride, padding, flip)
    if layout == "per_image_pdm":  # one kernel for every output pixel, in the per-pixel layout
        out_h, out_w = geometry(height, width, 1, stride, flip)[:2]
        return blur_downsample_loop(x, kernel.expand(n, kernel.shape[1], out_h, out_w), stride, padding, flip)
    if layout == "per_channel_1":
        return blur_downsample_loop(x, kernel[:, 0], stride, padding, flip)
    return torch.cat([blur_downsample_loop(x[:, i:i + 1], kernel[:, i], stride, padding, flip) for i in range(c)], 1)


def forward_and_grads(fn, x, kernel, grad_out=None):
    x, kernel = x.detach().requires_grad_(), kernel.detach().requires_grad_()
    out = fn(x, kernel)
    grad_out = torch.randn_like(out) if grad_out is None else grad_out
    return (out.detach(), *torch.autograd.grad(out, (x, kernel), grad_out)), grad_out


def assert_layout_matches_loop(x, kernel, layout, stride, padding, flip, kernel_layout=None):
    ours, grad_out = forward_and_grads(
        lambda a, b: bsrops.blur_downsample(a, b, stride, padding, flip, kernel_layout=kernel_layout), x, kernel)
    truth, _ = forward_and_grads(lambda a, b: loop_reference(a, b, layout, stride, padding, flip), x, kernel,
                                 grad_out)
    for name, actual, expected, like in zip(("out", "grad_x", "grad_kernel"), ours, truth, (grad_out, x, kernel)):
        assert actual.shape == like.shape and actual.dtype == like.dtype, name
        assert_close_to_float64(actual, expected)


MATRIX = [(layout, stride, k, flip, PADDINGS[i % len(PADDINGS)]) for i, (layout, stride, k, flip) in
          enumerate(itertools.product(LAYOUTS, (1, 2, 3, 4), (3, 4), (False, True)))]


@pytest.mark.parametrize("layout,stride,k,flip,padding", MATRIX)
def test_cpu_matches_float64_loop(layout, stride, k, flip, padding):
    x = torch.randn(2, 3, 11, 14, dtype=torch.float64)
    kernel = make_kernel(layout, 2, 3, k)
    delta = calls_delta(lambda: assert_layout_matches_loop(x, kernel, layout, stride, padding, flip))
    assert delta == {"blur_downsample.cpu": 1, "_blur_downsample_backward.cpu": 1}, delta


@pytest.mark.parametrize("backend", ["cpu_shared", "reference"] + TRITON)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_other_backends_match_float64_loop(layout, backend):
    x = torch.randn(2, 2, 7, 6, dtype=torch.float64)
    kernel = make_kernel(layout, 2, 2, 4)
    with bsrops.use_backend(backend):
        delta = calls_delta(lambda: assert_layout_matches_loop(x, kernel, layout, 3, "symmetric", True))
    assert delta[f"blur_downsample.{backend}"] == 1 and delta[f"_blur_downsample_backward.{backend}"] == 1, delta
    assert "blur_downsample.cpu" not in delta, delta


@pytest.mark.parametrize("layout", LAYOUTS)
def test_explicit_kernel_layout_gives_the_same_result(layout):
    x = torch.randn(2, 3, 9, 8, dtype=torch.float64)
    kernel = make_kernel(layout, 2, 3, 3)
    assert_layout_matches_loop(x, kernel, layout, 2, "reflect", False, kernel_layout=KERNEL_LAYOUT[layout])


@pytest.mark.parametrize("layout", LAYOUTS)
def test_batch_zero(layout):
    x = torch.randn(0, 3, 8, 7, dtype=torch.float64)
    kernel = make_kernel(layout, 0, 3, 3)
    (out, grad_x, grad_kernel), _ = forward_and_grads(lambda a, b: bsrops.blur_downsample(a, b, 2), x, kernel)
    assert out.shape == (0, 3, 4, 4) and grad_x.shape == x.shape and grad_kernel.shape == kernel.shape
    assert not grad_kernel.any()


@pytest.mark.parametrize("layout", ["per_channel", "per_image_pdm"])
def test_gradcheck(layout):
    x = torch.randn(1, 2, 7, 6, dtype=torch.float64, requires_grad=True)
    kernel = make_kernel(layout, 1, 2, 3).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: bsrops.blur_downsample(a, b, 2, "circular", True), (x, kernel),
                                    fast_mode=True)


class OpArguments(TorchDispatchMode):
    """Records the kernel argument of every bsrops::blur_downsample call."""

    def __init__(self):
        super().__init__()
        self.kernels = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.bsrops.blur_downsample.default:
            self.kernels.append(args[1])
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("layout,native_shape", [("shared_1", (5, 5)), ("per_image_pdm", (2, 5, 5)),
                                                 ("per_channel", (6, 5, 5)), ("per_channel_1", (2, 5, 5))])
def test_layouts_reach_the_kernels_as_views(layout, native_shape):
    """No kernel is copied into the per-pixel layout (N, k*k, Ho, Wo): the op gets a view of the caller's kernel in
    its shared or per-image layout (a per-channel kernel as the kernels of N*C single-channel images)."""
    x = torch.randn(2, 3, 12, 10)
    kernel = make_kernel(layout, 2, 3, 5, torch.float32)
    with OpArguments() as seen:
        bsrops.blur_downsample(x, kernel, 4)
    (passed,) = seen.kernels
    assert tuple(passed.shape) == native_shape
    assert passed.untyped_storage().data_ptr() == kernel.untyped_storage().data_ptr()


def test_ambiguous_shapes_need_kernel_layout():
    """(N, C, k, k) with C = k*k on an output of k x k is per channel or per pixel; (N, C, 1, 1) with C a square
    is per channel (1 x 1) or per image (PDM's); (N, 1, k, k) on a k x k output is one kernel for all channels or
    1 x 1 per pixel. Each reading, when named, matches its own reference."""
    x = torch.randn(1, 9, 6, 5, dtype=torch.float64)
    kernel = torch.rand(1, 9, 3, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"kernel of shape \(1, 9, 3, 3\) reads as per_channel or per_pixel for x "
                                         r"with N = 1, C = 9 and an output of 3 x 3; pass kernel_layout="):
        bsrops.blur_downsample(x, kernel, 2)
    assert_layout_matches_loop(x, kernel, "per_channel", 2, "replicate", False, kernel_layout="per_channel")
    ours, grad_out = forward_and_grads(lambda a, b: bsrops.blur_downsample(a, b, 2, "replicate",
                                                                           kernel_layout="per_pixel"), x, kernel)
    truth, _ = forward_and_grads(lambda a, b: blur_downsample_loop(a, b, 2, "replicate"), x, kernel, grad_out)
    for actual, expected in zip(ours, truth):
        assert_close_to_float64(actual, expected)
    with pytest.raises(ValueError, match=r"reads as per_image or per_channel"):
        bsrops.blur_downsample(torch.randn(2, 4, 5, 5), torch.rand(2, 4, 1, 1))
    with pytest.raises(ValueError, match=r"reads as per_channel or per_pixel"):
        bsrops.blur_downsample(torch.randn(2, 3, 6, 6), torch.rand(2, 1, 3, 3), 2)


def test_readings_of_one_meaning_are_not_ambiguous():
    """On a 1 x 1 output a per-pixel kernel is a per-image one; a (N, 1, 1, 1) kernel reads alike in every
    layout."""
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    kernel = torch.rand(2, 9, 1, 1, dtype=torch.float64)
    assert_layout_matches_loop(x, kernel, "per_image_pdm", 4, "zeros", False)
    scale = torch.rand(2, 1, 1, 1, dtype=torch.float64)
    assert_layout_matches_loop(x[:, :1], scale, "per_channel_1", 4, "zeros", False)


@pytest.mark.slow
def test_torch_compile_fullgraph_per_channel():
    """The entry point's reshapes trace without a graph break (aot_eager: the tracing, without inductor's codegen,
    which tests/test_blur_downsample.py compiles)."""
    x = torch.randn(2, 3, 10, 9, requires_grad=True)
    kernel = torch.rand(2, 3, 4, 4, requires_grad=True)
    torch._dynamo.reset()
    compiled = torch.compile(lambda a, b: bsrops.blur_downsample(a, b, 2).square().sum(), fullgraph=True,
                             backend="aot_eager")
    value = compiled(x, kernel)
    grads = torch.autograd.grad(value, (x, kernel))
    expected = bsrops.blur_downsample(x, kernel, 2).square().sum()
    torch.testing.assert_close(value, expected)
    for actual, truth in zip(grads, torch.autograd.grad(expected, (x, kernel))):
        torch.testing.assert_close(actual, truth)
