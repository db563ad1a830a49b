"""PDM's probabilistic degradation model (greatlog/UnpairedSR `archs/deg_arch.py`; docs/methods.md).

DegModel(HR) -> (LR, kernel, noise):
    LR = blur_downsample(HR, K(z_k[, HR]), s) + N(z_n[, LR])      (reflect padding, upper-left phase)

Module and parameter names follow the official code so released checkpoints load:
`deg_kernel.deg_kernel.{0: conv, 1: BN, 3..2+nb: ResBlock(body.{0,1,3}), 3+nb: conv}` and
`deg_noise.deg_noise.{same}`.

Differences from the official code, all behind options whose defaults reproduce it where it works:
- Spatially variant kernels (`spatial` or `mix`) are predicted at LR resolution, one kernel per LR
  pixel, and applied by `bsrops.blur_downsample` with a per-pixel kernel map. The official code
  predicts them at HR resolution and crashes for scale > 1 (docs/fidelity.md). With `mix` the HR image
  enters as pixel_unshuffle(HR, s), which at s = 1 is the official input.
- `init="delta"` starts the kernel near a delta instead of the official near-box `zero_init`.
- NoiseModel with zero_init=False: the official `normal_(w, 0.001)` draws w ~ N(0.001, 1) (the
  positional argument is the mean); `official_normal_init=False` (pdm.noise.official_normal_init)
  draws N(0, 0.001) as intended.
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

import bsrops


class ResBlock(nn.Module):
    """conv - BN - ReLU - conv, plus identity (no activation after the add)."""

    def __init__(self, nf, ksize):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(nf, nf, ksize, 1, ksize // 2), nn.BatchNorm2d(nf), nn.ReLU(),
            nn.Conv2d(nf, nf, ksize, 1, ksize // 2))

    def forward(self, x):
        return x + self.body(x)


def generator_layers(in_nc, out_nc, nf, nb, head_k, body_k):
    """The shared trunk of netK and netN: conv - BN - ReLU - nb ResBlocks - conv 1x1."""
    return [nn.Conv2d(in_nc, nf, head_k, 1, head_k // 2), nn.BatchNorm2d(nf), nn.ReLU(),
            *[ResBlock(nf, body_k) for _ in range(nb)],
            nn.Conv2d(nf, out_nc, 1, 1, 0)]


def kernel_sizes(opt):
    """Official rule: without `spatial` every conv is 1x1 whatever head_k/body_k say."""
    if opt.get("spatial"):
        return opt.get("head_k", 3), opt.get("body_k", 3)
    return 1, 1


class KernelModel(nn.Module):
    """netK: z_k (and with `mix` the HR image) -> softmax-normalised ksize x ksize kernels.

    opt: nc (z_k channels), nf, nb, ksize, spatial, mix, head_k, body_k,
    init: "zero" (official zero_init, a near-box kernel), "delta", or "default" (PyTorch init);
    the official boolean `zero_init: true` means init "zero".
    """

    def __init__(self, opt, scale):
        super().__init__()
        self.scale, self.nc, self.ksize = scale, opt.get("nc", 0), opt.get("ksize", 21)
        self.spatial, self.mix = bool(opt.get("spatial")), bool(opt.get("mix"))
        if self.nc <= 0 and not self.mix:
            raise ValueError("KernelModel: nc must be > 0 unless mix is set (the input would be empty)")
        in_nc = self.nc + (3 * scale * scale if self.mix else 0)
        head_k, body_k = kernel_sizes(opt)
        layers = generator_layers(in_nc, self.ksize ** 2, opt["nf"], opt["nb"], head_k, body_k)
        self.deg_kernel = nn.Sequential(*layers, nn.Softmax(1))
        init = opt.get("init") or ("zero" if opt.get("zero_init") else "default")
        self.init_last(layers[-1], init)

    def init_last(self, conv, init):
        if init == "default":
            return
        if init not in ("zero", "delta"):
            raise ValueError(f"KernelModel: init must be 'zero', 'delta' or 'default', got {init!r}")
        nn.init.zeros_(conv.weight)
        nn.init.zeros_(conv.bias)
        taps = self.ksize ** 2
        # zero: centre logit 1 -> softmax e/(e + k^2 - 1), a near-box kernel (official).
        # delta: centre logit making the centre tap hold 99% of the mass.
        conv.bias.data[taps // 2] = 1.0 if init == "zero" else math.log(99.0 * (taps - 1))

    @property
    def per_pixel(self):
        """Kernels vary per LR pixel when the input has spatial extent."""
        return self.spatial or self.mix

    def kernels(self, x, noise=None):
        """HR (B, 3, H, W) -> kernels (B, k, k), or (B, k*k, H/s, W/s) per LR pixel.

        `noise` overrides the random z_k (B, nc, 1, 1) or (B, nc, H/s, W/s)."""
        b, _, h, w = x.shape
        s = self.scale
        if h % s or w % s:
            raise ValueError(f"KernelModel: HR size {h}x{w} must be divisible by the scale {s}")
        size = (h // s, w // s) if self.per_pixel else (1, 1)
        parts = [F.pixel_unshuffle(x, s)] if self.mix else []
        if self.nc > 0:
            z = noise if noise is not None else torch.randn(b, self.nc, *size, device=x.device, dtype=x.dtype)
            parts.append(z.expand(b, self.nc, *size))
        kernel = self.deg_kernel(torch.cat(parts, 1))
        return kernel if self.per_pixel else kernel.view(b, self.ksize, self.ksize)

    def forward(self, x, noise=None):
        kernel = self.kernels(x, noise)
        return bsrops.blur_downsample(x, kernel, stride=self.scale, padding="reflect"), kernel


class NoiseModel(nn.Module):
    """netN: z_n (and with `mix` the LR image) -> additive noise (B, dim, h, w).

    opt: nc, nf, nb, dim (1 or 3 output channels), spatial (3x3 convs and per-pixel z_n),
    mix (LR image as input), head_k, body_k, zero_init, official_normal_init (see module doc).
    """

    def __init__(self, opt, scale):
        super().__init__()
        self.scale, self.nc = scale, opt.get("nc", 0)
        self.spatial, self.mix = bool(opt.get("spatial")), bool(opt.get("mix"))
        if self.nc <= 0 and not self.mix:
            raise ValueError("NoiseModel: nc must be > 0 unless mix is set (the input would be empty)")
        head_k, body_k = kernel_sizes(opt)
        layers = generator_layers(self.nc + (3 if self.mix else 0), opt.get("dim", 3),
                                  opt["nf"], opt["nb"], head_k, body_k)
        self.deg_noise = nn.Sequential(*layers)
        last = layers[-1]
        nn.init.zeros_(last.bias)
        if opt.get("zero_init"):
            nn.init.zeros_(last.weight)
        elif opt.get("official_normal_init", True):
            nn.init.normal_(last.weight, mean=0.001, std=1.0)
        else:
            nn.init.normal_(last.weight, mean=0.0, std=0.001)

    def forward(self, x, noise=None):
        """LR (B, 3, h, w) -> noise (B, dim, h, w); `noise` overrides the random z_n."""
        b, _, h, w = x.shape
        parts = [x] if self.mix else []
        if self.nc > 0:
            size = (h, w) if self.spatial else (1, 1)
            z = noise if noise is not None else torch.randn(b, self.nc, *size, device=x.device, dtype=x.dtype)
            parts.append(z.expand(b, self.nc, h, w))  # a per-image z_n is repeated over the image
        return self.deg_noise(torch.cat(parts, 1))


class SoftQuantization(nn.Module):
    """Differentiable rounding to 1/255: x + sum_{i=1..n} (-1)^i sin(2 pi i 255 x) / (pi i) / 255,
    the Fourier series of round() truncated at n terms (DegModel without a noise model)."""

    def __init__(self, n=5):
        super().__init__()
        self.n = n

    def forward(self, x):
        out = x * 255.0
        for i in range(1, self.n + 1):
            out = out + (-1) ** i * torch.sin(2 * math.pi * i * 255.0 * x) / (math.pi * i)
        return out / 255.0


class _StraightThroughQuant(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return (x.clamp(0, 1) * 255.0).round() / 255.0

    @staticmethod
    def backward(ctx, grad):
        return grad


def quantize(x):
    """Clamp to [0, 1] and round to 1/255; identity gradient (the fake LR before the SR net)."""
    return _StraightThroughQuant.apply(x)


class DegModel(nn.Module):
    """HR -> (LR, kernel, noise). Without kernel_opt the blur is PyTorch bicubic (official);
    without noise_opt the LR is soft-quantised and noise is None. The noise model sees the
    blurred LR detached (official), so the noise loss never reaches netK."""

    def __init__(self, scale=4, nc_img=3, kernel_opt=None, noise_opt=None):
        super().__init__()
        if nc_img != 3:
            raise ValueError(f"DegModel: nc_img must be 3 (RGB), got {nc_img}")
        self.scale = scale
        self.deg_kernel = KernelModel(kernel_opt, scale) if kernel_opt else None
        if noise_opt:
            self.deg_noise = NoiseModel(noise_opt, scale)
        else:
            self.quant = SoftQuantization()

    def forward(self, x):
        if self.deg_kernel is not None:
            lr, kernel = self.deg_kernel(x)
        else:
            lr = F.interpolate(x, scale_factor=1 / self.scale, mode="bicubic", align_corners=False)
            kernel = None
        if hasattr(self, "deg_noise"):
            noise = self.deg_noise(lr.detach())
            return lr + noise, kernel, noise
        return self.quant(lr), kernel, None
