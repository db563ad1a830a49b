"""KernelGAN: estimate an image's own downscaling kernel (RealSR's kernel pool).

    python -m bsr.kernelgan photo.png [more.png ...] --out kernels/ [--x4] [--iterations 3000]

writes `<name>_kernel_x2.mat` (and `<name>_kernel_x4.mat` with --x4), MATLAB files holding
`Kernel`, the layout RealSR's `create_kernel_dataset.py` reads. Python: `estimate_kernel(image)`.

What the official code does (sefibk/KernelGAN; docs/methods.md), reproduced here:
a linear generator G (bsr/archs/kernelgan.py) learns to downscale 64x64 crops of the image by 2
so that a patch discriminator D cannot tell its 26x26 outputs from 26x26 crops of the image
itself (the image's patch statistics recur across scales). Losses: L1 between D's map and
1/0 labels; G adds five constraints on its kernel k: 5 x MSE to a bicubic downscale of its input,
0.5 x |1 - sum k|, 0.5 x mean |k * boundary mask|, 0 x centre-of-mass MSE, 0 x mean |k|^0.2 (the
last two switched on, 1 and 5, once the bicubic weight has decayed below 5e-3). Schedule: both
learning rates / 10 every 750 iterations; once the bicubic loss is < 0.4 three iterations in a
row, its weight / 100 every 200 iterations (floor 5e-6). Adam 2e-4, betas (0.5, 0.999), 3000
iterations of batch 1, images in [-1, 1], N(0, 1/255) noise on D's inputs, crops drawn with
probability following the image's blurred gradient magnitude (top-left corners even).
The final 13x13 kernel: values below 0.75 x the 41st largest are cut (subtracted, clipped at 0),
renormalised, shifted (cubic spline) so that its centre of mass sits where a x2 decimation
expects it, which pads it to 17x17 (more if the centre was off by over a pixel); the x4 kernel is
the x2 kernel convolved with itself dilated by 2, cropped (33x33 from 17x17). Kernels are in
correlation orientation: LR = decimate(correlate(HR, k)), as RealSR applies them.

Quirk kept by default (docs/fidelity.md): the bicubic loss convolves with a (3, 3, 8, 8) kernel without
groups, so its target is the bicubic downscale of the *sum* of the colour channels in every
channel (KernelGAN issues #28, #47; it stops mattering once its weight has decayed).
`grouped_bicubic_loss=True` gives the per-channel target the paper describes.
"""
import argparse
import math
import os

import numpy as np
import scipy.io
import scipy.ndimage
import scipy.signal
import torch
import torch.nn.functional as F
from tqdm import tqdm

from .archs.kernelgan import KernelDiscriminator, KernelGenerator, init_weights
from .data.io import read_image
from .degradations import _cubic, imresize

CROP = 64  # G's input crop
LAMBDAS = {"bicubic": 5.0, "sum2one": 0.5, "boundaries": 0.5, "centralized": 0.0, "sparse": 0.0}


# ---- G's kernel constraints ----

def bicubic_x2_kernel():
    """MATLAB's antialiased bicubic x1/2 kernel, 8x8 (outer product of 0.5 * cubic(0.5 * t), t = -3.5..3.5)."""
    taps = 0.5 * _cubic(0.5 * (torch.arange(8, dtype=torch.float64) - 3.5))
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


def wanted_centre(size, scale=2):
    """Where a kernel's centre of mass must sit for a x`scale` decimation that keeps pixel 0 (KernelGAN)."""
    return size // 2 + 0.5 * (scale - size % 2)


def centre_of_mass(kernel):
    indices = torch.arange(kernel.shape[0], dtype=kernel.dtype, device=kernel.device)
    total = kernel.sum()
    return torch.stack((kernel.sum(1) @ indices / total, kernel.sum(0) @ indices / total))


def constraint_losses(kernel, mask):
    """The four kernel terms: sum to one, boundaries, centralised, sparse."""
    target = torch.full((2,), wanted_centre(kernel.shape[0]), dtype=kernel.dtype, device=kernel.device)
    return {"sum2one": (1 - kernel.sum()).abs(),
            "boundaries": (kernel * mask).abs().mean(),
            "centralized": F.mse_loss(centre_of_mass(kernel), target),
            "sparse": kernel.abs().pow(0.2).mean()}


# ---- crops: drawn where the image has gradients ----

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


# ---- the final kernel ----

def cut_negligible(kernel, n=40):
    """Subtract 0.75 x the (n+1)-th largest value, clip at 0, renormalise."""
    floor = 0.75 * np.sort(kernel.ravel())[-n - 1]
    kept = np.clip(kernel - floor, 0, None)
    return kept / kept.sum()


def shift_kernel(kernel, scale=2):
    """Pad and shift (cubic spline) the kernel so that its centre of mass is at wanted_centre (KernelGAN)."""
    shift = wanted_centre(np.array(kernel.shape), scale) - np.array(scipy.ndimage.center_of_mass(kernel))
    kernel = np.pad(kernel, int(math.ceil(np.abs(shift).max())) + 1)
    return scipy.ndimage.shift(kernel, shift)


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
    k2 = shift_kernel(cut_negligible(kernel.detach().double().cpu().numpy(), n_filtering))
    return k2, x4_kernel(k2)


# ---- training ----

class Schedule:
    """KernelGAN's `Learner`: learning-rate decay and the constraint weights over the iterations."""

    def __init__(self):
        self.below_count = 0
        self.similar_to_bicubic = False
        self.constraints_added = False

    def update(self, iteration, loss_bicubic, lambdas, optimizers):
        if iteration == 0:
            return
        if iteration % 750 == 0:
            for group in (g for opt in optimizers for g in opt.param_groups):
                group["lr"] /= 10
        if not self.similar_to_bicubic:
            self.similar_to_bicubic = loss_bicubic < 0.4 and self.below_count >= 2
            self.below_count = self.below_count + 1 if loss_bicubic < 0.4 else 0
        elif iteration % 200 == 0 and lambdas["bicubic"] > 5e-6:
            lambdas["bicubic"] = max(lambdas["bicubic"] / 100, 5e-6)
            if not self.constraints_added and lambdas["bicubic"] < 5e-3:
                lambdas.update(centralized=1.0, sparse=5.0)
                self.constraints_added = True


class KernelGAN:
    """One image's G, D, optimisers, constraint weights and schedule."""

    def __init__(self, channels=64, device="cpu", grouped_bicubic_loss=False):
        self.G = KernelGenerator(channels).to(device)
        self.D = KernelDiscriminator(channels).to(device)
        init_weights(self.G)
        init_weights(self.D)
        self.opt_g = torch.optim.Adam(self.G.parameters(), lr=2e-4, betas=(0.5, 0.999))
        self.opt_d = torch.optim.Adam(self.D.parameters(), lr=2e-4, betas=(0.5, 0.999))
        self.lambdas = dict(LAMBDAS)
        self.schedule = Schedule()
        self.mask = boundary_mask(self.G.kernel_size).float().to(device)
        self.grouped = grouped_bicubic_loss
        self.d_crop = self.G.output_size(CROP)

    def train_step(self, g_input, d_input):
        """One G update then one D update; returns the losses (floats)."""
        self.opt_g.zero_grad()
        g_output = self.G(g_input)
        d_fake = self.D(g_output)
        losses = {"gan": (d_fake - 1).abs().mean(), "bicubic": bicubic_loss(g_input, g_output, self.grouped),
                  **constraint_losses(self.G.kernel(), self.mask)}
        sum(self.lambdas.get(name, 1.0) * value for name, value in losses.items()).backward()
        self.opt_g.step()

        self.opt_d.zero_grad()
        with torch.no_grad():
            fake = self.G(g_input)
        fake = fake + torch.randn_like(fake) / 255
        d_loss = ((self.D(fake) - 0).abs().mean() + (self.D(d_input) - 1).abs().mean()) / 2
        d_loss.backward()
        self.opt_d.step()
        return {name: value.item() for name, value in {**losses, "d": d_loss}.items()}


def _to_tensor(crop, device):
    return torch.from_numpy(crop * 2 - 1).permute(2, 0, 1)[None].float().to(device)


def estimate_kernel(image, iterations=3000, real_image=False, channels=64, seed=0, device="cpu",
                    grouped_bicubic_loss=False, n_filtering=40, progress=False):
    """(x2 kernel, x4 kernel) float64 arrays (correlation orientation; 17x17 and 33x33 once G has centred its
    kernel) of an (H, W, 3) image in [0, 1]."""
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"kernelgan: image must be (H, W, 3), got shape {image.shape}")
    if iterations < 1:
        raise ValueError(f"kernelgan: iterations must be >= 1, got {iterations}")
    image = prepare_image(np.asarray(image, dtype=np.float64), real_image)
    rng = np.random.default_rng(seed)
    # seeded init and D noise without moving the caller's RNG (a training run building its kernel pool);
    # float32 with autograd also when called under no_grad / autocast
    with torch.random.fork_rng(devices=[]), torch.enable_grad(), torch.autocast(torch.device(device).type, enabled=False):
        torch.manual_seed(seed)
        gan = KernelGAN(channels, device, grouped_bicubic_loss)
        g_centres, d_centres = crop_centres(image, gan.d_crop, iterations, rng)
        _train(gan, image, g_centres, d_centres, rng, device, progress)
    with torch.no_grad():
        return final_kernels(gan.G.kernel(), n_filtering)


def _train(gan, image, g_centres, d_centres, rng, device, progress):
    """One G and one D update per pre-drawn pair of crops, then the schedule."""
    for it in tqdm(range(len(g_centres)), disable=not progress, ncols=60):
        top, left = crop_corner(g_centres[it], CROP, image.shape)
        g_input = image[top:top + CROP, left:left + CROP]
        top, left = crop_corner(d_centres[it], gan.d_crop, image.shape)
        d_input = image[top:top + gan.d_crop, left:left + gan.d_crop] + rng.standard_normal((gan.d_crop,) * 2 + (3,)) / 255
        losses = gan.train_step(_to_tensor(g_input, device), _to_tensor(d_input, device))
        gan.schedule.update(it, losses["bicubic"], gan.lambdas, (gan.opt_g, gan.opt_d))


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bsr.kernelgan", description=__doc__.split("\n\n")[0])
    parser.add_argument("images", nargs="+", help="image files whose downscaling kernel to estimate")
    parser.add_argument("--out", required=True, help="folder for <name>_kernel_x2.mat / _x4.mat")
    parser.add_argument("--x4", action="store_true", help="also write the x4 kernel")
    parser.add_argument("--iterations", type=int, default=3000)
    parser.add_argument("--real", action="store_true", help="real image: do not shave 10 pixels off the borders")
    parser.add_argument("--grouped-bicubic-loss", action="store_true", help="per-channel bicubic target (fix)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    for path in args.images:
        image = read_image(path).permute(1, 2, 0).double().numpy()
        k2, k4 = estimate_kernel(image, args.iterations, args.real, seed=args.seed, device=args.device,
                                 grouped_bicubic_loss=args.grouped_bicubic_loss, progress=True)
        name = os.path.splitext(os.path.basename(path))[0]
        for scale, kernel in ((2, k2), (4, k4))[:2 if args.x4 else 1]:
            target = os.path.join(args.out, f"{name}_kernel_x{scale}.mat")
            scipy.io.savemat(target, {"Kernel": kernel})
            print(f"{path}: x{scale} kernel {kernel.shape[0]}x{kernel.shape[1]} -> {target}")


if __name__ == "__main__":
    main()
