"""RRDBNet (ESRGAN) with BasicSR parameter names, as PDM's test configs use it
(docs/methods.md): `conv_first`, `body.{i}.rdb{1,2,3}.conv{1..5}`, `conv_body`,
`conv_up1`, `conv_up2`, `conv_hr`, `conv_last`. Input/output RGB in [0, 1].

Scale 4 upsamples twice by nearest x2 + conv; scales 2 and 1 (BasicSR) first fold the input
with pixel_unshuffle (4 or 16 input channels per colour) and keep the same x4 tail.
`load_old_esrgan` maps the old ESRGAN names (`RRDB_trunk.{i}.RDB{j}`, `trunk_conv`, `upconv1`,
`HRconv`, RealSR's RRDB_PSNR_x4.pth) onto these.
"""
import re

import torch
import torch.nn.functional as F
from torch import nn


def lrelu():
    return nn.LeakyReLU(0.2)


class ResidualDenseBlock(nn.Module):
    def __init__(self, nf=64, gc=32):
        super().__init__()
        for i in range(5):
            out = nf if i == 4 else gc
            conv = nn.Conv2d(nf + i * gc, out, 3, 1, 1)
            # ESRGAN / BasicSR: Kaiming-normal (fan in) scaled by 0.1, zero bias, for the dense block's convs
            nn.init.kaiming_normal_(conv.weight)
            conv.weight.data.mul_(0.1)
            nn.init.zeros_(conv.bias)
            setattr(self, f"conv{i + 1}", conv)
        self.lrelu = lrelu()

    def forward(self, x):
        features = [x]
        for i in range(1, 5):
            features.append(self.lrelu(getattr(self, f"conv{i}")(torch.cat(features, 1))))
        return x + 0.2 * self.conv5(torch.cat(features, 1))


class RRDB(nn.Module):
    def __init__(self, nf, gc):
        super().__init__()
        self.rdb1, self.rdb2, self.rdb3 = (ResidualDenseBlock(nf, gc) for _ in range(3))

    def forward(self, x):
        return x + 0.2 * self.rdb3(self.rdb2(self.rdb1(x)))


class RRDBNet(nn.Module):
    def __init__(self, in_nc=3, out_nc=3, nf=64, nb=23, gc=32, upscale=4):
        super().__init__()
        if upscale not in (1, 2, 4):
            raise ValueError(f"RRDBNet: upscale must be 1, 2 or 4, got {upscale}")
        self.fold = 4 // upscale  # pixel_unshuffle factor that makes the x4 tail give `upscale`
        self.conv_first = nn.Conv2d(in_nc * self.fold ** 2, nf, 3, 1, 1)
        self.body = nn.Sequential(*[RRDB(nf, gc) for _ in range(nb)])
        self.conv_body = nn.Conv2d(nf, nf, 3, 1, 1)
        self.conv_up1 = nn.Conv2d(nf, nf, 3, 1, 1)
        self.conv_up2 = nn.Conv2d(nf, nf, 3, 1, 1)
        self.conv_hr = nn.Conv2d(nf, nf, 3, 1, 1)
        self.conv_last = nn.Conv2d(nf, out_nc, 3, 1, 1)
        self.lrelu = lrelu()

    def forward(self, x):
        if self.fold > 1:
            x = F.pixel_unshuffle(x, self.fold)
        feat = self.conv_first(x)
        feat = feat + self.conv_body(self.body(feat))
        for conv in (self.conv_up1, self.conv_up2):
            feat = self.lrelu(conv(F.interpolate(feat, scale_factor=2, mode="nearest")))
        return self.conv_last(self.lrelu(self.conv_hr(feat)))


OLD_ESRGAN_NAMES = [
    (r"^RRDB_trunk\.(\d+)\.RDB(\d)\.", r"body.\1.rdb\2."),
    (r"^trunk_conv\.", "conv_body."),
    (r"^upconv(\d)\.", r"conv_up\1."),
    (r"^HRconv\.", "conv_hr."),
]


def load_old_esrgan(state_dict):
    """Rename an old-ESRGAN-style state dict (RealSR, RRDB_PSNR_x4.pth) to BasicSR names."""
    renamed = {}
    for key, value in state_dict.items():
        for pattern, replacement in OLD_ESRGAN_NAMES:
            key = re.sub(pattern, replacement, key)
        renamed[key] = value
    return renamed
