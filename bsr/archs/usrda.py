"""USR_DA's networks (anse3832/USR_DA, the unofficial code people use; docs/methods.md).

Parameter names follow that code (`conv_featmap.{0,2,4,6,8}`, `conv_first`, `body.{i}.rdb{j}.conv{k}`,
`conv_body`, `conv_hr`, `conv_last`), so its generator weights load.
- `Encoder`: five 3x3 convs 3->64->...->64, LeakyReLU(0.2) after the first four; no downsampling.
- `IdentityDecoder`: conv_first 64->64, RRDB blocks, conv_body (+ skip), conv_hr + LeakyReLU, conv_last -> 3;
  no upsampling (feature -> target-style LR image).
- The SR decoder is ESRGAN's RRDBNet with a 64-channel input (bsr.archs.rrdb.RRDBNet(in_nc=64)).
- The discriminators are bsr.archs.discriminators.VGGDiscriminator (3x3 convs throughout).
"""
import torch.nn as nn

from .rrdb import RRDB


class Encoder(nn.Module):
    def __init__(self, nf=64):
        super().__init__()
        layers = []
        for i in range(5):
            layers.append(nn.Conv2d(3 if i == 0 else nf, nf, 3, 1, 1))
            if i < 4:
                layers.append(nn.LeakyReLU(0.2))
        self.conv_featmap = nn.Sequential(*layers)

    def forward(self, x):
        return self.conv_featmap(x)


class IdentityDecoder(nn.Module):
    def __init__(self, in_nc=64, out_nc=3, nf=64, nb=10, gc=32):
        super().__init__()
        self.conv_first = nn.Conv2d(in_nc, nf, 3, 1, 1)
        self.body = nn.Sequential(*[RRDB(nf, gc) for _ in range(nb)])
        self.conv_body = nn.Conv2d(nf, nf, 3, 1, 1)
        self.conv_hr = nn.Conv2d(nf, nf, 3, 1, 1)
        self.conv_last = nn.Conv2d(nf, out_nc, 3, 1, 1)
        self.lrelu = nn.LeakyReLU(0.2)

    def forward(self, x):
        feat = self.conv_first(x)
        feat = feat + self.conv_body(self.body(feat))
        return self.conv_last(self.lrelu(self.conv_hr(feat)))
