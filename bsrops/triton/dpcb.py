"""Triton kernels of bsrops::dpcb's fused part (semantics: shared/DESIGN.md §3).

The maths follows csrc/dpcb/dpcb.h: lrelu(v) = v if v > 0 else slope * v; its gradient is
read from the sign of the output; out_img = x_img + f1 * f2, out_cond = x_cond + f2, with
f2 one value per (n, c) plane when the condition is 1 x 1 (POINTWISE).

- `_leaky_relu_kernel`, `_leaky_relu_backward_kernel`: in place, one block of elements per program.
- `_epilogue_kernel`: out_img and out_cond in one pass.
- `_epilogue_backward_kernel`: grad_f1 = grad_img * f2 and grad_f2 = grad_cond + grad_img * f1;
  for a 1 x 1 condition one program per plane sums grad_img * f1 over the plane in a fixed
  order (no atomics).

The slope is a constexpr so that float64 runs keep it exact. Interpreter-compatible.
"""
import torch
import triton
import triton.language as tl

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
def _epilogue_kernel(x_ptr, f1_ptr, xc_ptr, f2_ptr, out_ptr, out_cond_ptr, total, hw,
                     POINTWISE: tl.constexpr, BLOCK: tl.constexpr):
    offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offsets < total
    cond = offsets // hw if POINTWISE else offsets
    f2 = tl.load(f2_ptr + cond, mask=mask)
    x = tl.load(x_ptr + offsets, mask=mask)
    f1 = tl.load(f1_ptr + offsets, mask=mask)
    tl.store(out_ptr + offsets, x + f1 * f2, mask=mask)
    cond_mask = mask & (offsets % hw == 0) if POINTWISE else mask
    xc = tl.load(xc_ptr + cond, mask=cond_mask)
    tl.store(out_cond_ptr + cond, xc + f2, mask=cond_mask)


@triton.jit
def _epilogue_backward_kernel(gi_ptr, gc_ptr, f1_ptr, f2_ptr, g1_ptr, g2_ptr, total, hw,
                              HAS_GI: tl.constexpr, HAS_GC: tl.constexpr, POINTWISE: tl.constexpr,
                              F64: tl.constexpr, BLOCK: tl.constexpr):
    if POINTWISE:  # one program per (n, c) plane
        plane = tl.program_id(0).to(tl.int64)
        scale = tl.load(f2_ptr + plane)
        if F64:
            acc = tl.zeros((BLOCK,), dtype=tl.float64)
        else:
            acc = tl.zeros((BLOCK,), dtype=tl.float32)
        for start in range(0, hw, BLOCK):
            offsets = plane * hw + start + tl.arange(0, BLOCK)
            mask = start + tl.arange(0, BLOCK) < hw
            if HAS_GI:
                g = tl.load(gi_ptr + offsets, mask=mask, other=0.0)
                acc += (g * tl.load(f1_ptr + offsets, mask=mask, other=0.0)).to(acc.dtype)
                tl.store(g1_ptr + offsets, g * scale, mask=mask)
            else:
                tl.store(g1_ptr + offsets, tl.zeros((BLOCK,), dtype=acc.dtype).to(g1_ptr.dtype.element_ty), mask=mask)
        total_sum = tl.sum(acc, axis=0)
        if HAS_GC:
            total_sum += tl.load(gc_ptr + plane).to(acc.dtype)
        tl.store(g2_ptr + plane, total_sum.to(g2_ptr.dtype.element_ty))
    else:
        offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = offsets < total
        f2 = tl.load(f2_ptr + offsets, mask=mask, other=0.0)
        g2 = f2 * 0
        if HAS_GC:
            g2 += tl.load(gc_ptr + offsets, mask=mask, other=0.0)
        if HAS_GI:
            g = tl.load(gi_ptr + offsets, mask=mask, other=0.0)
            tl.store(g1_ptr + offsets, g * f2, mask=mask)
            g2 += g * tl.load(f1_ptr + offsets, mask=mask, other=0.0)
        else:
            tl.store(g1_ptr + offsets, f2 * 0, mask=mask)
        tl.store(g2_ptr + offsets, g2, mask=mask)


KERNELS = (_leaky_relu_kernel, _leaky_relu_backward_kernel, _epilogue_kernel, _epilogue_backward_kernel)


def _grid(total):
    return (max(1, triton.cdiv(total, BLOCK)),)


def _pointwise(f1, f2):
    return tuple(f2.shape[2:]) == (1, 1) and tuple(f1.shape[2:]) != (1, 1)


def leaky_relu_(x, negative_slope):
    assert x.is_contiguous(), "_leaky_relu_ (triton): x must be contiguous"
    if x.numel():
        _leaky_relu_kernel[_grid(x.numel())](x, x.numel(), SLOPE=float(negative_slope), BLOCK=BLOCK)


def leaky_relu_backward_(grad, out, negative_slope):
    assert grad.is_contiguous(), "_leaky_relu_backward_ (triton): grad must be contiguous"
    if grad.numel():
        _leaky_relu_backward_kernel[_grid(grad.numel())](grad, out.contiguous(), grad.numel(),
                                                         SLOPE=float(negative_slope), BLOCK=BLOCK)


def epilogue(x_img, f1, x_cond, f2):
    x_img, f1, x_cond, f2 = (t.contiguous() for t in (x_img, f1, x_cond, f2))
    out, out_cond = torch.empty_like(x_img), torch.empty_like(x_cond)
    if x_img.numel():
        _epilogue_kernel[_grid(x_img.numel())](x_img, f1, x_cond, f2, out, out_cond, x_img.numel(),
                                               x_img.shape[2] * x_img.shape[3], POINTWISE=_pointwise(f1, f2),
                                               BLOCK=BLOCK)
    return out, out_cond


def epilogue_backward(grad_img, grad_cond, f1, f2):
    f1, f2 = f1.contiguous(), f2.contiguous()
    grad_f1, grad_f2 = torch.empty_like(f1), torch.empty_like(f2)
    if not f1.numel():
        return grad_f1, grad_f2
    pointwise = _pointwise(f1, f2)
    gi = grad_img.contiguous() if grad_img is not None else f1  # f1: a placeholder, never read
    gc = grad_cond.contiguous() if grad_cond is not None else f2
    hw = f1.shape[2] * f1.shape[3]
    grid = (f1.shape[0] * f1.shape[1],) if pointwise else _grid(f1.numel())
    _epilogue_backward_kernel[grid](gi, gc, f1, f2, grad_f1, grad_f2, f1.numel(), hw, HAS_GI=grad_img is not None,
                                    HAS_GC=grad_cond is not None, POINTWISE=pointwise,
                                    F64=f1.dtype == torch.float64, BLOCK=BLOCK)
    return grad_f1, grad_f2
