"""Triton kernels for bsrops::usrnet_solve and its backward (semantics: docs/ops.md).

The maths and the work items are those of csrc/usrnet_data_step/usrnet_data_step.h: the FFTs
stay in torch.fft (rfft2 / irfft2: z, x and the gradients are real), and between them one
pass per pair {w, -w} of LR frequencies over their s^2 aliases each:

- `_solve_kernel`: one program = one (image, channel) plane and a block of LR frequencies;
  representatives of a pair compute Q = mean(FB R) / (F2B_mean + alpha) for both groups, then
  FX = (R - conj(FB) Q) / alpha and write the half spectrum of its Hermitian part in place of
  rfft2(z).
- `_solve_backward_kernel`: one program = one image and a block of LR frequencies, looping over
  the channels: B = G - conj(FB) T (in place of rfft2(grad_x), as the half spectrum of its
  Hermitian part), grad_FBFy, grad_FB and grad_F2B_mean (summed over channels) and grad_alpha's
  share per LR frequency (summed afterwards by torch, in a fixed order).

Complex numbers are interleaved (re, im) float32/float64, as the op's real views. No atomics.
The forward reads an FBFy of one complex value broadcast over every bin (strides (0, 0, 0, 0, 1):
USRNetDataTerm's zero FBFy on a GPU) from that value rather than copying it out.
alpha's value (finite, > 0) is checked inside both kernels with tl.device_assert, as torch's
inductor checks in its Triton kernels: launched with debug=True (which device_assert needs) and
sanitize_overflow=False (no overflow checks on the index maths), so no extra launch and no host
synchronisation; a failure is a device-side assertion, reported by the next synchronising call.
The interpreter never runs device_assert (its builder has debug=False whatever the launch asks),
so on CPU tensors the launcher checks alpha on the host instead, with the native CPU kernels'
ValueError. Interpreter-compatible (no libdevice, no inline asm, no autotuning).
"""
import torch
import triton
import triton.language as tl

from ..ops._common import check_alpha_values

# compile options of the kernels: device_assert enabled, without the integer-overflow assertions debug adds
DEVICE_CHECKS = {"debug": True, "sanitize_overflow": False}


@triton.jit
def _negate(r, size):
    return tl.where(r == 0, 0, size - r)


@triton.jit
def _load_cx(ptr, index, mask):
    return tl.load(ptr + 2 * index, mask=mask, other=0.0), tl.load(ptr + 2 * index + 1, mask=mask, other=0.0)


@triton.jit
def _half_at(half_ptr, r, q, H, W, Wh, mask):
    """Full-spectrum bin (r, q) of a real signal's half spectrum (H, Wh)."""
    direct = q < Wh
    index = tl.where(direct, r * Wh + q, _negate(r, H) * Wh + (W - q))
    re, im = _load_cx(half_ptr, index, mask)
    return re, tl.where(direct, im, -im)


@triton.jit
def _alias_mean(fb_ptr, p_ptr, p_step, x_ptr, alpha, w_mean, u, v, h, w, s, H, W, Wh, mask, RHS: tl.constexpr):
    """mean over the aliases (u + a h, v + b w) of FB * X / (F2B_mean + alpha); X = P + alpha Z (RHS) or Z.
    P's bin (r, q) is at (r W + q) p_step: p_step 0 reads a P broadcast over every bin."""
    sum_re = w_mean * 0.0
    sum_im = w_mean * 0.0
    for a in range(0, s):
        r = u + a * h
        for b in range(0, s):
            q = v + b * w
            x_re, x_im = _half_at(x_ptr, r, q, H, W, Wh, mask)
            if RHS:
                p_re, p_im = _load_cx(p_ptr, (r * W + q) * p_step, mask)
                x_re = p_re + alpha * x_re
                x_im = p_im + alpha * x_im
            f_re, f_im = _load_cx(fb_ptr, r * W + q, mask)
            sum_re += f_re * x_re - f_im * x_im
            sum_im += f_re * x_im + f_im * x_re
    scale = 1.0 / ((s * s) * (w_mean + alpha))
    return sum_re * scale, sum_im * scale


@triton.jit
def _fx(fb_ptr, p_ptr, p_step, z_ptr, alpha, q_re, q_im, r, q, H, W, Wh, mask):
    """FX = (P + alpha Z - conj(FB) Q) / alpha at bin (r, q); p_step as in _alias_mean."""
    z_re, z_im = _half_at(z_ptr, r, q, H, W, Wh, mask)
    p_re, p_im = _load_cx(p_ptr, (r * W + q) * p_step, mask)
    f_re, f_im = _load_cx(fb_ptr, r * W + q, mask)
    return ((p_re + alpha * z_re - (f_re * q_re + f_im * q_im)) / alpha,
            (p_im + alpha * z_im - (f_re * q_im - f_im * q_re)) / alpha)


@triton.jit
def _store_hermitian(half_ptr, r, q, rm, qm, x_re, x_im, xm_re, xm_im, Wh, mask):
    """Half-spectrum bins (r, q) and (rm, qm) = -(r, q) of the Hermitian part of X."""
    h_re = 0.5 * (x_re + xm_re)
    h_im = 0.5 * (x_im - xm_im)
    own = mask & (q < Wh)
    tl.store(half_ptr + 2 * (r * Wh + q), h_re, mask=own)
    tl.store(half_ptr + 2 * (r * Wh + q) + 1, h_im, mask=own)
    mirror = mask & (qm < Wh)
    tl.store(half_ptr + 2 * (rm * Wh + qm), h_re, mask=mirror)
    tl.store(half_ptr + 2 * (rm * Wh + qm) + 1, -h_im, mask=mirror)


@triton.jit
def _assert_alpha(alpha):
    """alpha finite and > 0 (NaN fails both tests, inf the second), on the device."""
    tl.device_assert((alpha > 0) & (alpha - alpha == 0), "usrnet_solve: alpha must be finite and > 0")


@triton.jit
def _pair_items(pid, h, w, BLOCK: tl.constexpr):
    """LR frequencies of a block: (u, v), their mirror (um, vm), whether a pair is its own mirror, active lanes."""
    lr = pid * BLOCK + tl.arange(0, BLOCK)
    inside = lr < h * w
    u = lr // w
    v = lr % w
    um = (h - u) % h
    vm = (w - v) % w
    lr_mirror = um * w + vm
    return lr, u, v, um, vm, lr_mirror, lr == lr_mirror, inside & (lr <= lr_mirror)


@triton.jit
def _solve_kernel(spec_ptr, fb_ptr, fbfy_ptr, fbfy_step, w_ptr, alpha_ptr, C, h, w, s, H, W, Wh,
                  BLOCK: tl.constexpr):
    nc = tl.program_id(1).to(tl.int64)
    n = nc // C
    lr, u, v, um, vm, lr_mirror, self_mirror, active = _pair_items(tl.program_id(0), h, w, BLOCK)
    half = spec_ptr + 2 * nc * H * Wh
    fb = fb_ptr + 2 * n * H * W
    p = fbfy_ptr + 2 * nc * H * W * fbfy_step
    alpha = tl.load(alpha_ptr + n)
    _assert_alpha(alpha)
    w_own = tl.load(w_ptr + n * h * w + lr, mask=active, other=1.0)
    w_mirror = tl.load(w_ptr + n * h * w + lr_mirror, mask=active, other=1.0)
    q_re, q_im = _alias_mean(fb, p, fbfy_step, half, alpha, w_own, u, v, h, w, s, H, W, Wh, active, True)
    qm_re, qm_im = _alias_mean(fb, p, fbfy_step, half, alpha, w_mirror, um, vm, h, w, s, H, W, Wh, active, True)
    for a in range(0, s):
        r = u + a * h
        rm = _negate(r, H)
        for b in range(0, s):
            q = v + b * w
            qm = _negate(q, W)
            ok = active & ~(self_mirror & (rm * W + qm < r * W + q))
            x_re, x_im = _fx(fb, p, fbfy_step, half, alpha, q_re, q_im, r, q, H, W, Wh, ok)
            xm_re, xm_im = _fx(fb, p, fbfy_step, half, alpha, qm_re, qm_im, rm, qm, H, W, Wh, ok)
            _store_hermitian(half, r, q, rm, qm, x_re, x_im, xm_re, xm_im, Wh, ok)


@triton.jit
def _bin_grads(grad_ptr, z_ptr, fb_ptr, p_ptr, gfb_ptr, gp_ptr, alpha, scale, q_re, q_im, t_re, t_im, r, q,
               H, W, Wh, mask, first, GRAD_FB: tl.constexpr, GRAD_FBFY: tl.constexpr):
    """B = G - conj(FB) T at bin (r, q), with its shares of grad_FB, grad_FBFy and of grad_alpha."""
    g_re, g_im = _half_at(grad_ptr, r, q, H, W, Wh, mask)
    z_re, z_im = _half_at(z_ptr, r, q, H, W, Wh, mask)
    f_re, f_im = _load_cx(fb_ptr, r * W + q, mask)
    p_re, p_im = _load_cx(p_ptr, r * W + q, mask)
    r_re = p_re + alpha * z_re
    r_im = p_im + alpha * z_im
    b_re = g_re - (f_re * t_re + f_im * t_im)
    b_im = g_im - (f_re * t_im - f_im * t_re)
    i = r * W + q
    if GRAD_FB:
        s_re = -(q_re * g_re + q_im * g_im + t_re * r_re + t_im * r_im) * scale
        s_im = -(q_im * g_re - q_re * g_im + t_im * r_re - t_re * r_im) * scale
        old_re, old_im = _load_cx(gfb_ptr, i, mask & (first != 0))  # the first channel starts the sum
        tl.store(gfb_ptr + 2 * i, old_re + s_re, mask=mask)
        tl.store(gfb_ptr + 2 * i + 1, old_im + s_im, mask=mask)
    if GRAD_FBFY:
        tl.store(gp_ptr + 2 * i, b_re * scale, mask=mask)
        tl.store(gp_ptr + 2 * i + 1, b_im * scale, mask=mask)
    x_re = (r_re - (f_re * q_re + f_im * q_im)) / alpha
    x_im = (r_im - (f_re * q_im - f_im * q_re)) / alpha
    share = tl.where(mask, z_re * b_re + z_im * b_im - (x_re * g_re + x_im * g_im), 0.0)
    return b_re, b_im, share


@triton.jit
def _solve_backward_kernel(grad_ptr, z_ptr, fb_ptr, fbfy_ptr, w_ptr, alpha_ptr, gz_ptr, gp_ptr, gfb_ptr, gw_ptr,
                           partial_ptr, C, h, w, s, H, W, Wh, GRAD_Z: tl.constexpr, GRAD_FB: tl.constexpr,
                           GRAD_FBFY: tl.constexpr, BLOCK: tl.constexpr):
    n = tl.program_id(1).to(tl.int64)
    lr, u, v, um, vm, lr_mirror, self_mirror, active = _pair_items(tl.program_id(0), h, w, BLOCK)
    fb = fb_ptr + 2 * n * H * W
    gfb = gfb_ptr + 2 * n * H * W
    alpha = tl.load(alpha_ptr + n)
    _assert_alpha(alpha)
    scale = 1.0 / (alpha * (H * W))
    w_own = tl.load(w_ptr + n * h * w + lr, mask=active, other=1.0)
    w_mirror = tl.load(w_ptr + n * h * w + lr_mirror, mask=active, other=1.0)
    grad_w_own = w_own * 0.0
    grad_w_mirror = w_own * 0.0
    grad_alpha = w_own * 0.0
    for c in range(0, C):
        nc = n * C + c
        g_half = grad_ptr + 2 * nc * H * Wh
        z_half = z_ptr + 2 * nc * H * Wh
        p = fbfy_ptr + 2 * nc * H * W
        gp = gp_ptr + 2 * nc * H * W
        q_re, q_im = _alias_mean(fb, p, 1, z_half, alpha, w_own, u, v, h, w, s, H, W, Wh, active, True)
        t_re, t_im = _alias_mean(fb, p, 1, g_half, alpha, w_own, u, v, h, w, s, H, W, Wh, active, False)
        qm_re, qm_im = _alias_mean(fb, p, 1, z_half, alpha, w_mirror, um, vm, h, w, s, H, W, Wh, active, True)
        tm_re, tm_im = _alias_mean(fb, p, 1, g_half, alpha, w_mirror, um, vm, h, w, s, H, W, Wh, active, False)
        grad_w_own += (s * s) * (q_re * t_re + q_im * t_im)
        grad_w_mirror += tl.where(self_mirror, 0.0, (s * s) * (qm_re * tm_re + qm_im * tm_im))
        for a in range(0, s):
            r = u + a * h
            rm = _negate(r, H)
            for b in range(0, s):
                q = v + b * w
                qm = _negate(q, W)
                ok = active & ~(self_mirror & (rm * W + qm < r * W + q))
                ok_mirror = ok & ((rm != r) | (qm != q))  # a bin that is its own mirror counts once
                b_re, b_im, share = _bin_grads(g_half, z_half, fb, p, gfb, gp, alpha, scale, q_re, q_im, t_re, t_im,
                                               r, q, H, W, Wh, ok, c, GRAD_FB, GRAD_FBFY)
                bm_re, bm_im, share_m = _bin_grads(g_half, z_half, fb, p, gfb, gp, alpha, scale, qm_re, qm_im,
                                                   tm_re, tm_im, rm, qm, H, W, Wh, ok_mirror, c, GRAD_FB, GRAD_FBFY)
                grad_alpha += share + share_m
                if GRAD_Z:
                    bm_re = tl.where(ok_mirror, bm_re, b_re)
                    bm_im = tl.where(ok_mirror, bm_im, b_im)
                    _store_hermitian(gz_ptr + 2 * nc * H * Wh, r, q, rm, qm, b_re, b_im, bm_re, bm_im, Wh, ok)
    tl.store(gw_ptr + n * h * w + lr, grad_w_own * scale, mask=active)
    tl.store(gw_ptr + n * h * w + lr_mirror, grad_w_mirror * scale, mask=active & ~self_mirror)
    tl.store(partial_ptr + n * h * w + lr, (grad_alpha + grad_w_own + grad_w_mirror) * scale, mask=active)


KERNELS = (_solve_kernel, _solve_backward_kernel)


# ---------------------------------------------------------------------------------------
# launchers
# ---------------------------------------------------------------------------------------

def _block(items):
    return max(16, min(triton.next_power_of_2(max(1, items)), 128))


def _check(z, fb, fbfy, f2b_mean, alpha, scale):
    n, c, height, width = z.shape
    h, w = f2b_mean.shape[-2:]
    expected = {"FB": (n, height, width, 2), "FBFy": (n, c, height, width, 2), "F2B_mean": (n, h, w)}
    for name, tensor in (("FB", fb), ("FBFy", fbfy), ("F2B_mean", f2b_mean)):
        if tuple(tensor.shape) != expected[name] or tensor.dtype != z.dtype or tensor.device != z.device:
            raise ValueError(f"usrnet_solve (triton): {name} must be {z.dtype} {expected[name]} on {z.device}, "
                             f"got {tensor.dtype} {tuple(tensor.shape)} on {tensor.device}")
    if (height, width) != (scale * h, scale * w) or z.dtype not in (torch.float32, torch.float64):
        raise ValueError(f"usrnet_solve (triton): z must be float32/float64 (N, C, s*h, s*w) = "
                         f"{(n, c, scale * h, scale * w)}, got {z.dtype} {tuple(z.shape)}")
    if alpha.numel() != n or alpha.dtype != z.dtype:
        raise ValueError(f"usrnet_solve (triton): alpha must be {z.dtype} (N,) or (N, 1, 1, 1), got {tuple(alpha.shape)}")
    if alpha.device.type != "cuda":  # the interpreter: device_assert does not run there (module docstring)
        check_alpha_values("usrnet_solve (triton)", alpha)
    return n, c, height, width, h, w


def forward(z, fb, fbfy, f2b_mean, alpha, scale):
    """torch.ops.bsrops.usrnet_solve on the Triton kernel."""
    n, c, height, width, h, w = _check(z, fb, fbfy, f2b_mean, alpha, scale)
    if z.numel() == 0:
        return torch.empty_like(z, memory_format=torch.contiguous_format)
    spectrum = torch.view_as_real(torch.fft.rfft2(z.contiguous()))
    block = _block(h * w)
    broadcast = fbfy.stride() == (0, 0, 0, 0, 1)  # one complex FBFy value over every bin, read as it is
    _solve_kernel[(triton.cdiv(h * w, block), n * c)](
        spectrum, fb.contiguous(), fbfy if broadcast else fbfy.contiguous(), 0 if broadcast else 1,
        f2b_mean.contiguous(), alpha.contiguous().view(n), c, h, w, scale, height, width, width // 2 + 1,
        BLOCK=block, **DEVICE_CHECKS)
    return torch.fft.irfft2(torch.view_as_complex(spectrum), s=(height, width))


def backward(grad_x, z, fb, fbfy, f2b_mean, alpha, scale, output_mask):
    """torch.ops.bsrops._usrnet_solve_backward on the Triton kernel -> grads of (z, FB, FBFy, F2B_mean, alpha)."""
    n, c, height, width, h, w = _check(z, fb, fbfy, f2b_mean, alpha, scale)
    want_z, want_fb, want_fbfy, want_w, want_alpha = output_mask
    inputs = (z, fb, fbfy, f2b_mean, alpha)
    if z.numel() == 0:
        return tuple(torch.zeros_like(t) if want else t.new_empty(0) for t, want in zip(inputs, output_mask))
    grad_spectrum = torch.view_as_real(torch.fft.rfft2(grad_x.contiguous()))
    z_spectrum = torch.view_as_real(torch.fft.rfft2(z.contiguous()))
    fb, fbfy, f2b_mean = fb.contiguous(), fbfy.contiguous(), f2b_mean.contiguous()
    grad_fb = torch.empty_like(fb) if want_fb else fb.new_empty(0)
    grad_fbfy = torch.empty_like(fbfy) if want_fbfy else fbfy.new_empty(0)
    grad_w = torch.empty_like(f2b_mean)
    partial = torch.zeros_like(f2b_mean)
    block = _block(h * w)
    _solve_backward_kernel[(triton.cdiv(h * w, block), n)](
        grad_spectrum, z_spectrum, fb, fbfy, f2b_mean, alpha.contiguous().view(n), grad_spectrum, grad_fbfy, grad_fb,
        grad_w, partial, c, h, w, scale, height, width, width // 2 + 1,
        GRAD_Z=bool(want_z), GRAD_FB=bool(want_fb), GRAD_FBFY=bool(want_fbfy), BLOCK=block, **DEVICE_CHECKS)
    grad_z = torch.fft.irfft2(torch.view_as_complex(grad_spectrum), s=(height, width)) if want_z else z.new_empty(0)
    grad_alpha = partial.flatten(1).sum(1).view(alpha.shape) if want_alpha else alpha.new_empty(0)
    return grad_z, grad_fb, grad_fbfy, grad_w if want_w else f2b_mean.new_empty(0), grad_alpha
