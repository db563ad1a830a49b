"""python -m bsr.infer --ckpt PATH INPUT... --out DIR [--kernel gaussian:WIDTH|FILE.npy]
                       [--noise SIGMA] [--tile N] [--overlap N]

Super-resolves image files (or folders of them) of any size with a checkpoint and writes
<out>/<name>.png. Images larger than --tile LR pixels are processed in overlapping tiles
whose outputs are averaged over the overlaps. Non-blind methods (USRNet) take the blur
kernel and the noise level (SIGMA in 0..255 units); blind methods ignore both.
`gaussian:WIDTH` is an isotropic 25x25 Gaussian of standard deviation WIDTH moved by
(s-1)/2 pixels so that it matches pixel-centre aligned real LR images (as USRNet's
main_test_realapplication.py); FILE.npy is a (k, k) kernel, normalised to sum 1.
"""
import argparse
import os
import sys

import torch

from . import cli, degradations
from .data.io import IMAGE_EXTENSIONS, read_image, write_image
from .engine import load_checkpoint
from .io import load_array

GAUSSIAN_SIZE = 25


def parse_kernel(spec, scale):
    """--kernel value -> (k, k) float32 tensor, or None."""
    if spec is None:
        return None
    if spec.startswith("gaussian:"):
        from .methods.usrnet import shift_kernel

        width = float(spec.split(":", 1)[1])
        if width <= 0:
            raise ValueError(f"--kernel gaussian:WIDTH needs WIDTH > 0, got {width}")
        kernel = degradations.isotropic_gaussian_kernels(width, GAUSSIAN_SIZE)[0].float()
        return shift_kernel(kernel, (scale - 1) / 2)
    if not spec.endswith(".npy"):
        raise ValueError(f"--kernel expects gaussian:WIDTH or a .npy file, got {spec!r}")
    kernel = torch.from_numpy(load_array(spec, "--kernel file")).float()
    if kernel.dim() != 2 or kernel.shape[0] != kernel.shape[1] or not torch.isfinite(kernel).all():
        raise ValueError(f"--kernel {spec}: expected a finite square (k, k) array, got shape {tuple(kernel.shape)}")
    if kernel.sum() <= 0:
        raise ValueError(f"--kernel {spec}: the kernel must have a positive sum")
    return kernel / kernel.sum()


def tile_starts(size, tile, overlap):
    """Start offsets of tiles of length `tile` covering [0, size) with at least `overlap` shared."""
    if size <= tile:
        return [0]
    step = tile - overlap
    starts = list(range(0, size - tile, step)) + [size - tile]
    return sorted(set(starts))


def super_resolve_tiled(method, lr, kernel, noise_level, scale, tile, overlap):
    """(1, 3, h, w) -> (1, 3, s*h, s*w), tile by tile, averaging overlapping outputs."""
    _, c, h, w = lr.shape
    out = torch.zeros(1, c, h * scale, w * scale)
    weight = torch.zeros(1, 1, h * scale, w * scale)
    for top in tile_starts(h, tile, overlap):
        for left in tile_starts(w, tile, overlap):
            patch = lr[..., top:top + tile, left:left + tile].to(method.device)
            sr = method.infer(patch, kernel, noise_level).float().cpu()
            region = (..., slice(top * scale, top * scale + sr.shape[-2]), slice(left * scale, left * scale + sr.shape[-1]))
            out[region] += sr
            weight[region] += 1
    return out / weight


def input_files(inputs):
    files = []
    for path in inputs:
        if os.path.isdir(path):
            files += sorted(os.path.join(path, f) for f in os.listdir(path) if f.lower().endswith(IMAGE_EXTENSIONS))
        else:
            files.append(path)
    if not files:
        raise FileNotFoundError(f"no input images in {inputs}")
    return files


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bsr.infer", description=__doc__.split("\n\n")[0])
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="image files or folders")
    parser.add_argument("--ckpt", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--kernel", help="gaussian:WIDTH or FILE.npy (non-blind methods)")
    parser.add_argument("--noise", type=float, default=0.0, help="noise level SIGMA in 0..255 (non-blind methods)")
    parser.add_argument("--tile", type=int, default=192, help="LR tile size (pixels)")
    parser.add_argument("--overlap", type=int, default=16, help="LR overlap between tiles (pixels)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    if args.overlap >= args.tile:
        parser.error(f"--overlap ({args.overlap}) must be smaller than --tile ({args.tile})")
    method, cfg, _ = load_checkpoint(args.ckpt, args.device)
    scale = cfg.data.scale
    kernel = parse_kernel(args.kernel, scale)
    written = []
    for path in input_files(args.inputs):
        lr = read_image(path)[None]
        sr = super_resolve_tiled(method, lr, kernel, args.noise / 255, scale, args.tile, args.overlap)
        name = os.path.splitext(os.path.basename(path))[0]
        written.append(write_image(os.path.join(args.out, f"{name}.png"), sr[0]))
        print(f"{path} {lr.shape[-1]}x{lr.shape[-2]} -> {written[-1]} {sr.shape[-1]}x{sr.shape[-2]}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
