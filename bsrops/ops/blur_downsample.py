"""torch.ops.bsrops.blur_downsample: spatially-variant blur fused with stride-s decimation.

Semantics are pinned in docs/ops.md; `bsrops.reference.blur_downsample` holds
the PyTorch references. This module validates inputs, registers the fake kernels and
the autograd formula (whose backward is the explicit backward op), and declares the
Python backends (reference, cpu_shared, triton).
"""
import math

import torch

from .. import _backend
from ..reference import blur_downsample as ref
from ._common import register_autograd
from ._precision import FLOAT_DTYPES, promote, register_autocast

SCHEMAS = (
    "blur_downsample(Tensor x, Tensor kernel, int stride=1, str padding='reflect', bool flip=False) -> Tensor",
    "_blur_downsample_backward(Tensor grad_out, Tensor x, Tensor kernel, int stride, str padding, bool flip, "
    "bool[2] output_mask) -> (Tensor, Tensor)",
    # the same maths through the per-element functions the CUDA kernels use (backend "cpu_shared")
    "_blur_downsample_shared(Tensor x, Tensor kernel, int stride=1, str padding='reflect', bool flip=False) -> Tensor",
    "_blur_downsample_shared_backward(Tensor grad_out, Tensor x, Tensor kernel, int stride, str padding, bool flip, "
    "bool[2] output_mask) -> (Tensor, Tensor)",
)
INT64_MAX = 2 ** 63 - 1
KERNEL_LAYOUTS = ("shared", "per_image", "per_channel", "per_pixel")


def blur_downsample(x, kernel, stride=1, padding="reflect", flip=False, kernel_layout=None):
    """Blur `x` (N, C, H, W) with `kernel` and keep every `stride`-th pixel -> (N, C, ceil(H/s), ceil(W/s)).

    kernel, by layout (docs/ops.md; `kernel_layout` names it where a shape has two readings):
    shared (k, k) or (1, k, k); per_image (N, k, k) or (N, k*k, 1, 1); per_channel (N, C, k, k), channel c of
    each image blurred with its own kernel, or (N, 1, k, k); per_pixel (N, k*k, Ho, Wo), tap (p, q) at
    channel p*k + q. The other layouts run as views of the op's three: (k, k), (N, k, k) and per pixel, a
    per-channel kernel as the per-image kernels of N*C single-channel images.
    padding: reflect | symmetric | replicate | zeros | circular.
    flip=False correlates, out(i, j) = sum K[p, q] x(s*i + p - c, s*j + q - c), c = k // 2;
    flip=True is the true convolution, out(i, j) = sum K[p, q] x(s*i - p + c, s*j - q + c).
    x and kernel of different float dtypes are promoted to one (torch.result_type); under torch.autocast both run
    in the autocast dtype (docs/ops.md, Precision).
    """
    layout = check_inputs(x, kernel, stride, padding, kernel_layout)
    x, kernel = promote(x, kernel)
    n, c, height, width = x.shape
    if layout == "per_channel" and kernel.shape[1] > 1:
        k = kernel.shape[-1]
        out = torch.ops.bsrops.blur_downsample(x.reshape(n * c, 1, height, width), kernel.reshape(n * c, k, k),
                                               stride, padding, flip)
        return out.view(n, c, *out.shape[2:])
    return torch.ops.bsrops.blur_downsample(x, native_kernel(kernel, layout), stride, padding, flip)


def native_kernel(kernel, layout):
    """A kernel of `layout` (not a per-channel one with C > 1) as the op takes it: (k, k), (N, k, k) or per
    pixel; a view where the strides allow one."""
    if layout == "per_pixel" or kernel.dim() == 2:
        return kernel
    k = layout_kernel_size(kernel, layout)
    return kernel.reshape(k, k) if layout == "shared" else kernel.reshape(kernel.shape[0], k, k)


def layout_kernel_size(kernel, layout):
    """k of a kernel of `layout`: k*k taps on dim 1 per pixel and in PDM's (N, k*k, 1, 1), else its last dim."""
    if layout == "per_pixel" or (layout == "per_image" and kernel.dim() == 4):
        return math.isqrt(kernel.shape[1])
    return kernel.shape[-1]


def _square_root(value):
    root = math.isqrt(value)
    return root if root * root == value else None


def kernel_readings(shape, n, c, out_h, out_w):
    """{layout: what it computes} for each layout a kernel of `shape` has against x (n, c, ...) and an output of
    out_h x out_w; what it computes is ("image", k) for one k x k kernel per image, ("channel", k) and
    ("pixel", k) for the others, so two readings of one meaning are one."""
    readings = {}
    if len(shape) == 2 and shape[0] == shape[1]:
        readings["shared"] = ("image", shape[0])
    if len(shape) == 3 and shape[1] == shape[2]:
        if shape[0] == n:
            readings["per_image"] = ("image", shape[1])
        if shape[0] == 1:
            readings["shared"] = ("image", shape[1])
    if len(shape) == 4 and shape[0] == n:
        k = _square_root(shape[1])
        one_pixel = (out_h, out_w) == (1, 1)
        if k and shape[2:] == (1, 1):
            readings["per_image"] = ("image", k)
        if k and shape[2:] == (out_h, out_w):
            readings["per_pixel"] = ("image" if one_pixel else "pixel", k)
        if shape[1] in (c, 1) and shape[2] == shape[3]:
            readings["per_channel"] = ("image" if shape[1] == 1 else "channel", shape[2])
    return readings


def _layout_error(shape, n, c, out_h, out_w):
    if len(shape) == 2:
        return f"a shared kernel must be (k, k), got {shape}"
    if len(shape) == 3:
        return f"a per-image kernel must be (N, k, k) with N = {n}, or (1, k, k) shared, got {shape}"
    if len(shape) == 4:
        return (f"a 4-D kernel fits no layout: a per-pixel kernel must be (N, k*k, Ho, Wo) = ({n}, k*k, {out_h}, "
                f"{out_w}), a per-image one ({n}, k*k, 1, 1), a per-channel one ({n}, {c}, k, k) or ({n}, 1, k, k); "
                f"got {shape}")
    return f"kernel must be (k, k), (N, k, k) or (1, k, k), or 4-D (per pixel, image or channel), got shape {shape}"


def resolve_layout(kernel, n, c, out_h, out_w, kernel_layout=None):
    """The layout of `kernel` (KERNEL_LAYOUTS): `kernel_layout` if its shape has it, else its only reading;
    ValueError when it has none, or readings of different meanings and no kernel_layout."""
    shape = tuple(kernel.shape)
    readings = kernel_readings(shape, n, c, out_h, out_w)
    if kernel_layout is not None:
        if kernel_layout not in KERNEL_LAYOUTS:
            raise ValueError(f"blur_downsample: kernel_layout must be one of {', '.join(KERNEL_LAYOUTS)} or None, "
                             f"got {kernel_layout!r}")
        if kernel_layout not in readings:
            raise ValueError(f"blur_downsample: kernel of shape {shape} is not a {kernel_layout} kernel for x with "
                             f"N = {n}, C = {c} and an output of {out_h} x {out_w}: "
                             f"{_layout_error(shape, n, c, out_h, out_w)}")
        return kernel_layout
    if not readings:
        raise ValueError(f"blur_downsample: {_layout_error(shape, n, c, out_h, out_w)}")
    names = [layout for layout in KERNEL_LAYOUTS if layout in readings]
    if len(set(readings.values())) > 1:
        raise ValueError(f"blur_downsample: kernel of shape {shape} reads as {' or '.join(names)} for x with N = {n}, "
                         f"C = {c} and an output of {out_h} x {out_w}; pass kernel_layout= one of {', '.join(names)}")
    return names[0]


def check_inputs(x, kernel, stride, padding, kernel_layout=None):
    """Raise TypeError / ValueError naming the argument and what it must be; return the kernel's layout."""
    for name, value in (("x", x), ("kernel", kernel)):
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"blur_downsample: {name} must be a torch.Tensor, got {type(value).__name__}")
        if value.dtype not in FLOAT_DTYPES:
            raise TypeError(f"blur_downsample: {name} must be float16/bfloat16/float32/float64, got {value.dtype}")
    if kernel.device != x.device:
        raise ValueError(f"blur_downsample: kernel is on {kernel.device} but x is on {x.device}")
    if x.dim() != 4 or x.shape[2] < 1 or x.shape[3] < 1:
        raise ValueError(f"blur_downsample: x must be (N, C, H, W) with H, W >= 1, got shape {tuple(x.shape)}")
    if isinstance(stride, bool) or not isinstance(stride, int):
        raise TypeError(f"blur_downsample: stride must be an int, got {type(stride).__name__}")
    if not 1 <= stride <= INT64_MAX:  # the op takes an int64; any stride >= max(H, W) gives (N, C, 1, 1)
        raise ValueError(f"blur_downsample: stride must be >= 1 and <= 2**63 - 1, got {stride}")
    if padding not in ref.PADDINGS:
        raise ValueError(f"blur_downsample: padding must be one of {', '.join(ref.PADDINGS)}, got {padding!r}")
    n, c, height, width = x.shape
    layout = resolve_layout(kernel, n, c, -(-height // stride), -(-width // stride), kernel_layout)
    _check_padding(x.shape, layout_kernel_size(kernel, layout), stride, padding)
    return layout


def _check_padding(x_shape, k, stride, padding):
    height, width = x_shape[2:]
    _, _, before, after_h, after_w = ref.geometry(height, width, k, stride, flip=False)
    widest = max(before, after_h, after_w, k - 1 - before)  # flip swaps the two sides
    needed = widest + 1 if padding == "reflect" else widest  # reflection excludes the edge pixel
    if padding in ("reflect", "symmetric", "circular") and min(height, width) < needed:
        raise ValueError(
            f"blur_downsample: {padding} padding of {widest} pixels (k = {k}) needs H and W >= {needed}, "
            f"got x of shape {tuple(x_shape)}; use a smaller kernel or padding='replicate'/'zeros'")


# ---- registration ----

_backend.define_schemas(SCHEMAS)


@torch.library.register_fake("bsrops::blur_downsample")
def _forward_fake(x, kernel, stride=1, padding="reflect", flip=False):
    n, c, height, width = x.shape
    return x.new_empty(n, c, -(-height // stride), -(-width // stride))


@torch.library.register_fake("bsrops::_blur_downsample_backward")
def _backward_fake(grad_out, x, kernel, stride, padding, flip, output_mask):
    grad_x = x.new_empty(x.shape) if output_mask[0] else x.new_empty(0)
    grad_kernel = kernel.new_empty(kernel.shape) if output_mask[1] else kernel.new_empty(0)
    return grad_x, grad_kernel


def _setup_context(ctx, inputs, output):
    x, kernel, stride, padding, flip = inputs
    ctx.save_for_backward(x, kernel)
    ctx.options = (stride, padding, flip)


def _backward(ctx, grad_out):
    x, kernel = ctx.saved_tensors
    mask = [ctx.needs_input_grad[0], ctx.needs_input_grad[1]]
    grad_x, grad_kernel = torch.ops.bsrops._blur_downsample_backward(grad_out, x, kernel, *ctx.options, mask)
    return (grad_x if mask[0] else None, grad_kernel if mask[1] else None, None, None, None)


register_autograd("blur_downsample", _backward, _setup_context)


NATIVE_LAYOUTS = {2: "shared", 3: "per_image", 4: "per_pixel"}


def check_native_call(x, kernel, stride, padding):
    """check_inputs for the op's own layouts ((k, k), (N, k, k), (N, k*k, Ho, Wo)) and one dtype: what the
    kernels index (the Triton kernels take validated inputs)."""
    check_inputs(x, kernel, stride, padding, NATIVE_LAYOUTS.get(kernel.dim()))
    if kernel.dtype != x.dtype:
        raise TypeError(f"blur_downsample: kernel dtype {kernel.dtype} must equal x dtype {x.dtype} (the op's "
                        f"kernels take one dtype; bsrops.blur_downsample promotes)")


def _check_forward_call(x, kernel, stride=1, padding="reflect", flip=False):
    check_native_call(x, kernel, stride, padding)


def _check_backward_call(grad_out, x, kernel, stride, padding, flip, output_mask):
    check_native_call(x, kernel, stride, padding)


register_autocast("blur_downsample", "lower", (0, 1))
_backend.register_kernel("reference", "blur_downsample", ref.blur_downsample_reference)
_backend.register_kernel("reference", "_blur_downsample_backward", ref.blur_downsample_backward_reference)
_backend.register_kernel("cpu_shared", "blur_downsample",
                         lambda *args: torch.ops.bsrops._blur_downsample_shared(*args))
_backend.register_kernel("cpu_shared", "_blur_downsample_backward",
                         lambda *args: torch.ops.bsrops._blur_downsample_shared_backward(*args))
_backend.register_lazy_kernel("triton", "blur_downsample", "triton.blur_downsample", "forward",
                              check=_check_forward_call)
_backend.register_lazy_kernel("triton", "_blur_downsample_backward", "triton.blur_downsample", "backward",
                              check=_check_backward_call)
