"""Where KernelGAN draws its crops: with probability following the image's blurred gradient magnitude."""
import numpy as np
import scipy.signal
import torch

from ..degradations import imresize

CROP = 64  # G's input crop


def _zero_border(x, edge):
    out = np.zeros_like(x)
    out[edge:-edge, edge:-edge] = x[edge:-edge, edge:-edge]
    return out


def _clip_extreme(x, percent):
    """x clipped to [v, next larger value] minus v, v the `percent` quantile: keeps where x is among the largest."""
    ordered = np.sort(x.ravel())
    pivot = int(percent * len(ordered))
    low = ordered[pivot]
    high = ordered[pivot + 1] if ordered[pivot + 1] > low else low + 1e-5
    return np.clip(x, low, high) - low


def _normalised(x):
    """x / x.sum(), or zeros for an all-zero map (a flat image: the crops fall back to uniform)."""
    total = x.sum()
    return x / total if total > 0 else np.zeros_like(x)


def gradient_map(image, window=5, percent=0.97):
    """KernelGAN's loss map of an (H, W, 3) image: where |grad| (x, y and magnitude) is in its top 3%, blurred."""
    gx, gy = np.gradient(image @ np.array([0.299, 0.587, 0.114]))
    maps = [_zero_border(g, window) for g in (np.abs(gx), np.abs(gy), np.hypot(gx, gy))]
    combined = sum(_normalised(_clip_extreme(g, percent)) for g in maps[:2]) + _normalised(maps[2])
    blurred = scipy.signal.convolve2d(combined, np.ones((window, window)), "same") / window**2
    mean = blurred.mean()
    return blurred / mean if mean > 0 else np.ones_like(blurred)


def crop_probabilities(loss_map, crop):
    """Probability of each pixel as a crop centre: the loss map summed over crop/2 squares, zero near the border."""
    half = crop // 2
    blurred = scipy.signal.convolve2d(loss_map, np.ones((half, half)), "same") / half**2
    weights = _zero_border(blurred, half).ravel()
    return weights / weights.sum() if weights.sum() > 0 else np.full(weights.shape, 1 / weights.size)


def crop_corner(centre, size, shape):
    """Top-left corner (even) of the size x size crop around a flat pixel index, kept inside the image."""
    row, col = divmod(int(centre), shape[1])
    top = min(max(0, row - size // 2), shape[0] - size)
    left = min(max(0, col - size // 2), shape[1] - size)
    return top - top % 2, left - left % 2


def prepare_image(image, real_image=False):
    """(H, W, 3) float64 in [0, 1]: 10 pixels shaved off a synthetic image's borders, sides made even."""
    if not real_image:
        image = image[10:-10, 10:-10]
    image = image[:image.shape[0] // 2 * 2, :image.shape[1] // 2 * 2]
    if min(image.shape[:2]) < CROP:
        raise ValueError(f"kernelgan: the image must be at least {CROP}x{CROP} after shaving "
                         f"{'' if real_image else '10 pixels off each border '}(got {image.shape[1]}x{image.shape[0]})")
    return image


def crop_centres(image, d_crop, iterations, rng):
    """Pre-drawn crop centres for G (from the gradients of the image's bicubic x1/2) and D (of the image)."""
    small = imresize(torch.from_numpy(image).permute(2, 0, 1)[None], scale=0.5)[0].permute(1, 2, 0).numpy()
    small_map = np.repeat(np.repeat(gradient_map(small), 2, axis=0), 2, axis=1)  # nearest x2 back to full size
    g_probs = crop_probabilities(small_map[:image.shape[0], :image.shape[1]], CROP)
    d_probs = crop_probabilities(gradient_map(image), d_crop)
    return rng.choice(g_probs.size, iterations, p=g_probs), rng.choice(d_probs.size, iterations, p=d_probs)
