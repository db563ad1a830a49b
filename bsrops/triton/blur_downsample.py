"""Triton kernels for bsrops::blur_downsample and its backward (semantics: docs/ops.md).

The index maths follows csrc/blur_downsample/blur_downsample.h, with c = k // 2:

    flip=False: out(i, j) = sum_{a,b} K[a, b] * x(s*i + a - c, s*j + b - c)
    flip=True : out(i, j) = sum_{a,b} K[a, b] * x(s*i - a + c, s*j - b + c)

and padded coordinates are mapped to image coordinates by `_source_index`.

Kernels (all deterministic, none uses atomics):

- `_forward_kernel`: one program = one image, a block of channels x a block of output
  pixels; a pipelined loop over tiles of [taps x pixels] of the flattened k x k window, each
  tile's weights loaded once for the whole channel block (for the per-pixel layout a
  contiguous tile of the kernel tensor) and the tile's products summed over its taps. Block
  sizes come from `FORWARD_TILES` by output pixels per image.
- `_grad_input_kernel`: gather form of grad_x (as grad_input_element in the header). One
  program = one image, a block of channels x a 2-D tile of input pixels. grad_x(y, x) sums,
  over every padded coordinate (u, v) that the padding maps onto (y, x), the outputs and
  taps that read (u, v) (at most ceil(k/s) per axis). The candidates per axis are y itself
  and the border coordinates that read it: the two mirrored/wrapped ones for reflect,
  symmetric and circular, every border coordinate for replicate, none for zeros. A
  candidate that no pixel of the tile has is skipped with one scalar branch, so interior
  tiles only do the direct term.
- `_grad_kernel_kernel`: d loss / d K for image n, a block of taps x a block of output
  pixels, reduced over C (grad_out is loaded once per channel for all taps of the block).
  Per-pixel kernels store it directly; per-image and shared kernels store one partial sum
  per pixel block, and `_sum_partials_kernel` adds the partials of each (n, tap) (and over
  n for the shared (k, k) kernel) in a fixed order: deterministic, no atomics.

Accumulation is float32 for float16/bfloat16/float32 and float64 for float64. Windows are
runtime loops (`range(0, ksize)`), so one compiled kernel serves every k. A stride >= max(H, W)
runs as max(H, W) (`effective_stride`: the same single output pixel per axis; a stride near
2^31 or 2^63 overflowed the kernels' index maths and zeroed grad_x). The module is
interpreter-compatible (no libdevice, no inline asm, no autotuning).
"""
import torch
import triton
import triton.language as tl

from ..reference.blur_downsample import effective_stride, geometry, kernel_size

PADDING_CODES = {"reflect": 0, "symmetric": 1, "replicate": 2, "zeros": 3, "circular": 4}
LAYOUT_SHARED, LAYOUT_IMAGE, LAYOUT_PIXEL = 0, 1, 2


# ---------------------------------------------------------------------------------------
# shared device helpers
# ---------------------------------------------------------------------------------------

@triton.jit
def _source_index(u, size, PADDING: tl.constexpr):
    """Image coordinate read at padded coordinate u (valid for |overhang| <= size), -1 for a zero."""
    if PADDING == 0:  # reflect (edge not repeated)
        outside = tl.where(u < 0, -u, 2 * (size - 1) - u)
    elif PADDING == 1:  # symmetric (edge repeated)
        outside = tl.where(u < 0, -1 - u, 2 * size - 1 - u)
    elif PADDING == 2:  # replicate
        outside = tl.where(u < 0, 0, size - 1)
    elif PADDING == 4:  # circular
        outside = tl.where(u < 0, u + size, u - size)
    else:  # zeros
        outside = u * 0 - 1
    return tl.where((u >= 0) & (u < size), u, outside)


@triton.jit
def _tap_offset(a, half, FLIP: tl.constexpr):
    """Coordinate offset read by tap a along one axis: a - c, or c - a when flipped."""
    if FLIP:
        offset = half - a
    else:
        offset = a - half
    return offset


@triton.jit
def _zeros(shape: tl.constexpr, F64: tl.constexpr):
    if F64:
        acc = tl.zeros(shape, dtype=tl.float64)
    else:
        acc = tl.zeros(shape, dtype=tl.float32)
    return acc


@triton.jit
def _to_output(acc, ptr):
    """acc cast to the element type of `ptr`, rounding to nearest even.

    fp32 -> bfloat16 is rounded by hand: the interpreter's own cast truncates (and its
    round-to-nearest path loses the carry into the exponent); on the GPU this is a few
    integer ops at the store.
    """
    if ptr.dtype.element_ty == tl.bfloat16:
        value = acc.to(tl.float32)
        bits = tl.where(value != value, 0x7FC00000, value.to(tl.uint32, bitcast=True))
        rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
        result = rounded.to(tl.uint16).to(tl.bfloat16, bitcast=True)
    else:
        result = acc.to(ptr.dtype.element_ty)
    return result


# ---------------------------------------------------------------------------------------
# forward
# ---------------------------------------------------------------------------------------

@triton.jit
def _forward_kernel(x_ptr, k_ptr, out_ptr, C, H, W, Ho, Wo, ksize, stride,
                    FLIP: tl.constexpr, PADDING: tl.constexpr, LAYOUT: tl.constexpr, F64: tl.constexpr,
                    BLOCK_C: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_P: tl.constexpr, STAGES: tl.constexpr):
    """out[n, cs, p] for a block of channels cs and output pixels p of image n = program_id(2):
    sum over tiles of BLOCK_T taps t = a * k + b of K[t](p) * x(read by tap t at p)."""
    pid_p = tl.program_id(0)
    pid_c = tl.program_id(1)
    n = tl.program_id(2).to(tl.int64)
    pixels = Ho * Wo
    taps = ksize * ksize
    p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    p_mask = p < pixels
    si = stride * (p // Wo)
    sj = stride * (p % Wo)
    cs = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    c_mask = cs < C
    planes = ((n * C + cs) * H * W)[:, None, None]  # int64 [BLOCK_C, 1, 1]
    tap_stride = tl.cast(Ho, tl.int64) * Wo  # per-pixel kernels: elements per tap (int64 offsets)
    if LAYOUT == 2:
        k_base = k_ptr + n * taps * tap_stride
    elif LAYOUT == 1:
        k_base = k_ptr + n * taps
    else:
        k_base = k_ptr
    half = ksize // 2
    acc = _zeros((BLOCK_C, BLOCK_P), F64)
    for t0 in tl.range(0, taps, BLOCK_T, num_stages=STAGES):
        t = t0 + tl.arange(0, BLOCK_T)
        t_mask = t < taps
        rows = _source_index(si[None, :] + _tap_offset(t // ksize, half, FLIP)[:, None], H, PADDING)
        cols = _source_index(sj[None, :] + _tap_offset(t % ksize, half, FLIP)[:, None], W, PADDING)
        ok = t_mask[:, None] & p_mask[None, :] & (rows >= 0) & (cols >= 0)  # [BLOCK_T, BLOCK_P]
        if LAYOUT == 2:
            weights = tl.load(k_base + t[:, None] * tap_stride + p[None, :],
                              mask=t_mask[:, None] & p_mask[None, :], other=0.0)
        else:
            weights = tl.load(k_base + t, mask=t_mask, other=0.0)[:, None]
        values = tl.load(x_ptr + planes + (rows * W + cols)[None, :, :],
                         mask=c_mask[:, None, None] & ok[None, :, :], other=0.0)
        acc += tl.sum(values.to(acc.dtype) * weights.to(acc.dtype)[None, :, :], axis=1)
    out_offsets = ((n * C + cs) * pixels)[:, None] + p[None, :]
    tl.store(out_ptr + out_offsets, _to_output(acc, out_ptr), mask=c_mask[:, None] & p_mask[None, :])


# ---------------------------------------------------------------------------------------
# grad_x (gather)
# ---------------------------------------------------------------------------------------

@triton.jit
def _preimage(r, y, size, before, after, PADDING: tl.constexpr):
    """Candidate r of the padded coordinates that the padding maps onto image coordinate y.

    r = 0 is y itself; r >= 1 are border coordinates: for reflect/symmetric/circular the mirror
    (or wrapped) coordinate before the image (r = 1) and after it (r = 2); for replicate every
    border coordinate (r - 1 < before: before the image, else after it). Returns (u, valid).
    """
    if PADDING == 0:
        outside = tl.where(r == 1, -y, 2 * (size - 1) - y)
    elif PADDING == 1:
        outside = tl.where(r == 1, -1 - y, 2 * size - 1 - y)
    elif PADDING == 4:
        outside = tl.where(r == 1, y - size, y + size)
    else:  # replicate (zeros has no border candidate)
        outside = tl.where(r - 1 < before, r - 1 - before, size + (r - 1 - before)) + y * 0
    u = tl.where(r == 0, y, outside)
    in_border = (u >= -before) & (u < size + after) & ((u < 0) | (u >= size))
    valid = (r == 0) | (in_border & (_source_index(u, size, PADDING) == y))
    return u, valid


@triton.jit
def _first_output(u, stride, lo_off, hi_off, bias):
    """First and last output index i (clamped to >= 0, not to < Ho) with lo_off <= u - s*i <= hi_off."""
    first = (u - hi_off + stride - 1 + bias * stride) // stride - bias  # ceil((u - hi_off) / s)
    last = (u - lo_off + bias * stride) // stride - bias  # floor((u - lo_off) / s)
    return tl.maximum(first, 0), last


@triton.jit
def _grad_padded(acc, go_plane, k_base, c_mask, u, v, mask, Ho, Wo, ksize, stride, lo_off, hi_off, taps,
                 FLIP: tl.constexpr, LAYOUT: tl.constexpr):
    """acc += d loss / d padded(u, v) for a [BLOCK_C, BLOCK_Y, BLOCK_X] tile.

    Sums grad_out(i, j) * K[a, b](i, j) over the outputs (i, j) and taps (a, b) with
    s*i + offset(a) = u and s*j + offset(b) = v: at most taps = ceil(k / s) per axis.
    go_plane: [BLOCK_C, 1, 1] pointers; c_mask: [BLOCK_C, 1, 1]; u: [1, BLOCK_Y, 1]; v: [1, 1, BLOCK_X];
    mask: [1, BLOCK_Y, BLOCK_X].
    """
    half = ksize // 2
    tap_stride = tl.cast(Ho, tl.int64) * Wo
    bias = 2 * ksize + 2  # keeps the numerators non-negative: floor division == truncation
    i0, i_last = _first_output(u, stride, lo_off, hi_off, bias)
    j0, j_last = _first_output(v, stride, lo_off, hi_off, bias)
    i_last = tl.minimum(i_last, Ho - 1)
    j_last = tl.minimum(j_last, Wo - 1)
    # tap of output i0 along each axis; the next output reads the tap s further (flip: s back)
    if FLIP:
        a0 = half - (u - stride * i0)
        b0 = half - (v - stride * j0)
        step = stride
    else:
        a0 = u - stride * i0 + half
        b0 = v - stride * j0 + half
        step = -stride
    for ta in range(0, taps):
        i = i0 + ta
        row_mask = mask & (i <= i_last)
        a = a0 + step * ta
        go_row = go_plane + i * Wo
        if LAYOUT == 2:
            k_row = k_base + (a * ksize) * tap_stride + i * Wo
        else:
            k_row = k_base + a * ksize
        for tb in range(0, taps):
            j = j0 + tb
            b = b0 + step * tb
            ok = row_mask & (j <= j_last)
            grad = tl.load(go_row + j, mask=c_mask & ok, other=0.0)
            if LAYOUT == 2:
                weight = tl.load(k_row + b * tap_stride + j, mask=ok, other=0.0)
            else:
                weight = tl.load(k_row + b, mask=ok, other=0.0)
            acc += grad.to(acc.dtype) * weight.to(acc.dtype)
    return acc


@triton.jit
def _grad_input_kernel(go_ptr, k_ptr, gx_ptr, C, H, W, Ho, Wo, ksize, stride, lo_off, hi_off, taps,
                       after_h, after_w, cand_h, cand_w,
                       FLIP: tl.constexpr, PADDING: tl.constexpr, LAYOUT: tl.constexpr, F64: tl.constexpr,
                       BLOCK_C: tl.constexpr, BLOCK_Y: tl.constexpr, BLOCK_X: tl.constexpr):
    """grad_x for a [BLOCK_C, BLOCK_Y, BLOCK_X] tile of image n: sum of d loss / d padded over the
    padded coordinates that read each pixel (the direct one, then border candidates)."""
    pid = tl.program_id(0)
    c_blocks = tl.cdiv(C, BLOCK_C)
    n = (pid // c_blocks).to(tl.int64)
    cs = (pid % c_blocks) * BLOCK_C + tl.arange(0, BLOCK_C)
    y = tl.program_id(1) * BLOCK_Y + tl.arange(0, BLOCK_Y)
    x = tl.program_id(2) * BLOCK_X + tl.arange(0, BLOCK_X)
    c_mask = (cs < C)[:, None, None]
    y_mask = y < H
    x_mask = x < W
    planes = (n * C + cs)[:, None, None]
    go_plane = go_ptr + planes * Ho * Wo
    if LAYOUT == 2:
        k_base = k_ptr + n * ksize * ksize * Ho * Wo
    elif LAYOUT == 1:
        k_base = k_ptr + n * ksize * ksize
    else:
        k_base = k_ptr
    before = -lo_off
    acc = _zeros((BLOCK_C, BLOCK_Y, BLOCK_X), F64)
    for r in range(0, cand_h):
        u, u_ok = _preimage(r, y, H, before, after_h, PADDING)
        u_ok = u_ok & y_mask
        if tl.max(u_ok.to(tl.int32), axis=0) > 0:  # skips border candidates for interior tiles
            for q in range(0, cand_w):
                v, v_ok = _preimage(q, x, W, before, after_w, PADDING)
                v_ok = v_ok & x_mask
                if tl.max(v_ok.to(tl.int32), axis=0) > 0:
                    mask = (u_ok[:, None] & v_ok[None, :])[None, :, :]
                    acc = _grad_padded(acc, go_plane, k_base, c_mask, u[None, :, None], v[None, None, :], mask,
                                       Ho, Wo, ksize, stride, lo_off, hi_off, taps, FLIP, LAYOUT)
    offsets = planes * H * W + (y * W)[None, :, None] + x[None, None, :]
    tl.store(gx_ptr + offsets, _to_output(acc, gx_ptr),
             mask=c_mask & (y_mask[:, None] & x_mask[None, :])[None, :, :])


# ---------------------------------------------------------------------------------------
# grad_kernel
# ---------------------------------------------------------------------------------------

@triton.jit
def _grad_kernel_kernel(go_ptr, x_ptr, gk_ptr, C, H, W, Ho, Wo, ksize, stride, blocks,
                        FLIP: tl.constexpr, PADDING: tl.constexpr, REDUCE: tl.constexpr, F64: tl.constexpr,
                        BLOCK_T: tl.constexpr, BLOCK_P: tl.constexpr):
    """For image n, a block of taps and a block of output pixels: sum_c grad_out[n, c, p] * x(read by tap t at p).

    REDUCE=False stores it per pixel, gk[n, t, p] (the per-pixel layout); REDUCE=True stores its
    sum over the pixel block, gk[n, t, pid_p] (partial sums of the per-image / shared layouts).
    """
    pid_p = tl.program_id(0)
    n = tl.program_id(2).to(tl.int64)
    pixels = Ho * Wo
    taps = ksize * ksize
    p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    t = tl.program_id(1) * BLOCK_T + tl.arange(0, BLOCK_T)
    p_mask = p < pixels
    t_mask = t < taps
    half = ksize // 2
    rows = _source_index(stride * (p // Wo)[None, :] + _tap_offset(t // ksize, half, FLIP)[:, None], H, PADDING)
    cols = _source_index(stride * (p % Wo)[None, :] + _tap_offset(t % ksize, half, FLIP)[:, None], W, PADDING)
    ok = t_mask[:, None] & p_mask[None, :] & (rows >= 0) & (cols >= 0)
    source = rows * W + cols  # [BLOCK_T, BLOCK_P]
    acc = _zeros((BLOCK_T, BLOCK_P), F64)
    go_image = go_ptr + n * C * pixels
    x_image = x_ptr + n * C * H * W
    go_stride = tl.cast(Ho, tl.int64) * Wo  # int64 channel strides
    x_stride = tl.cast(H, tl.int64) * W
    for c in range(0, C):
        grad = tl.load(go_image + c * go_stride + p, mask=p_mask, other=0.0).to(acc.dtype)
        values = tl.load(x_image + c * x_stride + source, mask=ok, other=0.0).to(acc.dtype)
        acc += values * grad[None, :]
    rows_out = n * taps + t  # [BLOCK_T]
    if REDUCE:
        tl.store(gk_ptr + rows_out * blocks + pid_p, _to_output(tl.sum(acc, axis=1), gk_ptr),
                 mask=t_mask)
    else:
        tl.store(gk_ptr + (rows_out * pixels)[:, None] + p[None, :], _to_output(acc, gk_ptr),
                 mask=t_mask[:, None] & p_mask[None, :])


@triton.jit
def _sum_partials_kernel(part_ptr, gk_ptr, images, taps, blocks, F64: tl.constexpr,
                         BLOCK_T: tl.constexpr, BLOCK_R: tl.constexpr):
    """gk[o, t] = sum over n in [o*images, (o+1)*images) and all blocks of part[n, t, block], in a fixed order."""
    t = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    o = tl.program_id(1).to(tl.int64)
    t_mask = t < taps
    acc = _zeros((BLOCK_T, BLOCK_R), F64)
    for m in range(0, images):
        rows = ((o * images + m) * taps + t) * blocks
        for b0 in range(0, blocks, BLOCK_R):
            offsets = b0 + tl.arange(0, BLOCK_R)
            acc += tl.load(part_ptr + rows[:, None] + offsets[None, :],
                           mask=t_mask[:, None] & (offsets < blocks)[None, :], other=0.0).to(acc.dtype)
    tl.store(gk_ptr + o * taps + t, _to_output(tl.sum(acc, axis=1), gk_ptr), mask=t_mask)


KERNELS = (_forward_kernel, _grad_input_kernel, _grad_kernel_kernel, _sum_partials_kernel)


# ---------------------------------------------------------------------------------------
# launchers
# ---------------------------------------------------------------------------------------

def _pow2(value, cap):
    return max(1, min(triton.next_power_of_2(max(1, value)), cap))


def _layout(kernel):
    return {2: LAYOUT_SHARED, 3: LAYOUT_IMAGE, 4: LAYOUT_PIXEL}[kernel.dim()]


def _accumulator_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


# The forward's (BLOCK_T, BLOCK_P) by output pixels per image: (up to that many pixels, tiles). Small
# pixel blocks keep >= 256 programs at 16 images of 32 x 32 outputs; larger images take wider blocks.
FORWARD_TILES = ((1024, 16, 64), (16384, 16, 128), (None, 8, 256))
FORWARD_STAGES = 2  # tap tiles in flight in the forward's pipelined loop
FORWARD_CHANNELS = 4  # at most this many channels per program (the kernel tile is loaded once for them)


def _forward_blocks(pixels, channels):
    """(BLOCK_C, BLOCK_T, BLOCK_P) of the forward for `pixels` output pixels per image."""
    block_t, block_p = next((t, p) for limit, t, p in FORWARD_TILES if limit is None or pixels <= limit)
    return _pow2(channels, FORWARD_CHANNELS), block_t, _pow2(pixels, block_p)


def forward(x, kernel, stride=1, padding="reflect", flip=False):
    """torch.ops.bsrops.blur_downsample on the Triton kernels (inputs validated by the op's check_inputs)."""
    x, kernel = x.contiguous(), kernel.contiguous()
    n, channels, height, width = x.shape
    stride = effective_stride(height, width, stride)
    k = kernel_size(kernel)
    out_h, out_w = geometry(height, width, k, stride, flip)[:2]
    out = x.new_empty(n, channels, out_h, out_w)
    if out.numel() == 0:
        return out
    block_c, block_t, block_p = _forward_blocks(out_h * out_w, channels)
    grid = (triton.cdiv(out_h * out_w, block_p), triton.cdiv(channels, block_c), n)
    _forward_kernel[grid](
        x, kernel, out, channels, height, width, out_h, out_w, k, stride,
        FLIP=bool(flip), PADDING=PADDING_CODES[padding], LAYOUT=_layout(kernel), F64=x.dtype == torch.float64,
        BLOCK_C=block_c, BLOCK_T=block_t, BLOCK_P=block_p, STAGES=FORWARD_STAGES)
    return out


def _candidates(padding, before, after):
    """Padded coordinates that may read one pixel along an axis: itself, then the border ones."""
    if padding == "zeros":
        return 1
    if padding == "replicate":
        return 1 + before + after
    return 3


def _grad_input(grad_out, x, kernel, stride, padding, flip):
    n, channels, height, width = x.shape
    k = kernel_size(kernel)
    out_h, out_w, before, after_h, after_w = geometry(height, width, k, stride, flip)
    grad_x = torch.empty_like(x)
    block_y, block_x = _pow2(height, 16), _pow2(width, 32)
    block_c = _pow2(channels, max(1, 1024 // (block_y * block_x)))
    grid = (n * triton.cdiv(channels, block_c), triton.cdiv(height, block_y), triton.cdiv(width, block_x))
    _grad_input_kernel[grid](
        grad_out, kernel, grad_x, channels, height, width, out_h, out_w, k, stride,
        -before, k - 1 - before, triton.cdiv(k, stride), after_h, after_w,
        _candidates(padding, before, after_h), _candidates(padding, before, after_w),
        FLIP=bool(flip), PADDING=PADDING_CODES[padding], LAYOUT=_layout(kernel), F64=x.dtype == torch.float64,
        BLOCK_C=block_c, BLOCK_Y=block_y, BLOCK_X=block_x)
    return grad_x


def _grad_kernel(grad_out, x, kernel, stride, padding, flip):
    n, channels, height, width = x.shape
    k = kernel_size(kernel)
    out_h, out_w = geometry(height, width, k, stride, flip)[:2]
    pixels = out_h * out_w
    block_t = _pow2(k * k, 32)
    block_p = _pow2(pixels, max(16, 2048 // block_t))
    blocks = triton.cdiv(pixels, block_p)
    options = dict(FLIP=bool(flip), PADDING=PADDING_CODES[padding], F64=x.dtype == torch.float64,
                   BLOCK_T=block_t, BLOCK_P=block_p)
    grid = (blocks, triton.cdiv(k * k, block_t), n)
    if kernel.dim() == 4:
        grad_kernel = torch.empty_like(kernel)
        _grad_kernel_kernel[grid](grad_out, x, grad_kernel, channels, height, width, out_h, out_w, k, stride,
                                  blocks, REDUCE=False, **options)
        return grad_kernel
    partials = torch.empty(n, k * k, blocks, dtype=_accumulator_dtype(x.dtype), device=x.device)
    _grad_kernel_kernel[grid](grad_out, x, partials, channels, height, width, out_h, out_w, k, stride,
                              blocks, REDUCE=True, **options)
    grad_kernel = torch.empty_like(kernel)
    outputs, images = (n, 1) if kernel.dim() == 3 else (1, n)
    block_r = _pow2(blocks, max(1, 1024 // block_t))
    _sum_partials_kernel[(triton.cdiv(k * k, block_t), outputs)](
        partials, grad_kernel, images, k * k, blocks, F64=x.dtype == torch.float64, BLOCK_T=block_t,
        BLOCK_R=block_r)
    return grad_kernel


def backward(grad_out, x, kernel, stride, padding, flip, output_mask):
    """torch.ops.bsrops._blur_downsample_backward on the Triton kernels -> (grad_x, grad_kernel); x, kernel, stride
    and padding validated by the op's check_inputs, grad_out checked here."""
    n, channels, height, width = x.shape
    stride = effective_stride(height, width, stride)
    out_h, out_w = geometry(height, width, kernel_size(kernel), stride, flip)[:2]
    if tuple(grad_out.shape) != (n, channels, out_h, out_w) or grad_out.dtype != x.dtype:
        raise ValueError(f"blur_downsample backward: grad_out must be {x.dtype} of shape "
                         f"{(n, channels, out_h, out_w)}, got {grad_out.dtype} {tuple(grad_out.shape)}")
    grad_out, x, kernel = grad_out.contiguous(), x.contiguous(), kernel.contiguous()
    empty = n * channels == 0
    grad_x = x.new_empty(0)
    grad_kernel = kernel.new_empty(0)
    if output_mask[0]:
        grad_x = torch.zeros_like(x) if empty else _grad_input(grad_out, x, kernel, stride, padding, flip)
    if output_mask[1]:
        grad_kernel = torch.zeros_like(kernel) if empty else _grad_kernel(grad_out, x, kernel, stride, padding, flip)
    return grad_x, grad_kernel
