"""References for bsrops.patchgan_conv (semantics: docs/ops.md; the discriminator
layouts of PDM-SR and of pix2pix's NLayerDiscriminator as RealSR uses it: docs/methods.md).

- `norm_act_reference`: the fused kernel's part in eager PyTorch (F.instance_norm / F.batch_norm,
  F.leaky_relu), the reference backend's `_patchgan_norm_act`; F.batch_norm updates the
  running statistics it is given.
- `NLayerDiscriminatorReference`, `PDMDiscriminatorReference`: the official layouts written
  from the documented structure, one nn.Sequential `model` (state-dict keys `model.{i}`).
"""
import torch.nn as nn
import torch.nn.functional as F


def norm_act_reference(y, norm_weight, norm_bias, running_mean, running_var, norm, training, momentum, eps,
                       negative_slope, activation):
    """(out, mean, rstd) of the norm + LeakyReLU part on the conv output y."""
    if norm == "none":
        return (F.leaky_relu(y, negative_slope) if activation else y.clone()), y.new_empty(0), y.new_empty(0)
    if norm == "instance":
        mean = y.mean((2, 3))
        rstd = (y.var((2, 3), unbiased=False) + eps).rsqrt()
        z = F.instance_norm(y, weight=norm_weight, bias=norm_bias, eps=eps)
    else:
        use_batch = training or running_mean is None
        if use_batch:
            mean = y.mean((0, 2, 3))
            rstd = (y.var((0, 2, 3), unbiased=False) + eps).rsqrt()
        else:
            mean, rstd = running_mean.clone(), (running_var + eps).rsqrt()
        z = F.batch_norm(y, running_mean, running_var, norm_weight, norm_bias, use_batch, momentum, eps)
    out = F.leaky_relu(z, negative_slope) if activation else z
    return out, mean.detach(), rstd.detach()


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
