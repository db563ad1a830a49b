"""USRNet (Zhang et al., CVPR 2020): deep unfolding of y = (k ⊛ x)↓s + n.

Module and parameter names follow cszn/USRNet models/network_usrnet_v1.py (docs/methods.md)
so the released state dicts load: h.mlp.{0,2,4}; p.m_head,
p.m_down{1,2,3}.{0,..,nb-1}.res.{0,2} and p.m_down{i}.{nb} (2x2 stride-2 conv), p.m_body,
p.m_up{3,2,1}.0 (2x2 stride-2 transposed conv) and .{1..nb}.res.{0,2}, p.m_tail.
The data module D is `bsrops.USRNetDataTerm` (no parameters): its loop invariants are
computed once per forward, each of the K iterations is one fused solve.
"""

import torch
import torch.nn.functional as F
from torch import nn

import bsrops


class ResBlock(nn.Module):
    """conv3x3 - ReLU - conv3x3 + identity, bias-free (KAIR basicblock mode 'CRC')."""

    def __init__(self, channels):
        super().__init__()
        self.res = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1, bias=False), nn.ReLU(inplace=True),
                                 nn.Conv2d(channels, channels, 3, padding=1, bias=False))

    def forward(self, x):
        return x + self.res(x)


class ResUNet(nn.Module):
    """The prior P: a 4-level U-Net of residual blocks, skips by addition, all convs bias-free."""

    def __init__(self, in_nc=4, out_nc=3, nc=(64, 128, 256, 512), nb=2):
        super().__init__()
        self.m_head = nn.Conv2d(in_nc, nc[0], 3, padding=1, bias=False)
        for level in range(3):
            blocks = [ResBlock(nc[level]) for _ in range(nb)]
            down = nn.Conv2d(nc[level], nc[level + 1], 2, stride=2, bias=False)
            setattr(self, f"m_down{level + 1}", nn.Sequential(*blocks, down))
        self.m_body = nn.Sequential(*[ResBlock(nc[3]) for _ in range(nb)])
        for level in range(3, 0, -1):
            up = nn.ConvTranspose2d(nc[level], nc[level - 1], 2, stride=2, bias=False)
            setattr(self, f"m_up{level}", nn.Sequential(up, *[ResBlock(nc[level - 1]) for _ in range(nb)]))
        self.m_tail = nn.Conv2d(nc[0], out_nc, 3, padding=1, bias=False)

    def forward(self, x):
        h, w = x.shape[-2:]
        if h % 8 or w % 8:  # three stride-2 levels
            x = F.pad(x, (0, -w % 8, 0, -h % 8), mode="replicate")
        x1 = self.m_head(x)
        x2 = self.m_down1(x1)
        x3 = self.m_down2(x2)
        x4 = self.m_down3(x3)
        x = self.m_body(x4)
        x = self.m_up3(x + x4)
        x = self.m_up2(x + x3)
        x = self.m_up1(x + x2)
        x = self.m_tail(x + x1)
        return x[..., :h, :w]


class HyPaNet(nn.Module):
    """H: (σ, s) -> the K data weights α_i and K prior strengths β_i (softplus + 1e-6)."""

    def __init__(self, in_nc=2, out_nc=16, channel=64):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Conv2d(in_nc, channel, 1), nn.ReLU(inplace=True),
            nn.Conv2d(channel, channel, 1), nn.ReLU(inplace=True),
            nn.Conv2d(channel, out_nc, 1), nn.Softplus())

    def forward(self, x):
        return self.mlp(x) + 1e-6


class USRNet(nn.Module):
    """forward(y, kernel, scale, sigma): y (N, 3, h, w), kernel (N, k, k) or (N, 1, k, k),
    sigma (N,) or (N, 1, 1, 1) noise level in [0, 1] units -> x (N, 3, s·h, s·w), unclamped.

    `prior=False` runs the same unrolled network with an identity prior (data steps only:
    x_i = D(x_{i-1}, α_i)), the ablation that shows what the learned prior adds."""

    def __init__(self, n_iter=8, h_nc=64, in_nc=4, out_nc=3, nc=(64, 128, 256, 512), nb=2):
        super().__init__()
        self.n = n_iter
        self.p = ResUNet(in_nc, out_nc, nc, nb)
        self.h = HyPaNet(2, 2 * n_iter, h_nc)

    def hyper_parameters(self, sigma, scale):
        """(N, 2K, 1, 1): α_0..α_{K-1}, β_0..β_{K-1}."""
        sigma = sigma.reshape(-1, 1, 1, 1)
        return self.h(torch.cat((sigma, torch.full_like(sigma, float(scale))), dim=1))

    def forward(self, y, kernel, scale, sigma, prior=True):
        if kernel.dim() == 4:
            kernel = kernel.squeeze(1)
        data_term = bsrops.USRNetDataTerm(y, kernel, scale)
        x = F.interpolate(y, scale_factor=scale, mode="nearest")
        ab = self.hyper_parameters(sigma.to(y), scale)
        for i in range(self.n):
            x = data_term.solve(x, ab[:, i:i + 1])
            if prior:
                beta = ab[:, self.n + i:self.n + i + 1].expand(-1, 1, *x.shape[-2:])
                x = self.p(torch.cat((x, beta), dim=1))
        return x


def init_orthogonal(module, gain=0.2):
    """KAIR's init_weights('orthogonal', gain=0.2): orthogonal conv weights, zero biases."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.orthogonal_(m.weight, gain=gain)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def init_identity_skip(prior, channels=3):
    """Make the linear head -> skip -> tail path of a ResUNet the identity on the image
    channels (head filters c <- c and tail filters c <- c become centred deltas), the rest of
    the weights keeping their initialisation: the unrolled network then starts as the
    identity prior plus a small learned correction. An initialisation only (same parameters);
    it makes short CPU runs learn colour and detail much sooner than KAIR's plain init."""
    with torch.no_grad():
        centre = prior.m_head.weight.shape[-1] // 2
        prior.m_head.weight[:channels].zero_()
        prior.m_tail.weight[:, :channels].zero_()
        for c in range(channels):
            prior.m_head.weight[c, c, centre, centre] = 1.0
            prior.m_tail.weight[c, c, centre, centre] = 1.0


def parameter_count(module):
    return sum(p.numel() for p in module.parameters())


__all__ = ["HyPaNet", "ResBlock", "ResUNet", "USRNet", "init_identity_skip", "init_orthogonal", "parameter_count"]
