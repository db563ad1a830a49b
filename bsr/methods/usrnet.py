"""USRNet (docs/methods.md): non-blind unfolding SR, trained as KAIR does.

Training data synthesis (KAIR data/dataset_usrnet.py): one scale per batch from
usrnet.scales; per sample a motion kernel (probability 1/2) or a random anisotropic
Gaussian (USRNet's gen_kernel ranges), circular true convolution with upper-left
decimation (`blur_downsample(padding="circular", flip=True)`), then AWGN with σ = 0
(probability 1/9) or σ ~ U{0..24}/255 (bsr.kernels, bsr.degradations), drawn from (seed, step).
LR stays float (KAIR blurs the uint8 HR into uint8: a quantisation we drop). L1 loss, Adam,
MultiStepLR (train.milestones, train.gamma).

USRGAN (usrnet.gan.enabled; preset paper-usrgan): the same network and data
with w_pixel L1 + w_perceptual VGG19-conv5_4 (L1, ImageNet input norm) + w_adversarial
relativistic-average GAN (ESRGAN's RaGAN, BCE), and a pix2pix NLayer PatchGAN discriminator
("netD", built from bsrops.nn.PatchGANConv) trained with the discriminator side of the same
loss. KAIR ships USRGAN weights but no training config (docs/fidelity.md): the loss
types and the weights 1 / 1 / 0.005 follow the USRNet paper's description and ESRGAN's
adversarial weight, the discriminator is our choice; all are config keys. usrnet.pretrained
starts the generator from a USRNet checkpoint (ESRGAN's practice: GAN training from the PSNR model).

Evaluation protocol (`eval` config section): HR modcropped to lcm(8, scales); for each
image, scale in eval.scales and kernel in eval.kernels (indices into protocol_kernels,
the 12 kernels of Table 1): LR made exactly as in training plus AWGN of σ = eval.noise
(seeded per image and degradation), RGB PSNR with border s² (main_test_table1.py).
With eval.shift_kernels the kernels are shifted by (s-1)/2 pixels as KAIR's shift_pixel
does, so the LR is pixel-centre aligned and bicubic upsampling is a fair baseline.
"""
import math

import numpy as np
import torch
import torch.nn.functional as F

from .. import degradations
from ..archs.discriminators import PatchGANDiscriminator
from ..archs.usrnet import USRNet as USRNetArch
from ..archs.usrnet import init_identity_skip, init_orthogonal
from ..kernels import covariance, gaussian_kernels, motion_kernels, shift_by, usrnet_random_kernels
from . import register
from .base import Method

KERNEL_SIZE = 25


def protocol_kernels(size=KERNEL_SIZE, shift=0.0):
    """The 12 evaluation kernels of USRNet Table 1, generated here with documented parameters:
    0-3 isotropic Gaussians, standard deviations 0.7, 1.2, 1.6, 2.0;
    4-7 anisotropic Gaussians, (σ_major, σ_minor, θ) = (2.0, 0.8, 0), (2.4, 1.0, π/4),
        (2.8, 1.2, π/2), (3.2, 1.4, 3π/4);
    8-11 USRNet-style motion kernels drawn with seeds 0..3;
    all size x size, then moved by `shift` pixels up and left (bsr.kernels.shift_by)."""
    gaussians = [(s, s, 0.0) for s in (0.7, 1.2, 1.6, 2.0)]
    gaussians += [(2.0, 0.8, 0.0), (2.4, 1.0, math.pi / 4), (2.8, 1.2, math.pi / 2), (3.2, 1.4, 3 * math.pi / 4)]
    major, minor, theta = zip(*gaussians)
    kernels = list(gaussian_kernels(covariance(major, minor, theta), size, (size - 1) / 2))
    kernels += [motion_kernels(1, size, torch.Generator().manual_seed(seed))[0] for seed in range(4)]
    return torch.stack([shift_by(k.float(), shift) if shift else k.float() for k in kernels])


def smooth_periodic_pad(x, height, width):
    """Extend (N, C, h, w) to (N, C, height, width) so that the result is continuous when
    tiled periodically: the added columns (then rows) blend from the last column to the first
    with a raised-cosine weight. The FFT data step assumes a circular boundary; this is a
    simpler stand-in for USRNet's `wrap_boundary_liu` (Liu & Jia's boundary smoothing)."""
    def extend(x, extra, dim):
        if extra <= 0:
            return x
        t = torch.arange(1, extra + 1, dtype=x.dtype, device=x.device) / (extra + 1)
        weight = ((1 - torch.cos(math.pi * t)) / 2).view(*([1] * (x.dim() - 1)), extra).transpose(-1, dim)
        last, first = x.narrow(dim, x.shape[dim] - 1, 1), x.narrow(dim, 0, 1)
        return torch.cat((x, last * (1 - weight) + first * weight), dim=dim)
    return extend(extend(x, width - x.shape[-1], -1), height - x.shape[-2], -2)


@register("usrnet")
class USRNet(Method):
    data_kind = "hr"
    inference_nets = ("usrnet",)
    scales = (1, 2, 3, 4)
    needs_kernel = True

    def __init__(self, cfg, device, for_training=True):
        super().__init__(cfg, device, for_training)
        u = cfg.usrnet
        if cfg.data.hr_patch < KERNEL_SIZE:  # the FFT data term embeds the kernel in the HR patch
            raise ValueError(f"usrnet needs data.hr_patch >= {KERNEL_SIZE} (the kernel size); got {cfg.data.hr_patch}")
        net = USRNetArch(n_iter=u.n_iter, h_nc=u.h_nc, nc=tuple(u.nc), nb=u.nb)
        init_orthogonal(net, u.init_gain)
        if u.get("init_identity_skip"):
            init_identity_skip(net.p)
        self.add_net("usrnet", net, cfg.train.lr)
        if u.get("pretrained") and for_training:  # USRGAN starts from a trained USRNet, as ESRGAN from its PSNR model
            self.load_pretrained("usrnet", u.pretrained, "usrnet.pretrained")
        self.gan = u.get("gan") if u.get("gan", {}).get("enabled") else None
        if self.gan:
            self._build_usrgan(self.gan)
        self.eval_kernels = {}

    def _build_usrgan(self, g):
        d = g.discriminator
        self.add_srgan(lambda: PatchGANDiscriminator.nlayer(3, d.ndf, d.n_layers, d.norm), g.get("lr_d") or self.cfg.train.lr,
                       g, g.get("vgg_weights"))

    # ------------------------------------------------------------------ training data
    def step_generator(self, step):
        return torch.Generator().manual_seed(int(np.random.SeedSequence([self.cfg.seed, step]).generate_state(1)[0]))

    def synthesize(self, hr, step):
        """HR batch -> (LR, kernels (B, k, k), σ (B,), scale): KAIR's degradation
        (bsr.kernels.usrnet_random_kernels, bsr.degradations.usrnet_noise_levels), circular convolution,
        upper-left decimation, AWGN. The draws of the whole global batch (all DDP ranks) come
        from one generator seeded by (seed, step), batched (the motion-kernel walk is the
        slow part), and each rank keeps its slice: 2 ranks with batch B draw exactly what one
        process with batch 2B draws."""
        generator = self.step_generator(step)
        scales = list(self.cfg.usrnet.scales)
        scale = int(scales[torch.randint(len(scales), (1,), generator=generator).item()])
        b, total = hr.shape[0], hr.shape[0] * self.world_size
        mine = slice(self.rank * b, (self.rank + 1) * b)
        kernels = usrnet_random_kernels(total, KERNEL_SIZE, generator)[mine].to(hr)
        sigma = degradations.usrnet_noise_levels(total, generator)[mine].to(hr)
        lr = degradations.blur_downsample(hr, kernels, scale, padding="circular", flip=True)
        noise = torch.randn((total, *lr.shape[1:]), generator=generator)[mine].to(hr)
        return lr + sigma.view(-1, 1, 1, 1) * noise, kernels, sigma, scale

    def train_step(self, batch, step):
        hr = batch["hr"]
        with torch.no_grad(), torch.autocast(hr.device.type, enabled=False):
            lr, kernels, sigma, scale = self.synthesize(hr, step)
        sr = self.nets["usrnet"](lr, kernels, scale, sigma).float()
        if self.gan:
            return self.srgan_step("usrnet", sr, hr, self.gan)
        loss = F.l1_loss(sr, hr)
        self.optimize(loss, "usrnet")
        return {"l1": loss.item()}

    # ------------------------------------------------------------------ inference / evaluation
    @torch.no_grad()
    def super_resolve(self, lr, kernel=None, noise_level=None, scale=None, prior=True):
        if kernel is None:
            raise ValueError("USRNet is non-blind: super_resolve needs the blur kernel (k, k) or (N, k, k)")
        scale = scale or self.cfg.data.scale
        kernel = kernel.to(lr).expand(lr.shape[0], *kernel.shape[-2:]) if kernel.dim() == 2 else kernel.to(lr)
        sigma = torch.full((lr.shape[0],), float(noise_level or 0.0), device=lr.device)
        return self.module("usrnet")(lr, kernel, scale, sigma, prior=prior)

    @torch.no_grad()
    def validate(self, item):
        return {"sr": self.super_resolve(item["lr"], item["kernel"], item.get("noise_level"), item.get("scale"))}

    @torch.no_grad()
    def infer(self, lr, kernel=None, noise_level=None):
        """Real images: extend to a smooth periodic image (sides a multiple of 8, at least 16
        more pixels, as main_test_realapplication.py; and at least the kernel once upscaled, for the
        FFT data term), super-resolve, crop back."""
        h, w = lr.shape[-2:]
        scale = self.cfg.data.scale
        side = lambda n: max(math.ceil(n / 8) + 2, math.ceil(KERNEL_SIZE / (8 * scale))) * 8
        padded = smooth_periodic_pad(lr, side(h), side(w))
        return self.super_resolve(padded, kernel, noise_level)[..., :h * scale, :w * scale]

    def baselines(self):
        def identity_prior(item):
            sr = self.super_resolve(item["lr"], item["kernel"], item.get("noise_level"), item.get("scale"), prior=False)
            return {"sr": sr}
        return {"identity prior": identity_prior}

    def eval_scales(self):
        return [int(s) for s in self.cfg.eval.scales]

    def modcrop_multiple(self):
        return math.lcm(8, *self.eval_scales())

    def border(self, scale):
        return scale * scale

    def min_validation_size(self):
        """The modcrop multiple, the kernel (the circular blur wraps once at most) and the s² borders."""
        return max(self.modcrop_multiple(), KERNEL_SIZE, *(2 * self.border(s) + 1 for s in self.eval_scales()))

    def protocol_kernels(self, scale):
        shift = (scale - 1) / 2 if self.cfg.eval.get("shift_kernels") else 0.0
        if shift not in self.eval_kernels:
            self.eval_kernels[shift] = protocol_kernels(KERNEL_SIZE, shift)
        return self.eval_kernels[shift]

    def degrade_for_validation(self, hr, index):
        """One LR per (scale, kernel) of the protocol, with AWGN σ = eval.noise."""
        sigma = float(self.cfg.eval.noise)
        items = []
        for scale in self.eval_scales():
            for j in self.cfg.eval.kernels:
                kernel = self.protocol_kernels(scale)[j]
                lr = degradations.blur_downsample(hr, kernel, scale, padding="circular", flip=True)
                lr = degradations.add_noise(lr, sigma, torch.Generator().manual_seed(10_000 * index + 100 * scale + j))
                items.append({"lr": lr, "kernel": kernel, "noise_level": sigma, "scale": scale,
                              "tag": f"x{scale}_k{j}"})
        return items
