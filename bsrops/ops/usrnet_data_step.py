"""torch.ops.bsrops.usrnet_data_step / usrnet_solve: USRNet's closed-form FFT data step.

x = argmin ||y - (k * x)|s||^2 + alpha ||x - z||^2 (circular true convolution, upper-left
decimation), pinned in docs/ops.md; `bsrops.reference.usrnet_data_step` holds the
official and hoisted PyTorch formulations. Ops:

- `usrnet_data_step(z, y, kernel, alpha, scale)`: the whole step;
- `_usrnet_precompute(y, kernel, scale) -> (FB, FBFy, F2B_mean)`: the loop invariants, FB and
  FBFy as real views (N, H, W, 2) and (N, C, H, W, 2) of complex spectra;
- `usrnet_solve(z, FB, FBFy, F2B_mean, alpha, scale)`: one iteration over them (the fused
  kernel between rfft2(z) and irfft2), what `USRNetDataTerm.solve` runs K times;
- and an explicit backward op for each.

Gradients of usrnet_solve. Per LR frequency w with aliases j (the s^2 HR frequencies that
fold onto w), a = alpha, R_j = FBFy_j + a F(z)_j, D = F2B_mean(w) + a:
    Q = mean_j(FB_j R_j) / D,   FX_j = (R_j - conj(FB_j) Q) / a,   x = real(ifft2(FX)).
With G = F(grad_x) and g^u = dL/dRe(u) + i dL/dIm(u) (so g^FX = G / HW):
    T = mean_j(FB_j G_j) / D,   B_j = G_j - conj(FB_j) T  (= a HW g^R_j)
    g^z = real(ifft2(B)),   g^FBFy_j = B_j / (a HW)
    g^FB_j = -sum_c (Q conj(G_j) + T conj(R_j)) / (a HW)
    dL/dF2B_mean(w) = sum_c s^2 Re(conj(Q) T) / (a HW)
    dL/da = sum_{c,j} [Re(conj(F(z)_j) B_j) - Re(conj(FX_j) G_j)] / (a HW) + sum_w dL/dF2B_mean(w)
(the three ways a enters: through R, through D, and the division). The precompute's
adjoint (p2o, conj(FB) F(y upsampled), mean |FB|^2) is in the composite backward op.
"""
import math

import torch

from .. import _backend
from ..reference import usrnet_data_step as ref
from ._common import check_alpha_values, register_autograd
from ._precision import FLOAT_DTYPES, compute_dtype, promote_dtypes, register_autocast, result_dtype

SCHEMAS = (
    "usrnet_data_step(Tensor z, Tensor y, Tensor kernel, Tensor alpha, int scale) -> Tensor",
    "_usrnet_data_step_backward(Tensor grad_x, Tensor z, Tensor y, Tensor kernel, Tensor alpha, int scale, "
    "bool[4] output_mask) -> (Tensor, Tensor, Tensor, Tensor)",
    # the per-iteration part over the loop invariants of _usrnet_precompute: FB (N, H, W, 2) and
    # FBFy (N, C, H, W, 2), complex spectra as real views, and F2B_mean (N, h, w)
    "usrnet_solve(Tensor z, Tensor FB, Tensor FBFy, Tensor F2B_mean, Tensor alpha, int scale) -> Tensor",
    "_usrnet_solve_backward(Tensor grad_x, Tensor z, Tensor FB, Tensor FBFy, Tensor F2B_mean, Tensor alpha, "
    "int scale, bool[5] output_mask) -> (Tensor, Tensor, Tensor, Tensor, Tensor)",
    "_usrnet_precompute(Tensor y, Tensor kernel, int scale) -> (Tensor, Tensor, Tensor)",
    "_usrnet_precompute_backward(Tensor grad_FB, Tensor grad_FBFy, Tensor grad_F2B_mean, Tensor y, Tensor kernel, "
    "int scale, bool[2] output_mask) -> (Tensor, Tensor)",
    # usrnet_solve through the per-element functions the CUDA kernels use (backend "cpu_shared")
    "_usrnet_solve_shared(Tensor z, Tensor FB, Tensor FBFy, Tensor F2B_mean, Tensor alpha, int scale) -> Tensor",
    "_usrnet_solve_shared_backward(Tensor grad_x, Tensor z, Tensor FB, Tensor FBFy, Tensor F2B_mean, Tensor alpha, "
    "int scale, bool[5] output_mask) -> (Tensor, Tensor, Tensor, Tensor, Tensor)",
)


def _check_tensor(name, value):
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"usrnet_data_step: {name} must be a torch.Tensor, got {type(value).__name__}")
    if value.dtype not in FLOAT_DTYPES:
        raise TypeError(f"usrnet_data_step: {name} must be float16/bfloat16/float32/float64, got {value.dtype}")


def _check_scale(scale):
    if isinstance(scale, bool) or not isinstance(scale, int):
        raise TypeError(f"usrnet_data_step: scale must be an int, got {type(scale).__name__}")
    if scale < 1:
        raise ValueError(f"usrnet_data_step: scale must be >= 1, got {scale}")


def check_lr_inputs(y, kernel, scale):
    """y (N, C, h, w) and kernel (kh, kw), (N, kh, kw), (N, 1, kh, kw) or (N, C, kh, kw); kh <= s*h, kw <= s*w."""
    _check_tensor("y", y)
    _check_tensor("kernel", kernel)
    _check_scale(scale)
    if kernel.device != y.device:
        raise ValueError(f"usrnet_data_step: kernel is on {kernel.device} but y is on {y.device}")
    if y.dim() != 4 or y.shape[2] < 1 or y.shape[3] < 1:
        raise ValueError(f"usrnet_data_step: y must be (N, C, h, w) with h, w >= 1, got shape {tuple(y.shape)}")
    n, c, h, w = y.shape
    if not (kernel.dim() == 2 or (kernel.dim() == 3 and kernel.shape[0] == n)
            or (kernel.dim() == 4 and kernel.shape[0] == n and kernel.shape[1] in (1, c))):
        raise ValueError(f"usrnet_data_step: kernel must be (kh, kw), (N, kh, kw), (N, 1, kh, kw) or per channel "
                         f"(N, C, kh, kw) with N = {n}, C = {c}, got shape {tuple(kernel.shape)}")
    kh, kw = kernel.shape[-2:]
    if not (1 <= kh <= scale * h and 1 <= kw <= scale * w):
        raise ValueError(f"usrnet_data_step: kernel ({kh}, {kw}) must not be larger than the HR image "
                         f"({scale * h}, {scale * w})")


def check_hr_inputs(z, y_shape, y_device, alpha, scale):
    """z (N, C, s*h, s*w) against y's shape; alpha a number, (N,) or (N, 1, 1, 1)."""
    _check_tensor("z", z)
    n, c, h, w = y_shape
    if z.device != y_device:
        raise ValueError(f"usrnet_data_step: z is on {z.device} but y is on {y_device}")
    if tuple(z.shape) != (n, c, scale * h, scale * w):
        raise ValueError(f"usrnet_data_step: z must be (N, C, s*h, s*w) = {(n, c, scale * h, scale * w)} for y of "
                         f"shape {tuple(y_shape)} and scale {scale}, got {tuple(z.shape)}")
    if isinstance(alpha, torch.Tensor):
        _check_tensor("alpha", alpha)
        if tuple(alpha.shape) not in ((n,), (n, 1, 1, 1)):
            raise ValueError(f"usrnet_data_step: alpha must be a float, (N,) or (N, 1, 1, 1) with N = {n}, "
                             f"got shape {tuple(alpha.shape)}")
        if alpha.device != z.device:
            raise ValueError(f"usrnet_data_step: alpha is on {alpha.device} but z is on {z.device}")
    elif isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
        raise TypeError(f"usrnet_data_step: alpha must be a float or a tensor, got {type(alpha).__name__}")


def _planes_per_image(kernel, channels):
    """How many planes of an image the op sees as separate images: C for a per-channel kernel (N, C, kh, kw),
    C > 1, else 1."""
    return channels if kernel.dim() == 4 and kernel.shape[1] == channels > 1 else 1


def _fold(t, planes):
    """(N, C, H, W) -> (N*C, 1, H, W) when each of the C planes is an image of its own (planes = C)."""
    return t if planes == 1 else t.reshape(t.shape[0] * planes, 1, *t.shape[2:])


def _op_kernel(kernel):
    """The kernel as the op takes it: (N, 1, kh, kw) -> (N, kh, kw), (N, C, kh, kw) -> (N*C, kh, kw)."""
    return kernel if kernel.dim() < 4 else kernel.reshape(kernel.shape[0] * kernel.shape[1], *kernel.shape[2:])


def _alpha_tensor(alpha, z, dtype, planes=1):
    """alpha as the op takes it: a tensor of `dtype`, one value per (folded) image. A number is checked here; a
    tensor's values inside the kernels (no host synchronisation, no Python branch on tensor values: torch.compile
    traces this function)."""
    n = z.shape[0]
    if isinstance(alpha, torch.Tensor):
        alpha = alpha.to(dtype)
        return alpha if planes == 1 else alpha.reshape(n, 1).expand(n, planes).reshape(n * planes)
    if not (math.isfinite(alpha) and alpha > 0):
        raise ValueError(f"usrnet_data_step: alpha must be finite and > 0, got {alpha!r}")
    return torch.full((n * planes,), float(alpha), dtype=dtype, device=z.device)


def _output_dtype(dtype, z):
    """The result's dtype: the inputs' promoted dtype; under torch.autocast the dtype computed in (float32, or
    float64 for float64 inputs)."""
    device_type = z.device.type
    autocast = torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type)
    return compute_dtype(dtype) if autocast else dtype


def usrnet_data_step(z, y, kernel, alpha, scale):
    """x = argmin ||y - (kernel * x)|s||^2 + alpha ||x - z||^2 -> (N, C, s*h, s*w).

    z: (N, C, s*h, s*w); y: (N, C, h, w); kernel: (kh, kw), (N, kh, kw) or (N, 1, kh, kw) one per image, or
    (N, C, kh, kw) one per channel, applied as a circular true convolution centred as USRNet's p2o; decimation
    keeps x[..., 0::s, 0::s]; alpha > 0: a float, (N,) or (N, 1, 1, 1). Mixed dtypes promote to one; float16 /
    bfloat16 are computed in float32 and returned in their dtype, under torch.autocast in float32.
    Differentiable w.r.t. z, y, kernel and alpha.
    """
    check_lr_inputs(y, kernel, scale)
    check_hr_inputs(z, y.shape, y.device, alpha, scale)
    dtype = result_dtype(z, y, kernel, alpha if isinstance(alpha, torch.Tensor) else None)
    compute = compute_dtype(dtype)
    planes = _planes_per_image(kernel, y.shape[1])
    out = torch.ops.bsrops.usrnet_data_step(_fold(z, planes).to(compute), _fold(y, planes).to(compute),
                                            _op_kernel(kernel).to(compute), _alpha_tensor(alpha, z, compute, planes),
                                            scale)
    return out.reshape(z.shape).to(_output_dtype(dtype, z))


class USRNetDataTerm:
    """USRNet's data term for one (y, kernel, scale): the loop invariants once, `.solve` per iteration.

        term = bsrops.USRNetDataTerm(y, kernel, scale)   # FB, FBFy, F2B_mean (the s^2-block mean of |FB|^2)
        for alpha_i in alphas:                           # USRNet: K = 8 iterations
            x = prior(term.solve(x, alpha_i), beta_i)

    kernel as in usrnet_data_step; with a per-channel kernel (N, C, kh, kw) the invariants are those of the N*C
    single-channel images. Gradients flow to y and kernel through the invariants, and to z and alpha through each
    solve.

    Built with grad mode on and y, kernel not requiring gradients, the term also holds the zero FBFy its solves'
    backward reads (_SolveForZAndAlpha), made here once (_zero_fbfy_like): a solve allocates nothing beyond its
    outputs and temporaries, and caches nothing, so a solve can be captured in a CUDA graph. A differentiated solve
    that has no such buffer (a term built under no_grad, or a solve promoted to float64) uses a temporary zero FBFy.
    """

    def __init__(self, y, kernel, scale):
        check_lr_inputs(y, kernel, scale)
        self.scale = scale
        self.lr_shape, self.dtype, self.device = tuple(y.shape), result_dtype(y, kernel), y.device
        self.planes = _planes_per_image(kernel, y.shape[1])
        compute = compute_dtype(self.dtype)
        self.FB, self.FBFy, self.F2B_mean = torch.ops.bsrops._usrnet_precompute(
            _fold(y, self.planes).to(compute), _op_kernel(kernel).to(compute), scale)
        self._zero_fbfy = _zero_fbfy_like(self.FBFy) if self._solves_for_z_and_alpha() else None

    def _solves_for_z_and_alpha(self):
        """Whether a solve now runs _SolveForZAndAlpha: grad mode on and the invariants constant."""
        return torch.is_grad_enabled() and not any(t.requires_grad for t in (self.FB, self.FBFy, self.F2B_mean))

    def solve(self, z, alpha):
        """argmin ||y - (k * x)|s||^2 + alpha ||x - z||^2 for z (N, C, s*h, s*w); alpha and the result's dtype
        as in usrnet_data_step."""
        check_hr_inputs(z, self.lr_shape, self.device, alpha, self.scale)
        dtype = promote_dtypes(self.dtype, z.dtype, *([alpha.dtype] if isinstance(alpha, torch.Tensor) else []))
        compute = compute_dtype(dtype)
        fb, fbfy, f2b_mean = (t.to(compute) for t in (self.FB, self.FBFy, self.F2B_mean))
        z_c, alpha_c = _fold(z, self.planes).to(compute), _alpha_tensor(alpha, z, compute, self.planes)
        if self._solves_for_z_and_alpha():
            zero = self._zero_fbfy
            if zero is None or zero.dtype != compute:
                zero = _zero_fbfy_like(fbfy)
            out = _SolveForZAndAlpha.apply(z_c, alpha_c, fb, fbfy, f2b_mean, zero, self.scale)
        else:
            out = torch.ops.bsrops.usrnet_solve(z_c, fb, fbfy, f2b_mean, alpha_c, self.scale)
        return out.reshape(z.shape).to(_output_dtype(dtype, z))


def _zero_fbfy_like(fbfy):
    """A zero FBFy of fbfy's shape for the backward solves. On a GPU one complex zero broadcast over every bin
    (strides (0, 0, 0, 0, 1)): the CUDA and Triton solves read that one value, not a spectrum-sized array of zeros.
    On the CPU a full one, which its solve reads as it is (it would copy a broadcast one on every call)."""
    if fbfy.is_cuda:
        return fbfy.new_zeros(2).expand(fbfy.shape)
    return torch.zeros_like(fbfy)


class _SolveForZAndAlpha(torch.autograd.Function):
    """usrnet_solve over constant invariants of one precompute (USRNet's loop with y and kernel fixed).

    From the normal equations (A^T A + a I) x = A^T y + a z, with A^T A symmetric (FB Hermitian,
    F2B_mean = mean |FB|^2, which only a precompute guarantees, not any op input):
        grad_z = a (A^T A + a I)^-1 grad_x = the solve of (y = 0, z = grad_x),
        dL/da = <z - x, (A^T A + a I)^-1 grad_x> = <z - x, grad_z> / a per image,
    so the backward is one more forward solve (FBFy = 0): no spectrum of z, and the forward's
    lighter fused pass instead of the backward op's.
    """

    @staticmethod
    def forward(ctx, z, alpha, fb, fbfy, f2b_mean, zero_fbfy, scale):
        x = torch.ops.bsrops.usrnet_solve(z, fb, fbfy, f2b_mean, alpha, scale)
        ctx.save_for_backward(z, alpha, fb, f2b_mean, zero_fbfy, x)
        ctx.scale = scale
        return x

    @staticmethod
    def backward(ctx, grad_x):
        z, alpha, fb, f2b_mean, zero_fbfy, x = ctx.saved_tensors
        grad_z = torch.ops.bsrops.usrnet_solve(grad_x, fb, zero_fbfy, f2b_mean, alpha, ctx.scale)
        grad_alpha = None
        if ctx.needs_input_grad[1]:
            grad_alpha = ((z - x) * grad_z).flatten(1).sum(1).view(alpha.shape) / alpha
        return grad_z if ctx.needs_input_grad[0] else None, grad_alpha, None, None, None, None, None


# ---- registration ----

_backend.define_schemas(SCHEMAS)


def _like(tensor, wanted):
    return tensor.new_empty(tensor.shape) if wanted else tensor.new_empty(0)


@torch.library.register_fake("bsrops::usrnet_data_step")
def _data_step_fake(z, y, kernel, alpha, scale):
    return z.new_empty(z.shape)


@torch.library.register_fake("bsrops::_usrnet_data_step_backward")
def _data_step_backward_fake(grad_x, z, y, kernel, alpha, scale, output_mask):
    return tuple(_like(t, want) for t, want in zip((z, y, kernel, alpha), output_mask))


@torch.library.register_fake("bsrops::usrnet_solve")
def _solve_fake(z, fb, fbfy, f2b_mean, alpha, scale):
    return z.new_empty(z.shape)


@torch.library.register_fake("bsrops::_usrnet_solve_backward")
def _solve_backward_fake(grad_x, z, fb, fbfy, f2b_mean, alpha, scale, output_mask):
    return tuple(_like(t, want) for t, want in zip((z, fb, fbfy, f2b_mean, alpha), output_mask))


@torch.library.register_fake("bsrops::_usrnet_precompute")
def _precompute_fake(y, kernel, scale):
    n, c, h, w = y.shape
    return (y.new_empty(n, scale * h, scale * w, 2), y.new_empty(n, c, scale * h, scale * w, 2),
            y.new_empty(n, h, w))


@torch.library.register_fake("bsrops::_usrnet_precompute_backward")
def _precompute_backward_fake(grad_fb, grad_fbfy, grad_f2b_mean, y, kernel, scale, output_mask):
    return _like(y, output_mask[0]), _like(kernel, output_mask[1])


def _save_inputs(ctx, inputs, output):
    *tensors, scale = inputs
    ctx.save_for_backward(*tensors)
    ctx.scale = scale


def _masked(grads, mask):
    return tuple(g if want else None for g, want in zip(grads, mask))


def _data_step_backward(ctx, grad_x):
    mask = list(ctx.needs_input_grad[:4])
    grads = torch.ops.bsrops._usrnet_data_step_backward(grad_x, *ctx.saved_tensors, ctx.scale, mask)
    return (*_masked(grads, mask), None)


def _solve_backward(ctx, grad_x):
    mask = list(ctx.needs_input_grad[:5])
    grads = torch.ops.bsrops._usrnet_solve_backward(grad_x, *ctx.saved_tensors, ctx.scale, mask)
    return (*_masked(grads, mask), None)


def _precompute_backward(ctx, grad_fb, grad_fbfy, grad_f2b_mean):
    y, kernel = ctx.saved_tensors
    mask = list(ctx.needs_input_grad[:2])
    grad_fb, grad_fbfy, grad_f2b_mean = (torch.zeros_like(like) if g is None else g for g, like in zip(
        (grad_fb, grad_fbfy, grad_f2b_mean), _precompute_fake(y, kernel, ctx.scale)))
    grads = torch.ops.bsrops._usrnet_precompute_backward(grad_fb, grad_fbfy, grad_f2b_mean, y, kernel, ctx.scale, mask)
    return (*_masked(grads, mask), None)


register_autograd("usrnet_data_step", _data_step_backward, _save_inputs)
register_autograd("usrnet_solve", _solve_backward, _save_inputs)
register_autograd("_usrnet_precompute", _precompute_backward, _save_inputs)


def _alpha_check(op, position):
    """A check of alpha, the kernel's argument `position`, for the reference kernels: their formulas divide by
    alpha and would return non-finite outputs for alpha = 0 without a word."""
    return lambda *args: check_alpha_values(op, args[position])


register_autocast("usrnet_data_step", "float32", (0, 1, 2, 3))
register_autocast("usrnet_solve", "float32", (0, 1, 2, 3, 4))
register_autocast("_usrnet_precompute", "float32", (0, 1))
_backend.register_kernel("reference", "usrnet_data_step", ref.data_step_reference,
                         check=_alpha_check("usrnet_data_step", 3))
_backend.register_kernel("reference", "_usrnet_data_step_backward", ref.data_step_backward_reference,
                         check=_alpha_check("usrnet_data_step backward", 4))
_backend.register_kernel("reference", "usrnet_solve", ref.solve_reference, check=_alpha_check("usrnet_solve", 4))
_backend.register_kernel("reference", "_usrnet_solve_backward", ref.solve_backward_reference,
                         check=_alpha_check("usrnet_solve backward", 5))
_backend.register_kernel("reference", "_usrnet_precompute", ref.precompute_reference)
_backend.register_kernel("reference", "_usrnet_precompute_backward", ref.precompute_backward_reference)
_backend.register_kernel("cpu_shared", "usrnet_solve", lambda *args: torch.ops.bsrops._usrnet_solve_shared(*args))
_backend.register_kernel("cpu_shared", "_usrnet_solve_backward",
                         lambda *args: torch.ops.bsrops._usrnet_solve_shared_backward(*args))
_backend.register_lazy_kernel("triton", "usrnet_solve", "triton.usrnet_data_step", "forward")
_backend.register_lazy_kernel("triton", "_usrnet_solve_backward", "triton.usrnet_data_step", "backward")
