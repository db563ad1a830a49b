"""Where a RealSR demo model stands against bicubic, degradation by degradation.

    python benchmarks/realsr_demo_diagnosis.py RUN/checkpoints/last.pt

Re-evaluates a checkpoint of the `realsr` demo preset on the demo's validation photos (PSNR-Y, border s,
8-bit SR and bicubic) under LR made by: the demo's true kernel as the demo applies it (upper-left
pixel of each s x s cell kept), the same kernel moved to the middle of the cell (KernelGAN's and
bicubic's grid convention), and each kernel of the checkpoint's KernelGAN pool; each with and without
the demo's noise (sigma 5/255). Also prints every kernel's standard deviation along y and x (pixels).
"""
import argparse

import numpy as np
import torch
import torch.nn.functional as F

from bsr import degradations, metrics
from bsr.data import demo_set
from bsr.data.io import to_tensor
from bsr.data.transforms import modcrop
from bsr.engine import load_checkpoint
from bsr.kernels import shift_centre_of_mass


def spread(kernel):
    """(std along y, std along x) of a (k, k) kernel read as a distribution, in pixels."""
    k = kernel.double() / kernel.sum()
    y, x = torch.meshgrid(torch.arange(k.shape[0]).double(), torch.arange(k.shape[1]).double(), indexing="ij")
    cy, cx = (k * y).sum(), (k * x).sum()
    return float((k * (y - cy) ** 2).sum().sqrt()), float((k * (x - cx) ** 2).sum().sqrt())


def quantise(x):
    return (x.clamp(0, 1) * 255).round() / 255


def scores(method, kernel, scale, noise):
    """Mean PSNR-Y of (SR, bicubic) over the validation photos degraded with `kernel` and `noise`."""
    rows = []
    for index, name in enumerate(demo_set.VALIDATION):
        hr = to_tensor(modcrop(demo_set.load(name), method.modcrop_multiple()))[None]
        lr = degradations.blur_downsample(hr, kernel, scale, "reflect")
        if noise:
            seed = len(demo_set.UNPAIRED_LR) + index
            lr = degradations.add_noise(lr, noise, torch.Generator().manual_seed(1000 + seed))
        lr = quantise(lr)
        with torch.no_grad():
            sr = quantise(method.super_resolve(lr))
        bicubic = quantise(F.interpolate(lr, scale_factor=scale, mode="bicubic", align_corners=False))
        rows.append([metrics.psnr(out, hr, scale, y_channel=True).item() for out in (sr, bicubic)])
    return np.mean(rows, 0)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    args = parser.parse_args()
    method, cfg, step = load_checkpoint(args.checkpoint)
    scale = cfg.data.scale
    true = demo_set.demo_kernel(scale)
    kernels = {"true, upper-left pixel (the demo)": true,
               "true, cell centre": torch.from_numpy(shift_centre_of_mass(true.double().numpy(), scale)).float()}
    for j, kernel in enumerate(method.kernels if method.kernels is not None else []):
        kernels[f"KernelGAN pool {j}"] = kernel
    print(f"{args.checkpoint} (step {step}): PSNR-Y dB, SR / bicubic")
    print(f"| LR made with | std y, x (px) | no noise | noise 5/255 |\n|---|---|---|---|")
    for label, kernel in kernels.items():
        cells = [" / ".join(f"{v:.2f}" for v in scores(method, kernel, scale, noise))
                 for noise in (0, demo_set.DEMO_DEGRADATION["noise"])]
        print(f"| {label} | {', '.join(f'{v:.2f}' for v in spread(kernel))} | {cells[0]} | {cells[1]} |")


if __name__ == "__main__":
    main()
