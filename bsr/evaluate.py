"""python -m bsr.evaluate <method> (--ckpt PATH | --weights FILE [--preset P]) [--data DIR] [--out DIR]
                          [--set key=value ...]

Evaluates a training checkpoint, or a weights file (python -m bsr.export's output, or an official
release) with the preset that gives its architecture (default: demo, what `python -m bsr.train
<method>` trains), on a folder (HR images, degraded by the method's validation
protocol; or hr/ + lr/ sub-folders of paired images) or, by default, on the embedded demo
validation images. Prints a table — PSNR and SSIM on Y (BasicSR formula) and on RGB with
the method's border crop, kernel error where the method estimates kernels — for the
method, bicubic upsampling and the method's own baselines, and writes metrics.json and
LR | SR | HR grids to DIR (default <ckpt folder>/../eval, or eval/ next to the weights file).
`--set eval.noise=0` etc. change the protocol. A progress bar per model counts the validation images.
"""
import argparse
import json
import os
import sys

from tqdm import tqdm

from . import cli, data, degradations, methods
from .engine import load_checkpoint, load_weights, run_validation

DEFAULT_PRESET = "demo"  # the architecture of --weights without --preset: python -m bsr.train's default

COLUMNS = (("psnr_y", "PSNR-Y", "{:.2f}"), ("ssim_y", "SSIM-Y", "{:.4f}"), ("psnr_rgb", "PSNR-RGB", "{:.2f}"),
           ("ssim_rgb", "SSIM-RGB", "{:.4f}"), ("kernel_error", "kernel err", "{:.3g}"))


def bicubic(method):
    def upsample(item):
        scale = item.get("scale", method.cfg.data.scale)
        return {"sr": degradations.imresize(item["lr"], scale)}
    return upsample


def format_table(rows, first="model"):
    """rows: [(label, metrics dict)] -> aligned text table of the columns present."""
    present = [c for c in COLUMNS if any(c[0] in m for _, m in rows)]
    header = [first] + [title for _, title, _ in present]
    body = [[label] + [fmt.format(m[key]) if key in m else "-" for key, _, fmt in present] for label, m in rows]
    widths = [max(len(r[i]) for r in [header] + body) for i in range(len(header))]
    line = lambda r: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
    return "\n".join([line(header), "  ".join("-" * w for w in widths)] + [line(r) for r in body])


def evaluate_method(method, items=None, out_dir=None, data_dir=None, title=None):
    """Evaluate the method and its baselines; print the tables; write metrics.json + grids."""
    items = items or data.validation_items(method.cfg, method, data_dir)
    models = {method.name: None, "bicubic": bicubic(method), **method.baselines()}
    results = {}
    for name, fn in models.items():
        sample_dir = os.path.join(out_dir, "images") if out_dir and fn is None else None
        with progress_bar(items, desc=name, unit="image") as progress:
            rows, mean = run_validation(method, progress, sample_dir, sr_fn=fn)
        results[name] = {"mean": mean, "items": rows}
    per_item = [(r["name"], r) for r in results[method.name]["items"]]
    print(f"\n{title or method.name}: {len(items)} validation images, border = method protocol\n")
    print(format_table(per_item, "image") + "\n")
    print(format_table([(name, r["mean"]) for name, r in results.items()]) + "\n", flush=True)
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
        with open(os.path.join(out_dir, "metrics.json"), "w") as f:
            json.dump({"title": title, "models": results}, f, indent=1)
    return results


def progress_bar(iterable=None, **options):
    """A tqdm bar on stderr (shared with bsr.infer), redrawn at most every 0.1 s on a terminal and every
    10 s elsewhere (a log file or pipe gets a few updates, not one per step)."""
    return tqdm(iterable, file=sys.stderr, mininterval=0.1 if sys.stderr.isatty() else 10, **options)


def add_model_arguments(parser):
    """The options choosing the model (shared with bsr.infer): exactly one of --ckpt / --weights,
    --preset (with --weights), --set, --device."""
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--ckpt", help="a bsr training checkpoint (RUN/checkpoints/last.pt): configuration and weights")
    source.add_argument("--weights", help="a weights file (.safetensors or .pth: python -m bsr.export's output "
                                          "or an official release); --preset gives the architecture")
    parser.add_argument("--preset", help=f"with --weights: the preset of the architecture (default: {DEFAULT_PRESET})")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="config overrides (architecture, evaluation protocol)")
    parser.add_argument("--device", default="cpu")


def load_model(parser, args, method_name):
    """(method, cfg, title) from the add_model_arguments options, networks loaded, eval mode; a usage error
    (parser.error) for --preset with --ckpt, --weights without a method, or a checkpoint of another method."""
    if args.ckpt:
        if args.preset:
            parser.error("--preset goes with --weights (a checkpoint holds its configuration)")
        method, cfg, step = load_checkpoint(args.ckpt, args.device, args.overrides)
        if method_name and method.name != method_name:
            parser.error(f"{args.ckpt} is a {method.name} checkpoint, not {method_name}")
        return method, cfg, f"{method.name} at iteration {step}"
    if not method_name:
        parser.error("--weights needs --method: the method whose networks the file holds")
    preset = args.preset or DEFAULT_PRESET
    method, cfg = load_weights(method_name, args.weights, preset, args.device, args.overrides)
    return method, cfg, f"{method_name} ({preset} preset) with weights {args.weights}"


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bsr.evaluate", description=__doc__.split("\n\n")[1])
    parser.add_argument("method", choices=methods.available(), help="the method (of the checkpoint, or of --weights)")
    add_model_arguments(parser)
    parser.add_argument("--data", help="folder of HR images, or with hr/ and lr/ sub-folders")
    parser.add_argument("--out", help="output folder (default: <run>/eval, or eval/ next to --weights)")
    args = parser.parse_args(argv)
    method, _, title = load_model(parser, args, args.method)
    if args.ckpt:
        out = args.out or os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(args.ckpt))), "eval")
    else:
        out = args.out or os.path.join(os.path.dirname(os.path.abspath(args.weights)), "eval")
    evaluate_method(method, None, out, args.data, title=title)
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
