"""What the command-line tools share: a user's mistake (a bad file, image or config value) ends the
program with one `error: ...` line on stderr and exit status 2, not a traceback; the options that
choose a model (bsr.evaluate, bsr.infer) and their progress bars."""
import argparse
import sys

from tqdm import tqdm

from .config import ConfigError, is_device_name
from .data.io import ImageError
from .engine import load_checkpoint, load_weights
from .io import UntrustedFileError

DEFAULT_PRESET = "demo"  # the architecture of --weights without --preset: python -m bsr.train's default

USER_ERRORS = (ConfigError, FileNotFoundError, ImageError, UntrustedFileError)


def run(main, argv=None):
    """main(argv)'s exit status; 2 after printing a user error."""
    try:
        return main(argv)
    except USER_ERRORS as error:
        print(f"error: {error}", file=sys.stderr, flush=True)
        return 2


def progress_bar(iterable=None, **options):
    """A tqdm bar on stderr (shared with bsr.infer), redrawn at most every 0.1 s on a terminal and every
    10 s elsewhere (a log file or pipe gets a few updates, not one per step)."""
    return tqdm(iterable, file=sys.stderr, mininterval=0.1 if sys.stderr.isatty() else 10, **options)


def device_name(text):
    """argparse type of --device: a name config.is_device_name accepts."""
    if not is_device_name(text):
        raise argparse.ArgumentTypeError(f"expected auto, cpu, cuda or cuda:N, got {text!r}")
    return text


def add_device_argument(parser, default):
    """--device (shared by bsr.train, bsr.evaluate, bsr.infer); `default` None: the configuration's."""
    what = f"default: {default}" if default else "default: the config key device, auto unless set"
    parser.add_argument("--device", type=device_name, default=default,
                        help=f"auto (CUDA when available, else the CPU), cpu, cuda or cuda:N ({what})")


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
    add_device_argument(parser, "auto")


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
