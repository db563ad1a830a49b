"""nn.Module wrappers of the conv-block ops, with the official parameter names.

- `DPCB`, `DPCG`: DANv2's dual-path conditional block and group (a DPCB chain); keys
  `body1.{0,2}`, `body2.{0,2}` and `body.{b}.body1.0.weight`, ... as in `dan_arch.py`,
  so official state dicts load with `load_state_dict`.
- `PatchGANConv`: conv + norm + LeakyReLU over `torch.ops.bsrops.patchgan_conv`.

The discriminators built from PatchGANConv blocks are in `bsr.archs.discriminators`.
"""
import torch
import torch.nn as nn

from .ops._common import convs_in_channels_last, memory_format_of
from .ops.dpcb import dpcb
from .ops.patchgan_conv import NORMS, patchgan_conv


class DPCB(nn.Module):
    """forward(x_img, x_cond) -> (x_img + f1 * f2, x_cond + f2); x_cond (N, C, 1, 1) or image-sized."""

    def __init__(self, nf1, nf2, ksize1=3, ksize2=1, negative_slope=0.2):
        super().__init__()
        if nf1 != nf2:
            raise ValueError(f"DPCB: nf1 ({nf1}) must equal nf2 ({nf2}): the condition residual x_cond + f2 needs it")
        self.negative_slope = negative_slope
        self.body1 = nn.Sequential(nn.Conv2d(nf1, nf1, ksize1, 1, ksize1 // 2), nn.LeakyReLU(negative_slope, True),
                                   nn.Conv2d(nf1, nf1, ksize1, 1, ksize1 // 2))
        self.body2 = nn.Sequential(nn.Conv2d(nf2, nf1, ksize2, 1, ksize2 // 2), nn.LeakyReLU(negative_slope, True),
                                   nn.Conv2d(nf1, nf1, ksize2, 1, ksize2 // 2))

    def forward(self, x_img, x_cond):
        c1, c2, c3, c4 = self.body1[0], self.body1[2], self.body2[0], self.body2[2]
        return dpcb(x_img, x_cond, c1.weight, c1.bias, c2.weight, c2.bias, c3.weight, c3.bias, c4.weight, c4.bias,
                    self.negative_slope)


class DPCG(nn.Module):
    """nb DPCBs in `body`; forward(x_img, x_cond) -> (out_img, out_cond), each in its input's layout.

    legacy_doubling=True reproduces the official output, 2 x the chain output (the group's
    "long skip" adds the chain output to itself through list aliasing), so
    released checkpoints behave as trained; False gives the intended input + chain output.
    Where the blocks' convolutions run in channels_last (convs_in_channels_last: the CPU), the
    inputs are moved to it once and the whole chain runs there, with and without autograd.
    """

    def __init__(self, nf1, nf2, ksize1, ksize2, nb, legacy_doubling=True, negative_slope=0.2):
        super().__init__()
        self.legacy_doubling = legacy_doubling
        self.body = nn.Sequential(*[DPCB(nf1, nf2, ksize1, ksize2, negative_slope) for _ in range(nb)])

    def forward(self, x_img, x_cond):
        layouts = memory_format_of(x_img), memory_format_of(x_cond)
        img, cond = x_img, x_cond
        if convs_in_channels_last(x_img):
            img, cond = (t.contiguous(memory_format=torch.channels_last) for t in (img, cond))
        for block in self.body:
            img, cond = block(img, cond)
        if self.legacy_doubling:
            img, cond = img + img, cond + cond
        else:
            img, cond = x_img + img, x_cond + cond
        return img.contiguous(memory_format=layouts[0]), cond.contiguous(memory_format=layouts[1])


class PatchGANConv(nn.Module):
    """conv(k, stride, padding) -> norm (none | instance | batch) -> LeakyReLU, fused (bsrops.patchgan_conv).

    `conv` is an nn.Conv2d and `norm` an nn.InstanceNorm2d (affine=False by default, as pix2pix
    and PDM use it), an nn.BatchNorm2d, or None, so their parameters and buffers keep the
    usual names; batch norm in training mode updates running_mean / running_var and
    num_batches_tracked exactly like nn.BatchNorm2d.
    """

    def __init__(self, in_ch, out_ch, kernel_size=4, stride=2, padding=1, norm="instance", negative_slope=0.2,
                 activation=True, bias=True, affine=False):
        super().__init__()
        if norm not in NORMS:
            raise ValueError(f"PatchGANConv: norm must be one of {', '.join(NORMS)}, got {norm!r}")
        self.norm_type, self.negative_slope, self.activation = norm, negative_slope, activation
        self.conv = nn.Conv2d(in_ch, out_ch, kernel_size, stride, padding, bias=bias)
        if norm == "batch":
            self.norm = nn.BatchNorm2d(out_ch)
        elif norm == "instance":
            self.norm = nn.InstanceNorm2d(out_ch, affine=affine)
        else:
            self.norm = None

    def forward(self, x):
        norm = self.norm
        running_mean = running_var = None
        training, momentum, eps = True, 0.1, 1e-5
        if norm is not None:
            if norm.track_running_stats and norm.running_mean is not None:
                running_mean, running_var = norm.running_mean, norm.running_var
            training = norm.training or running_mean is None
            eps = norm.eps
            if isinstance(norm, nn.BatchNorm2d) and norm.training and norm.track_running_stats:
                norm.num_batches_tracked.add_(1)
                momentum = 1.0 / float(norm.num_batches_tracked) if norm.momentum is None else norm.momentum
            elif norm.momentum is not None:
                momentum = norm.momentum
            if isinstance(norm, nn.InstanceNorm2d):  # always per-plane statistics (no running stats)
                running_mean = running_var = None
                training = True
        return patchgan_conv(x, self.conv.weight, self.conv.bias, self.conv.stride[0], self.conv.padding[0],
                             self.norm_type, getattr(norm, "weight", None), getattr(norm, "bias", None), running_mean,
                             running_var, training, momentum, eps, self.negative_slope, self.activation)
