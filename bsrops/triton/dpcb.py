"""Triton kernels of bsrops::dpcb's fused part (semantics: docs/ops.md).

The maths follows csrc/dpcb/dpcb.h: lrelu(v) = v if v > 0 else slope * v; its gradient is
read from the sign of the output; out_img = x_img + f1 * f2, out_cond = x_cond + f2, with
f2 one value per (n, c) plane when the condition is 1 x 1 (POINTWISE). As in dpcb.h, each
tensor is read and written through its own (N, C, P = H * W) strides (`plane_strides`), so
NCHW and channels_last operands mix (the op's convolutions run in channels_last).

- `_leaky_relu_kernel`, `_leaky_relu_backward_kernel`: in place, flat (one layout).
- `_epilogue_kernel`: out_img and out_cond in one pass.
- `_epilogue_grad_kernel`: grad_f1 = grad_img * f2 (HAS_F2) and, for an image-sized condition,
  grad_f2 = grad_cond + grad_img * f1 (HAS_F1); `_grad_cond_plane_kernel`: for a 1 x 1
  condition one program per plane sums grad_img * f1 over the plane in a fixed order (no atomics).
- `_relayout_kernel`: x (+ other) into another layout.

The slope is a constexpr so that float64 runs keep it exact. Interpreter-compatible.
"""
import torch
import triton
import triton.language as tl

from ..ops._common import memory_format

BLOCK = 1024


@triton.jit
def _leaky_relu_kernel(x_ptr, total, SLOPE: tl.constexpr, BLOCK: tl.constexpr):
    offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offsets < total
    v = tl.load(x_ptr + offsets, mask=mask)
    tl.store(x_ptr + offsets, tl.where(v > 0, v, v * SLOPE), mask=mask)


@triton.jit
def _leaky_relu_backward_kernel(g_ptr, out_ptr, total, SLOPE: tl.constexpr, BLOCK: tl.constexpr):
    offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offsets < total
    g = tl.load(g_ptr + offsets, mask=mask)
    out = tl.load(out_ptr + offsets, mask=mask)
    tl.store(g_ptr + offsets, tl.where(out > 0, g, g * SLOPE), mask=mask)


@triton.jit
def _offset(e, channels, pixels, sn, sc, sp):
    """Offset of element e (NCHW order over (N, C, P)) in a tensor of strides (sn, sc, sp)."""
    return (e // (pixels * channels)) * sn + ((e // pixels) % channels) * sc + (e % pixels) * sp


@triton.jit
def _epilogue_kernel(x_ptr, f1_ptr, xc_ptr, f2_ptr, out_ptr, out_cond_ptr, total, channels, pixels,
                     x_n, x_c, x_p, f1_n, f1_c, f1_p, xc_n, xc_c, xc_p, f2_n, f2_c, f2_p, o_n, o_c, o_p,
                     oc_n, oc_c, oc_p, POINTWISE: tl.constexpr, BLOCK: tl.constexpr):
    e = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = e < total
    f2 = tl.load(f2_ptr + _offset(e, channels, pixels, f2_n, f2_c, f2_p), mask=mask)
    x = tl.load(x_ptr + _offset(e, channels, pixels, x_n, x_c, x_p), mask=mask)
    f1 = tl.load(f1_ptr + _offset(e, channels, pixels, f1_n, f1_c, f1_p), mask=mask)
    tl.store(out_ptr + _offset(e, channels, pixels, o_n, o_c, o_p), x + f1 * f2, mask=mask)
    cond_mask = mask & (e % pixels == 0) if POINTWISE else mask
    xc = tl.load(xc_ptr + _offset(e, channels, pixels, xc_n, xc_c, xc_p), mask=cond_mask)
    tl.store(out_cond_ptr + _offset(e, channels, pixels, oc_n, oc_c, oc_p), xc + f2, mask=cond_mask)


@triton.jit
def _epilogue_grad_kernel(gi_ptr, gc_ptr, f1_ptr, f2_ptr, g1_ptr, g2_ptr, total, channels, pixels,
                          gi_n, gi_c, gi_p, gc_n, gc_c, gc_p, f1_n, f1_c, f1_p, f2_n, f2_c, f2_p,
                          g1_n, g1_c, g1_p, g2_n, g2_c, g2_p, HAS_F1: tl.constexpr, HAS_F2: tl.constexpr,
                          BLOCK: tl.constexpr):
    e = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = e < total
    g = tl.load(gi_ptr + _offset(e, channels, pixels, gi_n, gi_c, gi_p), mask=mask)
    if HAS_F2:
        f2 = tl.load(f2_ptr + _offset(e, channels, pixels, f2_n, f2_c, f2_p), mask=mask)
        tl.store(g1_ptr + _offset(e, channels, pixels, g1_n, g1_c, g1_p), g * f2, mask=mask)
    if HAS_F1:
        f1 = tl.load(f1_ptr + _offset(e, channels, pixels, f1_n, f1_c, f1_p), mask=mask)
        gc = tl.load(gc_ptr + _offset(e, channels, pixels, gc_n, gc_c, gc_p), mask=mask)
        tl.store(g2_ptr + _offset(e, channels, pixels, g2_n, g2_c, g2_p), gc + g * f1, mask=mask)


@triton.jit
def _grad_cond_plane_kernel(gi_ptr, gc_ptr, f1_ptr, g2_ptr, channels, pixels, gi_n, gi_c, gi_p, f1_n, f1_c, f1_p,
                            cond_n, cond_c, F64: tl.constexpr, BLOCK: tl.constexpr):
    """One program per (n, c) plane: g2 = grad_cond + the plane's sum of grad_img * f1 (grad_cond and g2 are
    (N, C, 1, 1), strides cond_n, cond_c)."""
    plane = tl.program_id(0).to(tl.int64)
    n, c = plane // channels, plane % channels
    if F64:
        acc = tl.zeros((BLOCK,), dtype=tl.float64)
    else:
        acc = tl.zeros((BLOCK,), dtype=tl.float32)
    for start in range(0, pixels, BLOCK):
        p = start + tl.arange(0, BLOCK)
        mask = p < pixels
        g = tl.load(gi_ptr + n * gi_n + c * gi_c + p * gi_p, mask=mask, other=0.0)
        f1 = tl.load(f1_ptr + n * f1_n + c * f1_c + p * f1_p, mask=mask, other=0.0)
        acc += (g * f1).to(acc.dtype)
    total_sum = tl.sum(acc, axis=0) + tl.load(gc_ptr + n * cond_n + c * cond_c).to(acc.dtype)
    tl.store(g2_ptr + n * cond_n + c * cond_c, total_sum.to(g2_ptr.dtype.element_ty))


@triton.jit
def _relayout_kernel(x_ptr, other_ptr, out_ptr, total, channels, pixels, x_n, x_c, x_p, ot_n, ot_c, ot_p,
                     o_n, o_c, o_p, HAS_OTHER: tl.constexpr, BLOCK: tl.constexpr):
    e = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = e < total
    v = tl.load(x_ptr + _offset(e, channels, pixels, x_n, x_c, x_p), mask=mask)
    if HAS_OTHER:
        v += tl.load(other_ptr + _offset(e, channels, pixels, ot_n, ot_c, ot_p), mask=mask)
    tl.store(out_ptr + _offset(e, channels, pixels, o_n, o_c, o_p), v, mask=mask)


KERNELS = (_leaky_relu_kernel, _leaky_relu_backward_kernel, _epilogue_kernel, _epilogue_grad_kernel,
           _grad_cond_plane_kernel, _relayout_kernel)


def _grid(total):
    return (max(1, triton.cdiv(total, BLOCK)),)


def _pointwise(image, cond):
    return tuple(cond.shape[2:]) == (1, 1) and tuple(image.shape[2:]) != (1, 1)


def _is_dense(t):
    return t.is_contiguous() or t.is_contiguous(memory_format=torch.channels_last)


def _dense(t):
    return t if _is_dense(t) else t.contiguous()


def plane_strides(t, broadcast=False):
    """(n, c, p) strides of a dense tensor seen as (N, C, H * W), as dpcb.h's plane_strides."""
    channels, pixels = t.shape[1], t.shape[2] * t.shape[3]
    if broadcast:
        return channels, 1, 0
    if t.is_contiguous():
        return channels * pixels, pixels, 1
    return pixels * channels, 1, channels


def leaky_relu_(x, negative_slope):
    assert _is_dense(x), "_leaky_relu_ (triton): x must be NCHW or channels_last"
    if x.numel():
        _leaky_relu_kernel[_grid(x.numel())](x, x.numel(), SLOPE=float(negative_slope), BLOCK=BLOCK)


def leaky_relu_backward_(grad, out, negative_slope):
    assert _is_dense(grad), "_leaky_relu_backward_ (triton): grad must be NCHW or channels_last"
    if out.stride() != grad.stride():
        out = out.contiguous(memory_format=memory_format(not grad.is_contiguous()))
    if grad.numel():
        _leaky_relu_backward_kernel[_grid(grad.numel())](grad, out, grad.numel(), SLOPE=float(negative_slope),
                                                         BLOCK=BLOCK)


def epilogue(x_img, f1, x_cond, f2):
    x_img, f1, x_cond, f2 = (_dense(t) for t in (x_img, f1, x_cond, f2))
    out, out_cond = torch.empty_like(x_img), torch.empty_like(x_cond)
    if x_img.numel():
        pointwise = _pointwise(x_img, f2)
        _epilogue_kernel[_grid(x_img.numel())](
            x_img, f1, x_cond, f2, out, out_cond, x_img.numel(), x_img.shape[1], x_img.shape[2] * x_img.shape[3],
            *plane_strides(x_img), *plane_strides(f1), *plane_strides(x_cond, pointwise),
            *plane_strides(f2, pointwise), *plane_strides(out), *plane_strides(out_cond, pointwise),
            POINTWISE=pointwise, BLOCK=BLOCK)
    return out, out_cond


def epilogue_backward(grad_img, grad_cond, f1, f2, channels_last):
    gi, gc = _dense(grad_img), _dense(grad_cond)
    layout = memory_format(channels_last)
    grad_f1 = gi.new_empty(0) if f2 is None else torch.empty(gi.shape, dtype=gi.dtype, device=gi.device,
                                                              memory_format=layout)
    grad_f2 = gi.new_empty(0) if f1 is None else torch.empty(gc.shape, dtype=gc.dtype, device=gc.device,
                                                              memory_format=layout)
    if not gi.numel():
        return grad_f1, grad_f2
    pointwise = _pointwise(gi, gc)
    channels, pixels = gi.shape[1], gi.shape[2] * gi.shape[3]
    f1_, f2_ = _dense(f1) if f1 is not None else gi, _dense(f2) if f2 is not None else gc  # placeholders: not read
    g1_, g2_ = grad_f1 if f2 is not None else gi, grad_f2 if f1 is not None else gc
    _epilogue_grad_kernel[_grid(gi.numel())](
        gi, gc, f1_, f2_, g1_, g2_, gi.numel(), channels, pixels, *plane_strides(gi), *plane_strides(gc, pointwise),
        *plane_strides(f1_), *plane_strides(f2_, pointwise), *plane_strides(g1_), *plane_strides(g2_, pointwise),
        HAS_F1=f1 is not None and not pointwise, HAS_F2=f2 is not None, BLOCK=BLOCK)
    if f1 is not None and pointwise:
        _grad_cond_plane_kernel[(gi.shape[0] * channels,)](
            gi, gc, f1_, grad_f2, channels, pixels, *plane_strides(gi), *plane_strides(f1_), channels, 1,
            F64=gi.dtype == torch.float64, BLOCK=BLOCK)
    return grad_f1, grad_f2


def relayout(x, other, channels_last):
    x = _dense(x)
    other_ = _dense(other) if other is not None else x
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=memory_format(channels_last))
    if x.numel():
        _relayout_kernel[_grid(x.numel())](x, other_, out, x.numel(), x.shape[1], x.shape[2] * x.shape[3],
                                           *plane_strides(x), *plane_strides(other_), *plane_strides(out),
                                           HAS_OTHER=other is not None, BLOCK=BLOCK)
    return out
