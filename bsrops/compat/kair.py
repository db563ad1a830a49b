"""The data module `DataNet` of KAIR's USRNet (cszn/KAIR models/network_usrnet_v1.py, network_usrnet.py), on
bsrops' fused solve.

    from bsrops.compat.kair import DataNet
    model.d = DataNet()    # in a KAIR USRNet
"""
import torch
from torch import nn

from ..ops._common import check_tensor
from ..ops._precision import compute_dtype, result_dtype


class DataNet(nn.Module):
    """KAIR's DataNet: forward(x, FB, FBC, F2B, FBFy, alpha, sf) -> X (N, C, H, W), the data step of USRNet.

    With the spectra USRNet.forward builds from the LR image y and the kernel k (FB = p2o(k), FBC = conj(FB),
    F2B = |FB|^2, FBFy = FBC * fft2(y upsampled by zero insertion)), X = argmin ||y - A X||^2 + alpha ||X - x||^2,
    A X = (k circularly convolved with X) keeping X[..., 0::sf, 0::sf]: DataNet's closed form, computed as one
    rfft2 of x, one fused pass over the sf x sf alias groups and one irfft2 (bsrops' usrnet_solve).

    x (N, C, H, W), H and W multiples of sf; FB, FBC, F2B (N or 1, 1, H, W), or (N or 1, C, H, W) for one kernel
    per channel; FBFy (N, C, H, W); spectra complex (network_usrnet_v1.py) or real views with a last dim of 2
    (network_usrnet.py, whose F2B has a zero imaginary part); alpha (N, 1, 1, 1) or (N,), > 0; sf an int.
    FBC is not read: it is conj(FB), as USRNet builds it. The result is float32 (float64 when an input is), under
    torch.autocast too, as DataNet's FFTs give. Differentiable w.r.t. x, alpha, FB, F2B and FBFy (FB's gradient
    also counts its use as FBC).

    The block mean of F2B is recomputed on every call, as in KAIR. The whole speed-up needs the invariants hoisted
    out of USRNet's loop: `term = bsrops.USRNetDataTerm(y, k, sf)` once per forward and `term.solve(x, alpha)` in
    place of `self.d(...)`, which also makes the backward one more solve. `bsr.archs.usrnet.USRNet` is USRNet
    written so, and loads KAIR's released weights.
    """

    def forward(self, x, FB, FBC, F2B, FBFy, alpha, sf):  # noqa: N803 (KAIR's names)
        check_tensor("DataNet", "x", x, dims=4)
        fb, fbfy, f2b = _real_view("FB", FB), _real_view("FBFy", FBFy), _magnitude(F2B)
        n, c, height, width = x.shape
        _check_shapes(x, fb, fbfy, f2b, alpha, sf)
        planes = fb.shape[1]  # 1, or C: then each channel is an image of its own
        images = n * planes
        dtype = compute_dtype(result_dtype(x, fb, fbfy, f2b, alpha))
        f2b_mean = f2b.expand(n, planes, height, width).reshape(images, sf, height // sf, sf, width // sf).mean((1, 3))
        alpha = alpha.reshape(n, 1).expand(n, planes).reshape(images)
        out = torch.ops.bsrops.usrnet_solve(
            x.reshape(images, c // planes, height, width).to(dtype),
            fb.expand(n, planes, height, width, 2).reshape(images, height, width, 2).to(dtype),
            fbfy.reshape(images, c // planes, height, width, 2).to(dtype),
            f2b_mean.to(dtype), alpha.to(dtype), sf)
        return out.view(n, c, height, width)


def _real_view(name, spectrum):
    """A spectrum (..., H, W) complex, or its real view (..., H, W, 2), as the real view."""
    if not isinstance(spectrum, torch.Tensor):
        raise TypeError(f"DataNet: {name} must be a torch.Tensor, got {type(spectrum).__name__}")
    if spectrum.is_complex():
        return torch.view_as_real(spectrum.resolve_conj())
    check_tensor("DataNet", name, spectrum, dims=5)
    if spectrum.shape[-1] != 2:
        raise ValueError(f"DataNet: a real {name} must be the (N, C, H, W, 2) real view of a complex spectrum, got "
                         f"shape {tuple(spectrum.shape)}")
    return spectrum


def _magnitude(f2b):
    """F2B = |FB|^2 (N, 1, H, W) real; network_usrnet.py's (N, 1, H, W, 2) has a zero imaginary part."""
    check_tensor("DataNet", "F2B", f2b)
    return f2b[..., 0] if f2b.dim() == 5 and f2b.shape[-1] == 2 else f2b


def _check_shapes(x, fb, fbfy, f2b, alpha, sf):
    n, c, height, width = x.shape
    if isinstance(sf, bool) or not isinstance(sf, int) or sf < 1 or height % sf or width % sf:
        raise ValueError(f"DataNet: sf must be an int >= 1 dividing x's H and W, got sf = {sf!r} for x of shape "
                         f"{tuple(x.shape)}")
    if fbfy.shape != (n, c, height, width, 2):
        raise ValueError(f"DataNet: FBFy must be (N, C, H, W) = {(n, c, height, width)} as x, got shape "
                         f"{tuple(fbfy.shape[:-1])}")
    if fb.dim() != 5 or fb.shape[0] not in (1, n) or fb.shape[1] not in (1, c) or fb.shape[2:4] != (height, width):
        raise ValueError(f"DataNet: FB must be (N or 1, 1 or C, H, W) with N, C, H, W = {n}, {c}, {height}, {width}, "
                         f"got shape {tuple(fb.shape[:-1])}")
    if f2b.shape != fb.shape[:-1]:
        raise ValueError(f"DataNet: F2B must have FB's shape {tuple(fb.shape[:-1])}, got {tuple(f2b.shape)}")
    if not isinstance(alpha, torch.Tensor) or alpha.numel() != n:
        raise ValueError(f"DataNet: alpha must be a tensor of N = {n} values, (N, 1, 1, 1) or (N,), got "
                         f"{tuple(alpha.shape) if isinstance(alpha, torch.Tensor) else type(alpha).__name__}")
