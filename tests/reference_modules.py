"""Plain-layer modules of the official structures that only the tests compare against.

- `DPCGReference`: DANv2's DPCG (`dan_arch.py`), a chain of `bsrops.reference.dpcb.DPCBReference` with the list
  interface: the blocks mutate the list they are given and return it, so the group's "long skip" doubles the
  chain output (list aliasing).
- `NLayerDiscriminatorReference`, `PDMDiscriminatorReference`: pix2pix's NLayerDiscriminator (as RealSR uses it)
  and PDM-SR's PatchGANDiscriminator, one nn.Sequential `model` (state-dict keys `model.{i}`).
"""
import torch.nn as nn

from bsrops.reference.dpcb import DPCBReference


class DPCGReference(nn.Module):
    def __init__(self, nf1, nf2, ksize1, ksize2, nb):
        super().__init__()
        self.body = nn.Sequential(*[DPCBReference(nf1, nf2, ksize1, ksize2) for _ in range(nb)])

    def forward(self, x):
        y = self.body(x)  # the same list object as x
        y[0] = x[0] + y[0]
        y[1] = x[1] + y[1]
        return y


def _norm_layer(norm, channels):
    if norm == "batch":
        return nn.BatchNorm2d(channels)
    if norm == "instance":
        return nn.InstanceNorm2d(channels)
    return nn.Identity()


class NLayerDiscriminatorReference(nn.Module):
    """pix2pix NLayerDiscriminator: 4x4 convs, padding 1 (KAIR: 2), conv bias only without batch norm."""

    def __init__(self, in_nc=3, ndf=64, n_layers=3, norm="batch", padding=1):
        super().__init__()
        use_bias = norm != "batch"
        layers = [nn.Conv2d(in_nc, ndf, 4, 2, padding), nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, n_layers + 1):
            prev, mult = mult, min(2 ** n, 8)
            layers += [nn.Conv2d(ndf * prev, ndf * mult, 4, 2 if n < n_layers else 1, padding, bias=use_bias),
                       _norm_layer(norm, ndf * mult), nn.LeakyReLU(0.2, True)]
        layers += [nn.Conv2d(ndf * mult, 1, 4, 1, padding)]
        self.model = nn.Sequential(*layers)

    def forward(self, x):
        return self.model(x)


class PDMDiscriminatorReference(nn.Module):
    """PDM-SR PatchGANDiscriminator: 3x3 convs (pad 1), instance norm, the last conv to nf channels."""

    def __init__(self, in_c=3, nf=64, nb=3, stride=2):
        super().__init__()
        layers = [nn.Conv2d(in_c, nf, 3, 1, 1), nn.LeakyReLU(0.2, True)]
        for n in range(1, nb + 1):
            prev, cur = nf * min(2 ** (n - 1), 8), nf * min(2 ** n, 8)
            layers += [nn.Conv2d(prev, cur, 3, stride if n < nb else 1, 1), nn.InstanceNorm2d(cur),
                       nn.LeakyReLU(0.2, True)]
        layers += [nn.Conv2d(nf * min(2 ** nb, 8), nf, 3, 1, 1)]
        self.model = nn.Sequential(*layers)

    def forward(self, x):
        return self.model(x)
