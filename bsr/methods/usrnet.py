"""USRNet (docs/methods.md): non-blind unfolding SR, trained as KAIR does.

Training data synthesis (KAIR data/dataset_usrnet.py): one scale per batch from
usrnet.scales; per sample a motion kernel (probability 1/2) or a random anisotropic
Gaussian (USRNet's gen_kernel ranges), circular true convolution with upper-left
decimation (`blur_downsample(padding="circular", flip=True)`), then AWGN with σ = 0
(probability 1/9) or σ ~ U{0..24}/255 (bsr.kernels, bsr.degradations), drawn from (seed, step).
With usrnet.quantize_lr the blurred LR is truncated to 8 bits before the noise, as KAIR's
convolution of the uint8 HR into a uint8 image does. L1 loss, Adam, MultiStepLR
(train.milestones, train.gamma).

USRGAN (usrnet.gan.enabled; presets paper-usrgan, tiny-usrgan): the same network and data
with w_pixel L1 + w_perceptual VGG19-conv5_4 (L1, ImageNet input norm) + w_adversarial
relativistic-average GAN (ESRGAN's RaGAN, BCE), and a pix2pix NLayer PatchGAN discriminator
("netD", built from bsrops.nn.PatchGANConv) trained with the discriminator side of the same
loss. KAIR ships USRGAN weights but no training config (docs/fidelity.md): the loss
types and the weights 1 / 1 / 0.005 follow the USRNet paper's description and ESRGAN's
adversarial weight, the discriminator is our choice; all are config keys. usrnet.pretrained
starts the generator from a USRNet checkpoint (ESRGAN's practice: GAN training from the PSNR model).

Evaluation protocols (`eval` config section), one LR per image and scale in eval.scales:
- `eval.protocol: table1` (main_test_table1.py): HR modcropped to lcm(s, 8) per scale; for each
  kernel index in eval.kernels, into the kernels of eval.kernel_file (KAIR's kernels_12.mat) or,
  without a file, the generated approximate Table 1 kernels (a warning says so): LR made as in
  training (8-bit truncation with usrnet.quantize_lr) plus AWGN of σ = eval.noise (seeded per
  image and degradation), RGB PSNR with border s². With eval.shift_kernels the kernels are
  shifted by (s-1)/2 pixels as KAIR's shift_pixel does, so the LR is pixel-centre aligned and
  bicubic upsampling is a fair baseline.
- `eval.protocol: bicubic` (main_test_bicubic.py): HR modcropped to s, LR by MATLAB bicubic
  downscaling (not quantised) plus AWGN of σ = eval.noise, the model given kernel s-2 of
  eval.kernel_file (KAIR's kernels_bicubicx234.mat) and the LR extended to a smooth periodic
  image as for real images; PSNR border s.
"""
import math
import sys

import numpy as np
import torch
import torch.nn.functional as F

from .. import degradations
from ..archs.discriminators import PatchGANDiscriminator
from ..archs.usrnet import USRNet as USRNetArch
from ..archs.usrnet import init_identity_skip, init_orthogonal
from ..kernels import covariance, gaussian_kernels, motion_kernels, read_kernel_set, shift_by, usrnet_random_kernels
from . import register
from .base import Method

KERNEL_SIZE = 25
PROTOCOLS = ("table1", "bicubic")
BICUBIC_SCALES = (2, 3, 4)  # kernels_bicubicx234.mat holds one kernel per scale, in this order
APPROXIMATE_KERNELS_WARNING = (
    "usrnet: warning: eval.kernel_file is not set, so Table 1 is evaluated with bsr's generated approximate "
    "Table 1 kernels (8 of the 12 differ from the paper's): scores compare between bsr runs, not with the "
    "paper; set eval.kernel_file to kernels/kernels_12.mat of github.com/cszn/USRNet (or cszn/KAIR)")


def protocol_kernels(size=KERNEL_SIZE):
    """The approximate Table 1 kernels (12, size, size) float32, the stand-in for kernels_12.mat when
    eval.kernel_file is not set, generated with documented parameters:
    0-3 isotropic Gaussians, standard deviations 0.7, 1.2, 1.6, 2.0 (as the official 1-4);
    4-7 anisotropic Gaussians, (σ_major, σ_minor, θ) = (2.0, 0.8, 0), (2.4, 1.0, π/4),
        (2.8, 1.2, π/2), (3.2, 1.4, 3π/4) (the official 5-8 have other variances and angles);
    8-11 USRNet-style motion kernels drawn with seeds 0..3 (the official 9-12 are other, off-centre ones)."""
    gaussians = [(s, s, 0.0) for s in (0.7, 1.2, 1.6, 2.0)]
    gaussians += [(2.0, 0.8, 0.0), (2.4, 1.0, math.pi / 4), (2.8, 1.2, math.pi / 2), (3.2, 1.4, 3 * math.pi / 4)]
    major, minor, theta = zip(*gaussians)
    kernels = list(gaussian_kernels(covariance(major, minor, theta), size, (size - 1) / 2))
    kernels += [motion_kernels(1, size, torch.Generator().manual_seed(seed))[0] for seed in range(4)]
    return torch.stack(kernels).float()


def truncate_8bit(x, tolerance=1e-3):
    """x in [0, 1] -> floor(255 x) / 255, the uint8 cast of KAIR's blurred uint8 image (truncation,
    not rounding). `tolerance` (in 8-bit levels) keeps a value that is an integer level up to float
    rounding (a flat region blurred by a kernel summing to 1) at that level."""
    return torch.floor(x * 255 + tolerance).clamp(0, 255) / 255


def modcrop(x, multiple):
    """(..., H, W) cropped at the bottom and right to multiples of `multiple` (KAIR's util.modcrop)."""
    h, w = x.shape[-2:]
    return x[..., :h - h % multiple, :w - w % multiple]


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
        if cfg.eval.protocol not in PROTOCOLS:
            raise ValueError(f"eval.protocol must be one of {PROTOCOLS}; got {cfg.eval.protocol!r}")
        if cfg.eval.protocol == "bicubic" and not set(self.eval_scales()) <= set(BICUBIC_SCALES):
            raise ValueError(f"eval.protocol=bicubic evaluates scales {BICUBIC_SCALES}; got eval.scales={self.eval_scales()}")
        net = USRNetArch(n_iter=u.n_iter, h_nc=u.h_nc, nc=tuple(u.nc), nb=u.nb)
        if for_training:  # evaluation and inference load every weight (the paper net's QR init takes seconds)
            init_orthogonal(net, u.init_gain)
            if u.get("init_identity_skip"):
                init_identity_skip(net.p)
        self.add_net("usrnet", net, cfg.train.lr)
        if for_training:  # USRGAN starts from a trained USRNet, as ESRGAN from its PSNR model
            self.load_start_weights("usrnet", "usrnet.pretrained", u.get("pretrained"))
        self.gan = u.get("gan") if u.get("gan", {}).get("enabled") else None
        if self.gan:
            self._build_usrgan(self.gan)
        self.kernel_set = None
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
        # the host draws go to the device without a stream sync
        kernels = usrnet_random_kernels(total, KERNEL_SIZE, generator)[mine].to(hr, non_blocking=True)
        sigma = degradations.usrnet_noise_levels(total, generator)[mine].to(hr, non_blocking=True)
        lr = self.blur_downsample(hr, kernels, scale)
        noise = torch.randn((total, *lr.shape[1:]), generator=generator)[mine].to(hr, non_blocking=True)
        return lr + sigma.view(-1, 1, 1, 1) * noise, kernels, sigma, scale

    def blur_downsample(self, hr, kernels, scale):
        """KAIR's LR before the noise: circular true convolution, upper-left decimation, and with
        usrnet.quantize_lr the truncation to 8 bits (hr holds 8-bit levels)."""
        lr = degradations.blur_downsample(hr, kernels, scale, padding="circular", flip=True)
        return truncate_8bit(lr) if self.cfg.usrnet.quantize_lr else lr

    def train_step(self, batch, step):
        hr = batch["hr"]
        with torch.no_grad(), torch.autocast(hr.device.type, enabled=False):
            lr, kernels, sigma, scale = self.synthesize(hr, step)
        sr = self.nets["usrnet"](lr, kernels, scale, sigma).float()
        if self.gan:
            return self.srgan_step("usrnet", sr, hr, self.gan)
        loss = F.l1_loss(sr, hr)
        self.optimize(loss, "usrnet")
        return {"l1": loss.detach()}

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
    def super_resolve_padded(self, lr, kernel=None, noise_level=None, scale=None, prior=True):
        """super_resolve of an LR that is not periodic (a real image, a bicubic LR): extended to a
        smooth periodic image (sides a multiple of 8, at least 16 more pixels, as the official test
        scripts; and at least the kernel once upscaled, for the FFT data term), then cropped back."""
        h, w = lr.shape[-2:]
        scale = scale or self.cfg.data.scale
        side = lambda n: max(math.ceil(n / 8) + 2, math.ceil(KERNEL_SIZE / (8 * scale))) * 8
        padded = smooth_periodic_pad(lr, side(h), side(w))
        return self.super_resolve(padded, kernel, noise_level, scale, prior)[..., :h * scale, :w * scale]

    def restore(self, item, prior=True):
        """SR of a validation item; items marked "periodic_pad" (the bicubic protocol) are padded."""
        restore = self.super_resolve_padded if item.get("periodic_pad") else self.super_resolve
        return {"sr": restore(item["lr"], item["kernel"], item.get("noise_level"), item.get("scale"), prior)}

    @torch.no_grad()
    def validate(self, item):
        return self.restore(item)

    @torch.no_grad()
    def infer(self, lr, kernel=None, noise_level=None):
        """Real images: super_resolve_padded at data.scale."""
        return self.super_resolve_padded(lr, kernel, noise_level)

    def baselines(self):
        return {"identity prior": lambda item: self.restore(item, prior=False)}

    def eval_scales(self):
        return [int(s) for s in self.cfg.eval.scales]

    def scale_multiple(self, scale):
        """The HR modcrop of a scale: lcm(s, 8) in Table 1 (main_test_table1.py), s for the bicubic protocol."""
        return math.lcm(scale, 8) if self.cfg.eval.protocol == "table1" else scale

    def modcrop_multiple(self):
        """What every scale's modcrop is a multiple of; degrade_for_validation crops each scale further."""
        return 8 if self.cfg.eval.protocol == "table1" else 1

    def border(self, scale):
        return scale * scale if self.cfg.eval.protocol == "table1" else scale

    def min_validation_size(self):
        """Each scale's modcrop multiple, the kernel (the circular blur wraps once at most) and the borders."""
        return max(KERNEL_SIZE, *(max(self.scale_multiple(s), 2 * self.border(s) + 1) for s in self.eval_scales()))

    def evaluation_kernels(self):
        """(N, k, k) float32: the kernels of eval.kernel_file, or (with a warning, once) the generated
        approximate Table 1 kernels of `protocol_kernels`."""
        if self.kernel_set is None:
            path = self.cfg.eval.get("kernel_file")
            if path:
                self.kernel_set = read_kernel_set(path, "eval.kernel_file").float()
            else:
                print(APPROXIMATE_KERNELS_WARNING, file=sys.stderr, flush=True)
                self.kernel_set = protocol_kernels(KERNEL_SIZE)
        return self.kernel_set

    def protocol_kernels(self, scale):
        """The evaluation kernels at `scale`, shifted by (s-1)/2 with eval.shift_kernels."""
        shift = (scale - 1) / 2 if self.cfg.eval.get("shift_kernels") else 0.0
        if shift not in self.eval_kernels:
            kernels = self.evaluation_kernels()
            self.eval_kernels[shift] = torch.stack([shift_by(k, shift) for k in kernels]) if shift else kernels
        return self.eval_kernels[shift]

    def degrade_for_validation(self, hr, index):
        """One LR per (scale, kernel) of the protocol (each with its modcropped HR), AWGN σ = eval.noise."""
        if self.cfg.eval.protocol == "bicubic":
            return [self._bicubic_item(hr, scale, index) for scale in self.eval_scales()]
        items = []
        for scale in self.eval_scales():
            kernels = self.protocol_kernels(scale)
            hr_s = modcrop(hr, self.scale_multiple(scale))
            for j in self.cfg.eval.kernels:
                if not 0 <= j < len(kernels):
                    raise ValueError(f"eval.kernels: index {j} is outside the {len(kernels)} evaluation kernels")
                lr = self.add_eval_noise(self.blur_downsample(hr_s, kernels[j].to(hr), scale), index, scale, j)
                items.append({"hr": hr_s, "lr": lr, "kernel": kernels[j], "noise_level": float(self.cfg.eval.noise),
                              "scale": scale, "tag": f"x{scale}_k{j}"})
        return items

    def _bicubic_item(self, hr, scale, index):
        """main_test_bicubic.py: MATLAB bicubic LR, the approximate bicubic kernel of that scale."""
        path = self.cfg.eval.get("kernel_file")
        kernels = self.evaluation_kernels() if path else ()
        if len(kernels) != len(BICUBIC_SCALES):
            raise ValueError(f"eval.protocol=bicubic needs eval.kernel_file = kernels/kernels_bicubicx234.mat of "
                             f"github.com/cszn/USRNet, one kernel for each scale {BICUBIC_SCALES} "
                             f"(eval.kernel_file = {path!r} holds {len(kernels)})")
        hr_s = modcrop(hr, scale)
        lr = self.add_eval_noise(degradations.imresize(hr_s, 1 / scale), index, scale, 0)
        return {"hr": hr_s, "lr": lr, "kernel": kernels[BICUBIC_SCALES.index(scale)], "periodic_pad": True,
                "noise_level": float(self.cfg.eval.noise), "scale": scale, "tag": f"x{scale}_bicubic"}

    def add_eval_noise(self, lr, index, scale, kernel_index):
        generator = torch.Generator().manual_seed(10_000 * index + 100 * scale + kernel_index)
        return degradations.add_noise(lr, float(self.cfg.eval.noise), generator)
