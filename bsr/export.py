"""python -m bsr.export CKPT --out FILE.safetensors|FILE.pth [--net NAME]

Writes the weights of a bsr training checkpoint for inference, without its optimisers, RNG states
or configuration: by default the method's inference networks (Method.inference_nets) — one network
as its plain state dict, several (USR_DA's encoder and SR decoder) in one dict whose keys are
prefixed "<net>.", their EMA weights when the run kept an EMA (train.ema) — or, with --net, that one
network of the checkpoint (a discriminator too) as its plain state dict. Parameter names are bsr's, which are the official releases' (what --weights of
bsr.evaluate / bsr.infer and the methods' `pretrained` options load). The format follows the
extension: `.safetensors` (tensors only, no pickle; the method, networks and step are stored as
metadata) or `.pth` / `.pt` (torch.save of the state dict). Tensors are written contiguous and
unshared; the file appears atomically (a temporary file renamed into place). The checkpoint is read
with engine.read_checkpoint: a file that is not a bsr checkpoint, or that would run code, is refused.
"""
import argparse
import sys

import torch

from . import cli, methods
from .engine import atomic_save, read_checkpoint

FORMATS = (".safetensors", ".pth", ".pt")


def export_state(checkpoint, net=None):
    """(state dict, names of the networks in it) of a checkpoint dict: network `net` (plain), or the
    method's inference networks (one: plain; several: keys prefixed "<net>."), their EMA weights when the run
    kept them (train.ema). ValueError listing the checkpoint's networks when `net` is not one of them."""
    nets = {**checkpoint["nets"], **(checkpoint.get("ema") or {})}
    if net is not None and net not in nets:
        raise ValueError(f"--net {net!r}: this {checkpoint['method']} checkpoint has the networks {sorted(nets)}")
    names = (net,) if net else methods.get(checkpoint["method"]).inference_nets
    if len(names) == 1:
        return _unshared(nets[names[0]]), names
    return _unshared({f"{name}.{key}": value for name in names for key, value in nets[name].items()}), names


def _unshared(state):
    """Each tensor in its own contiguous storage (safetensors refuses shared or strided tensors)."""
    return {key: value.detach().clone(memory_format=torch.contiguous_format) for key, value in state.items()}


def save_weights(state, path, metadata=None):
    """Write `state` to `path`, a .safetensors file (with the strings `metadata`) or else by torch.save,
    atomically (engine.atomic_save)."""
    if not path.lower().endswith(".safetensors"):
        return atomic_save(state, path)
    from safetensors.torch import save_file

    return atomic_save(state, path, lambda obj, tmp: save_file(obj, tmp, metadata=metadata))


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bsr.export", description=__doc__.split("\n\n")[1])
    parser.add_argument("ckpt", metavar="CKPT", help="a bsr training checkpoint (RUN/checkpoints/last.pt)")
    parser.add_argument("--out", required=True, help=f"output weights file ({', '.join(FORMATS)})")
    parser.add_argument("--net", help="export this network of the checkpoint only (default: the inference networks)")
    args = parser.parse_args(argv)
    if not args.out.lower().endswith(FORMATS):
        parser.error(f"--out {args.out!r}: the extension must be one of {', '.join(FORMATS)}")
    checkpoint = read_checkpoint(args.ckpt)
    try:
        state, names = export_state(checkpoint, args.net)
    except ValueError as error:
        parser.error(str(error))
    metadata = {"format": "pt", "method": checkpoint["method"], "nets": ",".join(names),
                "step": str(checkpoint["step"])}
    save_weights(state, args.out, metadata)
    count = sum(value.numel() for value in state.values())
    print(f"{args.out}: {checkpoint['method']} {', '.join(names)} at iteration {checkpoint['step']} "
          f"({len(state)} tensors, {count} values)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
