"""Helpers shared by the op modules, their reference kernels and the Triton kernels.

Imports no op module, so that bsrops.reference and bsrops.triton can use it without importing the ops back.
"""
import math

import torch

from ._precision import FLOAT_DTYPES, run_fused

CONV_BACKWARD = torch.ops.aten.convolution_backward.default
_autograd_library = torch.library.Library("bsrops", "IMPL")  # the Autograd kernels, for the life of the process


def register_autograd(op_name, backward, setup_context):
    """torch.library.register_autograd's contract for torch.ops.bsrops.<op_name> (a functional op without
    keyword-only arguments): setup_context(ctx, inputs, output) with every argument in `inputs` (defaults filled
    in), backward(ctx, *grads) -> one gradient or None per argument. The Autograd kernel does per call only what
    such an op needs (the defaults are read from the schema once).

    Returns that kernel. It is registered for the Autograd key unless _C registered a native one there (the same
    formula in C++); the Python backends then install it over the native one for the devices they serve
    (_backend.register_python_formula)."""
    op = getattr(torch.ops.bsrops, op_name).default
    defaults = tuple(argument.default_value for argument in op._schema.arguments)
    after_autograd = torch._C._after_autograd_keyset

    def run_below_autograd(keyset, args):
        with torch._C._AutoDispatchBelowAutograd():
            return op.redispatch(keyset & after_autograd, *args)

    class Node(torch.autograd.Function):
        @staticmethod
        def forward(ctx, keyset, *args):
            output = run_below_autograd(keyset, args)
            setup_context(ctx, args + defaults[len(args):], output)
            return output

        @staticmethod
        def backward(ctx, *grads):
            needs = ctx.needs_input_grad
            ctx.needs_input_grad = needs[1:]  # without the keyset's
            try:
                result = backward(ctx, *grads)
            finally:
                ctx.needs_input_grad = needs
            return (None, *result) if isinstance(result, tuple) else (None, result)

    Node.__name__ = Node.__qualname__ = f"AutogradFor_bsrops_{op_name}"

    def autograd_kernel(keyset, *args):
        if torch._C.is_grad_enabled() and torch._C._any_requires_grad(*args):
            return Node.apply(keyset, *args)
        return run_below_autograd(keyset, args)

    if not torch._C._dispatch_has_kernel_for_dispatch_key(f"bsrops::{op_name}", "Autograd"):
        _autograd_library.impl(op_name, autograd_kernel, "Autograd", with_keyset=True)
    return autograd_kernel


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


ONEDNN_POST_OP_MIN_VALUES = 16384


def onednn_conv_leaky_relu(x, weight, bias, stride, padding, negative_slope):
    """conv2d + LeakyReLU as one oneDNN primitive (a post-op), or None where torch does not expose it
    (see uses_onednn_post_ops) or where x holds fewer than ONEDNN_POST_OP_MIN_VALUES values: the primitive saves
    the activation's pass over the conv output, and below that size its per-call setup costs more than the pass
    (the caller then runs conv2d and its own in-place activation)."""
    if not uses_onednn_post_ops(x) or x.numel() < ONEDNN_POST_OP_MIN_VALUES:
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


NATIVE_CONV_MAX_VALUES = 20480


def convs_in_channels_last(x):
    """Whether the conv-block ops run their convolutions on x in channels_last: on the CPU, where oneDNN's
    convolutions on NCHW tensors reorder them into its blocked layout and back (its backward holds two
    image-sized reorder buffers per convolution), except for one image of at most NATIVE_CONV_MAX_VALUES values,
    which torch convolves with its own kernel instead of oneDNN's (for kernels up to 3x3) and which would copy a
    channels_last x back to NCHW; cuDNN runs NCHW without reorder buffers."""
    return x.device.type == "cpu" and (x.shape[0] > 1 or x.numel() > NATIVE_CONV_MAX_VALUES)


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
