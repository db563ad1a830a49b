"""Triton kernels of bsrops::patchgan_conv's fused part (semantics: docs/ops.md).

The maths follows csrc/patchgan_conv/patchgan_conv.h. A group is what one mean / rstd serves:
an (n, c) plane for instance norm, a channel over all n for batch norm (NORM 1 / 2); its
element e sits at (e // HW * C + c) * HW + e % HW (batch) or group * HW + e (instance).

- `_norm_act_kernel`: one program per group: sum -> mean, squared deviations -> rstd
  (two-pass), the running statistics update of batch norm in training, then
  out = lrelu(y * scale + shift). With fixed statistics (batch norm in eval mode) the
  running ones are read. NORM 0 (no norm) is a plain elementwise LeakyReLU.
- `_norm_act_backward_kernel`: one program per group: sum(gz) and sum(gz * yhat) (gz from
  grad_out and the sign of out, yhat recomputed), then grad_y; the per-group sums are stored
  for the parameter gradients, which the launcher adds per channel in a fixed order.

Slope, eps and momentum are constexprs (exact in float64 runs). Interpreter-compatible.
"""
import torch
import triton
import triton.language as tl


BLOCK = 1024
NORM_CODES = {"none": 0, "instance": 1, "batch": 2}


@triton.jit
def _group_offsets(group, e, C, HW, NORM: tl.constexpr):
    if NORM == 2:
        offsets = ((e // HW) * C + group) * HW + e % HW
    else:
        offsets = group * HW + e
    return offsets


@triton.jit
def _accumulator(F64: tl.constexpr, BLOCK: tl.constexpr):
    if F64:
        acc = tl.zeros((BLOCK,), dtype=tl.float64)
    else:
        acc = tl.zeros((BLOCK,), dtype=tl.float32)
    return acc


@triton.jit
def _grad_z(g_ptr, out_ptr, offsets, mask, like, ACTIVATION: tl.constexpr, SLOPE: tl.constexpr):
    """d loss / d z in the accumulator dtype of `like`: grad_out, masked by the sign of out."""
    gz = tl.load(g_ptr + offsets, mask=mask, other=0.0).to(like.dtype)
    if ACTIVATION:
        gz = tl.where(tl.load(out_ptr + offsets, mask=mask, other=0.0) > 0, gz, gz * SLOPE)
    return gz


@triton.jit
def _norm_act_kernel(y_ptr, out_ptr, mean_ptr, rstd_ptr, w_ptr, b_ptr, rm_ptr, rv_ptr, total, C, HW, M,
                     NORM: tl.constexpr, DATA_STATS: tl.constexpr, UPDATE: tl.constexpr, HAS_W: tl.constexpr,
                     HAS_B: tl.constexpr, ACTIVATION: tl.constexpr, SLOPE: tl.constexpr, EPS: tl.constexpr,
                     MOMENTUM: tl.constexpr, F64: tl.constexpr, BLOCK: tl.constexpr):
    if NORM == 0:
        offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = offsets < total
        v = tl.load(y_ptr + offsets, mask=mask)
        if ACTIVATION:
            v = tl.where(v > 0, v, v * SLOPE)
        tl.store(out_ptr + offsets, v, mask=mask)
    else:
        group = tl.program_id(0).to(tl.int64)
        channel = group if NORM == 2 else group % C
        acc = _accumulator(F64, BLOCK)
        if DATA_STATS:
            for start in range(0, M, BLOCK):
                e = start + tl.arange(0, BLOCK)
                acc += tl.load(y_ptr + _group_offsets(group, e, C, HW, NORM), mask=e < M, other=0.0).to(acc.dtype)
            mean = tl.sum(acc, axis=0) / M
            sq = acc * 0
            for start in range(0, M, BLOCK):
                e = start + tl.arange(0, BLOCK)
                v = tl.load(y_ptr + _group_offsets(group, e, C, HW, NORM), mask=e < M, other=0.0).to(acc.dtype)
                d = tl.where(e < M, v - mean, 0.0)
                sq += d * d
            sq_sum = tl.sum(sq, axis=0)
            rstd = 1.0 / tl.sqrt(sq_sum / M + EPS)
            if UPDATE:
                rm = tl.load(rm_ptr + channel).to(acc.dtype)
                rv = tl.load(rv_ptr + channel).to(acc.dtype)
                tl.store(rm_ptr + channel, ((1 - MOMENTUM) * rm + MOMENTUM * mean).to(rm_ptr.dtype.element_ty))
                tl.store(rv_ptr + channel,
                         ((1 - MOMENTUM) * rv + MOMENTUM * sq_sum / (M - 1)).to(rv_ptr.dtype.element_ty))
        else:
            mean = tl.load(rm_ptr + channel).to(acc.dtype)
            rstd = 1.0 / tl.sqrt(tl.load(rv_ptr + channel).to(acc.dtype) + EPS)
        tl.store(mean_ptr + group, mean.to(mean_ptr.dtype.element_ty))
        tl.store(rstd_ptr + group, rstd.to(rstd_ptr.dtype.element_ty))
        scale = rstd
        if HAS_W:
            scale = scale * tl.load(w_ptr + channel).to(acc.dtype)
        shift = -mean * scale
        if HAS_B:
            shift += tl.load(b_ptr + channel).to(acc.dtype)
        for start in range(0, M, BLOCK):
            e = start + tl.arange(0, BLOCK)
            offsets = _group_offsets(group, e, C, HW, NORM)
            z = tl.load(y_ptr + offsets, mask=e < M, other=0.0).to(acc.dtype) * scale + shift
            if ACTIVATION:
                z = tl.where(z > 0, z, z * SLOPE)
            tl.store(out_ptr + offsets, z.to(out_ptr.dtype.element_ty), mask=e < M)


@triton.jit
def _norm_act_backward_kernel(g_ptr, y_ptr, out_ptr, mean_ptr, rstd_ptr, w_ptr, gy_ptr, sums_ptr, total, groups,
                              C, HW, M, NORM: tl.constexpr, DATA_STATS: tl.constexpr, HAS_W: tl.constexpr,
                              WANT_GY: tl.constexpr, ACTIVATION: tl.constexpr, SLOPE: tl.constexpr,
                              F64: tl.constexpr, BLOCK: tl.constexpr):
    if NORM == 0:
        offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = offsets < total
        g = tl.load(g_ptr + offsets, mask=mask)
        if ACTIVATION:
            g = tl.where(tl.load(out_ptr + offsets, mask=mask) > 0, g, g * SLOPE)
        tl.store(gy_ptr + offsets, g, mask=mask)
    else:
        group = tl.program_id(0).to(tl.int64)
        channel = group if NORM == 2 else group % C
        acc = _accumulator(F64, BLOCK)
        mean = tl.load(mean_ptr + group).to(acc.dtype)
        rstd = tl.load(rstd_ptr + group).to(acc.dtype)
        s1 = acc * 0
        s2 = acc * 0
        for start in range(0, M, BLOCK):
            e = start + tl.arange(0, BLOCK)
            offsets = _group_offsets(group, e, C, HW, NORM)
            gz = _grad_z(g_ptr, out_ptr, offsets, e < M, acc, ACTIVATION, SLOPE)
            yhat = (tl.load(y_ptr + offsets, mask=e < M, other=0.0).to(acc.dtype) - mean) * rstd
            s1 += gz
            s2 += gz * yhat
        sum1 = tl.sum(s1, axis=0)
        sum2 = tl.sum(s2, axis=0)
        tl.store(sums_ptr + group, sum1)
        tl.store(sums_ptr + groups + group, sum2)
        if WANT_GY:
            gamma_rstd = rstd
            if HAS_W:
                gamma_rstd = gamma_rstd * tl.load(w_ptr + channel).to(acc.dtype)
            for start in range(0, M, BLOCK):
                e = start + tl.arange(0, BLOCK)
                offsets = _group_offsets(group, e, C, HW, NORM)
                gz = _grad_z(g_ptr, out_ptr, offsets, e < M, acc, ACTIVATION, SLOPE)
                if DATA_STATS:
                    yhat = (tl.load(y_ptr + offsets, mask=e < M, other=0.0).to(acc.dtype) - mean) * rstd
                    gy = gamma_rstd * (gz - sum1 / M - yhat * (sum2 / M))
                else:
                    gy = gamma_rstd * gz
                tl.store(gy_ptr + offsets, gy.to(gy_ptr.dtype.element_ty), mask=e < M)


KERNELS = (_norm_act_kernel, _norm_act_backward_kernel)


def _stats_shape(n, channels, norm):
    return {"none": (0,), "instance": (n, channels), "batch": (channels,)}[norm]


def _vector(t):
    """A (C,) parameter as the kernels index it: contiguous (a strided, expanded or offset view is copied)."""
    return None if t is None else t.contiguous()


def norm_act(y, weight, bias, running_mean, running_var, norm, training, momentum, eps, negative_slope, activation):
    """torch.ops.bsrops._patchgan_norm_act on the Triton kernels (running stats updated in place: through contiguous
    copies, written back, when the buffers are views); inputs validated by the op's check_norm_act_args."""
    update = norm == "batch" and training and running_mean is not None
    y, weight, bias = y.contiguous(), _vector(weight), _vector(bias)
    buffers = (running_mean, running_var)
    running_mean, running_var = _vector(running_mean), _vector(running_var)
    n, channels, height, width = y.shape
    out = torch.empty_like(y)
    stats = _stats_shape(n, channels, norm)
    mean, rstd = y.new_empty(stats), y.new_empty(stats)
    tracked = running_mean is not None
    data_stats = norm == "instance" or (norm == "batch" and (training or not tracked))
    hw = height * width
    groups = 0 if norm == "none" else (channels if norm == "batch" else n * channels)
    size = n * hw if norm == "batch" else hw
    grid = (max(1, triton.cdiv(y.numel(), BLOCK)),) if norm == "none" else (groups,)
    if y.numel() == 0 or grid[0] == 0:
        return out, mean, rstd
    _norm_act_kernel[grid](
        y, out, mean, rstd, weight if weight is not None else y, bias if bias is not None else y,
        running_mean if tracked else y, running_var if tracked else y, y.numel(), channels, hw, size,
        NORM=NORM_CODES[norm], DATA_STATS=data_stats, UPDATE=norm == "batch" and training and tracked,
        HAS_W=weight is not None, HAS_B=bias is not None, ACTIVATION=bool(activation), SLOPE=float(negative_slope),
        EPS=float(eps), MOMENTUM=float(momentum), F64=y.dtype == torch.float64, BLOCK=BLOCK)
    if update:
        for buffer, updated in zip(buffers, (running_mean, running_var)):
            if updated is not buffer:
                buffer.copy_(updated)
    return out, mean, rstd


def norm_act_backward(grad_out, y, out, mean, rstd, weight, norm, training, negative_slope, activation, output_mask):
    """torch.ops.bsrops._patchgan_norm_act_backward on the Triton kernels -> (grad_y, grad_weight, grad_bias)."""
    grad_out, out = grad_out.contiguous(), out.contiguous()
    y = out if norm == "none" else y.contiguous()
    n, channels, height, width = out.shape
    hw = height * width
    groups = 0 if norm == "none" else (channels if norm == "batch" else n * channels)
    accumulator = torch.float64 if out.dtype == torch.float64 else torch.float32
    sums = torch.zeros(2, max(groups, 1), dtype=accumulator, device=out.device)
    grad_y = torch.empty_like(out)
    weight = _vector(weight)
    grid = (max(1, triton.cdiv(out.numel(), BLOCK)),) if norm == "none" else (groups,)
    if out.numel() and grid[0]:
        _norm_act_backward_kernel[grid](
            grad_out, y, out, mean.contiguous(), rstd.contiguous(), weight if weight is not None else out, grad_y,
            sums, out.numel(), max(groups, 1), channels, hw, n * hw if norm == "batch" else hw,
            NORM=NORM_CODES[norm], DATA_STATS=norm == "instance" or (norm == "batch" and training),
            HAS_W=weight is not None, WANT_GY=bool(output_mask[0]), ACTIVATION=bool(activation),
            SLOPE=float(negative_slope), F64=out.dtype == torch.float64, BLOCK=BLOCK)
    elif out.numel() == 0:
        grad_y.zero_()
    empty = out.new_empty
    grad_weight, grad_bias = empty(0), empty(0)
    if norm != "none" and (output_mask[1] or output_mask[2]):
        per_channel = sums[:, :groups].view(2, n, channels).sum(1) if norm == "instance" else sums[:, :groups]
        if output_mask[1]:
            grad_weight = per_channel[1].to(out.dtype)
        if output_mask[2]:
            grad_bias = per_channel[0].to(out.dtype)
    return (grad_y if output_mask[0] else empty(0)), grad_weight, grad_bias
