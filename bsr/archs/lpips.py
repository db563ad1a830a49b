"""LPIPS v0.1 with the AlexNet backbone (Zhang et al. 2018), without the lpips/torchvision
packages: the network is defined here and loads weights from local files.

    metric = load_lpips(lin_path, alexnet_path)     # or load_lpips(full_lpips_state_dict_path)
    d = metric(sr, hr)                              # RGB in [0, 1] -> (N,) distances

Weights: `lin_path` is the lpips package's `weights/v0.1/alex.pth` (keys `lin{0..4}.model.1.weight`),
`alexnet_path` torchvision's ImageNet AlexNet (`features.{0,3,6,8,10}.*`; `classifier.*` ignored).
A state dict of a whole `lpips.LPIPS(net="alex")` (`net.slice{1..5}.{i}.*`, `lin*`,
`scaling_layer.*`) loads from one file. Nothing is downloaded: a missing file is an error.
"""
import os

import torch
from torch import nn

from ..io import load_untrusted

CHANNELS = (64, 192, 384, 256, 256)
SLICE_ENDS = (2, 5, 8, 10, 12)  # features[:2] -> relu1, [2:5] -> relu2, ... (lpips' slices)


def alexnet_features():
    """torchvision AlexNet `features` up to relu5 (indices as torchvision's, so its keys load)."""
    return nn.Sequential(
        nn.Conv2d(3, 64, 11, 4, 2), nn.ReLU(), nn.MaxPool2d(3, 2),
        nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
        nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(),
        nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(),
        nn.Conv2d(256, 256, 3, padding=1), nn.ReLU())


class LinLayer(nn.Module):
    """1x1 conv to one channel; `model.0` is lpips' (inactive at test) dropout."""

    def __init__(self, channels):
        super().__init__()
        self.model = nn.Sequential(nn.Dropout(), nn.Conv2d(channels, 1, 1, bias=False))


class LPIPS(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1))
        self.features = alexnet_features()
        for i, channels in enumerate(CHANNELS):
            setattr(self, f"lin{i}", LinLayer(channels))
        self.requires_grad_(False)
        self.eval()

    def activations(self, x):
        x = ((2 * x - 1) - self.shift) / self.scale  # [0, 1] -> lpips' [-1, 1] -> ImageNet scaling
        out, start = [], 0
        for end in SLICE_ENDS:
            x = self.features[start:end](x)
            out.append(x / (x.pow(2).sum(1, keepdim=True).sqrt() + 1e-10))  # unit norm per pixel
            start = end
        return out

    def forward(self, x, y):
        """(N, 3, H, W) pairs in [0, 1] -> (N,) perceptual distances."""
        if x.shape != y.shape or x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"LPIPS: x and y must be equal (N, 3, H, W) shapes, got {tuple(x.shape)} and {tuple(y.shape)}")
        total = 0
        for i, (fx, fy) in enumerate(zip(self.activations(x), self.activations(y))):
            total = total + getattr(self, f"lin{i}").model[1]((fx - fy) ** 2).mean((1, 2, 3))
        return total


def from_lpips_package_names(state_dict):
    """lpips.LPIPS keys -> ours: net.sliceK.i.* -> features.i.*, scaling_layer.* -> *."""
    out = {}
    for key, value in state_dict.items():
        if key.startswith("net.slice"):
            key = "features." + key.split(".", 3)[2] + "." + key.split(".", 3)[3]
        elif key.startswith("scaling_layer."):
            key = key[len("scaling_layer."):]
        out[key] = value
    return out


def _load(path):
    if not os.path.isfile(path):
        raise FileNotFoundError(f"LPIPS weights not found at {path!r} (nothing is downloaded; "
                                "copy lpips' weights/v0.1/alex.pth and torchvision's AlexNet there)")
    return load_untrusted(path, "LPIPS weights file")


def load_lpips(lin_path, alexnet_path=None):
    """An LPIPS metric from the lpips lin weights + torchvision AlexNet, or one full lpips state dict."""
    state = from_lpips_package_names(_load(lin_path))
    if alexnet_path is not None:
        state.update({k: v for k, v in _load(alexnet_path).items() if k.startswith("features.")})
    metric = LPIPS()
    missing, unexpected = metric.load_state_dict(state, strict=False)
    missing = [k for k in missing if k not in ("shift", "scale")]
    if missing or unexpected:
        raise ValueError(f"LPIPS weights do not match: missing {missing}, unexpected {unexpected}")
    return metric
