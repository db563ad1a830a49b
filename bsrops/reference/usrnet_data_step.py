"""References for bsrops.usrnet_data_step (semantics: docs/ops.md).

x = argmin ||y - (k * x)|s||^2 + alpha ||x - z||^2, circular true convolution, upper-left decimation.

- The official formulation (USRNet `network_usrnet_v1.py`): `p2o`, `upsample`, `splits`,
  `official_precompute` (FB, FBC, F2B, FBFy, once per forward as USRNet.forward) and
  `data_net` (one DataNet call, which recomputes the block mean of F2B every iteration);
  `usrnet_data_step_official` chains them. This is the benchmark baseline.
- The hoisted formulation: `hoisted_precompute` also computes the s^2-block mean of |FB|^2
  once, `hoisted_solve` is one iteration with plain complex PyTorch ops (block means by a
  reshape). The `reference` backend of the ops runs it, on the real views the op schemas use
  (`precompute_reference`, `solve_reference`, `data_step_reference`), and their backward ops by
  autograd (`autograd_backward`).
"""
import torch


# ---- the official formulation ----

def p2o(psf, shape):
    """Optical transfer function of `psf` (..., kh, kw): zero-padded to `shape`, centre rolled to (0, 0), FFT."""
    otf = psf.new_zeros(psf.shape[:-2] + tuple(shape))
    otf[..., :psf.shape[-2], :psf.shape[-1]] = psf
    for axis, size in enumerate(psf.shape[-2:]):
        otf = torch.roll(otf, -(size // 2), dims=axis - 2)
    return torch.fft.fftn(otf, dim=(-2, -1))


def upsample(x, sf):
    """Zero insertion: the pixel of each sf x sf block is its upper-left one."""
    out = x.new_zeros(x.shape[0], x.shape[1], x.shape[2] * sf, x.shape[3] * sf)
    out[..., 0::sf, 0::sf] = x
    return out


def splits(a, sf):
    """The sf x sf frequency blocks of `a` (N, C, H, W) stacked on a last dim -> (N, C, H/sf, W/sf, sf^2)."""
    b = torch.stack(torch.chunk(a, sf, dim=2), dim=4)
    return torch.cat(torch.chunk(b, sf, dim=3), dim=4)


def _official_kernel(kernel, n):
    """(kh, kw) or (N, kh, kw) -> (N, 1, kh, kw), USRNet's layout."""
    return (kernel.expand(n, *kernel.shape) if kernel.dim() == 2 else kernel).unsqueeze(1)


def _alpha_column(alpha, n, like):
    if not isinstance(alpha, torch.Tensor):
        alpha = torch.full((n,), float(alpha), dtype=like.dtype, device=like.device)
    return alpha.reshape(n, 1, 1, 1)


def official_precompute(y, kernel, sf):
    """USRNet.forward's invariants: FB, FBC, F2B and FBFy, complex (N, 1 or C, H, W)."""
    n, _, h, w = y.shape
    fb = p2o(_official_kernel(kernel, n), (h * sf, w * sf))
    fbc = torch.conj(fb)
    f2b = torch.pow(torch.abs(fb), 2)
    fbfy = fbc * torch.fft.fftn(upsample(y, sf), dim=(-2, -1))
    return fb, fbc, f2b, fbfy


def data_net(x, fb, fbc, f2b, fbfy, alpha, sf):
    """One DataNet call (alpha: (N, 1, 1, 1))."""
    fr = fbfy + torch.fft.fftn(alpha * x, dim=(-2, -1))
    x1 = fb.mul(fr)
    fbr = torch.mean(splits(x1, sf), dim=-1, keepdim=False)
    inv_w = torch.mean(splits(f2b, sf), dim=-1, keepdim=False)
    inv_wbr = fbr.div(inv_w + alpha)
    fcb_inv_wbr = fbc * inv_wbr.repeat(1, 1, sf, sf)
    fx = (fr - fcb_inv_wbr) / alpha
    return torch.real(torch.fft.ifftn(fx, dim=(-2, -1)))


def usrnet_data_step_official(z, y, kernel, alpha, scale):
    """The op's semantics the official way; alpha: float, (N,) or (N, 1, 1, 1)."""
    fb, fbc, f2b, fbfy = official_precompute(y, kernel, scale)
    return data_net(z, fb, fbc, f2b, fbfy, _alpha_column(alpha, z.shape[0], z), scale)


# ---- the hoisted formulation ----

def block_mean(a, sf):
    """Mean over the sf^2 aliases of each LR frequency: (..., H, W) -> (..., H/sf, W/sf)."""
    *lead, height, width = a.shape
    return a.reshape(*lead, sf, height // sf, sf, width // sf).mean(dim=(-4, -2))


def hoisted_precompute(y, kernel, sf):
    """FB (N, 1, H, W), FBC, FBFy (N, C, H, W) complex and F2B_mean (N, 1, h, w), once."""
    fb, fbc, f2b, fbfy = official_precompute(y, kernel, sf)
    return fb, fbc, fbfy, block_mean(f2b, sf)


def hoisted_solve(z, fb, fbc, fbfy, f2b_mean, alpha, sf):
    """One iteration over the hoisted invariants (alpha: (N, 1, 1, 1))."""
    fr = fbfy + torch.fft.fftn(alpha * z, dim=(-2, -1))
    inv_wbr = block_mean(fb * fr, sf) / (f2b_mean + alpha)
    fx = (fr - fbc * inv_wbr.repeat(1, 1, sf, sf)) / alpha
    return torch.real(torch.fft.ifftn(fx, dim=(-2, -1)))


# ---- the reference backend: the op schemas' real views ----

def precompute_reference(y, kernel, scale):
    """_usrnet_precompute: FB (N, H, W, 2), FBFy (N, C, H, W, 2), F2B_mean (N, h, w)."""
    fb, _, fbfy, f2b_mean = hoisted_precompute(y, kernel, scale)
    return torch.view_as_real(fb[:, 0]).clone(), torch.view_as_real(fbfy).clone(), f2b_mean[:, 0].contiguous()


def as_complex(t):
    """A (..., 2) real view as complex; view_as_complex needs it contiguous with an even storage offset (a view of
    odd offset is copied)."""
    return torch.view_as_complex(t if t.is_contiguous() and t.storage_offset() % 2 == 0
                                 else t.clone(memory_format=torch.contiguous_format))


def solve_reference(z, fb, fbfy, f2b_mean, alpha, scale):
    """usrnet_solve on the real views."""
    fb = as_complex(fb).unsqueeze(1)
    return hoisted_solve(z, fb, fb.conj(), as_complex(fbfy), f2b_mean.unsqueeze(1),
                         _alpha_column(alpha, z.shape[0], z), scale)


def data_step_reference(z, y, kernel, alpha, scale):
    """usrnet_data_step the official way."""
    return usrnet_data_step_official(z, y, kernel, alpha, scale)


# ---- the reference backend's backward ops ----


def autograd_backward(fn, outputs=1):
    """The backward op of `fn`'s op via autograd of `fn`, re-entered below the op's autograd kernel.

    Its arguments: the gradients of fn's `outputs` outputs, fn's tensor inputs, scale, output_mask; it returns
    one gradient per tensor input (zeros where fn does not depend on it, empty where the mask is False)."""

    def backward(*args):
        grads, (*tensors, scale, mask) = args[:outputs], args[outputs:]
        # autograd of view_as_real hands the gradient to view_as_complex, which needs an even storage offset
        grads = tuple(g if g.is_contiguous() and g.storage_offset() % 2 == 0 else g.clone(
            memory_format=torch.contiguous_format) for g in grads)
        inputs = [t.detach().requires_grad_(want) for t, want in zip(tensors, mask)]
        with torch.enable_grad():
            out = fn(*inputs, scale)
            wanted = [t for t in inputs if t.requires_grad]
            found = iter(torch.autograd.grad(out, wanted, grads, allow_unused=True) if wanted else ())
        result = []
        for t, want in zip(inputs, mask):
            grad = next(found) if want else t.new_empty(0)
            result.append(torch.zeros_like(t) if grad is None else grad)
        return tuple(result)

    return backward


data_step_backward_reference = autograd_backward(data_step_reference)
solve_backward_reference = autograd_backward(solve_reference)
precompute_backward_reference = autograd_backward(precompute_reference, 3)
