"""KernelGAN's final kernels from G's raw kernel: negligible values cut, centred for a x2 decimation,
and the x4 kernel of two x2 steps."""
import numpy as np

from ..kernels import shift_centre_of_mass


def cut_negligible(kernel, n=40):
    """Subtract 0.75 x the (n+1)-th largest value, clip at 0, renormalise."""
    floor = 0.75 * np.sort(kernel.ravel())[-n - 1]
    kept = np.clip(kernel - floor, 0, None)
    return kept / kept.sum()


def x4_kernel(k2):
    """The x4 kernel of two x2 steps: k2 convolved with k2 dilated by 2, cropped by size // 2, normalised."""
    size = k2.shape[0]
    big = np.zeros((3 * size - 2, 3 * size - 2))
    for r in range(size):
        for c in range(size):
            big[2 * r:2 * r + size, 2 * c:2 * c + size] += k2[r, c] * k2
    crop = size // 2
    big = big[crop:-crop, crop:-crop]
    return big / big.sum()


def final_kernels(kernel, n_filtering=40):
    """(x2 kernel, x4 kernel) as float64 arrays from G's raw kernel."""
    k2 = shift_centre_of_mass(cut_negligible(kernel.detach().double().cpu().numpy(), n_filtering))
    return k2, x4_kernel(k2)
