"""torch.ops.bsrops.dpcb: DANv2's dual-path conditional block (DPCB).

Semantics (docs/ops.md):

    f1 = conv_k1(lrelu(conv_k1(x_img)))         f2 = conv_k2(lrelu(conv_k2(x_cond)))
    out_img = x_img + f1 * f2                    out_cond = x_cond + f2

with f2 broadcast over H x W when the condition is (N, C, 1, 1) (the Restorer) or
image-sized (the Estimator). The op returns (out_img, out_cond, h1, f1, h2, f2); h1, h2 (the
LeakyReLU outputs, which the second convs read anyway) and f1, f2 are what the backward
needs, and nothing else is kept: the pre-activations are overwritten in place (the mask of
the LeakyReLU backward comes from the sign of its output), the modulation and both
residual adds are one pass (`_dpcb_epilogue`), and so is their backward
(`_dpcb_epilogue_backward`: grad_f1 and the reduced grad_f2).

Layout and memory. With autograd recording on the CPU, the convolutions run in channels_last
whatever the caller's layout: oneDNN's convolutions on NCHW tensors reorder them into its blocked
layout and back (its backward holds two image-sized reorder buffers per convolution), on
channels_last they run in place. The layout changes are fused into the kernels that read
the caller's tensors (`_dpcb_epilogue*` read and write each operand in its own layout,
`_relayout` adds the residual gradient while it transposes); only x_img and x_cond are
moved on their own, for the first convolutions, forward and again backward (keeping the
copies would cost memory). The backward frees h1, f1, h2, f2 as soon as it has used them
(they are kept as context attributes, not saved tensors, which autograd would hold until the
whole backward returns; a second backward through a retained graph recomputes them from the
saved inputs), and with an image-sized condition it computes grad_f2 and frees f1 before it
allocates grad_f1. Peak live memory of forward+backward, in image-sized tensors U (outputs
and input gradients included): Restorer 4U against eager's 6U (4U plus oneDNN's 2U of
reorders), Estimator 7U against 9U. On a GPU the convolutions keep the caller's layout (cuDNN
needs no reorder buffers; the early release still holds there).

Without autograd (inference mode, no_grad, or no input requiring a gradient) `dpcb()` runs
`_dpcb_inference` instead, which keeps nothing for a backward: the convolutions run in the
caller's layout (no copies of x_img, x_cond; the NCHW reorders are oneDNN's internal ones, as in
eager), each LeakyReLU output is freed once the next convolution has read it, and the outputs
are written in place of f1 and f2 (torch's addcmul and add_: a fresh output is write-allocate
traffic and, with glibc's malloc, page faults), and the block allocates 3 image-sized tensors
against eager's 4. oneDNN's binary post-op (conv * f2) is not used: torch runs it as conv + mul_
on NCHW tensors, and on channels_last it costs more than the separate pass.

Traffic (the arithmetic and the measurements: benchmarks/bench_dpcb.py, benchmarks/results/).
At the Restorer shape (N=8, 64 ch, 64x64) forward+backward is 6 conv-sized passes (7.2 GMAC)
against ~20 passes over 8 MiB tensors for the eager elementwise part, plus oneDNN's reorders
inside the NCHW convolutions (2 passes per convolution forward, 2-4 per backward). The op's
fused kernels make 16 passes, transposes included (the forward LeakyReLU is a oneDNN post-op of
the conv on CPU float32), and its channels_last convolutions make no reorders. The
convolutions dominate the block, so the fused elementwise part bounds what the block gains; on
a GPU the traffic it saves is small against its extra launches at these sizes.

Where it runs. The composite kernel and the autograd formula below are the op's kernels without _C and
under the reference and triton backends; with _C the native backends run the same formula in C++
(csrc/dpcb/dpcb_autograd.cpp: the same ops in the same order, the same results bit for bit, no Python per
call). The convolutions run on oneDNN / cuDNN through F.conv2d and aten.convolution_backward in
the composite kernel and the autograd formula, whatever the backend; the backend (cpu,
cuda, triton, reference) decides who runs the fused elementwise kernels. In float16 / bfloat16 the
convolutions run in that dtype, and so do the CUDA backend's fused kernels (float32 arithmetic); the other
backends' are float32 / float64 kernels, run on float32 copies (`run_fused`; docs/ops.md, Precision).
"""
import torch
import torch.nn.functional as F

from .. import _backend
from ..reference import dpcb as ref
from ._common import (check_device, check_slope, check_tensor, conv_backward, conv_layouts, convs_in_channels_last,
                      memory_format, memory_format_of, onednn_conv_leaky_relu, records_autograd, register_autograd,
                      to_channels_last)
from ._precision import promote, register_autocast, run_fused

SCHEMAS = (
    # (out_img, out_cond, h1, f1, h2, f2): the LeakyReLU outputs and the second convolutions' outputs are
    # returned for the backward, which frees each as soon as it has used it
    "dpcb(Tensor x_img, Tensor x_cond, Tensor w1, Tensor? b1, Tensor w2, Tensor? b2, Tensor w3, Tensor? b3, "
    "Tensor w4, Tensor? b4, float negative_slope=0.2) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)",
    # the fused elementwise kernels around the convolutions, any mix of NCHW and channels_last operands
    "_leaky_relu_(Tensor(a!) x, float negative_slope) -> ()",
    "_leaky_relu_backward_(Tensor(a!) grad, Tensor out, float negative_slope) -> ()",
    "_dpcb_epilogue(Tensor x_img, Tensor f1, Tensor x_cond, Tensor f2) -> (Tensor, Tensor)",
    "_dpcb_epilogue_backward(Tensor grad_img, Tensor grad_cond, Tensor? f1, Tensor? f2, bool channels_last) "
    "-> (Tensor, Tensor)",
    # x (+ other) in NCHW or channels_last, fused with a residual gradient's add
    "_relayout(Tensor x, Tensor? other, bool channels_last) -> Tensor",
    # the forward without autograd: nothing kept for a backward, the outputs written in place of f1 and f2
    "_dpcb_inference(Tensor x_img, Tensor x_cond, Tensor w1, Tensor? b1, Tensor w2, Tensor? b2, Tensor w3, "
    "Tensor? b3, Tensor w4, Tensor? b4, float negative_slope=0.2) -> (Tensor, Tensor)",
)
PARAMETERS = ("w1", "b1", "w2", "b2", "w3", "b3", "w4", "b4")


def dpcb(x_img, x_cond, w1, b1, w2, b2, w3, b3, w4, b4, negative_slope=0.2):
    """DPCB forward -> (out_img, out_cond). x_img (N, C, H, W); x_cond (N, C, 1, 1) or (N, C, H, W).

    w1, w2: (C, C, k1, k1) (image path), w3: (C, C, k2, k2), w4: (C, C, k2, k2) (condition path),
    odd k, 'same' padding; biases (C,) or None. nf1 must equal nf2 (out_cond = x_cond + f2).
    Mixed float dtypes promote to one (under torch.autocast: the autocast dtype; docs/ops.md, Precision).
    Runs torch.ops.bsrops.dpcb when autograd records, else torch.ops.bsrops._dpcb_inference (nothing kept
    for a backward; see the module docstring).
    """
    params = (w1, b1, w2, b2, w3, b3, w4, b4)
    check_inputs(x_img, x_cond, params, negative_slope)
    x_img, x_cond, *params = promote(x_img, x_cond, *params)
    if records_autograd(x_img, x_cond, *params):
        out_img, out_cond, *_ = torch.ops.bsrops.dpcb(x_img, x_cond, *params, float(negative_slope))
        return out_img, out_cond
    out_img, out_cond = torch.ops.bsrops._dpcb_inference(x_img, x_cond, *params, float(negative_slope))
    return out_img, out_cond


def check_inputs(x_img, x_cond, params, negative_slope):
    """Raise TypeError / ValueError naming the argument and what it must be."""
    check_tensor("dpcb", "x_img", x_img, dims=4)
    check_tensor("dpcb", "x_cond", x_cond, dims=4)
    n, nf1, height, width = x_img.shape
    if x_cond.shape[0] != n:
        raise ValueError(f"dpcb: x_cond must have x_img's batch {n}, got shape {tuple(x_cond.shape)}")
    if x_cond.shape[1] != nf1:
        raise ValueError(f"dpcb: nf1 must equal nf2 (the condition residual x_cond + f2 needs it): x_img has "
                         f"{nf1} channels, x_cond {x_cond.shape[1]}")
    if tuple(x_cond.shape[2:]) not in ((1, 1), (height, width)):
        raise ValueError(f"dpcb: the condition map must be 1x1 or image-sized {height}x{width} (neither "
                         f"1x1 nor image-sized), got x_cond of shape {tuple(x_cond.shape)}")
    for index, (name, value) in enumerate(zip(PARAMETERS, params)):
        if name.startswith("b"):
            if value is not None:
                check_tensor("dpcb", name, value, dims=1)
                if value.shape[0] != nf1:
                    raise ValueError(f"dpcb: {name} must be ({nf1},), got {tuple(value.shape)}")
            continue
        check_tensor("dpcb", name, value, dims=4)
        k = value.shape[-1]
        if value.shape[:2] != (nf1, nf1) or value.shape[2] != k or k % 2 == 0:
            raise ValueError(f"dpcb: {name} must be ({nf1}, {nf1}, k, k) with odd k, got {tuple(value.shape)}")
        if name == "w2" and value.shape != params[0].shape or name == "w4" and value.shape != params[4].shape:
            raise ValueError(f"dpcb: {name} must have the shape of the path's first weight, got {tuple(value.shape)}")
    for name, value in zip(("x_cond", *PARAMETERS), (x_cond, *params)):
        if value is not None:
            check_device("dpcb", name, value, x_img, "x_img")
    check_slope("dpcb", negative_slope)


# ---- the composite kernels: convolutions around the fused kernels ----

def _activated_conv(x, weight, bias, negative_slope):
    """lrelu(conv(x)): oneDNN's fused post-op, else the activation in place of the conv output."""
    h = onednn_conv_leaky_relu(x, weight, bias, 1, weight.shape[-1] // 2, negative_slope)
    if h is None:
        h = F.conv2d(x, weight, bias, padding=weight.shape[-1] // 2)
        run_fused("_leaky_relu_", h, negative_slope)
    return h


def _path_forward(x, wa, ba, wb, bb, negative_slope, channels_last):
    """(h, f): h = lrelu(conv(x)), f = conv(h); in channels_last or in x's layout."""
    x_conv = to_channels_last(x) if channels_last else x
    h = _activated_conv(x_conv, wa, ba, negative_slope)
    del x_conv  # may be a transposed copy of the caller's x: freed before the next convolution
    return h, F.conv2d(h, wb, bb, padding=wb.shape[-1] // 2)


def _forward_composite(x_img, x_cond, w1, b1, w2, b2, w3, b3, w4, b4, negative_slope=0.2):
    check_slope("dpcb", negative_slope)  # also for direct calls of the op
    channels_last = convs_in_channels_last(x_img)
    h1, f1 = _path_forward(x_img, w1, b1, w2, b2, negative_slope, channels_last)
    h2, f2 = _path_forward(x_cond, w3, b3, w4, b4, negative_slope, channels_last)
    out_img, out_cond = run_fused("_dpcb_epilogue", x_img, f1, x_cond, f2)
    return out_img, out_cond, h1, f1, h2, f2


def _inference_composite(x_img, x_cond, w1, b1, w2, b2, w3, b3, w4, b4, negative_slope=0.2):
    """(out_img, out_cond), nothing kept for a backward: the convolutions run in the caller's layout, each
    LeakyReLU output is freed once the next convolution has read it, and the outputs are written in place of
    f1 and f2 (see the module docstring)."""
    check_slope("dpcb", negative_slope)
    f2 = _path_forward(x_cond, w3, b3, w4, b4, negative_slope, channels_last=False)[1]
    f1 = _path_forward(x_img, w1, b1, w2, b2, negative_slope, channels_last=False)[1]
    out_img = torch.addcmul(x_img, f1, f2, out=f1)
    out_cond = f2.add_(x_cond)
    # the layouts the training op gives (a no-op unless the weights' layout made the convolutions change x's)
    return (out_img.contiguous(memory_format=memory_format_of(x_img)),
            out_cond.contiguous(memory_format=memory_format_of(x_cond)))


def _path_backward(state, grad_residual, x, wa, wb, negative_slope, mask, channels_last):
    """Grads of x + path(x) for one path: (grad_x, grad_wa, grad_ba, grad_wb, grad_bb); mask in that order.

    state: [grad_f, h], emptied here so that each is freed as soon as it has been used; channels_last: where
    the convolutions run (as in the forward)."""
    grad_f, h = state
    state.clear()
    need_h = any(mask[:3])
    grad_h, grad_wb, grad_bb = conv_backward(grad_f, h, wb, 1, wb.shape[-1] // 2, (need_h, mask[3], mask[4]))
    del grad_f
    grad_x, grad_wa, grad_ba = x.new_empty(0), x.new_empty(0), x.new_empty(0)
    if need_h:
        run_fused("_leaky_relu_backward_", grad_h, h, negative_slope)
        del h
        x_conv = to_channels_last(x) if channels_last else x
        grad_x_conv, grad_wa, grad_ba = conv_backward(grad_h, x_conv, wa, 1, wa.shape[-1] // 2, mask[:3])
        del grad_h, x_conv
        if mask[0]:  # the residual branch's gradient added (while going back to x's layout)
            grad_x = run_fused("_relayout", grad_x_conv, grad_residual, memory_format_of(x) == torch.channels_last)
    return grad_x, grad_wa, grad_ba, grad_wb, grad_bb


def _backward_composite(grad_img, grad_cond, x_img, x_cond, weights, held, negative_slope, output_mask):
    """All ten input gradients (empty where output_mask is False). held = [h1, f1, h2, f2], emptied here
    (see the module docstring: each is freed once used)."""
    w1, w2, w3, w4 = weights
    h1, f1, h2, f2 = held
    held.clear()
    grad_residual = grad_img
    grad_img = grad_img if grad_img is not None else torch.zeros_like(x_img)  # only out_cond was used
    grad_cond = grad_cond if grad_cond is not None else torch.zeros_like(x_cond)
    channels_last = convs_in_channels_last(x_img)  # the backward runs where the forward's convolutions ran
    if f2.shape != f1.shape:  # a 1x1 condition: grad_f1 and the reduced grad_f2 in one pass
        grad_f1, grad_f2 = run_fused("_dpcb_epilogue_backward", grad_img, grad_cond, f1, f2, channels_last)
        del f1, f2
    else:  # image-sized: f1 is freed before grad_f1 is allocated
        grad_f2 = run_fused("_dpcb_epilogue_backward", grad_img, grad_cond, f1, None, channels_last)[1]
        del f1
        grad_f1 = run_fused("_dpcb_epilogue_backward", grad_img, grad_cond, None, f2, channels_last)[0]
        del f2
    img_state, cond_state = [grad_f1, h1], [grad_f2, h2]
    del grad_f1, h1, grad_f2, h2
    m = list(output_mask)
    img = _path_backward(img_state, grad_residual, x_img, w1, w2, negative_slope, [m[0], *m[2:6]], channels_last)
    cond = _path_backward(cond_state, grad_cond, x_cond, w3, w4, negative_slope, [m[1], *m[6:10]], channels_last)
    return (img[0], cond[0], *img[1:], *cond[1:])


# ---- registration ----

_backend.define_schemas(SCHEMAS)
torch.library.impl("bsrops::dpcb", "CompositeExplicitAutograd")(_forward_composite)
torch.library.impl("bsrops::_dpcb_inference", "CompositeExplicitAutograd")(_inference_composite)


def _empty(like, layout):
    return torch.empty(like.shape, dtype=like.dtype, device=like.device, memory_format=layout)


def _outputs_like(x_img, x_cond):
    """Empty (out_img, out_cond) in x_img's and x_cond's layouts (the fakes')."""
    return _empty(x_img, memory_format_of(x_img)), _empty(x_cond, memory_format_of(x_cond))


@torch.library.register_fake("bsrops::dpcb")
def _forward_fake(x_img, x_cond, w1, b1, w2, b2, w3, b3, w4, b4, negative_slope=0.2):
    image_layout, cond_layout = conv_layouts(x_img, x_cond)  # of (h1, f1) and (h2, f2)
    h1, h2 = _empty(x_img, image_layout), _empty(x_cond, cond_layout)  # nf1 == nf2: h2 is x_cond-shaped
    return (*_outputs_like(x_img, x_cond), h1, torch.empty_like(h1), h2, torch.empty_like(h2))


@torch.library.register_fake("bsrops::_dpcb_inference")
def _inference_fake(x_img, x_cond, w1, b1, w2, b2, w3, b3, w4, b4, negative_slope=0.2):
    return _outputs_like(x_img, x_cond)


@torch.library.register_fake("bsrops::_leaky_relu_")
def _leaky_relu_fake(x, negative_slope):
    return None


@torch.library.register_fake("bsrops::_leaky_relu_backward_")
def _leaky_relu_backward_fake(grad, out, negative_slope):
    return None


@torch.library.register_fake("bsrops::_dpcb_epilogue")
def _epilogue_fake(x_img, f1, x_cond, f2):
    return _outputs_like(x_img, x_cond)


@torch.library.register_fake("bsrops::_dpcb_epilogue_backward")
def _epilogue_backward_fake(grad_img, grad_cond, f1, f2, channels_last):
    layout = memory_format(channels_last)
    return (grad_img.new_empty(0) if f2 is None else _empty(grad_img, layout),
            grad_img.new_empty(0) if f1 is None else _empty(grad_cond, layout))


@torch.library.register_fake("bsrops::_relayout")
def _relayout_fake(x, other, channels_last):
    return _empty(x, memory_format(channels_last))


def _setup_context(ctx, inputs, output):
    x_img, x_cond, w1, b1, w2, b2, w3, b3, w4, b4, negative_slope = inputs
    intermediates = output[2:]
    ctx.mark_non_differentiable(*intermediates)
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(x_img, x_cond, w1, b1, w2, b2, w3, b3, w4, b4)
    # h1, f1, h2, f2 as attributes, not saved tensors: the backward drops each once used (peak memory)
    ctx.intermediates = list(intermediates)
    ctx.versions = [t._version for t in intermediates]
    ctx.negative_slope = negative_slope


def _held_intermediates(ctx, inputs):
    """[h1, f1, h2, f2] from the forward, or recomputed from the inputs on a second backward (retain_graph)."""
    held, ctx.intermediates = ctx.intermediates, None
    if held is None:
        with torch.no_grad():
            return list(torch.ops.bsrops.dpcb(*inputs, ctx.negative_slope)[2:])
    if [t._version for t in held] != ctx.versions:
        raise RuntimeError("bsrops.dpcb: h1, f1, h2 or f2 (the op's extra outputs, needed by its backward) was "
                           "modified in place")
    return held


def _backward(ctx, grad_img, grad_cond, *unused):
    needs = ctx.needs_input_grad[:10]
    if not any(needs) or (grad_img is None and grad_cond is None):
        return (None,) * 11
    inputs = ctx.saved_tensors
    held = _held_intermediates(ctx, inputs)
    x_img, x_cond, w1, _, w2, _, w3, _, w4, _ = inputs
    grads = _backward_composite(grad_img, grad_cond, x_img, x_cond, (w1, w2, w3, w4), held, ctx.negative_slope,
                                needs)
    return (*(g if need else None for g, need in zip(grads, needs)), None)


# the Python formula: the Autograd kernel without _C and under the Python backends (with _C the native backends
# run it in C++, csrc/dpcb/dpcb_autograd.cpp)
_python_autograd = register_autograd("dpcb", _backward, _setup_context)


def _check_slope_call(x_img, x_cond, w1, b1, w2, b2, w3, b3, w4, b4, negative_slope=0.2):
    """check_slope on the arguments of a dpcb / _dpcb_inference call (the reference kernels take validated inputs)."""
    check_slope("dpcb", negative_slope)


register_autocast("dpcb", "lower", range(10))
register_autocast("_dpcb_inference", "lower", range(10))

# The reference backend runs the eager forward; its backward is the composite over the
# reference elementwise kernels (eager PyTorch ops).
_backend.register_kernel("reference", "dpcb", ref.dpcb_reference, check=_check_slope_call)
_backend.register_kernel("reference", "_dpcb_inference", ref.dpcb_inference_reference, check=_check_slope_call)
for _name, _fn in (("_leaky_relu_", ref.leaky_relu_reference_),
                   ("_leaky_relu_backward_", ref.leaky_relu_backward_reference_),
                   ("_dpcb_epilogue", ref.epilogue_reference),
                   ("_dpcb_epilogue_backward", ref.epilogue_backward_reference),
                   ("_relayout", ref.relayout_reference)):
    _backend.register_kernel("reference", _name, _fn)

_backend.register_python_formula("dpcb", _python_autograd, _forward_composite)
for _op, _fn in (("_leaky_relu_", "leaky_relu_"), ("_leaky_relu_backward_", "leaky_relu_backward_"),
                 ("_dpcb_epilogue", "epilogue"), ("_dpcb_epilogue_backward", "epilogue_backward"),
                 ("_relayout", "relayout")):
    _backend.register_lazy_kernel("triton", _op, "triton.dpcb", _fn)
