"""torch.ops.bsrops.blur_downsample: spatially-variant blur fused with stride-s decimation.

Semantics are pinned in docs/ops.md; `bsrops.reference.blur_downsample` holds
the PyTorch references. This module validates inputs, registers the fake kernels and
the autograd formula (whose backward is the explicit backward op), and declares the
Python backends (reference, cpu_shared, triton).
"""
import torch

from .. import _backend
from ..reference import blur_downsample as ref

SCHEMAS = (
    "blur_downsample(Tensor x, Tensor kernel, int stride=1, str padding='reflect', bool flip=False) -> Tensor",
    "_blur_downsample_backward(Tensor grad_out, Tensor x, Tensor kernel, int stride, str padding, bool flip, "
    "bool[2] output_mask) -> (Tensor, Tensor)",
    # the same maths through the per-element functions the CUDA kernels use (backend "cpu_shared")
    "_blur_downsample_shared(Tensor x, Tensor kernel, int stride=1, str padding='reflect', bool flip=False) -> Tensor",
    "_blur_downsample_shared_backward(Tensor grad_out, Tensor x, Tensor kernel, int stride, str padding, bool flip, "
    "bool[2] output_mask) -> (Tensor, Tensor)",
)
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
INT64_MAX = 2 ** 63 - 1


def blur_downsample(x, kernel, stride=1, padding="reflect", flip=False):
    """Blur `x` (N, C, H, W) with `kernel` and keep every `stride`-th pixel -> (N, C, ceil(H/s), ceil(W/s)).

    kernel: (k, k) shared, (N, k, k) per image, or (N, k*k, Ho, Wo) per output pixel
    (tap (p, q) at channel p*k + q); one kernel serves all channels.
    padding: reflect | symmetric | replicate | zeros | circular.
    flip=False correlates, out(i, j) = sum K[p, q] x(s*i + p - c, s*j + q - c), c = k // 2;
    flip=True is the true convolution, out(i, j) = sum K[p, q] x(s*i - p + c, s*j - q + c).
    """
    check_inputs(x, kernel, stride, padding)
    return torch.ops.bsrops.blur_downsample(x, kernel, stride, padding, flip)


def _kernel_error(kernel, n, out_h, out_w):
    if kernel.dim() == 2 and kernel.shape[0] != kernel.shape[1]:
        return f"a shared kernel must be (k, k), got {tuple(kernel.shape)}"
    if kernel.dim() == 3 and (kernel.shape[0] != n or kernel.shape[1] != kernel.shape[2]):
        return f"a per-image kernel must be (N, k, k) with N = {n}, got {tuple(kernel.shape)}"
    if kernel.dim() == 4:
        k = ref.kernel_size(kernel)
        if k * k != kernel.shape[1] or tuple(kernel.shape) != (n, k * k, out_h, out_w):
            return f"a per-pixel kernel must be (N, k*k, Ho, Wo) = ({n}, k*k, {out_h}, {out_w}), got {tuple(kernel.shape)}"
    if kernel.dim() not in (2, 3, 4):
        return f"kernel must be (k, k), (N, k, k) or (N, k*k, Ho, Wo), got shape {tuple(kernel.shape)}"
    return None


def check_inputs(x, kernel, stride, padding):
    """Raise TypeError / ValueError naming the argument and what it must be."""
    for name, value in (("x", x), ("kernel", kernel)):
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"blur_downsample: {name} must be a torch.Tensor, got {type(value).__name__}")
        if value.dtype not in FLOAT_DTYPES:
            raise TypeError(f"blur_downsample: {name} must be float16/bfloat16/float32/float64, got {value.dtype}")
    if kernel.dtype != x.dtype:
        raise TypeError(f"blur_downsample: kernel dtype {kernel.dtype} must equal x dtype {x.dtype}")
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
    n, _, height, width = x.shape
    out_h, out_w = -(-height // stride), -(-width // stride)
    error = _kernel_error(kernel, n, out_h, out_w)
    if error:
        raise ValueError(f"blur_downsample: {error}")
    k = ref.kernel_size(kernel)
    _, _, before, after_h, after_w = ref.geometry(height, width, k, stride, flip=False)
    widest = max(before, after_h, after_w, k - 1 - before)  # flip swaps the two sides
    needed = widest + 1 if padding == "reflect" else widest  # reflection excludes the edge pixel
    if padding in ("reflect", "symmetric", "circular") and min(height, width) < needed:
        raise ValueError(
            f"blur_downsample: {padding} padding of {widest} pixels (k = {k}) needs H and W >= {needed}, "
            f"got x of shape {tuple(x.shape)}; use a smaller kernel or padding='replicate'/'zeros'")


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


torch.library.register_autograd("bsrops::blur_downsample", _backward, setup_context=_setup_context)


def _check_forward_call(x, kernel, stride=1, padding="reflect", flip=False):
    """check_inputs on the arguments of a blur_downsample call (the Triton kernels take validated inputs)."""
    check_inputs(x, kernel, stride, padding)


def _check_backward_call(grad_out, x, kernel, stride, padding, flip, output_mask):
    check_inputs(x, kernel, stride, padding)


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
