"""Image and kernel metrics, per image, in float64.

Images are (N, C, H, W) RGB in [0, 1]. PSNR and SSIM follow BasicSR `basicsr/metrics/psnr_ssim.py`
(the convention DANv2, PDM-SR and RealSR report): PSNR with peak 1 (255 on 8-bit), SSIM with the
11x11 Gaussian window, sigma 1.5, K1 = 0.01, K2 = 0.03, averaged over the "valid" positions (no
padding) and then over channels; Y is BasicSR's `bgr2ycbcr(y_only=True)` (ITU-R BT.601, studio range).
The official evaluations quantise SR outputs to 8 bits first: pass `quantize_8bit(sr)` to match them.
"""
import torch
import torch.nn.functional as F

from .kernels import centre_pad

Y_WEIGHTS = (65.481, 128.553, 24.966)  # R, G, B on [0, 1] inputs; Y = (16 + w . rgb) / 255
SSIM_WINDOW, SSIM_SIGMA, SSIM_K1, SSIM_K2 = 11, 1.5, 0.01, 0.03


def _check_pair(sr, hr, name):
    if not (isinstance(sr, torch.Tensor) and isinstance(hr, torch.Tensor)):
        raise TypeError(f"{name}: sr and hr must be tensors")
    if sr.dim() != 4 or sr.shape != hr.shape:
        raise ValueError(f"{name}: sr and hr must be (N, C, H, W) of the same shape, got {tuple(sr.shape)} and {tuple(hr.shape)}")


def quantize_8bit(x):
    """Clamp to [0, 1] and round to multiples of 1/255 (BasicSR `tensor2img`, KAIR `tensor2uint`)."""
    return (x.clamp(0, 1) * 255).round() / 255


def rgb_to_y(x):
    """BasicSR Y channel of RGB in [0, 1] -> (N, 1, H, W) float64 in [16/255, 235/255].

    Y = (16 + 65.481 R + 128.553 G + 24.966 B) / 255, computed in float64 (no uint8 overflow).
    """
    if x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"rgb_to_y: x must be RGB (N, 3, H, W), got {tuple(x.shape)}")
    weights = torch.tensor(Y_WEIGHTS, dtype=torch.float64, device=x.device).view(1, 3, 1, 1)
    return (16 + (x.double() * weights).sum(1, keepdim=True)) / 255


def crop_border(x, border):
    """Drop `border` pixels on each side of the last two dimensions (BasicSR `crop_border`)."""
    if border < 0:
        raise ValueError(f"crop_border: border must be >= 0, got {border}")
    if border == 0:
        return x
    if min(x.shape[-2:]) <= 2 * border:
        raise ValueError(f"crop_border: border {border} leaves nothing of a {tuple(x.shape[-2:])} image")
    return x[..., border:-border, border:-border]


def _prepare(sr, hr, border, y_channel, name):
    _check_pair(sr, hr, name)
    if y_channel:
        sr, hr = rgb_to_y(sr), rgb_to_y(hr)
    return crop_border(sr.double(), border), crop_border(hr.double(), border)


def psnr(sr, hr, border=0, y_channel=False):
    """PSNR in dB per image -> (N,) float64; peak 1, MSE over C, H, W after cropping `border` (inf if equal)."""
    sr, hr = _prepare(sr, hr, border, y_channel, "psnr")
    mse = (sr - hr).pow(2).mean((1, 2, 3))
    return 10 * torch.log10(1 / mse)


def best_psnr(sr, hr, border=0, shift=40, window=60):
    """NTIRE 2018's PSNR of misaligned pairs per image -> (N,) float64 (RGB, peak 1).

    After cropping `border` pixels, the centre `window` x `window` square of sr is compared with
    every square of hr displaced by (dy, dx), |dy|, |dx| <= shift; the best PSNR is returned. The
    images must be at least window + 2 * shift pixels on each side after the crop.
    """
    sr, hr = _prepare(sr, hr, border, False, "best_psnr")
    h, w = sr.shape[-2:]
    if min(h, w) < window + 2 * shift:
        raise ValueError(f"best_psnr: images must be at least {window + 2 * shift} pixels on each side after "
                         f"cropping the border, got {(h, w)}")
    top, left = h // 2 - window // 2, w // 2 - window // 2
    centre = sr[..., top:top + window, left:left + window]
    region = hr[..., top - shift:top + window + shift, left - shift:left + window + shift]
    n, c = sr.shape[:2]
    size, count = window + 2 * shift, 2 * shift + 1
    # per displacement: sum (centre - moved)^2 = sum centre^2 + sum moved^2 - 2 sum centre * moved;
    # the last is a correlation (by FFT: no wrap-around, since displacement + window <= size)
    spectrum = torch.fft.rfft2(region, s=(size, size)) * torch.fft.rfft2(centre, s=(size, size)).conj()
    cross = torch.fft.irfft2(spectrum, s=(size, size))[..., :count, :count].sum(1)
    table = F.pad(region.pow(2).sum(1).cumsum(-2).cumsum(-1), (1, 0, 1, 0))  # summed-area table
    moved = (table[:, window:, window:] - table[:, :count, window:] - table[:, window:, :count]
             + table[:, :count, :count])
    squared = (centre.pow(2).sum((1, 2, 3)).view(n, 1, 1) + moved - 2 * cross).clamp_min(0)
    mse = squared.flatten(1).amin(1) / (c * window * window)
    return 10 * torch.log10(1 / mse)


def _gaussian_window(device):
    """cv2.getGaussianKernel(11, 1.5) (normalised), the 1-D factor of the separable 11x11 window
    (its outer product); skimage's truncate=3.5 window is the same."""
    grid = torch.arange(SSIM_WINDOW, dtype=torch.float64, device=device) - SSIM_WINDOW // 2
    line = torch.exp(-grid**2 / (2 * SSIM_SIGMA**2))
    return line / line.sum()


def _band_matrix(line, size):
    """(size - w + 1, size) matrix whose row i holds `line` at columns i .. i + w - 1 ('valid' filtering)."""
    out = size - line.numel() + 1
    matrix = torch.zeros(out, size, dtype=line.dtype, device=line.device)
    for tap, weight in enumerate(line):
        matrix.diagonal(tap).fill_(weight)
    return matrix


def ssim(sr, hr, border=0, y_channel=False):
    """SSIM per image -> (N,) float64 (BasicSR `_ssim` on each channel, 'valid' filtering, mean over channels)."""
    sr, hr = _prepare(sr, hr, border, y_channel, "ssim")
    if min(sr.shape[-2:]) < SSIM_WINDOW:
        raise ValueError(f"ssim: images must be at least {SSIM_WINDOW}x{SSIM_WINDOW} after cropping, got {tuple(sr.shape[-2:])}")
    n, c = sr.shape[:2]
    rows, columns = (_band_matrix(_gaussian_window(sr.device), size) for size in sr.shape[-2:])

    def local_mean(t):  # the separable window as two banded matmuls (float64 BLAS; conv2d is slow in float64)
        return rows @ t @ columns.T

    mu_x, mu_y = local_mean(sr), local_mean(hr)
    var_x = local_mean(sr * sr) - mu_x**2
    var_y = local_mean(hr * hr) - mu_y**2
    cov = local_mean(sr * hr) - mu_x * mu_y
    c1, c2 = SSIM_K1**2, SSIM_K2**2
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return ssim_map.mean((1, 2, 3))


def image_metrics(sr, hr, border=0):
    """{'psnr_rgb', 'ssim_rgb', 'psnr_y', 'ssim_y'} -> (N,) float64 each, for RGB (N, 3, H, W) in [0, 1]."""
    return {f"{metric.__name__}_{space}": metric(sr, hr, border, y_channel=space == "y")
            for space in ("rgb", "y") for metric in (psnr, ssim)}


def kernel_error(estimate, target, max_shift=0):
    """Sum of absolute differences between kernels after normalising and aligning -> (N,) float64.

    estimate, target: (k1, k1) / (k2, k2) or (N, k1, k1) / (N, k2, k2). Each kernel is divided by its
    sum; the smaller is zero-padded (centred) to the larger size; with max_shift > 0 the error is the
    minimum over integer shifts of the estimate by up to max_shift pixels per axis (zero fill), so a
    kernel that is right up to a translation (which the SR net can absorb) scores by its shape.
    0 = identical, 2 = disjoint supports.
    """
    estimate, target = (k.double().reshape(-1, *k.shape[-2:]) for k in (estimate, target))
    if estimate.shape[0] != target.shape[0] or estimate.shape[-1] != estimate.shape[-2] or target.shape[-1] != target.shape[-2]:
        raise ValueError(f"kernel_error: kernels must be square, (k, k) or (N, k, k) with the same N, "
                         f"got {tuple(estimate.shape)} and {tuple(target.shape)}")
    size = max(estimate.shape[-1], target.shape[-1]) + 2 * max_shift
    estimate = centre_pad(estimate / estimate.sum((1, 2), keepdim=True), size)
    target = centre_pad(target / target.sum((1, 2), keepdim=True), size)
    shifts = range(-max_shift, max_shift + 1)
    errors = [(torch.roll(estimate, (dy, dx), (1, 2)) - target).abs().sum((1, 2)) for dy in shifts for dx in shifts]
    return torch.stack(errors).amin(0)
