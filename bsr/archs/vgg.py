"""VGG19 feature extractor with torchvision's module layout, without torchvision.

`features.N` indices equal torchvision's `vgg19().features`, so its ImageNet state dict
(`vgg19-dcbb9e9d.pth`, keys `features.N.weight/bias`, `classifier.*` ignored) loads as is. Layer
names follow BasicSR `vgg_arch.py` (conv5_4 = `features.34`, before its ReLU). Nothing is downloaded:
weights come from a file you give, or from the torch hub cache where torchvision would have put them.
"""
import os

import torch
from torch import nn

from ..io import UntrustedFileError, load_untrusted

VGG19_WEIGHTS_FILE = "vgg19-dcbb9e9d.pth"  # torchvision's file name in <torch hub dir>/checkpoints
_BLOCKS = ((64, 2), (128, 2), (256, 4), (512, 4), (512, 4))  # VGG19 (configuration "E"): channels, convs per block


def _layer_names():
    names = []
    for block, (_, convs) in enumerate(_BLOCKS, 1):
        for i in range(1, convs + 1):
            names += [f"conv{block}_{i}", f"relu{block}_{i}"]
        names.append(f"pool{block}")
    return tuple(names)


VGG19_LAYERS = _layer_names()  # position = index in `features`


def _features(count):
    """The first `count` modules of torchvision's vgg19().features."""
    layers, channels = [], 3
    for out_channels, convs in _BLOCKS:
        for _ in range(convs):
            layers += [nn.Conv2d(channels, out_channels, 3, padding=1), nn.ReLU()]  # not in place: conv outputs are returned
            channels = out_channels
        layers.append(nn.MaxPool2d(2, 2))
    return nn.Sequential(*layers[:count])


def default_weights_path():
    """<torch hub dir>/checkpoints/vgg19-dcbb9e9d.pth (where torchvision caches its download)."""
    return os.path.join(torch.hub.get_dir(), "checkpoints", VGG19_WEIGHTS_FILE)


class VGG19(nn.Module):
    """torchvision's VGG19 `features`, cut after `last_layer`; `forward` returns the named layers' outputs.

    With `weights` (a path, or True for `default_weights_path()`) the ImageNet weights are loaded and a
    missing file raises FileNotFoundError; with None the weights stay random (tests).
    """

    def __init__(self, last_layer="conv5_4", weights=None):
        super().__init__()
        if last_layer not in VGG19_LAYERS:
            raise ValueError(f"VGG19: last_layer must be one of {', '.join(VGG19_LAYERS)}, got {last_layer!r}")
        self.features = _features(VGG19_LAYERS.index(last_layer) + 1)
        if weights is not None:
            self.load_weights(default_weights_path() if weights is True else weights)

    def load_weights(self, path):
        """Load `features.*` from a torchvision-layout state dict file (other keys, e.g. classifier.*, ignored)."""
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"VGG19 weights not found at {path}. Put torchvision's ImageNet VGG19 state dict there "
                f"({VGG19_WEIGHTS_FILE}, keys features.N.weight/bias) or pass its path; nothing is downloaded.")
        state = load_untrusted(path, "VGG19 weights file")
        wanted = self.features.state_dict().keys()
        missing = [key for key in wanted if f"features.{key}" not in state]
        if missing:
            raise UntrustedFileError(f"VGG19 weights file {path!r} lacks features.{missing[0]} (and {len(missing) - 1} more); "
                           "expected torchvision's vgg19 state dict layout")
        self.features.load_state_dict({key: state[f"features.{key}"] for key in wanted})

    def forward(self, x, layers=None):
        """x: (N, 3, H, W) already normalised -> {name: feature} for `layers` (default: the last layer)."""
        layers = set(layers or [VGG19_LAYERS[len(self.features) - 1]])
        unknown = layers - set(VGG19_LAYERS[:len(self.features)])
        if unknown:
            raise ValueError(f"VGG19: layers {sorted(unknown)} are not among the first {len(self.features)} layers")
        out = {}
        for name, module in zip(VGG19_LAYERS, self.features):
            x = module(x)
            if name in layers:
                out[name] = x
                if len(out) == len(layers):
                    break
        return out
