"""Blur kernels: random generation, placement (padding, centring, shifting), drawing and files.

Random generators are batched over the first dimension and seedable: they take an optional
`torch.Generator` (CPU) and draw only from it, so a fixed seed gives the same kernels on any device.
Each names the official code whose convention it follows (docs/methods.md); the random streams
are torch's, so values match those generators in distribution, not bit for bit.

Kernels are (N, k, k) or (k, k) float64 on the CPU, normalised to sum 1, in correlation orientation
unless a function says otherwise; move them with `.to(x)`. bsr.degradations applies them to images.
"""
import glob
import math
import os

import numpy as np
import scipy.io
import scipy.ndimage
import torch
import torch.nn.functional as F

from .io import UntrustedFileError, load_array, load_untrusted

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
    """centre_pad to size x size; a larger kernel keeps its top-left size x size (as KAIR)."""
    return kernel[:size, :size] if kernel.shape[0] > size else centre_pad(kernel, size)


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
# Placement: padding, centring, shifting, dihedral transforms
# ----------------------------------------------------------------------------------------------

def centre_pad(kernel, size):
    """Zero-pad (..., k, k) symmetrically to (..., size, size); the centre tap k // 2 lands on size // 2 for odd sizes."""
    before = (size - kernel.shape[-1]) // 2
    after = size - kernel.shape[-1] - before
    return F.pad(kernel, (before, after, before, after))


def stack_centred(kernels):
    """Square kernels of different (odd) sizes, each zero-padded (centred) to the largest -> (K, k_max, k_max)."""
    size = max(k.shape[-1] for k in kernels)
    return torch.cat([centre_pad(k[None], size) for k in kernels])


def dihedral(kernel, mode):
    """The (..., k, k) kernel under transform `mode` in 0..7 (rotation by 90 * (mode % 4), then a flip of
    the rows if mode >= 4): what bsr.data.transforms.augment does to an image."""
    kernel = torch.rot90(kernel, mode % 4, (-2, -1))
    return kernel.flip(-2) if mode >= 4 else kernel


def centre_of_mass(kernel):
    """(row, column) centre of mass of a (k, k) kernel -> (2,) tensor; differentiable."""
    indices = torch.arange(kernel.shape[0], dtype=kernel.dtype, device=kernel.device)
    total = kernel.sum()
    return torch.stack((kernel.sum(1) @ indices / total, kernel.sum(0) @ indices / total))


def decimation_centre(size, scale=2):
    """Where a size x size kernel's centre of mass sits for a x`scale` decimation that keeps the middle of
    each scale x scale cell (KernelGAN's convention): size // 2 + (scale - size % 2) / 2."""
    return size // 2 + 0.5 * (scale - size % 2)


def shift_by(kernel, shift):
    """k'(p, q) = k(p + shift, q + shift): the (k, k) kernel translated up and left by `shift` pixels (any
    real number >= 0) by bilinear interpolation, zeros outside, same size, renormalised. With the true
    convolution of the degradation, a kernel shifted by (s-1)/2 samples each LR pixel at the centre of its
    s x s HR cell (KAIR's shift_pixel) instead of its upper-left pixel."""
    whole, frac = math.floor(shift), shift - math.floor(shift)
    size = kernel.shape[-1]
    padded = F.pad(kernel, (0, whole + 2, 0, whole + 2))
    rows = (1 - frac) * padded[whole:whole + size + 1] + frac * padded[whole + 1:whole + size + 2]
    both = (1 - frac) * rows[:size, whole:whole + size] + frac * rows[:size, whole + 1:whole + size + 1]
    return both / both.sum()


def shift_centre_of_mass(kernel, scale=2):
    """The (k, k) numpy kernel moved (cubic spline, scipy.ndimage.shift) so that its centre of mass lands
    on decimation_centre(size, scale); zero-padded on every side by the largest shift rounded up, plus 1,
    so nothing falls off (KernelGAN's post-processing)."""
    shift = decimation_centre(np.array(kernel.shape), scale) - np.array(scipy.ndimage.center_of_mass(kernel))
    kernel = np.pad(kernel, int(math.ceil(np.abs(shift).max())) + 1)
    return scipy.ndimage.shift(kernel, shift)


# ----------------------------------------------------------------------------------------------
# Drawing
# ----------------------------------------------------------------------------------------------

def kernel_image(kernel, height):
    """A (3, height, height) picture of a (k, k) kernel scaled to its peak (nearest upscaling)."""
    k = kernel.detach().float().cpu()
    k = (k / k.abs().max().clamp_min(1e-12)).clamp(0, 1)
    size = max(1, height // k.shape[-1]) * k.shape[-1]
    big = torch.nn.functional.interpolate(k[None, None], size=(size, size), mode="nearest")[0]
    out = torch.zeros(3, height, height)
    out[:, :size, :size] = big[:, :height, :height]
    return out


def kernel_mosaic(kernel_map, ksize, samples=8):
    """(samples * ksize, samples * ksize) mosaic of the kernels of a (1, ksize * ksize, h, w) per-pixel kernel
    map at samples x samples evenly spaced pixels, each normalised to its peak."""
    _, _, out_h, out_w = kernel_map.shape
    rows = []
    for i in np.linspace(0, out_h - 1, samples).astype(int):
        row = [kernel_map[0, :, i, j].view(ksize, ksize) for j in np.linspace(0, out_w - 1, samples).astype(int)]
        rows.append(torch.cat([k / k.max() for k in row], dim=1))
    return torch.cat(rows, dim=0)


# ----------------------------------------------------------------------------------------------
# Files: `<name>_kernel_x<s>.mat` holding the variable `Kernel` (RealSR's create_kernel_dataset.py layout)
# ----------------------------------------------------------------------------------------------

MAT_VARIABLE = "Kernel"


def kernel_file_name(name, scale):
    """The file name of image `name`'s x`scale` kernel."""
    return f"{name}_kernel_x{scale}.mat"


def write_kernel_file(path, kernel):
    """Write a (k, k) array as a MATLAB file holding MAT_VARIABLE."""
    scipy.io.savemat(path, {MAT_VARIABLE: kernel})


def read_kernel_files(folder, scale, what="kernel folder"):
    """(K, k, k) float32: the kernels of the `*_kernel_x{scale}.mat` files of `folder` and of its
    sub-folders (KernelGAN's own output layout, `<folder>/<image>/<image>_kernel_x4.mat`), sorted by
    path, read through bsr.io.load_array and centred on the largest size; `what` names the folder's
    role in errors."""
    pattern = kernel_file_name("*", scale)
    files = sorted(glob.glob(os.path.join(folder, pattern)) + glob.glob(os.path.join(folder, "*", pattern)))
    if not files:
        raise FileNotFoundError(f"{what}: no {pattern} files in {folder!r} or its sub-folders")
    return stack_centred([torch.from_numpy(load_array(f, f"{what} file", MAT_VARIABLE)) for f in files]).float()


# ----------------------------------------------------------------------------------------------
# Kernel sets: USRNet's test kernels (KAIR `kernels/kernels_12.mat`, `kernels/kernels_bicubicx234.mat`)
# ----------------------------------------------------------------------------------------------

KERNEL_SET_VARIABLE = "kernels"


def read_kernel_set(path, what="kernel set file"):
    """(N, k, k) float64: the kernels of a kernel set file, as stored (not renormalised).

    `.mat`: the variable `kernels`, a 1 x N MATLAB cell array of k x k numeric arrays (the layout of
    KAIR's kernels_12.mat and kernels_bicubicx234.mat) or an (N, k, k) numeric array; `.npy`: an
    (N, k, k) or (k, k) array; `.npz`: the variable `kernels`, or the only one. Read through
    bsr.io; any other layout is an UntrustedFileError saying what the file holds."""
    key = KERNEL_SET_VARIABLE if os.path.splitext(path)[1].lower() == ".mat" else None
    data = load_untrusted(path, what)
    if isinstance(data, dict):
        data = _kernel_set_variable(data, key, path, what)
    return _kernel_set_array(np.asarray(data), path, what)


def _kernel_set_variable(variables, key, path, what):
    variables = {name: value for name, value in variables.items() if not name.startswith("__")}
    if key is None and KERNEL_SET_VARIABLE not in variables and len(variables) == 1:
        key = next(iter(variables))
    key = key or KERNEL_SET_VARIABLE
    if key not in variables:
        raise UntrustedFileError(f"{what} {path!r}: expected a variable {key!r}, found {sorted(variables)}")
    return variables[key]


def _kernel_set_array(array, path, what):
    expected = "a 1 x N cell array of k x k kernels, or an (N, k, k) or (k, k) numeric array"
    if array.dtype == object:
        if array.ndim != 2 or 1 not in array.shape:
            raise UntrustedFileError(f"{what} {path!r}: expected {expected}, found a cell array of shape {array.shape}")
        cells = [np.asarray(cell) for cell in array.ravel()]
        found = sorted({f"{c.dtype} {c.shape}" for c in cells})
        if not cells or len(found) != 1 or not _numeric(cells[0]) or cells[0].ndim != 2:
            raise UntrustedFileError(f"{what} {path!r}: expected {expected}, found cells of {', '.join(found) or 'nothing'}")
        array = np.stack(cells)
    elif not _numeric(array) or array.ndim not in (2, 3):
        raise UntrustedFileError(f"{what} {path!r}: expected {expected}, found a {array.dtype} array of shape {array.shape}")
    array = array[None] if array.ndim == 2 else array
    if array.shape[-1] != array.shape[-2] or not np.isfinite(array).all():
        raise UntrustedFileError(f"{what} {path!r}: expected square finite kernels, found shape {array.shape[1:]}")
    return torch.from_numpy(array.astype(np.float64))


def _numeric(array):
    return np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)
