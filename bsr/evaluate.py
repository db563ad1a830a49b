"""python -m bsr.evaluate <method> (--ckpt PATH | --weights FILE [--preset P]) [--data DIR] [--out DIR]
                          [--set key=value ...] [--device auto|cpu|cuda|cuda:N]

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

from . import cli, data, degradations, methods
from .validation import run_validation

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
        with cli.progress_bar(items, desc=name, unit="image") as progress:
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


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bsr.evaluate", description=__doc__.split("\n\n")[1])
    parser.add_argument("method", choices=methods.available(), help="the method (of the checkpoint, or of --weights)")
    cli.add_model_arguments(parser)
    parser.add_argument("--data", help="folder of HR images, or with hr/ and lr/ sub-folders")
    parser.add_argument("--out", help="output folder (default: <run>/eval, or eval/ next to --weights)")
    args = parser.parse_args(argv)
    method, _, title = cli.load_model(parser, args, args.method)
    if args.ckpt:
        out = args.out or os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(args.ckpt))), "eval")
    else:
        out = args.out or os.path.join(os.path.dirname(os.path.abspath(args.weights)), "eval")
    evaluate_method(method, None, out, args.data, title=title)
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
