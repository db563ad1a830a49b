"""python -m bsr.train <method> [--preset demo|paper] [--config FILE.yaml] [--set key=value ...]
                       [--device auto|cpu|cuda|cuda:N] [--out RUN_DIR] [--resume] [--no-eval]

Trains a method (default: the `demo` preset on the embedded demo photos), then prints the
evaluation table of the final checkpoint on the validation images. `--device` sets the config key
`device` (default auto: CUDA when available, else the CPU). Multi-process: `torchrun
--nproc_per_node=N -m bsr.train ...`, one GPU per process (train.batch_size is the global batch,
split over the processes; it must divide by their number).
`--resume` continues RUN_DIR/checkpoints/last.pt exactly, with the configuration stored in it;
`--set` may change only the resumable keys (config.RESUMABLE: e.g. a larger train.iters extends
the run, a new train.lr moves the optimisers' rates), anything else is refused. Ctrl-C / SIGTERM save last.pt and exit with status 0; a
non-finite loss stops with status 3 and keeps the last good checkpoint.
"""
import argparse
import os
import sys

from . import cli
from . import config as config_lib


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bsr.train", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=f"methods and their presets:\n{config_lib.describe_methods()}")
    parser.add_argument("method", nargs="?")
    parser.add_argument("--preset", help="a preset of the method's YAML (default: demo; a resumed run keeps its own)")
    parser.add_argument("--config", help="YAML file merged over the preset")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key (repeatable), e.g. --set train.iters=2")
    cli.add_device_argument(parser, None)
    parser.add_argument("--out", help="run directory (default runs/<method>-<preset>)")
    parser.add_argument("--resume", action="store_true",
                        help="continue RUN_DIR/checkpoints/last.pt with its configuration; only "
                             f"{', '.join(config_lib.RESUMABLE)} may change")
    parser.add_argument("--no-eval", action="store_true", help="skip the final evaluation table")
    args = parser.parse_args(argv)
    if args.method is None:
        parser.error(f"which method? methods and their presets:\n{config_lib.describe_methods()}")
    if args.device:
        args.overrides.append(f"device={args.device}")
    return args


def main(argv=None):
    args = parse_args(argv)
    out = args.out or os.path.join("runs", f"{args.method}-{args.preset or 'demo'}")
    if args.resume:
        from .engine import read_checkpoint

        checkpoint = read_checkpoint(os.path.join(out, "checkpoints", "last.pt"), "--resume checkpoint")
        if checkpoint["method"] != args.method:
            raise config_lib.ConfigError(f"--resume: {out} holds a {checkpoint['method']} run, not {args.method}")
        cfg = config_lib.from_saved(checkpoint["config"], args.preset, args.config, args.overrides)
    else:
        checkpoint = False
        cfg = config_lib.load(args.method, args.preset or "demo", args.config, args.overrides)
    import torch.distributed as dist

    try:
        return train_and_evaluate(args, cfg, out, checkpoint)
    finally:
        if dist.is_initialized():  # under torchrun; else gloo's threads can die at exit ("terminate called ...")
            dist.destroy_process_group()


def train_and_evaluate(args, cfg, out, checkpoint):
    """The exit status: 0, or 3 when a loss became NaN / infinite. `checkpoint`: the resumed run's, or False."""
    from .engine import Engine, NonFiniteLoss

    engine = Engine(cfg, out, resume=checkpoint)
    try:
        status = engine.train()
    except NonFiniteLoss as error:
        print(f"error: {error}", file=sys.stderr, flush=True)
        return 3
    if status == "done" and engine.is_main and not args.no_eval:
        from .evaluate import evaluate_method

        evaluate_method(engine.method, engine.val_items or None, os.path.join(out, "eval"),
                        title=f"{args.method} ({args.preset}) after {engine.step} iterations")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
