"""Degradations for training data synthesis: blur kernels, blur + decimation, MATLAB bicubic, noise, JPEG.

Everything is batched over the first dimension and seedable: random functions take an optional
`torch.Generator` (CPU) and draw only from it, so a fixed seed gives the same kernels on any device.
Each function names the official code whose convention it follows (docs/methods.md);
the random streams are torch's, so values match those generators in distribution, not bit for bit.

Kernels are (N, k, k) float64 on the CPU, normalised to sum 1; move them with `.to(x)`. Images are
(N, C, H, W) RGB in [0, 1].
"""
import math

import cv2
import numpy as np
import torch
import torch.nn.functional as F

import bsrops

# DANv2 setting 1 (isotropic) sigma range: the shipped ymls use [0.2, 4.0] at every scale; the paper
# (issue greatlog/DAN#32) uses an upper bound of 2.0 / 3.0 / 4.0 for x2 / x3 / x4.
DAN_SIGMA_RANGE_CODE = (0.2, 4.0)
DAN_SIGMA_MAX_PAPER = {2: 2.0, 3: 3.0, 4: 4.0}
DAN_SIGMA_RANGE_ANISO = (0.6, 5.0)  # setting 2, both scales
USRNET_VARIANCE_RANGE = (0.6, 12.0)  # KAIR utils_sisr.gen_kernel: eigenvalues of the covariance


# ----------------------------------------------------------------------------------------------
# Gaussian kernels
# ----------------------------------------------------------------------------------------------

def _uniform(n, low, high, generator):
    return low + (high - low) * torch.rand(n, generator=generator, dtype=torch.float64)


def covariance(sigma_x, sigma_y, theta):
    """Covariance R(theta) diag(sigma_x^2, sigma_y^2) R(theta)^T, R = [[cos, -sin], [sin, cos]] -> (N, 2, 2).

    The rotation of DAN's `random_batch_kernel` and KAIR's `gen_kernel` (x along columns, y along rows).
    """
    sigma_x, sigma_y, theta = (torch.as_tensor(v, dtype=torch.float64).reshape(-1) for v in (sigma_x, sigma_y, theta))
    cos, sin = torch.cos(theta), torch.sin(theta)
    rotation = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)
    variances = torch.diag_embed(torch.stack(torch.broadcast_tensors(sigma_x**2, sigma_y**2), -1))
    return rotation @ variances @ rotation.transpose(-1, -2)


def gaussian_kernels(cov, size, centre=None):
    """Normalised Gaussian kernels exp(-p^T cov^-1 p / 2) on a size x size grid -> (N, size, size) float64.

    cov: (N, 2, 2) (see `covariance`); p = (column - centre, row - centre). centre: scalar or (N,)
    grid position of the mean; default (size - 1) // 2, DAN's grid `arange(-l//2 + 1, l//2 + 1)`.
    """
    cov = torch.as_tensor(cov, dtype=torch.float64)
    if cov.dim() != 3 or cov.shape[1:] != (2, 2):
        raise ValueError(f"gaussian_kernels: cov must be (N, 2, 2), got {tuple(cov.shape)}")
    if size < 1:
        raise ValueError(f"gaussian_kernels: size must be >= 1, got {size}")
    centre = (size - 1) // 2 if centre is None else centre
    centre = torch.as_tensor(centre, dtype=torch.float64).reshape(-1, 1, 1)
    grid = torch.arange(size, dtype=torch.float64)
    x = grid.view(1, 1, size) - centre  # columns
    y = grid.view(1, size, 1) - centre  # rows
    inv = torch.linalg.inv(cov)
    quad = inv[:, 0, 0, None, None] * x * x + (inv[:, 0, 1] + inv[:, 1, 0])[:, None, None] * x * y \
        + inv[:, 1, 1, None, None] * y * y
    kernel = torch.exp(-0.5 * quad)
    return kernel / kernel.sum((1, 2), keepdim=True)


def isotropic_gaussian_kernels(sigma, size=21):
    """Isotropic kernels, one per entry of `sigma` (standard deviations) -> (N, size, size); DAN `stable_batch_kernel`."""
    sigma = torch.as_tensor(sigma, dtype=torch.float64).reshape(-1)
    return gaussian_kernels(covariance(sigma, sigma, torch.zeros_like(sigma)), size)


def dan_sigma_range(scale, setting=1, paper=False):
    """DANv2's sigma range: setting 1 [0.2, 4.0] (code; `paper=True`: upper 2/3/4 for x2/x3/x4), setting 2 [0.6, 5]."""
    if setting == 2:
        return DAN_SIGMA_RANGE_ANISO
    if setting != 1:
        raise ValueError(f"dan_sigma_range: setting must be 1 or 2, got {setting}")
    if not paper:
        return DAN_SIGMA_RANGE_CODE
    if scale not in DAN_SIGMA_MAX_PAPER:
        raise ValueError(f"dan_sigma_range: paper ranges exist for scale 2, 3, 4, got {scale}")
    return DAN_SIGMA_RANGE_CODE[0], DAN_SIGMA_MAX_PAPER[scale]


def dan_random_kernels(batch, size=21, sigma_range=DAN_SIGMA_RANGE_CODE, rate_iso=1.0, disturb=False, generator=None):
    """DAN `deg_utils.random_batch_kernel` -> (batch, size, size).

    With probability rate_iso the whole batch is isotropic, sigma ~ U(sigma_range) per kernel
    (setting 1); otherwise sigma_x, sigma_y ~ U(sigma_range), theta ~ U(-pi, pi) (setting 2) and, with
    `disturb`, every tap is multiplied by 1 + U(0, 0.25) before normalising.
    """
    low, high = sigma_range
    if torch.rand(1, generator=generator).item() < rate_iso:
        return isotropic_gaussian_kernels(_uniform(batch, low, high, generator), size)
    sigma_x, sigma_y = _uniform(batch, low, high, generator), _uniform(batch, low, high, generator)
    theta = _uniform(batch, -math.pi, math.pi, generator)
    kernel = gaussian_kernels(covariance(sigma_x, sigma_y, theta), size)
    if disturb:
        kernel = kernel * (1 + _uniform(kernel.shape, 0.0, 0.25, generator))
    return kernel / kernel.sum((1, 2), keepdim=True)


def usrnet_gaussian_kernels(batch, size=25, variance_range=USRNET_VARIANCE_RANGE, generator=None):
    """KAIR `utils_sisr.gen_kernel` (USRNet training) -> (batch, size, size).

    Covariance eigenvalues lambda_1, lambda_2 ~ U(variance_range), theta ~ U(0, pi); the mean sits at
    size // 2 - (sf - 1) / 2 in both axes with sf drawn from {1, 2, 3, 4} per kernel (KAIR redraws sf
    inside the function and ignores the caller's scale).
    """
    low, high = variance_range
    lambda_1, lambda_2 = _uniform(batch, low, high, generator), _uniform(batch, low, high, generator)
    theta = _uniform(batch, 0.0, math.pi, generator)
    sf = torch.randint(1, 5, (batch,), generator=generator).double()
    return gaussian_kernels(covariance(lambda_1.sqrt(), lambda_2.sqrt(), theta), size, centre=size // 2 - 0.5 * (sf - 1))


# ----------------------------------------------------------------------------------------------
# Motion kernels (KAIR utils_deblur.blurkernel_synthesis, after Boracchi and Foi's random trajectories)
# ----------------------------------------------------------------------------------------------

def _rotation_3d(r):
    """Rz @ Ry @ Rx for angles r (N, 3) -> (N, 3, 3)."""
    cos, sin = torch.cos(r), torch.sin(r)
    one, zero = torch.ones_like(r[:, 0]), torch.zeros_like(r[:, 0])

    def matrix(rows):
        return torch.stack([torch.stack(row, -1) for row in rows], -2)

    rx = matrix([[one, zero, zero], [zero, cos[:, 0], -sin[:, 0]], [zero, sin[:, 0], cos[:, 0]]])
    ry = matrix([[cos[:, 1], zero, sin[:, 1]], [zero, one, zero], [-sin[:, 1], zero, cos[:, 1]]])
    rz = matrix([[cos[:, 2], -sin[:, 2], zero], [sin[:, 2], cos[:, 2], zero], [zero, zero, one]])
    return rz @ ry @ rx


def random_trajectories(batch, steps=250, generator=None):
    """KAIR `randomTrajectory`: a 3-D random walk whose velocity is rotated by drifting angles -> (batch, 3, steps)."""
    position = torch.zeros(batch, 3, steps, dtype=torch.float64)
    velocity = torch.randn(batch, 3, generator=generator, dtype=torch.float64)
    angle = torch.zeros(batch, 3, dtype=torch.float64)
    for t in range(1, steps):
        angle = angle + 2 * math.pi / steps * (torch.randn(batch, 3, generator=generator, dtype=torch.float64) / (t + 1) + angle)
        velocity = velocity + torch.randn(batch, 3, generator=generator, dtype=torch.float64) / (t + 1)
        step = (_rotation_3d(angle) @ velocity.unsqueeze(-1)).squeeze(-1)
        position[:, :, t] = position[:, :, t - 1] + step
    return position


def _rasterise(trajectory, width):
    """KAIR `kernelFromTrajectory` histogram: bins [min + i*step, min + (i+1)*step), step = range / width.

    Only width - 1 bins per axis exist (the last row and column stay 0, and points at the maximum drop out).
    """
    kernel = torch.zeros(width, width, dtype=torch.float64)
    index = []
    for axis in (0, 1):
        values = trajectory[axis]
        low, high = values.min(), values.max()
        edges = low + (high - low) / width * torch.arange(width, dtype=torch.float64)
        index.append(torch.bucketize(values, edges, right=True) - 1)
    inside = (index[0] <= width - 2) & (index[1] <= width - 2)
    kernel.index_put_((index[0][inside], index[1][inside]), torch.ones(int(inside.sum()), dtype=torch.float64), accumulate=True)
    return kernel


def _smooth_3x3(kernel):
    """convolve2d(k, fspecial_gauss(3, 1), 'same'): zero-padded 3x3 Gaussian, sigma 1."""
    gauss = isotropic_gaussian_kernels([1.0], 3)
    return F.conv2d(kernel[None, None], gauss[None], padding=1)[0, 0]


def _centre_fit(kernel, size):
    """Zero-pad symmetrically to size x size; a larger kernel keeps its top-left size x size (as KAIR)."""
    pad = (size - kernel.shape[0]) // 2
    if pad < 0:
        return kernel[:size, :size]
    return F.pad(kernel, (pad, size - kernel.shape[1] - pad, pad, size - kernel.shape[0] - pad))


def _random_stretch(kernel, generator):
    """Bilinear upscale to random (h, w) in [k, 5k] and centre crop (cv2.resize INTER_LINEAR, half-pixel)."""
    size = kernel.shape[0]
    width, height = (int(torch.randint(size, 5 * size + 1, (1,), generator=generator)) for _ in range(2))
    big = F.interpolate(kernel[None, None], size=(height, width), mode="bilinear", align_corners=False)[0, 0]
    top, left = (height - size) // 2, (width - size) // 2
    return big[top:top + size, left:left + size]


def _motion_kernel(trajectory, size, generator):
    """One KAIR `blurkernel_synthesis(h=size)` kernel from a (3, T) trajectory."""
    width = 5 - math.log(torch.rand(1, generator=generator, dtype=torch.float64).item()) / 0.15
    width = int(np.round(min(width, 27)))
    width += 1 - width % 2  # odd
    kernel = _rasterise(trajectory, width)
    kernel = _smooth_3x3(kernel / kernel.sum())
    kernel = _centre_fit(kernel / kernel.sum(), size)
    if torch.randint(0, 4, (1,), generator=generator).item() == 1:
        kernel = _random_stretch(kernel, generator)
    if not kernel.sum() >= 0.1:  # also NaN: a walk whose points all fall in the dropped last bins sums to 0
        sigma = 0.1 + 6 * torch.rand(1, generator=generator, dtype=torch.float64)
        return gaussian_kernels(covariance(sigma, sigma, 0.0), size, centre=(size - 1) / 2)[0]
    return kernel / kernel.sum()


def motion_kernels(batch, size=25, generator=None):
    """USRNet's motion blur kernels (KAIR `utils_deblur.blurkernel_synthesis(h=size)`) -> (batch, size, size)."""
    trajectories = random_trajectories(batch, generator=generator)  # batched: the 250-step walk dominates the time
    kernels = [_motion_kernel(trajectory, size, generator) for trajectory in trajectories]
    return torch.stack(kernels) if kernels else torch.zeros(0, size, size, dtype=torch.float64)


def augment_kernels(kernels, generator=None):
    """A random one of the 8 dihedral transforms per kernel (rot90 k times, then optional flip); KAIR `augment_img`."""
    modes = torch.randint(0, 8, (kernels.shape[0],), generator=generator).tolist()
    out = [torch.rot90(k, m % 4, (0, 1)) for k, m in zip(kernels, modes)]
    return torch.stack([k.flip(1) if m >= 4 else k for k, m in zip(out, modes)]) if out else kernels.clone()


def usrnet_random_kernels(batch, size=25, generator=None):
    """KAIR `dataset_usrnet`: per kernel, motion with probability 1/2, else an augmented `usrnet_gaussian_kernels` one."""
    motion = torch.randint(0, 8, (batch,), generator=generator) > 3
    kernels = torch.empty(batch, size, size, dtype=torch.float64)
    kernels[motion] = motion_kernels(int(motion.sum()), size, generator)
    gaussian = usrnet_gaussian_kernels(batch - int(motion.sum()), size, generator=generator)
    kernels[~motion] = augment_kernels(gaussian, generator)
    return kernels


# ----------------------------------------------------------------------------------------------
# Blur, decimation, bicubic
# ----------------------------------------------------------------------------------------------

def blur(x, kernels, padding="reflect", flip=False):
    """Blur (N, C, H, W) with (k, k) or per-image (N, k, k) kernels, same size out (`bsrops.blur_downsample`, stride 1).

    flip=False correlates (DAN BatchBlur, PDM); flip=True is the true convolution (USRNet / scipy convolve).
    """
    return bsrops.blur_downsample(x, kernels.to(x), 1, padding, flip)


def blur_downsample(x, kernels, scale, padding="reflect", flip=False):
    """Blur and keep the upper-left pixel of every scale x scale cell: out(i, j) = (k * x)(s i, s j).

    USRNet training: padding="circular", flip=True (KAIR convolve mode='wrap' + [0::s, 0::s]);
    PDM: padding="reflect", flip=False; KernelGAN/RealSR: padding="symmetric".
    """
    return bsrops.blur_downsample(x, kernels.to(x), scale, padding, flip)


def _cubic(t):
    """Keys' cubic convolution kernel with a = -0.5 (MATLAB imresize `cubic`)."""
    t = t.abs()
    near = (1.5 * t**3 - 2.5 * t**2 + 1) * (t <= 1)
    far = (-0.5 * t**3 + 2.5 * t**2 - 4 * t + 2) * ((t > 1) & (t <= 2))
    return near + far


def resize_matrix(in_size, out_size, scale, antialias=True):
    """MATLAB imresize `contributions` along one axis as a dense (out_size, in_size) float64 matrix.

    Output pixel i (0-based) sits at u = (i + 0.5) / scale - 0.5 in input coordinates. Downscaling
    with antialias uses scale * cubic(scale * t), a kernel stretched to width 4 / scale; P = ceil(width) + 2
    taps from floor(u - width / 2) on, weights normalised to sum 1, out-of-range taps mirrored
    symmetrically (edge pixel repeated), as MATLAB's `aux = [1:in, in:-1:1]`. Dense, so that the resize
    is two BLAS matmuls (the banded gather is ~50x slower in PyTorch).
    """
    stretch = scale if (scale < 1 and antialias) else 1.0
    width = 4.0 / stretch
    centre = (torch.arange(out_size, dtype=torch.float64) + 0.5) / scale - 0.5
    indices = torch.floor(centre - width / 2)[:, None] + torch.arange(math.ceil(width) + 2, dtype=torch.float64)
    weights = stretch * _cubic(stretch * (centre[:, None] - indices))
    period = indices.long().remainder(2 * in_size)
    mirrored = torch.where(period < in_size, period, 2 * in_size - 1 - period)
    matrix = torch.zeros(out_size, in_size, dtype=torch.float64).scatter_add_(1, mirrored, weights)
    return matrix / weights.sum(1, keepdim=True)


def imresize(x, scale=None, size=None, antialias=True):
    """MATLAB `imresize(x, scale, 'bicubic')` on (N, C, H, W) floats, both up and down, differentiable.

    Give `scale` (the MATLAB factor: 1/4 shrinks by 4; output ceil(scale * H)) or `size` (Ho, Wo; the
    factor per axis is then Ho / H). Rows are resized first, then columns (MATLAB's order for equal
    factors). Matches DAN / BasicSR `imresize` (DANv2 `b_Bicubic`, RealSR track 1); no clamping or rounding.
    """
    if x.dim() != 4 or not x.is_floating_point():
        raise ValueError(f"imresize: x must be a float (N, C, H, W) tensor, got {x.dtype} {tuple(x.shape)}")
    if (scale is None) == (size is None):
        raise ValueError("imresize: give exactly one of scale and size")
    in_size = x.shape[-2:]
    if size is None:
        if scale <= 0:
            raise ValueError(f"imresize: scale must be > 0, got {scale}")
        size, factors = [math.ceil(n * scale) for n in in_size], (scale, scale)
    else:
        if len(size) != 2 or min(size) < 1:
            raise ValueError(f"imresize: size must be (Ho, Wo) >= 1, got {size}")
        factors = [o / n for o, n in zip(size, in_size)]
    rows = resize_matrix(in_size[0], size[0], factors[0], antialias).to(x)
    columns = resize_matrix(in_size[1], size[1], factors[1], antialias).to(x)
    return rows @ x @ columns.T


# ----------------------------------------------------------------------------------------------
# Noise and compression
# ----------------------------------------------------------------------------------------------

def add_noise(x, sigma, generator=None):
    """x + sigma * N(0, 1) (AWGN, no clipping, as KAIR dataset_usrnet). sigma: float or per-image (N,) tensor.

    The noise is drawn on the CPU from `generator` so a seed gives the same noise on any device.
    """
    sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
    if sigma.dim() == 1:
        if sigma.shape[0] != x.shape[0]:
            raise ValueError(f"add_noise: per-image sigma must be (N,) with N = {x.shape[0]}, got {tuple(sigma.shape)}")
        sigma = sigma.view(-1, *([1] * (x.dim() - 1)))
    elif sigma.dim() != 0:
        raise ValueError(f"add_noise: sigma must be a float or an (N,) tensor, got shape {tuple(sigma.shape)}")
    noise = torch.randn(x.shape, generator=generator, dtype=torch.float64)
    return x + sigma * noise.to(x)


def usrnet_noise_levels(batch, generator=None):
    """KAIR dataset_usrnet noise level per image: 0 with probability 1/9, else randint(0, 25) / 255 -> (batch,) float64."""
    clean = torch.randint(0, 9, (batch,), generator=generator) == 0
    level = torch.randint(0, 25, (batch,), generator=generator).double() / 255
    return torch.where(clean, torch.zeros_like(level), level)


def jpeg(x, quality):
    """JPEG-compress RGB images in [0, 1] with OpenCV (`cv2.imencode`, 4:2:0, as BasicSR `add_jpg_compression`).

    quality: int or a per-image sequence in [0, 100]. Returns float in [0, 1] (multiples of 1/255), same
    dtype and device; not differentiable.
    """
    if x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"jpeg: x must be RGB (N, 3, H, W), got {tuple(x.shape)}")
    qualities = [quality] * x.shape[0] if isinstance(quality, (int, float)) else list(quality)
    if len(qualities) != x.shape[0] or not all(0 <= q <= 100 for q in qualities):
        raise ValueError(f"jpeg: quality must be in [0, 100], one or N = {x.shape[0]} values, got {quality}")
    images = (x.detach().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).flip(-1).cpu().numpy()
    out = []
    for image, q in zip(images, qualities):
        ok, encoded = cv2.imencode(".jpg", np.ascontiguousarray(image), [cv2.IMWRITE_JPEG_QUALITY, int(q)])
        if not ok:
            raise RuntimeError("jpeg: cv2.imencode failed")
        out.append(cv2.imdecode(encoded, cv2.IMREAD_COLOR))
    decoded = torch.from_numpy(np.stack(out)) if out else torch.zeros(0, *x.shape[2:], 3, dtype=torch.uint8)
    return decoded.flip(-1).permute(0, 3, 1, 2).to(x.device, x.dtype) / 255
