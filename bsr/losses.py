"""Losses: pixel (L1, MSE, Charbonnier), perceptual (VGG19) and adversarial, with BasicSR's conventions.

Every module takes `loss_weight` and returns weight * loss, as BasicSR `basicsr/losses` (which the
PDM-SR, RealSR/ESRGAN and DAN codebases share); method modules combine them.
"""
import torch
import torch.nn.functional as F
from torch import nn

from .archs.vgg import VGG19, VGG19_LAYERS

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def charbonnier_loss(pred, target, eps=1e-12):
    """mean(sqrt((pred - target)^2 + eps)) (BasicSR CharbonnierLoss, eps 1e-12)."""
    return torch.sqrt((pred - target) ** 2 + eps).mean()


_PIXEL = {"l1": F.l1_loss, "mse": F.mse_loss, "charbonnier": charbonnier_loss}


class PixelLoss(nn.Module):
    """loss_weight * {l1, mse, charbonnier}(pred, target), mean over all elements."""

    def __init__(self, kind="l1", loss_weight=1.0):
        super().__init__()
        if kind not in _PIXEL:
            raise ValueError(f"PixelLoss: kind must be one of {sorted(_PIXEL)}, got {kind!r}")
        self.kind, self.loss_weight = kind, loss_weight

    def forward(self, pred, target):
        return self.loss_weight * _PIXEL[self.kind](pred, target)


class PerceptualLoss(nn.Module):
    """loss_weight * sum_l w_l * criterion(VGG19_l(pred), VGG19_l(target)) on a frozen VGG19.

    layer_weights: {layer name: weight}, e.g. {"conv5_4": 1.0} (conv = before its ReLU; PDM-SR, RealSR,
    USR_DA). use_input_norm: ImageNet mean/std on [0, 1] inputs (PDM-SR, RealSR; USR_DA has none).
    weights: VGG19 weights file (True: the torch hub cache; see bsr.archs.vgg), or `vgg` to pass a
    VGG19 module (e.g. with random weights in tests). The target's features carry no gradient.
    """

    def __init__(self, layer_weights=None, weights=True, vgg=None, use_input_norm=True, criterion="l1", loss_weight=1.0):
        super().__init__()
        self.layer_weights = dict(layer_weights or {"conv5_4": 1.0})
        if criterion not in ("l1", "mse"):
            raise ValueError(f"PerceptualLoss: criterion must be 'l1' or 'mse', got {criterion!r}")
        unknown = set(self.layer_weights) - set(VGG19_LAYERS)
        if unknown:
            raise ValueError(f"PerceptualLoss: layer names must be among {', '.join(VGG19_LAYERS)}, got {sorted(unknown)}")
        last = max(self.layer_weights, key=VGG19_LAYERS.index)
        self.vgg = vgg if vgg is not None else VGG19(last, weights=weights)
        self.vgg.eval().requires_grad_(False)
        self.use_input_norm, self.criterion, self.loss_weight = use_input_norm, _PIXEL[criterion], loss_weight
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def train(self, mode=True):
        """The VGG stays in eval mode whatever the surrounding module does."""
        super().train(mode)
        self.vgg.eval()
        return self

    def _features(self, x):
        if self.use_input_norm:
            x = (x - self.mean.to(x)) / self.std.to(x)
        return self.vgg(x, self.layer_weights)

    def forward(self, pred, target):
        pred_features = self._features(pred)
        with torch.no_grad():
            target_features = self._features(target.detach())
        loss = sum(w * self.criterion(pred_features[name], target_features[name]) for name, w in self.layer_weights.items())
        return self.loss_weight * loss


def _label_like(pred, value):
    return torch.full_like(pred, float(value))


class GANLoss(nn.Module):
    """Adversarial loss on discriminator outputs `pred` (logits), BasicSR `GANLoss`.

    gan_type: vanilla (BCE with logits), lsgan (MSE), l1 (|D - label|, KernelGAN), hinge, wgan, wgan_softplus.
    target: True (real, `real_label`), False (fake, `fake_label`) or a number used as the label itself
    (USR_DA's feature alignment pushes D to 0.5). is_disc: hinge uses relu(1 -/+ pred) for D and
    -mean(pred) for G; loss_weight applies to the generator side only (as BasicSR).
    """

    TYPES = ("vanilla", "lsgan", "l1", "hinge", "wgan", "wgan_softplus")

    def __init__(self, gan_type="vanilla", real_label=1.0, fake_label=0.0, loss_weight=1.0):
        super().__init__()
        if gan_type not in self.TYPES:
            raise ValueError(f"GANLoss: gan_type must be one of {', '.join(self.TYPES)}, got {gan_type!r}")
        self.gan_type, self.real_label, self.fake_label, self.loss_weight = gan_type, real_label, fake_label, loss_weight

    def _label(self, target):
        if isinstance(target, bool):
            return self.real_label if target else self.fake_label
        return float(target)

    def _value(self, pred, target, is_disc):
        if self.gan_type in ("wgan", "wgan_softplus", "hinge") and not isinstance(target, bool):
            raise ValueError(f"GANLoss: {self.gan_type} needs target True or False, got {target!r}")
        sign = 1 if target is True else -1  # real: raise pred, fake: lower it
        if self.gan_type == "hinge":
            return F.relu(1 - sign * pred).mean() if is_disc else -sign * pred.mean()
        if self.gan_type == "wgan":
            return -sign * pred.mean()
        if self.gan_type == "wgan_softplus":
            return F.softplus(-sign * pred).mean()
        label = _label_like(pred, self._label(target))
        if self.gan_type == "vanilla":
            return F.binary_cross_entropy_with_logits(pred, label)
        return (F.mse_loss if self.gan_type == "lsgan" else F.l1_loss)(pred, label)

    def forward(self, pred, target, is_disc=False):
        loss = self._value(pred, target, is_disc)
        return loss if is_disc else self.loss_weight * loss


class RelativisticGANLoss(nn.Module):
    """Relativistic average GAN (ESRGAN `ragan`, RealSR): each side judged against the other's mean.

    D: [L(D(real) - mean D(fake), real) + L(D(fake) - mean D(real), fake)] / 2;
    G: [L(D(real) - mean D(fake), fake) + L(D(fake) - mean D(real), real)] / 2 with D(real) detached.
    L is `GANLoss(gan_type)` (vanilla BCE in ESRGAN/RealSR); the mean is over the batch and every patch.
    """

    def __init__(self, gan_type="vanilla", loss_weight=1.0):
        super().__init__()
        self.gan = GANLoss(gan_type)
        self.loss_weight = loss_weight

    def forward(self, real_pred, fake_pred, is_disc=False):
        if not is_disc:
            real_pred = real_pred.detach()
        real_is_real = is_disc  # G wants the labels swapped
        loss = (self.gan(real_pred - fake_pred.mean(), real_is_real, is_disc)
                + self.gan(fake_pred - real_pred.mean(), not real_is_real, is_disc)) / 2
        return loss if is_disc else self.loss_weight * loss
