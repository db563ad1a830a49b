"""The discriminators of the methods, every block a bsrops.nn.PatchGANConv (the fused conv + norm + activation op).

`PatchGANDiscriminator`: a stack of PatchGANConv blocks in `model`, one output map of patch logits.
- `nlayer(in_nc, ndf, n_layers, norm, padding)`: pix2pix's NLayerDiscriminator, as RealSR (DPED yml) and
  USRGAN use it: 4x4 convs, padding 1 (KAIR's variant: 2), conv bias only without batch norm.
- `pdm(in_c, nf, nb, stride)`: PDM-SR's PatchGANDiscriminator: 3x3 convs, instance norm, the last conv to nf
  channels.
State dicts in the official `model.{i}` layout (the interleaved conv / norm / LeakyReLU sequence) load with
`load_state_dict`: their keys are remapped to `model.{block}.conv` / `.norm`.

`VGGDiscriminator(in_nc, image_size, d, down_kernel)`: conv + batch norm + LeakyReLU blocks halving the size
five times, then flatten -> Linear 100 -> LeakyReLU -> Linear 1 (one logit per image). A conv 3x3 in->d (bias,
LeakyReLU), then [d s2, 2d, 2d s2, 4d, 4d s2, 8d, 8d s2, 8d, 8d s2] with batch norm + LeakyReLU(0.2) and no bias;
the stride-2 convs are down_kernel x down_kernel (padding 1), the others 3x3.
- down_kernel=4, image_size=128: ESRGAN's Discriminator_VGG_128 (RealSR's DF2K yml).
- down_kernel=3: USR_DA's DiscriminatorVGG, at any multiple of 32.
"""
import torch.nn as nn

from bsrops.nn import PatchGANConv


class PatchGANDiscriminator(nn.Module):
    """A stack of PatchGANConv blocks in `model`; build it with `nlayer(...)` or `pdm(...)`.

    Official state dicts (`model.{i}` over the interleaved conv / norm / LeakyReLU sequence)
    load with `load_state_dict`: the keys are remapped to `model.{block}.conv` / `.norm`.
    """

    def __init__(self, blocks):
        super().__init__()
        self.model = nn.Sequential(*blocks)
        self._register_load_state_dict_pre_hook(self._remap_official_keys)

    @classmethod
    def nlayer(cls, in_nc=3, ndf=64, n_layers=3, norm="batch", padding=1):
        """pix2pix / RealSR NLayerDiscriminator (4x4 convs; padding 1, KAIR's variant 2); conv bias without batch
        norm."""
        use_bias = norm != "batch"
        blocks = [PatchGANConv(in_nc, ndf, 4, 2, padding, "none")]
        mult = 1
        for n in range(1, n_layers + 1):
            prev, mult = mult, min(2 ** n, 8)
            blocks.append(PatchGANConv(ndf * prev, ndf * mult, 4, 2 if n < n_layers else 1, padding, norm,
                                       bias=use_bias))
        blocks.append(PatchGANConv(ndf * mult, 1, 4, 1, padding, "none", activation=False))
        return cls(blocks)

    @classmethod
    def pdm(cls, in_c=3, nf=64, nb=3, stride=2):
        """PDM-SR's PatchGANDiscriminator (3x3 convs, instance norm, last conv to nf channels)."""
        blocks = [PatchGANConv(in_c, nf, 3, 1, 1, "none")]
        for n in range(1, nb + 1):
            blocks.append(PatchGANConv(nf * min(2 ** (n - 1), 8), nf * min(2 ** n, 8), 3, stride if n < nb else 1, 1,
                                       "instance"))
        blocks.append(PatchGANConv(nf * min(2 ** nb, 8), nf, 3, 1, 1, "none", activation=False))
        return cls(blocks)

    def official_index(self):
        """{official sequence index: (block, 'conv' | 'norm')} of the interleaved official layout."""
        index, table = 0, {}
        for b, block in enumerate(self.model):
            table[index] = (b, "conv")
            index += 1
            if block.norm_type != "none" or (0 < b < len(self.model) - 1):
                table[index] = (b, "norm")  # norm (or pix2pix's Identity) takes an index
                index += 1
            index += 1 if block.activation else 0
        return table

    def _remap_official_keys(self, state_dict, prefix, *args):
        table = self.official_index()
        for key in list(state_dict):
            if not key.startswith(prefix + "model."):
                continue
            head, rest = key[len(prefix) + len("model."):].split(".", 1)
            if not head.isdigit() or rest.split(".")[0] in ("conv", "norm") or int(head) not in table:
                continue
            block, part = table[int(head)]
            state_dict[f"{prefix}model.{block}.{part}.{rest}"] = state_dict.pop(key)

    def forward(self, x):
        return self.model(x)


class VGGDiscriminator(nn.Module):
    def __init__(self, in_nc=3, image_size=128, d=64, down_kernel=3):
        super().__init__()
        if image_size % 32:
            raise ValueError(f"VGGDiscriminator: image_size must be a multiple of 32, got {image_size}")
        widths = [d, d, 2 * d, 2 * d, 4 * d, 4 * d, 8 * d, 8 * d, 8 * d, 8 * d]
        blocks = [PatchGANConv(in_nc, d, 3, 1, 1, "none")]
        for i in range(1, 10):
            kernel, stride = (down_kernel, 2) if i % 2 else (3, 1)
            blocks.append(PatchGANConv(widths[i - 1], widths[i], kernel, stride, 1, "batch", bias=False))
        self.features = nn.Sequential(*blocks)
        self.classifier = nn.Sequential(nn.Linear(8 * d * (image_size // 32) ** 2, 100), nn.LeakyReLU(0.2),
                                        nn.Linear(100, 1))

    def forward(self, x):
        return self.classifier(self.features(x).flatten(1))
