"""RealSR: "Real-World Super-Resolution via Kernel Estimation and Noise Injection" (Ji et al., CVPRW 2020;
Tencent/Real-SR; docs/methods.md). ESRGAN trained on LR made by the source domain's own degradation.

Data (`data.hr`: clean HR images; `data.lr`: the source-domain images whose degradation is unknown;
an unpaired method for the engine, whose LR crops it does not use: it makes its own LR):
- kernel pool (realsr.track "kernel", the DPED recipe): KernelGAN (bsr/kernelgan/) on every source
  image, its x4 (or x2) kernel; or the `*_kernel_x{s}.mat` files of `python -m bsr.kernelgan` in
  `realsr.kernels`. Track "bicubic" (the DF2K recipe) uses MATLAB bicubic instead of kernels.
- noise pool (`collect_noise.py`): the non-overlapping realsr.noise.patch windows of the source images
  whose grey level (0..255) has variance < max_var and mean > min_mean.
- each step: LR = correlate(HR, kernel) (scipy's half-sample symmetric border) keeping rows/cols
  0, s, 2s, ... (bsrops.blur_downsample), 8-bit like the official LR files. HR crops carry
  realsr.margin extra pixels per side (the x4 kernel's radius) that are cut after degradation, so the
  LR is what the official whole-image degradation gives. Then, as the official dataset does with its
  stored pairs, the (HR, LR) pair gets one random dihedral transform (flip/rotation) and the LR
  + a random noise crop minus its per-channel mean, clamped to [0, 1]. Degrading first keeps the
  LR/HR alignment of every transform: KernelGAN centres a x s kernel on the middle of the s x s cell,
  which a flip maps onto itself, while flipping the kernel instead would move it by s - 1 pixels.
Training (`SRGAN_model.py`): RRDBNet; G: 0.01 L1 + 1 VGG19-conv5_4 (L1) + 0.005 RaGAN against the
discriminator, then the D update; Adam 1e-4 for both, halved at 5k/10k/20k/30k, batch 16, HR 128.
Discriminator (realsr.discriminator.arch): "patch", the pix2pix NLayer PatchGAN with batch norm (the
DPED yml; `bsr.archs.discriminators.PatchGANDiscriminator`), or "vgg128", ESRGAN's Discriminator_VGG_128 (the DF2K
yml, preset paper-df2k; bsr.archs.discriminators), both on the fused bsrops.nn.PatchGANConv blocks.
Validation: SR, and the kernel pool's mean as "kernel_est" (compared with a known true kernel, after
moving it from KernelGAN's phase, the middle of the s x s cell, to bsr's, its upper-left pixel).

The official clean-up (the source images bicubic-downscaled x1/2 as the HR set) is
`python -m bsr.prepare realsr-hr SRC --out HR` (bsr/prepare.py); give its output as data.hr.
"""
import numpy as np
import torch

from .. import degradations, kernelgan
from ..archs.discriminators import PatchGANDiscriminator, VGGDiscriminator
from ..archs.rrdb import RRDBNet, load_old_esrgan
from ..config import ConfigError
from ..data import lr_images
from ..kernels import dihedral, read_kernel_files, shift_centre_of_mass, stack_centred
from . import register
from .base import Method

TRACKS = ("kernel", "bicubic")


def collect_noise(images, patch, max_var, min_mean):
    """(M, 3, patch, patch) uint8 windows (stride patch) whose grey level is flat enough (RealSR collect_noise)."""
    found = []
    for index in range(len(images)):
        _, image = images[index]
        grey = image.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
        for top in range(0, image.shape[0] - patch + 1, patch):
            for left in range(0, image.shape[1] - patch + 1, patch):
                window = grey[top:top + patch, left:left + patch]
                if window.var() < max_var and window.mean() > min_mean:
                    found.append(torch.from_numpy(image[top:top + patch, left:left + patch].copy()).permute(2, 0, 1))
    if not found:
        raise ValueError(f"realsr: no {patch}x{patch} window of the source images has grey variance < {max_var} "
                         f"and mean > {min_mean} (realsr.noise); lower the patch or raise max_var")
    return torch.stack(found)


def estimate_kernels(images, scale, opt, device="cpu"):
    """(K, k, k) float32 (CPU): KernelGAN's x`scale` kernel of every source image, trained on `device`."""
    kernels = []
    for index in range(len(images)):
        name, image = images[index]
        k2, k4 = kernelgan.estimate_kernel(image / 255.0, opt.iterations, opt.get("real_image", False),
                                           opt.get("channels", 64), opt.get("seed", 0) + index, device=device,
                                           grouped_bicubic_loss=opt.get("grouped_bicubic_loss", False))
        kernels.append(torch.from_numpy(k4 if scale == 4 else k2))
        print(f"realsr: KernelGAN kernel of {name}: {tuple(kernels[-1].shape)}", flush=True)
    return stack_centred(kernels).float()


@register("realsr")
class RealSR(Method):
    data_kind = "unpaired"
    augment_crops = False  # the official order: degrade the crop, then flip/rotate the (HR, LR) pair
    inference_nets = ("netG",)
    scales = (2, 4)  # RRDBNet, KernelGAN's x2 / x4 kernels

    def __init__(self, cfg, device, for_training=True):
        super().__init__(cfg, device, for_training)
        r, t = cfg.realsr, cfg.train
        if r.track not in TRACKS:
            raise ValueError(f"realsr.track must be one of {TRACKS}, got {r.track!r}")
        if r.margin % cfg.data.scale or cfg.data.hr_patch <= 2 * r.margin:
            raise ValueError(f"realsr.margin ({r.margin}) must be a multiple of data.scale and data.hr_patch "
                             f"({cfg.data.hr_patch}) more than twice it")
        g = r.generator
        self.add_net("netG", RRDBNet(nf=g.nf, nb=g.nb, gc=g.gc, upscale=cfg.data.scale), t.lr)
        if for_training:
            self.load_start_weights("netG", "realsr.pretrained", r.pretrained, r.require_pretrained and (
                f"realsr: preset {cfg.get('preset')!r} starts from ESRGAN's PSNR-oriented RRDB (RRDB_PSNR_x4.pth, as "
                "the official ymls; or train one with --preset paper-psnr)"))
        self.weights = dict(r.loss)
        self.add_srgan(lambda: self.build_discriminator(r.discriminator, cfg.data.hr_patch - 2 * r.margin),
                       t.get("lr_d") or t.lr, self.weights, r.get("vgg_weights"))
        self.kernels = None  # the pools are built at the first step (or come with a checkpoint)
        self.noise = None

    def official_state(self, name, state):
        """Old ESRGAN names (RRDB_PSNR_x4.pth, RealSR's releases) -> BasicSR's, which netG uses."""
        return load_old_esrgan(state) if name == "netG" else state

    @staticmethod
    def build_discriminator(d, hr_size):
        """arch "patch": the pix2pix NLayer PatchGAN (DPED yml); "vgg128": ESRGAN's Discriminator_VGG_128 (DF2K yml)."""
        if d.arch == "patch":
            return PatchGANDiscriminator.nlayer(3, d.ndf, d.n_layers, d.norm)
        if d.arch == "vgg128":
            return VGGDiscriminator(3, hr_size, d.ndf, down_kernel=4)
        raise ValueError(f"realsr.discriminator.arch must be 'patch' or 'vgg128', got {d.arch!r}")

    # ------------------------------------------------------------------ degradation pools
    def pools(self):
        """(kernels (K, k, k) or None for track bicubic, noise patches (M, 3, P, P) uint8 or None without
        realsr.noise.inject)."""
        r, scale = self.cfg.realsr, self.cfg.data.scale
        if self.noise is None and r.noise.inject:
            self.noise = collect_noise(lr_images(self.cfg), r.noise.patch, r.noise.max_var, r.noise.min_mean)
        if self.kernels is None and r.track == "kernel":
            self.kernels = read_kernel_files(r.kernels, scale, "realsr.kernels") if r.get("kernels") else \
                estimate_kernels(lr_images(self.cfg), scale, r.kernelgan, self.device)
        return self.kernels, self.noise

    def degrade(self, hr, generators):
        """(B, 3, H, W) HR -> (B, 3, H/s, W/s) 8-bit LR: correlated with a pool kernel (one pick per sample,
        from its generator) keeping rows/cols 0, s, 2s, ..., or MATLAB bicubic (track bicubic)."""
        kernels, scale = self.pools()[0], self.cfg.data.scale
        if kernels is None:
            lr = degradations.imresize(hr, scale=1 / scale)
        else:
            picks = kernels[[torch.randint(len(kernels), (1,), generator=g).item() for g in generators]]
            lr = degradations.blur_downsample(hr, picks.to(hr, non_blocking=True), scale, padding="symmetric")
        return (lr.clamp(0, 1) * 255).round() / 255

    def training_pair(self, hr, generators):
        """(B, 3, P, P) HR crops -> the step's (HR, LR) pair: each crop degraded whole, the realsr.margin
        border cut from both, then the pair under one random dihedral transform per sample and noise
        injected into the LR (realsr.noise.inject). The LR of the transformed HR is the transformed LR of
        the crop."""
        m, scale = self.cfg.realsr.margin, self.cfg.data.scale
        lr = self.degrade(hr, generators)[..., m // scale:-(m // scale), m // scale:-(m // scale)]
        hr = hr[..., m:-m, m:-m]
        modes = [int(torch.randint(8, (1,), generator=g)) for g in generators]
        hr = torch.stack([dihedral(x, mode) for x, mode in zip(hr, modes)])
        lr = torch.stack([dihedral(x, mode) for x, mode in zip(lr, modes)])
        return hr, self.inject_noise(lr, generators) if self.cfg.realsr.noise.inject else lr

    def inject_noise(self, lr, generators):
        """LR + a random crop of a random noise patch minus its per-channel mean, clamped to [0, 1]."""
        noise = self.pools()[1]
        height, width = lr.shape[-2:]
        if noise.shape[-1] < max(height, width):
            raise ValueError(f"realsr.noise.patch ({noise.shape[-1]}) must be at least the LR crop "
                             f"({height}x{width}: (data.hr_patch - 2 x realsr.margin) / data.scale)")
        crops = []
        for g in generators:
            patch = noise[torch.randint(len(noise), (1,), generator=g).item()].float() / 255
            top = torch.randint(patch.shape[-2] - height + 1, (1,), generator=g).item()
            left = torch.randint(patch.shape[-1] - width + 1, (1,), generator=g).item()
            crop = patch[:, top:top + height, left:left + width]
            crops.append(crop - crop.mean((1, 2), keepdim=True))
        return (lr + torch.stack(crops).to(lr, non_blocking=True)).clamp(0, 1)

    # ------------------------------------------------------------------ training
    def train_step(self, batch, step):
        hr = batch["hr"].to(self.device)
        generators = [torch.Generator().manual_seed(int(seed)) for seed in batch["seed"]]
        with torch.no_grad():
            hr, lr = self.training_pair(hr, generators)
        sr = self.nets["netG"](lr)
        return self.srgan_step("netG", sr, hr, self.weights)

    # ------------------------------------------------------------------ inference / evaluation
    @torch.no_grad()
    def super_resolve(self, lr, kernel=None, noise_level=None):
        return self.nets["netG"](lr)

    @torch.no_grad()
    def validate(self, item):
        out = {"sr": self.super_resolve(item["lr"])}
        if self.kernels is not None:
            # KernelGAN centres a x s kernel on the middle of the s x s cell, bsr's kernels on its upper-left
            # pixel: the pool's mean is moved to its grid centre before it is compared with a true kernel
            mean = shift_centre_of_mass(self.kernels.mean(0).double().numpy(), scale=1)
            out["kernel_est"] = torch.from_numpy(mean).float()
        return out

    def extra_state(self):
        # KernelGAN is the slow part; the noise pool is rebuilt (a deterministic scan)
        return {"kernels": self.kernels}

    def load_extra_state(self, state):
        self.kernels = state.get("kernels")
