"""Degradations for training data synthesis: blur + decimation, MATLAB bicubic, noise, JPEG.

Everything is batched over the first dimension and seedable: random functions take an optional
`torch.Generator` (CPU) and draw only from it, so a fixed seed gives the same noise on any device.
Each function names the official code whose convention it follows (docs/methods.md). The blur
kernels come from bsr.kernels.

Kernels are (N, k, k) or (k, k), moved to the image's device and dtype here. Images are (N, C, H, W)
RGB in [0, 1].
"""
import math

import cv2
import numpy as np
import torch

import bsrops


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


def cubic(t):
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
    is two BLAS matmuls rather than a banded gather.
    """
    stretch = scale if (scale < 1 and antialias) else 1.0
    width = 4.0 / stretch
    centre = (torch.arange(out_size, dtype=torch.float64) + 0.5) / scale - 0.5
    indices = torch.floor(centre - width / 2)[:, None] + torch.arange(math.ceil(width) + 2, dtype=torch.float64)
    weights = stretch * cubic(stretch * (centre[:, None] - indices))
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
