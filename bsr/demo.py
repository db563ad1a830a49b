"""Op demo: a photo degraded by a spatially varying lens blur and stride-4 decimation.

    python -m bsr.demo [--out demo_output] [--image astronaut] [--scale 4] [--ksize 21]

The blur kernel of each LR pixel is an anisotropic Gaussian that widens toward the
corners, elongated along the radius, as a lens' off-axis blur does. All LR pixels are
computed by one fused `bsrops.blur_downsample` call with a per-pixel kernel map.
Writes <out>/blur_downsample_demo.png: HR | kernels (a sample grid) | LR (nearest-upscaled).
"""
import argparse
import math
import os
import time

import cv2
import skimage.data
import torch

import bsrops

from .kernels import kernel_mosaic


def lens_blur_kernels(out_h, out_w, ksize, sigma_centre=0.5, sigma_corner=3.5):
    """(1, k*k, out_h, out_w) kernel map: Gaussians whose widths grow with the squared radius."""
    ys = torch.linspace(-1, 1, out_h).view(out_h, 1).expand(out_h, out_w)
    xs = torch.linspace(-1, 1, out_w).view(1, out_w).expand(out_h, out_w)
    radius2 = (ys**2 + xs**2) / 2  # 0 at the centre, 1 in the corners
    sigma_radial = sigma_centre + (sigma_corner - sigma_centre) * radius2
    sigma_tangent = sigma_centre + 0.5 * (sigma_corner - sigma_centre) * radius2
    angle = torch.atan2(ys, xs)
    taps = torch.arange(ksize, dtype=torch.float32) - ksize // 2
    dy, dx = taps.view(ksize, 1, 1, 1), taps.view(1, ksize, 1, 1)
    along = dx * torch.cos(angle) + dy * torch.sin(angle)
    across = -dx * torch.sin(angle) + dy * torch.cos(angle)
    weights = torch.exp(-0.5 * ((along / sigma_radial) ** 2 + (across / sigma_tangent) ** 2))
    weights = weights.reshape(ksize * ksize, out_h, out_w)
    return (weights / weights.sum(0, keepdim=True)).unsqueeze(0)


def to_uint8(image):
    return (image.clamp(0, 1) * 255 + 0.5).to(torch.uint8).numpy()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="demo_output")
    parser.add_argument("--image", default="astronaut", help="a colour image of skimage.data")
    parser.add_argument("--scale", type=int, default=4)
    parser.add_argument("--ksize", type=int, default=21)
    args = parser.parse_args(argv)

    photo = getattr(skimage.data, args.image)()
    hr = torch.from_numpy(photo).permute(2, 0, 1).unsqueeze(0).float() / 255
    out_h, out_w = math.ceil(hr.shape[2] / args.scale), math.ceil(hr.shape[3] / args.scale)
    kernels = lens_blur_kernels(out_h, out_w, args.ksize)
    start = time.perf_counter()
    lr = bsrops.blur_downsample(hr, kernels, stride=args.scale, padding="reflect")
    elapsed = time.perf_counter() - start

    height = hr.shape[2]
    lr_big = torch.nn.functional.interpolate(lr, size=hr.shape[2:], mode="nearest")[0]
    grid = kernel_mosaic(kernels, args.ksize)
    grid = torch.nn.functional.interpolate(grid[None, None], size=(height, height), mode="nearest")[0].expand(3, -1, -1)
    panel = torch.cat([hr[0], grid, lr_big], dim=2).permute(1, 2, 0)
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "blur_downsample_demo.png")
    cv2.imwrite(path, cv2.cvtColor(to_uint8(panel), cv2.COLOR_RGB2BGR))
    info = bsrops.backend_info(hr.device)
    print(f"{args.image} {tuple(hr.shape[2:])} -> LR {tuple(lr.shape[2:])} with {out_h * out_w} per-pixel "
          f"{args.ksize}x{args.ksize} kernels in {elapsed * 1000:.1f} ms on backend '{info['backend']}'")
    print(f"wrote {path}  (HR | kernels, sampled on an 8x8 grid | LR, nearest-upscaled)")
    return path


if __name__ == "__main__":
    main()
