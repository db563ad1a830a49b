"""KernelGAN's generator losses: the bicubic x1/2 target and the constraints on G's kernel.

LAMBDAS are the initial weights; train.Schedule changes them during training.
"""
import torch
import torch.nn.functional as F

from ..degradations import cubic
from ..kernels import centre_of_mass, decimation_centre

LAMBDAS = {"bicubic": 5.0, "sum2one": 0.5, "boundaries": 0.5, "centralized": 0.0, "sparse": 0.0}


def bicubic_x2_kernel():
    """MATLAB's antialiased bicubic x1/2 kernel, 8x8 (outer product of 0.5 * cubic(0.5 * t), t = -3.5..3.5)."""
    taps = 0.5 * cubic(0.5 * (torch.arange(8, dtype=torch.float64) - 3.5))
    return torch.outer(taps, taps)


def shave_to(x, size):
    """The centre (..., h, w) of x (KernelGAN's shave_a2b: the odd pixel comes off the end)."""
    rows, cols = x.shape[-2] - size[0], x.shape[-1] - size[1]
    return x[..., rows // 2:rows // 2 + size[0], cols // 2:cols // 2 + size[1]]


def bicubic_loss(g_input, g_output, grouped=False):
    """MSE between G's output and the bicubic x1/2 of its input (stride 2, padding 3, centre-shaved)."""
    channels = g_input.shape[1]
    kernel = bicubic_x2_kernel().to(g_input)
    if grouped:
        target = F.conv2d(g_input, kernel.expand(channels, 1, 8, 8), stride=2, padding=3, groups=channels)
    else:  # the official (3, 3, 8, 8) weight: every output channel sees the sum of the input channels
        target = F.conv2d(g_input, kernel.expand(channels, channels, 8, 8), stride=2, padding=3)
    return F.mse_loss(g_output, shave_to(target, g_output.shape[-2:]))


def boundary_mask(size, penalty=30.0):
    """30 x (1 - Gaussian(sigma=size) / max) on the outer 2-pixel ring of a size x size kernel, 0 inside."""
    z = torch.arange(-size // 2 + 1, size // 2 + 1, dtype=torch.float64)
    gauss = torch.exp(-z**2 / (2 * size**2))
    mask = 1 - torch.outer(gauss, gauss) / gauss.max() ** 2
    margin = (size - (size // 2 + size % 2)) // 2 - 1
    mask[margin:size - margin, margin:size - margin] = 0
    return penalty * mask


def constraint_losses(kernel, mask):
    """The four kernel terms: sum to one, boundaries, centralised, sparse."""
    target = torch.full((2,), decimation_centre(kernel.shape[0]), dtype=kernel.dtype, device=kernel.device)
    return {"sum2one": (1 - kernel.sum()).abs(),
            "boundaries": (kernel * mask).abs().mean(),
            "centralized": F.mse_loss(centre_of_mass(kernel), target),
            "sparse": kernel.abs().pow(0.2).mean()}
