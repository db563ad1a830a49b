"""Helpers shared by the op modules, their reference kernels and the Triton kernels.

Imports no op module, so that bsrops.reference and bsrops.triton can use it without importing the ops back.
"""
import math

import torch

from ._precision import FLOAT_DTYPES, run_fused

CONV_BACKWARD = torch.ops.aten.convolution_backward.default


def conv_backward(grad, x, weight, stride, padding, mask):
    """(grad_x, grad_weight, grad_bias) of conv2d(x, weight, bias, stride, padding); empty where not wanted."""
    if not any(mask):
        return tuple(x.new_empty(0) for _ in range(3))  # distinct: outputs must not alias
    grads = CONV_BACKWARD(grad, x, weight, [weight.shape[0]], [stride, stride], [padding, padding], [1, 1], False,
                          [0, 0], 1, list(mask))
    return tuple(g if g is not None else x.new_empty(0) for g in grads)


def check_tensor(op, name, value, dims=None):
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(value).__name__}")
    if value.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{op}: {name} must be float16/bfloat16/float32/float64, got {value.dtype}")
    if dims is not None and value.dim() != dims:
        raise ValueError(f"{op}: {name} must have {dims} dimensions, got shape {tuple(value.shape)}")


def check_device(op, name, value, x, x_name="x"):
    """value on x's device (a meta tensor beside a real x included)."""
    if value.device != x.device:
        raise ValueError(f"{op}: {name} is on {value.device} but {x_name} is on {x.device}; every tensor must be on "
                         f"{x_name}'s device")


def check_slope(op, negative_slope):
    # `not >= 0`: NaN fails it (NaN < 0 is False)
    if (isinstance(negative_slope, bool) or not isinstance(negative_slope, (int, float))
            or not math.isfinite(negative_slope) or not negative_slope >= 0):
        raise ValueError(f"{op}: negative_slope must be a finite float >= 0 (the backward reads the activation's "
                         f"mask from the sign of its output), got {negative_slope!r}")


def records_autograd(*tensors):
    """Whether autograd records an op on these tensors (None entries allowed): grad mode on and one of them
    requires a gradient."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def uses_onednn_post_ops(x):
    """Whether convolutions on x run with oneDNN post-ops (CPU float32 with mkldnn, as inductor does)."""
    return x.device.type == "cpu" and x.dtype == torch.float32 and torch.backends.mkldnn.is_available()


def onednn_conv_leaky_relu(x, weight, bias, stride, padding, negative_slope):
    """conv2d + LeakyReLU as one oneDNN primitive (a post-op), or None where torch does not expose it
    (see uses_onednn_post_ops). Saves the activation's pass over the conv output."""
    if not uses_onednn_post_ops(x):
        return None
    # oneDNN reads the bias as a plain array: a strided or expanded view gave garbage (torch does not copy it)
    bias = None if bias is None else bias.contiguous()
    return torch.ops.mkldnn._convolution_pointwise(x, weight, bias, [padding, padding], [stride, stride], [1, 1], 1,
                                                   "leaky_relu", [negative_slope], "")


def check_alpha_values(op, alpha):
    """The alpha policy of every backend, for a kernel that runs on the host: alpha finite and > 0, else a
    ValueError naming the first bad sample (as the native CPU kernels, TORCH_CHECK_VALUE). CUDA tensors are checked
    on the device instead, as torch checks its own kernels' data there (CUDA_KERNEL_ASSERT in the CUDA kernels,
    tl.device_assert in the Triton ones; here torch._assert_async): a failure is a device-side assertion, reported
    by the next synchronising call, and no host synchronisation is added. Meta tensors hold no values."""
    if alpha.device.type == "meta" or alpha.numel() == 0:
        return
    ok = torch.isfinite(alpha) & (alpha > 0)
    if alpha.device.type == "cuda":
        torch._assert_async(ok.all(), f"{op}: alpha must be finite and > 0")
        return
    bad = (~ok).flatten().nonzero()
    if bad.numel():
        sample = int(bad[0])
        value = alpha.flatten()[sample].item()
        raise ValueError(f"{op}: alpha must be finite and > 0, got {value} for sample {sample}")


def convs_in_channels_last(x):
    """Whether the conv-block ops run their convolutions on x in channels_last: on the CPU, where oneDNN's
    convolutions on NCHW tensors reorder them into its blocked layout and back (its backward holds two
    image-sized reorder buffers per convolution); cuDNN runs NCHW without reorder buffers."""
    return x.device.type == "cpu"


def conv_layouts(*xs):
    """The memory formats of the convolution outputs on inputs xs (one device): channels_last where the
    convolutions run in it (convs_in_channels_last), else each input's own."""
    if convs_in_channels_last(xs[0]):
        return tuple(torch.channels_last for _ in xs)
    return tuple(memory_format_of(x) for x in xs)


def memory_format(channels_last):
    return torch.channels_last if channels_last else torch.contiguous_format


def memory_format_of(t):
    """The memory format an op's output takes after input t: channels_last if t is, else NCHW."""
    return memory_format(t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous())


def to_channels_last(x):
    """x in channels_last (x itself when it is): oneDNN's convolutions run there without reorder buffers."""
    if x.is_contiguous(memory_format=torch.channels_last):
        return x
    return run_fused("_relayout", x, None, True)
