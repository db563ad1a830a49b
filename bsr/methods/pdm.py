"""PDM-SR / PDM-SRGAN: "Learning the Degradation Distribution for Blind Image Super-Resolution"
(Luo et al., CVPR 2022; greatlog/UnpairedSR `DegSRModel`; docs/methods.md).

Unpaired training: HR crops x (target domain of the SR net) and real LR crops y (the domain
whose degradation is unknown). Networks (official names, so their checkpoints load):
- netDeg: DegModel — kernel generator netK (blur + decimation by `bsrops.blur_downsample`) and
  noise generator netN: fake LR = K(z_k) * x ↓s + N(z_n, LR).
- netD1: PatchGAN on LR (real y vs fake LR), LSGAN.
- netSR: EDSR or RRDBNet, trained on (quantise(fake LR), x); it starts from pdm.sr.pretrained,
  which presets whose official config starts from the EDSR-baseline weights require
  (pdm.sr.require_pretrained; `none` is an explicit random start).
- netD2: PatchGAN on HR (PDM-SRGAN only), LSGAN.
pdm.noise.enabled false: no netN, the LR is soft-quantised instead (the 2017 tracks).

One step (`optimize_parameters` of the official model, pdm.workflow decides which parts run):
1. degradation (workflow joint | degradation): fake LR = netDeg(x);
   L = w_lr_adv LSGAN_G(D1(fake LR)) + λ mean(noise²)  (λ = pdm.loss.noise_mean); step netDeg; then
   L_D1 = w_lr_adv (LSGAN(D1(y), 1) + LSGAN(D1(fake LR), 0)) / 2 every d_ratio steps.
2. SR (workflow joint | sr): SR = netSR(quantise(fake LR).detach()), where a frozen netDeg makes
   the fake LR in workflow sr (loaded from pdm.deg_checkpoint, the first stage's checkpoint);
   L = w_pix L1 + w_percep VGG19-conv5_4 + w_sr_adv LSGAN_G(D2(SR)); step netSR; D2 update.
The two parts are decoupled (the SR loss never reaches netDeg), as in every official config.
Gradient clipping: train.grad_clip (official max_grad_norm 50).

Validation: SR of the validation LR (made by the true degradation), scored by PSNR/SSIM, LPIPS
with pdm.lpips and NTIRE 2018's best_psnr with pdm.best_psnr; and the learned kernel
("kernel_est": the mean of pdm.kernel_samples draws of netK on the validation HR, in eval
mode), which the engine compares with the true kernel and draws next to it.
"""
import torch
import torch.nn.functional as F

from .. import metrics
from ..archs.discriminators import PatchGANDiscriminator
from ..archs.edsr import EDSR
from ..archs.lpips import load_lpips
from ..archs.pdm import DegModel, quantize
from ..archs.rrdb import RRDBNet
from ..config import ConfigError
from ..losses import GANLoss
from . import register
from .base import Method

WORKFLOWS = ("joint", "degradation", "sr")
# the weights the official configs start netSR from
PRETRAINED_NAMES = {"edsr": "the EDSR-baseline x4 weights: EDSR-PyTorch's edsr_baseline_x4-6b446fab.pt, "
                            "which the official configs load as checkpoints/EDSR/edsr_baseline_x4-new.pt"}
DISCRIMINATORS = ("netD1", "netD2")  # train.lr_d applies to these (netDeg also starts with "netD")


def build_sr(opt, scale):
    """EDSR or RRDBNet from pdm.sr; nb null (or absent) is the architecture's official depth."""
    arch = opt.get("arch", "edsr")
    if arch == "edsr":
        return EDSR(nf=opt.get("nf", 64), nb=opt.get("nb") or 16, upscale=scale, res_scale=opt.get("res_scale", 1.0))
    if arch == "rrdb":
        return RRDBNet(nf=opt.get("nf", 64), nb=opt.get("nb") or 23, gc=opt.get("gc", 32), upscale=scale)
    raise ValueError(f"pdm.sr.arch must be 'edsr' or 'rrdb', got {arch!r}")


def build_discriminator(opt):
    return PatchGANDiscriminator.pdm(in_c=3, nf=opt.get("nf", 64), nb=opt.get("nb", 3), stride=opt.get("stride", 1))


@register("pdm")
class PDM(Method):
    data_kind = "unpaired"
    inference_nets = ("netSR",)
    scales = (2, 3, 4)

    def __init__(self, cfg, device, for_training=True):
        super().__init__(cfg, device, for_training)
        p, scale = cfg.pdm, cfg.data.scale
        if p.workflow not in WORKFLOWS:
            raise ValueError(f"pdm.workflow must be one of {WORKFLOWS}, got {p.workflow!r}")
        self.optim_deg = p.workflow in ("joint", "degradation")
        self.optim_sr = p.workflow in ("joint", "sr")
        self.weights = dict(p.loss)
        self.gan = GANLoss("lsgan")
        self.nets["netDeg"] = DegModel(scale, 3, p.kernel, p.noise if p.noise.get("enabled", True) else None)
        if self.optim_deg:
            self.nets["netD1"] = build_discriminator(p.d_lr)
        elif for_training:
            self._load_frozen_degradation(p.get("deg_checkpoint"))
        if self.optim_sr:
            self.nets["netSR"] = build_sr(p.sr, scale)
            if for_training:
                self.load_start_weights("netSR", "pdm.sr.pretrained", p.sr.get("pretrained"),
                                        p.sr.get("require_pretrained") and self._pretrained_reason(p.sr, cfg))
            if self.weights.get("sr_adv"):
                self.nets["netD2"] = build_discriminator(p.d_hr)
            if self.weights.get("sr_percep") and for_training:
                from ..losses import PerceptualLoss

                # VGG19 conv5_4 (before ReLU), ImageNet input norm, L1: the official sr_percep
                self.perceptual = PerceptualLoss({"conv5_4": 1.0}, weights=p.get("vgg_weights") or True).to(device)
        for net in self.nets.values():
            net.to(self.device)
        self._build_optimizers(cfg.train)
        lpips = p.get("lpips") or {}
        self.lpips = load_lpips(lpips["lin"], lpips.get("alexnet")) if lpips.get("lin") else None

    @staticmethod
    def _pretrained_reason(opt, cfg):
        named = PRETRAINED_NAMES.get(opt.arch, "the official weights")
        return f"preset {cfg.get('preset')} starts {opt.arch.upper()} from pretrained weights ({named}), as the official config"

    def _load_frozen_degradation(self, path):
        if not path:
            raise ValueError("pdm.workflow=sr needs pdm.deg_checkpoint: the checkpoint of a "
                             "pdm.workflow=degradation run (or an official netDeg state dict)")
        self.load_pretrained("netDeg", path, "pdm.deg_checkpoint")
        self.nets["netDeg"].requires_grad_(False)

    def _build_optimizers(self, t):
        """Adam per network; train.lr_d (default train.lr, as official) for the discriminators."""
        for name, net in self.nets.items():
            params = [q for q in net.parameters() if q.requires_grad]
            if not params:
                continue
            self.add_adam(name, params, (t.get("lr_d") or t.lr) if name in DISCRIMINATORS else t.lr)

    # --------------------------------------------------------------------------- training
    def train_step(self, batch, step):
        hr, real_lr = batch["hr"].to(self.device), batch["lr"].to(self.device)
        logs = {}
        fake_lr = self._degradation_step(hr, real_lr, step, logs) if self.optim_deg else None
        if self.optim_sr:
            self._sr_step(hr, fake_lr, step, logs)
        return logs

    def generator_adv(self, name, fake):
        """LSGAN generator loss through the frozen D (Method.frozen)."""
        with self.frozen(name) as d:
            return self.gan(d(fake), True)

    def discriminator_step(self, name, weight, real, fake, step, logs):
        if step % int(self.cfg.pdm.get("d_ratio", 1)):
            return
        d = self.nets[name]
        loss = (self.gan(d(real), True, is_disc=True) + self.gan(d(fake.detach()), False, is_disc=True)) / 2
        logs[f"{name}_adv"] = loss.detach()
        self.optimize(weight * loss, name)

    def _degradation_step(self, hr, real_lr, step, logs):
        fake_lr, _, noise = self.nets["netDeg"](hr)
        w_adv = self.weights.get("lr_adv", 1.0)
        adv = self.generator_adv("netD1", fake_lr)
        loss = w_adv * adv
        logs["lr_adv"] = adv.detach()
        if noise is not None and self.weights.get("noise_mean"):
            noise_mean = noise.square().mean()
            loss = loss + self.weights["noise_mean"] * noise_mean
            logs["noise_mean"] = noise_mean.detach()
        self.optimize(loss, "netDeg")
        self.discriminator_step("netD1", w_adv, real_lr, fake_lr, step, logs)
        return fake_lr.detach()

    def _sr_step(self, hr, fake_lr, step, logs):
        if fake_lr is None:
            with torch.no_grad():
                fake_lr = self.nets["netDeg"](hr)[0]
        sr = self.nets["netSR"](quantize(fake_lr).detach())
        w = self.weights
        pix = F.l1_loss(sr, hr)
        loss = w.get("sr_pix", 1.0) * pix
        logs["sr_pix"] = pix.detach()
        if w.get("sr_percep"):
            percep = self.perceptual(sr, hr)
            loss = loss + w["sr_percep"] * percep
            logs["sr_percep"] = percep.detach()
        if w.get("sr_adv"):
            adv = self.generator_adv("netD2", sr)
            loss = loss + w["sr_adv"] * adv
            logs["sr_adv"] = adv.detach()
        self.optimize(loss, "netSR")
        if w.get("sr_adv"):
            self.discriminator_step("netD2", w["sr_adv"], hr, sr, step, logs)

    # --------------------------------------------------------------------------- inference
    @torch.no_grad()
    def super_resolve(self, lr, kernel=None, noise_level=None):
        if "netSR" not in self.nets:  # a degradation-only run has no SR network
            return F.interpolate(lr, scale_factor=self.cfg.data.scale, mode="bicubic", align_corners=False)
        return self.nets["netSR"](lr)

    @torch.no_grad()
    def estimate_kernel(self, hr, samples=None):
        """The mean of `samples` kernels netK draws for `hr` (1, 3, H, W): (k, k), or
        (k*k, h, w) per LR pixel for a spatially variant netK. Deterministic (seeded draws)."""
        net = self.module("netDeg").deg_kernel
        if net is None:
            return None
        samples = samples or int(self.cfg.pdm.get("kernel_samples", 16))
        generator = torch.Generator(device=hr.device).manual_seed(0)
        s = net.scale
        size = (hr.shape[-2] // s, hr.shape[-1] // s) if net.per_pixel else (1, 1)
        z = torch.randn(samples, net.nc, *size, generator=generator, device=hr.device) if net.nc else None
        return net.kernels(hr.expand(samples, -1, -1, -1), z).mean(0)

    @torch.no_grad()
    def extra_metrics(self, sr, hr, border):
        """LPIPS (AlexNet, v0.1) on the border-cropped images, when pdm.lpips names its weights;
        with pdm.best_psnr, NTIRE 2018's best_psnr of the 8-bit SR: the official test script crops
        `border`, then its best_psnr another 6 + 4 pixels before taking the centre window."""
        out = {}
        if self.cfg.pdm.get("best_psnr"):
            out["best_psnr"] = float(metrics.best_psnr(metrics.quantize_8bit(sr), hr, border + 6 + 4).mean())
        if self.lpips is not None:
            crop = (..., slice(border, -border or None), slice(border, -border or None))
            out["lpips"] = float(self.lpips(sr[crop], hr[crop]).mean())
        return out

    @torch.no_grad()
    def validate(self, item):
        out = {"sr": self.super_resolve(item["lr"])}
        kernel = self.estimate_kernel(item["hr"])
        if kernel is not None:
            # per-pixel kernels are reported as their image mean (the true demo kernel is global)
            k = self.module("netDeg").deg_kernel.ksize
            out["kernel_est"] = kernel if kernel.dim() == 2 else kernel.mean((1, 2)).view(k, k)
        return out
