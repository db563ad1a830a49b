"""EDSR (Lim et al. 2017) as PDM uses it (UnpairedSR `archs/edsr.py`; docs/methods.md).

Input RGB in [0, 1]; internally x * rgb_range -> sub_mean -> head -> body (+ skip) -> tail
(upsampler + conv) -> add_mean -> / rgb_range. Parameter names follow the official
EDSR-PyTorch layout (`sub_mean`, `add_mean`, `head.0`, `body.{i}.body.{0,2}`, `body.{nb}`,
`tail.0.{0,2,...}`, `tail.1`), so edsr_baseline_x4 checkpoints load.
"""
import math

import torch
from torch import nn

RGB_MEAN = (0.4488, 0.4371, 0.4040)  # DIV2K mean


def conv3x3(in_ch, out_ch):
    return nn.Conv2d(in_ch, out_ch, 3, padding=1)


class MeanShift(nn.Conv2d):
    """1x1 conv adding (sign=+1) or subtracting (-1) the dataset mean. The official code sets
    `requires_grad=False` on the module, which does not freeze the parameters; we freeze them
    (the intent), which changes nothing when they are loaded from a checkpoint."""

    def __init__(self, rgb_range, sign):
        super().__init__(3, 3, kernel_size=1)
        self.weight.data.copy_(torch.eye(3).view(3, 3, 1, 1))
        self.bias.data.copy_(sign * rgb_range * torch.tensor(RGB_MEAN))
        self.requires_grad_(False)


class ResBlock(nn.Module):
    def __init__(self, nf, res_scale):
        super().__init__()
        self.body = nn.Sequential(conv3x3(nf, nf), nn.ReLU(), conv3x3(nf, nf))
        self.res_scale = res_scale

    def forward(self, x):
        return x + self.body(x) * self.res_scale


def upsampler(scale, nf):
    """(conv nf -> 4 nf, PixelShuffle 2) per factor 2, or (conv nf -> 9 nf, PixelShuffle 3)."""
    if scale & (scale - 1) == 0:
        layers = []
        for _ in range(int(math.log2(scale))):
            layers += [conv3x3(nf, 4 * nf), nn.PixelShuffle(2)]
        return nn.Sequential(*layers)
    if scale == 3:
        return nn.Sequential(conv3x3(nf, 9 * nf), nn.PixelShuffle(3))
    raise ValueError(f"EDSR: upscale must be a power of 2 or 3, got {scale}")


class EDSR(nn.Module):
    def __init__(self, nf=64, nb=16, upscale=4, res_scale=1.0, rgb_range=255.0):
        super().__init__()
        self.rgb_range = rgb_range
        self.sub_mean = MeanShift(rgb_range, -1)
        self.add_mean = MeanShift(rgb_range, +1)
        self.head = nn.Sequential(conv3x3(3, nf))
        self.body = nn.Sequential(*[ResBlock(nf, res_scale) for _ in range(nb)], conv3x3(nf, nf))
        self.tail = nn.Sequential(upsampler(upscale, nf), conv3x3(nf, 3))

    def forward(self, x):
        x = self.head(self.sub_mean(x * self.rgb_range))
        x = x + self.body(x)
        return self.add_mean(self.tail(x)) / self.rgb_range
