"""References for bsrops.dpcb (semantics: docs/ops.md).

- `DPCBReference`: an nn.Module written from the documented official structure (DANv2
  `dan_arch.py`), list interface included: it mutates the list it is given and returns it.
- `dpcb_reference`: the op in eager PyTorch, with the op's six outputs (the "reference" backend
  and the unfused baseline of the benchmarks).
"""
import torch
import torch.nn as nn
import torch.nn.functional as F


class DPCBReference(nn.Module):
    def __init__(self, nf1, nf2, ksize1=3, ksize2=1, negative_slope=0.2):
        super().__init__()
        self.body1 = nn.Sequential(nn.Conv2d(nf1, nf1, ksize1, 1, ksize1 // 2), nn.LeakyReLU(negative_slope, True),
                                   nn.Conv2d(nf1, nf1, ksize1, 1, ksize1 // 2))
        self.body2 = nn.Sequential(nn.Conv2d(nf2, nf1, ksize2, 1, ksize2 // 2), nn.LeakyReLU(negative_slope, True),
                                   nn.Conv2d(nf1, nf1, ksize2, 1, ksize2 // 2))

    def forward(self, x):
        f1 = self.body1(x[0])
        f2 = self.body2(x[1])
        x[0] = x[0] + torch.mul(f1, f2)
        x[1] = x[1] + f2
        return x


def dpcb_reference(x_img, x_cond, w1, b1, w2, b2, w3, b3, w4, b4, negative_slope=0.2):
    """(out_img, out_cond, h1, f1, h2, f2) in eager PyTorch."""
    h1 = F.leaky_relu(F.conv2d(x_img, w1, b1, padding=w1.shape[-1] // 2), negative_slope)
    f1 = F.conv2d(h1, w2, b2, padding=w2.shape[-1] // 2)
    h2 = F.leaky_relu(F.conv2d(x_cond, w3, b3, padding=w3.shape[-1] // 2), negative_slope)
    f2 = F.conv2d(h2, w4, b4, padding=w4.shape[-1] // 2)
    return x_img + f1 * f2, x_cond + f2, h1, f1, h2, f2
