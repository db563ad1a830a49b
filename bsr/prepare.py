"""Dataset preparation commands.

    python -m bsr.prepare cache DIR [DIR ...] [--cache CACHE] [--threads N]
    python -m bsr.prepare realsr-hr SRC --out HR [--factor 2] [--multiple 4]

cache: the prepared form of training folders (bsr/data/cache.py): each image decoded once, validated,
and stored as its uint8 pixels in a .npy file under CACHE (default: data.cache's default,
$XDG_CACHE_HOME/bsr/prepared), which training crops by memory map instead of decoding the file. A run
prepares its data.hr / data.lr folders itself on first use; this command does it ahead of the run.
Only images without an up-to-date entry (same path, size and mtime) are decoded.

realsr-hr: RealSR's clean-up of source photos into a clean HR set (Tencent/Real-SR
`create_kernel_dataset.py` / `create_bicubic_dataset.py`): every image of SRC shrunk by `factor` with
MATLAB-style antialiased bicubic (bsr.degradations.imresize), then cropped at the bottom and right to
a multiple of `multiple` (the x4 of the LR made from it), written to HR/<name>.png.
"""
import argparse
import os

from .data import cache
from .data.io import list_images, read_image, write_image
from .degradations import imresize


def clean_hr(image, factor=2, multiple=4):
    """(3, H, W) float in [0, 1] -> (3, h, w): imresize by 1/factor (output ceil(H / factor)), then the
    top-left crop whose sides are multiples of `multiple`."""
    small = imresize(image[None], scale=1 / factor)[0]
    height, width = small.shape[-2:]
    return small[:, :height - height % multiple, :width - width % multiple]


def realsr_hr(source, out, factor=2, multiple=4):
    """Write clean_hr of every image of the folder `source` to `out`/<name>.png; returns the paths written."""
    written = []
    for path in list_images(source):
        name = os.path.splitext(os.path.basename(path))[0]
        written.append(write_image(os.path.join(out, name + ".png"), clean_hr(read_image(path), factor, multiple)))
        print(f"{path} -> {written[-1]}", flush=True)
    return written


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bsr.prepare", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    prepared = commands.add_parser("cache", help="decode training folders once into memory-mappable arrays")
    prepared.add_argument("folders", nargs="+", metavar="DIR", help="image folders (data.hr, data.lr)")
    prepared.add_argument("--cache", default=None, help=f"where the prepared form goes (data.cache; default "
                                                         f"{cache.default_root()})")
    prepared.add_argument("--threads", type=int, default=None, help="decoding threads (default: the usable CPUs)")
    realsr = commands.add_parser("realsr-hr", help="RealSR's clean HR set: source photos bicubic-shrunk by 2")
    realsr.add_argument("source", help="folder of source images")
    realsr.add_argument("--out", required=True, help="folder for the clean HR PNGs")
    realsr.add_argument("--factor", type=int, default=2, help="shrink factor (official cleanup_factor: 2)")
    realsr.add_argument("--multiple", type=int, default=4, help="crop sides to a multiple of this (the SR scale)")
    args = parser.parse_args(argv)
    if args.command == "cache":
        prepare_folders(parser, args)
        return
    if args.factor < 1 or args.multiple < 1:
        parser.error(f"--factor and --multiple must be >= 1, got {args.factor} and {args.multiple}")
    realsr_hr(args.source, args.out, args.factor, args.multiple)


def prepare_folders(parser, args):
    root = cache.cache_root(args.cache)
    if root is None or (args.threads is not None and args.threads < 1):
        parser.error(f"--cache must be a folder and --threads >= 1, got {args.cache!r} and {args.threads}")
    for folder in args.folders:
        entries = cache.prepare(folder, root, args.threads)
        print(f"{folder}: {len(entries)} images prepared in {os.path.dirname(entries[0])}", flush=True)


if __name__ == "__main__":
    main()
