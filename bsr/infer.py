"""python -m bsr.infer (--ckpt CKPT | --method METHOD --weights FILE [--preset P]) INPUT... --out DIR
                       [--kernel gaussian:WIDTH|FILE.npy] [--noise SIGMA] [--tile N] [--overlap N]
                       [--device auto|cpu|cuda|cuda:N]

Super-resolves image files (or folders of them) of any size with a training checkpoint, or with a
weights file (python -m bsr.export's output, or an official release) and the preset that gives its
architecture, and writes <out>/<input name without extension>.png. Two inputs that would be written
to the same file (photo.png and photo.jpg, or photo.png in two folders; names differing only in case
count as the same, as on Windows and macOS) are an error naming both, before anything is processed.

Images larger than --tile LR pixels are processed in overlapping tiles whose outputs are averaged
over the overlaps (a progress bar per image counts the tiles). Memory: a row of tiles is accumulated
in float32 and its finished rows go into the 8-bit output, so a run needs about the 8-bit output
and input plus one row of tiles (a 4000x3000 photo at x4: the 576 MB output, not the 2.3 GB float
image). Non-blind methods (USRNet) need the blur kernel and take the noise level (SIGMA in 0..255
units); blind methods ignore both. `gaussian:WIDTH` is an isotropic 25x25 Gaussian of standard
deviation WIDTH moved by (s-1)/2 pixels so that it matches pixel-centre aligned real LR images (as
USRNet's main_test_realapplication.py); FILE.npy is a (k, k) kernel, normalised to sum 1.
"""
import argparse
import math
import os
import sys

import numpy as np
import torch

from . import cli, methods
from .data.io import IMAGE_EXTENSIONS, read_uint8, to_tensor, to_uint8, write_uint8
from .io import load_array
from .kernels import isotropic_gaussian_kernels, shift_by

GAUSSIAN_SIZE = 25
QUANTISE_ROWS = 64  # HR rows quantised at a time (bounds the float temporaries of a wide image)


def parse_kernel(spec, scale):
    """--kernel value -> (k, k) float32 tensor, or None."""
    if spec is None:
        return None
    if spec.startswith("gaussian:"):
        try:
            width = float(spec.split(":", 1)[1])
        except ValueError:
            width = float("nan")
        if not width > 0:
            raise ValueError(f"--kernel gaussian:WIDTH needs a number WIDTH > 0, got {spec!r}")
        kernel = isotropic_gaussian_kernels(width, GAUSSIAN_SIZE)[0].float()
        return shift_by(kernel, (scale - 1) / 2)
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


def coverage(starts, extent, size):
    """(size,) float32: how many of the intervals [start, start + extent) cover each position."""
    count = torch.zeros(size)
    for start in starts:
        count[start:start + extent] += 1
    return count


def super_resolve_tiled(method, image, kernel, noise_level, scale, tile, overlap, desc=None):
    """(h, w, 3) uint8 RGB LR -> (s*h, s*w, 3) uint8 RGB SR, tile by tile (progress bar `desc`).

    Each output pixel is the mean of the tile outputs covering it, summed in float32 in raster order
    of the tiles and quantised by data.io.to_uint8: exactly what one full-size float accumulator
    followed by to_uint8 gives. Only one row of tiles is held in float: the rows of the output that
    the next row of tiles does not reach are finished and quantised before it starts. Runs under
    torch.inference_mode."""
    h, w, channels = image.shape
    tops, lefts = tile_starts(h, tile, overlap), tile_starts(w, tile, overlap)
    rows, cols = min(tile, h) * scale, min(tile, w) * scale
    count_y = coverage([t * scale for t in tops], rows, h * scale)
    count_x = coverage([left * scale for left in lefts], cols, w * scale)
    out = np.empty((h * scale, w * scale, channels), np.uint8)
    strip = torch.zeros(channels, rows, w * scale)  # output rows [top * s, top * s + rows) of the tile row
    with cli.progress_bar(total=len(tops) * len(lefts), desc=desc, unit="tile") as progress, torch.inference_mode():
        for i, top in enumerate(tops):
            for left in lefts:
                patch = to_tensor(image[top:top + tile, left:left + tile])[None].to(method.device)
                strip[:, :, left * scale:left * scale + cols] += method.infer(patch, kernel, noise_level)[0].float().cpu()
                progress.update()
            done = (tops[i + 1] - top) * scale if i + 1 < len(tops) else rows
            _quantise_rows(strip[:, :done], count_y[top * scale:top * scale + done], count_x, out[top * scale:])
            strip[:, :rows - done] = strip[:, done:].clone()  # the overlap with the next row of tiles
            strip[:, rows - done:] = 0
    return out


def _quantise_rows(sums, count_y, count_x, out):
    """out[:n] = to_uint8(sums / (count_y x count_x)) for the n rows of `sums`, QUANTISE_ROWS at a time."""
    for start in range(0, sums.shape[1], QUANTISE_ROWS):
        part = sums[:, start:start + QUANTISE_ROWS]
        counts = count_y[start:start + QUANTISE_ROWS, None] * count_x[None]
        out[start:start + part.shape[1]] = to_uint8(part / counts)


def input_files(inputs):
    """The image files of `inputs` (files, or folders: their images, sorted), each once."""
    files = []
    for path in inputs:
        if os.path.isdir(path):
            files += sorted(os.path.join(path, f) for f in os.listdir(path) if f.lower().endswith(IMAGE_EXTENSIONS))
        else:
            files.append(path)
    if not files:
        raise FileNotFoundError(f"no input images in {inputs}")
    seen, unique = set(), []
    for path in files:
        if os.path.realpath(path) not in seen:
            seen.add(os.path.realpath(path))
            unique.append(path)
    return unique


def output_paths(files, out_dir):
    """{input: <out_dir>/<name>.png}; ValueError naming both inputs where two would share an output."""
    outputs, seen = {}, {}
    for path in files:
        outputs[path] = os.path.join(out_dir, os.path.splitext(os.path.basename(path))[0] + ".png")
        key = os.path.basename(outputs[path]).casefold()
        if key in seen:
            raise ValueError(f"inputs {seen[key]!r} and {path!r} would both be written to {outputs[path]!r} "
                             f"(outputs are named <input name>.png): rename one or run them separately")
        seen[key] = path
    return outputs


def check_options(parser, args):
    """Usage errors for --tile, --overlap and --noise (exit 2 naming the option)."""
    if args.tile < 1:
        parser.error(f"--tile must be at least 1 LR pixel, got {args.tile}")
    if args.overlap < 0:
        parser.error(f"--overlap must be >= 0, got {args.overlap}")
    if args.overlap >= args.tile:
        parser.error(f"--overlap ({args.overlap}) must be smaller than --tile ({args.tile})")
    if not (args.noise >= 0 and math.isfinite(args.noise)):
        parser.error(f"--noise must be a number >= 0 (a noise level in 0..255 units), got {args.noise:g}")


def build_parser():
    parser = argparse.ArgumentParser(prog="python -m bsr.infer", description=__doc__.split("\n\n")[1])
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="image files or folders")
    parser.add_argument("--method", choices=methods.available(),
                        help="the method of --weights (required with it; checked against --ckpt)")
    cli.add_model_arguments(parser)
    parser.add_argument("--out", required=True)
    parser.add_argument("--kernel", help="gaussian:WIDTH or FILE.npy (non-blind methods: required)")
    parser.add_argument("--noise", type=float, default=0.0, help="noise level SIGMA in 0..255 (non-blind methods)")
    parser.add_argument("--tile", type=int, default=192, help="LR tile size (pixels, default 192)")
    parser.add_argument("--overlap", type=int, default=16, help="LR overlap between tiles (pixels, default 16)")
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    check_options(parser, args)
    try:
        outputs = output_paths(input_files(args.inputs), args.out)
    except ValueError as error:
        parser.error(str(error))
    method, cfg, _ = cli.load_model(parser, args, args.method)
    if method.needs_kernel and args.kernel is None:
        parser.error(f"{method.name} is non-blind: give the blur kernel with --kernel gaussian:WIDTH or --kernel FILE.npy")
    try:
        kernel = parse_kernel(args.kernel, cfg.data.scale)
    except ValueError as error:  # a bad --kernel value or file
        parser.error(str(error))
    for path, target in outputs.items():
        image = read_uint8(path)
        sr = super_resolve_tiled(method, image, kernel, args.noise / 255, cfg.data.scale, args.tile, args.overlap,
                                 desc=os.path.basename(path))
        write_uint8(target, sr)
        print(f"{path} {image.shape[1]}x{image.shape[0]} -> {target} {sr.shape[1]}x{sr.shape[0]}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
