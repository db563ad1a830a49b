"""KernelGAN: estimate an image's own downscaling kernel (RealSR's kernel pool).

    python -m bsr.kernelgan photo.png [more.png ...] --out kernels/ [--x4] [--iterations 3000]

writes each image's x2 (and with --x4 its x4) kernel as bsr.kernels.kernel_file_name(name, scale).
"""
import argparse
import os

import torch

from ..data.io import read_image
from ..kernels import kernel_file_name, write_kernel_file
from .train import estimate_kernel


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
            target = os.path.join(args.out, kernel_file_name(name, scale))
            write_kernel_file(target, kernel)
            print(f"{path}: x{scale} kernel {kernel.shape[0]}x{kernel.shape[1]} -> {target}")
