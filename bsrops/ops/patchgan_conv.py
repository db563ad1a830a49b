"""torch.ops.bsrops.patchgan_conv: a PatchGAN discriminator block.

Semantics (docs/ops.md): y = conv2d(x, weight, bias, stride, padding) (oneDNN / cuDNN),
then norm in {none, instance, batch} (optional affine), then LeakyReLU (`activation=False`
for the last layer). Batch norm in training mode normalises with the batch statistics and
updates running_mean / running_var in place exactly like nn.BatchNorm2d (momentum, unbiased
running variance); in eval mode it uses them. Instance norm always uses per-plane statistics.

The op returns (out, y, mean, rstd, new_running_mean, new_running_var): it is functional,
because autograd formulas can only be registered for functional ops, and `patchgan_conv`
below copies the new statistics into running_mean / running_var (empty outputs when
nothing is updated), which is nn.BatchNorm2d's in-place update. It is a composite of
`_patchgan_conv2d` (aten's conv2d) and `patchgan_norm_act` (out, mean, rstd and the new running
statistics), two autograd nodes, so that what the norm's backward needs is released before the
conv's backward runs (one node for the whole block held y and out through it). Only y (the
conv output; not for norm='none'), out and the per-group mean / rstd are kept for the
backward: the normalised values and the activation mask are recomputed there (the mask from
the sign of out), so the eager pipeline's separate normalised tensor and activation-gradient
tensor never exist. The conv's backward runs in channels_last: the norm's backward hands grad_y
over in channels_last (its NCHW result freed there), x is moved for the weight gradient and
dropped before grad_x goes back to x's layout, so oneDNN needs none of the ~3 y-sized reorder
buffers of an NCHW backward. Live tensors at the block's peak: out + grad_y + x and grad_x in
channels_last, 6 y-sized tensors against eager's 8. The
fused kernels are `_patchgan_norm_act` (statistics + affine + activation: one reading pass
for the statistics, one pass writing out) and `_patchgan_norm_act_backward` (one reduction
pass, one pass writing grad_y, parameter gradients from per-group partial sums).

Traffic (the arithmetic and the measurements: benchmarks/bench_patchgan_conv.py,
benchmarks/results/): for 64->128, 4x4 s2 on (16, 64, 64, 64) the conv is 6.4 GMAC
forward+backward, the eager norm + activation ~13 passes over 8 MiB tensors, the fused kernels 6
(each 4 KB instance-norm plane stays in L1 between its passes). The conv dominates the block;
on a GPU the traffic saved is small against the op's per-call overhead at this size. With
norm='none' the LeakyReLU is a oneDNN post-op of the conv on CPU float32 when no gradient is
recorded.

Where it runs. The composites and autograd formulas of `_patchgan_conv2d` and `patchgan_norm_act` below are
their kernels without _C and under the reference and triton backends; with _C the native backends run the same
formulas in C++ (csrc/patchgan_conv/patchgan_conv_autograd.cpp: the same ops in the same order, the same results
bit for bit, no Python per call below `patchgan_conv`'s composite).

Precision (docs/ops.md): the convolution runs in x's dtype; the norm's fused kernel in `norm_dtype`: a float16 /
bfloat16 y's own on the native CUDA backend (the norm parameters rounded to it, float32 arithmetic inside), else
float32 (float64 for float64) on copies, its output rounded to y's dtype. Its statistics are float32 (float64 for
float64); the running statistics keep their dtype.
"""
import math

import torch
import torch.nn.functional as F

from .. import _backend
from ..reference import patchgan_conv as ref
from ._common import (check_device, check_slope, check_tensor, conv_backward, convs_in_channels_last,
                      memory_format_of, onednn_conv_leaky_relu, records_autograd, register_autograd, to_channels_last)
from ._precision import (HALF_DTYPES, compute_dtype, has_half_kernels, promote, register_autocast, result_dtype,
                         run_fused)

SCHEMAS = (
    # (out, y = conv output, mean, rstd, new running_mean, new running_var); functional: the Python wrapper
    # writes the new running statistics into the buffers. A composite of _patchgan_conv2d and
    # patchgan_norm_act (which carries the autograd formula): two autograd nodes, so y is released before
    # the conv's backward
    "patchgan_conv(Tensor x, Tensor weight, Tensor? bias, int stride, int padding, str norm, Tensor? norm_weight, "
    "Tensor? norm_bias, Tensor? running_mean, Tensor? running_var, bool training, float momentum, float eps, "
    "float negative_slope, bool activation) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)",
    "patchgan_norm_act(Tensor y, Tensor? norm_weight, Tensor? norm_bias, Tensor? running_mean, "
    "Tensor? running_var, str norm, bool training, float momentum, float eps, float negative_slope, "
    "bool activation) -> (Tensor, Tensor, Tensor, Tensor, Tensor)",
    # the fused kernels: norm statistics + affine + activation, and their backward
    "_patchgan_norm_act(Tensor y, Tensor? weight, Tensor? bias, Tensor(a!)? running_mean, Tensor(b!)? running_var, "
    "str norm, bool training, float momentum, float eps, float negative_slope, bool activation) "
    "-> (Tensor, Tensor, Tensor)",
    "_patchgan_norm_act_backward(Tensor grad_out, Tensor y, Tensor out, Tensor mean, Tensor rstd, Tensor? weight, "
    "str norm, bool training, float negative_slope, bool activation, bool[3] output_mask) -> (Tensor, Tensor, Tensor)",
    # aten's conv2d whose backward runs in channels_last when its incoming gradient is (the norm's backward
    # hands it so): no oneDNN reorder buffers
    "_patchgan_conv2d(Tensor x, Tensor weight, Tensor? bias, int stride, int padding) -> Tensor",
)
NORMS = ("none", "instance", "batch")


def patchgan_conv(x, weight, bias=None, stride=2, padding=1, norm="instance", norm_weight=None, norm_bias=None,
                  running_mean=None, running_var=None, training=True, momentum=0.1, eps=1e-5, negative_slope=0.2,
                  activation=True):
    """conv -> norm -> LeakyReLU in one op; returns out (N, C_out, Ho, Wo).

    Every tensor may be a strided, expanded or offset view (the kernels read contiguous copies where needed);
    running_mean / running_var, updated in place by batch norm in training mode as nn.BatchNorm2d does, may be
    strided or offset views but not expanded ones (stride 0: one memory location for every channel).
    Mixed float dtypes of x, weight, bias, norm_weight and norm_bias promote to one; the running statistics keep
    theirs. The norm accumulates in float32 (float64 for float64 inputs); under torch.autocast the convolution runs
    in the autocast dtype (docs/ops.md, Precision).
    """
    check_inputs(x, weight, bias, stride, padding, norm, norm_weight, norm_bias, running_mean, running_var,
                 training, negative_slope, momentum, eps)
    x, weight, bias, norm_weight, norm_bias = promote(x, weight, bias, norm_weight, norm_bias)
    out, _, _, _, new_mean, new_var = torch.ops.bsrops.patchgan_conv(
        x, weight, bias, stride, padding, norm, norm_weight, norm_bias, running_mean, running_var, bool(training),
        float(momentum), float(eps), float(negative_slope), bool(activation))
    if _updates_running_stats(norm, training, running_mean):
        with torch.no_grad():
            running_mean.copy_(new_mean)
            running_var.copy_(new_var)
    return out


def _updates_running_stats(norm, training, running_mean):
    return norm == "batch" and training and running_mean is not None


def check_inputs(x, weight, bias, stride, padding, norm, norm_weight, norm_bias, running_mean, running_var,
                 training, negative_slope, momentum=0.1, eps=1e-5):
    """Raise TypeError / ValueError naming the argument and what it must be."""
    op = "patchgan_conv"
    check_tensor(op, "x", x, dims=4)
    check_tensor(op, "weight", weight, dims=4)
    check_device(op, "weight", weight, x)
    if weight.shape[1] != x.shape[1]:
        raise ValueError(f"{op}: weight must be (C_out, {x.shape[1]}, k, k) for x with {x.shape[1]} channels, "
                         f"got {tuple(weight.shape)}")
    for name, value in (("stride", stride), ("padding", padding)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{op}: {name} must be an int, got {type(value).__name__}")
    if stride < 1 or padding < 0:
        raise ValueError(f"{op}: stride must be >= 1 and padding >= 0, got {stride}, {padding}")
    if x.shape[2] + 2 * padding < weight.shape[2] or x.shape[3] + 2 * padding < weight.shape[3]:
        raise ValueError(f"{op}: x of shape {tuple(x.shape)} is smaller than the {weight.shape[2]}x{weight.shape[3]} "
                         f"kernel (padding {padding})")
    if norm not in NORMS:
        raise ValueError(f"{op}: norm must be one of {', '.join(NORMS)}, got {norm!r}")
    channels = weight.shape[0]
    for name, value in (("bias", bias), ("norm_weight", norm_weight), ("norm_bias", norm_bias),
                        ("running_mean", running_mean), ("running_var", running_var)):
        if value is None:
            continue
        check_tensor(op, name, value, dims=1)
        check_device(op, name, value, x)
        if value.shape[0] != channels:
            raise ValueError(f"{op}: {name} must be ({channels},), got {tuple(value.shape)}")
    if (running_mean is None) != (running_var is None):
        raise ValueError(f"{op}: give both running_mean and running_var, or neither")
    if _updates_running_stats(norm, training, running_mean):
        check_updatable(running_mean, running_var)
    if norm == "batch" and training and x.shape[0] * _out_size(x, weight, stride, padding) <= 1:
        raise ValueError(f"{op}: batch norm in training mode needs more than one value per channel, "
                         f"got x of shape {tuple(x.shape)}")
    check_scalars(momentum, eps, negative_slope)


def check_scalars(momentum, eps, negative_slope):
    """momentum and eps finite (eps >= 0), negative_slope as check_slope wants it; NaN fails each test."""
    op = "patchgan_conv"
    for name, value, low in (("momentum", momentum, None), ("eps", eps, 0.0)):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"{op}: {name} must be a float, got {type(value).__name__}")
        if not math.isfinite(value) or (low is not None and not value >= low):
            raise ValueError(f"{op}: {name} must be a finite float" + (f" >= {low:g}" if low is not None else "") +
                             f", got {value!r}")
    check_slope(op, negative_slope)


def check_norm_act_args(y, norm_weight, norm_bias, running_mean, running_var, norm, training, momentum, eps,
                        negative_slope):
    """The checks of patchgan_conv that the norm ops' kernels need, for direct calls of the ops (the native
    kernels make them in C++): scalars, devices, running statistics that would be updated in place."""
    check_scalars(momentum, eps, negative_slope)
    for name, value in (("norm_weight", norm_weight), ("norm_bias", norm_bias), ("running_mean", running_mean),
                        ("running_var", running_var)):
        if value is not None:
            check_device("patchgan_conv", name, value, y, "the input")
    if _updates_running_stats(norm, training, running_mean):
        check_updatable(running_mean, running_var)


def check_updatable(running_mean, running_var):
    """Running statistics that batch norm updates in place: not expanded (stride 0 would give every channel one
    memory location; nn.BatchNorm2d would silently keep the last channel's update there)."""
    for name, value in (("running_mean", running_mean), ("running_var", running_var)):
        if value is not None and value.dim() == 1 and value.shape[0] > 1 and value.stride(0) == 0:
            raise ValueError(f"patchgan_conv: {name} is updated in place in training mode and must not be an expanded "
                             f"tensor (stride 0: every channel one memory location), got strides {value.stride()}")


def _out_size(x, weight, stride, padding):
    out_h = (x.shape[2] + 2 * padding - weight.shape[2]) // stride + 1
    out_w = (x.shape[3] + 2 * padding - weight.shape[3]) // stride + 1
    return out_h * out_w


# ---- the composites: the convolution, then the fused kernels ----

def _patchgan_conv_composite(x, weight, bias, stride, padding, norm, norm_weight, norm_bias, running_mean,
                             running_var, training, momentum, eps, negative_slope, activation):
    """_patchgan_conv2d, then patchgan_norm_act: two autograd nodes, so that the conv output y
    is released after the norm's backward, before the conv's (as eager does; one node would hold
    it through the conv's backward)."""
    check_scalars(momentum, eps, negative_slope)
    empty = x.new_empty  # a fresh one per output: outputs must not alias
    if norm == "none" and activation and not records_autograd(x, weight, bias):
        out = onednn_conv_leaky_relu(x.contiguous(), weight, bias, stride, padding, negative_slope)
        if out is not None:  # inference of the first layer: oneDNN's conv + LeakyReLU post-op
            return out, empty(0), empty(0), empty(0), empty(0), empty(0)
    y = torch.ops.bsrops._patchgan_conv2d(x, weight, bias, stride, padding)
    if norm == "none" and not activation:
        return y, empty(0), empty(0), empty(0), empty(0), empty(0)
    out, mean, rstd, new_mean, new_var = torch.ops.bsrops.patchgan_norm_act(
        y, norm_weight, norm_bias, running_mean, running_var, norm, training, momentum, eps, negative_slope, activation)
    return out, (empty(0) if norm == "none" else y.detach()), mean, rstd, new_mean, new_var


def norm_dtype(y, norm_weight, norm_bias):
    """The dtype the norm's fused kernel runs in: a float16 / bfloat16 y's own where the fused kernels take it
    (has_half_kernels: the native CUDA backend) and each norm parameter is of y's dtype or float32; otherwise
    float64 where y or a norm parameter is, else float32. compute_dtype of it (float32 for the half dtypes) is the
    statistics' dtype: mean, rstd and the running statistics the kernel reads or updates. The C++ composite's
    norm_dtype (csrc/patchgan_conv/patchgan_conv_autograd.cpp) is this rule."""
    params_fit = all(t is None or t.dtype in (y.dtype, torch.float32) for t in (norm_weight, norm_bias))
    if y.dtype in HALF_DTYPES and params_fit and has_half_kernels(y.device.type):
        return y.dtype
    return compute_dtype(result_dtype(y, norm_weight, norm_bias))


def _as(dtype, *tensors):
    return tuple(None if t is None else t.to(dtype) for t in tensors)


def _norm_act_composite(y, norm_weight, norm_bias, running_mean, running_var, norm, training, momentum, eps,
                        negative_slope, activation):
    """The fused kernel on y and the norm parameters in norm_dtype, the running statistics in its compute_dtype; out
    in y's dtype, the new running statistics in theirs."""
    check_norm_act_args(y, norm_weight, norm_bias, None, None, norm, training, momentum, eps, negative_slope)
    dtype = norm_dtype(y, norm_weight, norm_bias)
    new_mean = new_var = None
    if norm == "batch" and running_mean is not None:  # the kernel updates (training) or reads (eval) them
        stats = compute_dtype(dtype)
        new_mean, new_var = running_mean.to(stats, copy=True), running_var.to(stats, copy=True)
    weight, bias = _as(dtype, norm_weight, norm_bias)
    out, mean, rstd = torch.ops.bsrops._patchgan_norm_act(y.contiguous().to(dtype), weight, bias, new_mean, new_var,
                                                          norm, training, momentum, eps, negative_slope, activation)
    if not _updates_running_stats(norm, training, running_mean):
        return out.to(y.dtype), mean, rstd, y.new_empty(0), y.new_empty(0)
    return out.to(y.dtype), mean, rstd, new_mean.to(running_mean.dtype), new_var.to(running_var.dtype)


def _conv2d_composite(x, weight, bias, stride, padding):
    return F.conv2d(x, weight, bias, stride, padding)


# ---- registration ----

_backend.define_schemas(SCHEMAS)
torch.library.impl("bsrops::patchgan_conv", "CompositeImplicitAutograd")(_patchgan_conv_composite)
torch.library.impl("bsrops::patchgan_norm_act", "CompositeExplicitAutograd")(_norm_act_composite)
torch.library.impl("bsrops::_patchgan_conv2d", "CompositeExplicitAutograd")(_conv2d_composite)


@torch.library.register_fake("bsrops::_patchgan_conv2d")
def _conv2d_fake(x, weight, bias, stride, padding):
    return F.conv2d(x, weight, bias, stride, padding)


def _conv2d_setup_context(ctx, inputs, output):
    x, weight, bias, stride, padding = inputs
    ctx.save_for_backward(x, weight)
    ctx.geometry = (stride, padding)


def _conv2d_backward(ctx, grad_y):
    """conv2d's backward in channels_last when grad_y is (patchgan_norm_act's backward hands it so): oneDNN
    then needs no reorder buffers (~3 y-sized on NCHW tensors); x is moved for the weight gradient and dropped
    before grad_x goes back to x's layout."""
    x, weight = ctx.saved_tensors
    needs = ctx.needs_input_grad[:3]
    if grad_y is None or not any(needs):
        return None, None, None, None, None
    x_conv = to_channels_last(x) if memory_format_of(grad_y) == torch.channels_last else x
    grad_x, grad_weight, grad_bias = conv_backward(grad_y, x_conv, weight, *ctx.geometry, needs)
    del x_conv
    if needs[0] and memory_format_of(grad_x) != memory_format_of(x):
        grad_x = run_fused("_relayout", grad_x, None, memory_format_of(x) == torch.channels_last)
    return (*(g if need else None for g, need in zip((grad_x, grad_weight, grad_bias), needs)), None, None)


_conv2d_autograd = register_autograd("_patchgan_conv2d", _conv2d_backward, _conv2d_setup_context)
_backend.register_python_formula("_patchgan_conv2d", _conv2d_autograd, _conv2d_composite)


def _stats_shape(n, channels, norm):
    return {"none": (0,), "instance": (n, channels), "batch": (channels,)}[norm]


@torch.library.register_fake("bsrops::patchgan_norm_act")
def _norm_act_op_fake(y, norm_weight, norm_bias, running_mean, running_var, norm, training, momentum, eps,
                      negative_slope, activation):
    stats = _stats_shape(y.shape[0], y.shape[1], norm)
    dtype = compute_dtype(norm_dtype(y, norm_weight, norm_bias))
    if _updates_running_stats(norm, training, running_mean):
        new_stats = (running_mean.new_empty(y.shape[1]), running_var.new_empty(y.shape[1]))
    else:
        new_stats = (y.new_empty(0), y.new_empty(0))
    return (torch.empty_like(y, memory_format=torch.contiguous_format), y.new_empty(stats, dtype=dtype),
            y.new_empty(stats, dtype=dtype), *new_stats)


@torch.library.register_fake("bsrops::_patchgan_norm_act")
def _norm_act_fake(y, weight, bias, running_mean, running_var, norm, training, momentum, eps, negative_slope,
                   activation):
    stats, dtype = _stats_shape(y.shape[0], y.shape[1], norm), compute_dtype(y.dtype)
    return torch.empty_like(y), y.new_empty(stats, dtype=dtype), y.new_empty(stats, dtype=dtype)


@torch.library.register_fake("bsrops::_patchgan_norm_act_backward")
def _norm_act_backward_fake(grad_out, y, out, mean, rstd, weight, norm, training, negative_slope, activation,
                            output_mask):
    channels, stats = out.shape[1], compute_dtype(out.dtype)  # the parameters' gradients in the statistics' dtype
    grad_y = torch.empty_like(out) if output_mask[0] else out.new_empty(0)
    params = [out.new_empty(channels, dtype=stats) if need and norm != "none" else out.new_empty(0)
              for need in output_mask[1:]]
    return grad_y, *params


def _setup_context(ctx, inputs, output):
    y, norm_weight, norm_bias, running_mean, running_var, norm, training = inputs[:7]
    negative_slope, activation = inputs[9], inputs[10]
    out, mean, rstd, new_mean, new_var = output
    ctx.mark_non_differentiable(mean, rstd, new_mean, new_var)
    # without a norm the backward needs only the activation's mask (the sign of out), not y
    ctx.save_for_backward(y if norm != "none" else None, norm_weight, out, mean, rstd)
    ctx.options = (norm, training, negative_slope, activation)
    ctx.dtypes = [None if t is None else t.dtype for t in (y, norm_weight, norm_bias)]
    ctx.norm_dtype = norm_dtype(y, norm_weight, norm_bias)  # the composite's


def _backward(ctx, grad_out, *unused):
    y, norm_weight, out, mean, rstd = ctx.saved_tensors
    norm, training, negative_slope, activation = ctx.options
    needs = ctx.needs_input_grad
    has_norm = norm != "none"  # without a norm, norm_weight / norm_bias are unused: no gradient
    mask = [needs[0], needs[1] and has_norm, needs[2] and has_norm]
    if grad_out is None or not any(mask):
        return (None,) * 11
    dtype = ctx.norm_dtype
    grads = torch.ops.bsrops._patchgan_norm_act_backward(
        *_as(dtype, grad_out.contiguous(), out if y is None else y, out), mean, rstd, *_as(dtype, norm_weight), norm,
        training, negative_slope, activation, mask)
    grad_y, *params = (g if like is None else g.to(like) for g, like in zip(grads, ctx.dtypes))
    if mask[0] and convs_in_channels_last(grad_y):  # for the convolution's backward (_conv2d_backward) on oneDNN,
        grad_y = run_fused("_relayout", grad_y, None, True)  # the NCHW copy freed here (cuDNN: NCHW is fine)
    return (*(g if need else None for g, need in zip((grad_y, *params), mask)), *(None,) * 8)


_norm_act_autograd = register_autograd("patchgan_norm_act", _backward, _setup_context)
_backend.register_python_formula("patchgan_norm_act", _norm_act_autograd, _norm_act_composite)


def _check_norm_act_call(y, weight, bias, running_mean, running_var, norm, training, momentum, eps, negative_slope,
                         activation):
    """check_norm_act_args on the arguments of a _patchgan_norm_act call (the reference and Triton kernels take
    validated inputs). Expanded running statistics are rejected here as in the native kernels: F.batch_norm would
    silently land each channel's update in the one shared location."""
    check_norm_act_args(y, weight, bias, running_mean, running_var, norm, training, momentum, eps, negative_slope)


register_autocast("patchgan_conv", "lower", (0, 1, 2))
_backend.register_kernel("reference", "_patchgan_norm_act", ref.norm_act_reference, check=_check_norm_act_call)
_backend.register_kernel("reference", "_patchgan_norm_act_backward", ref.norm_act_backward_reference)
_backend.register_lazy_kernel("triton", "_patchgan_norm_act", "triton.patchgan_conv", "norm_act",
                              check=_check_norm_act_call)
_backend.register_lazy_kernel("triton", "_patchgan_norm_act_backward", "triton.patchgan_conv", "norm_act_backward")
