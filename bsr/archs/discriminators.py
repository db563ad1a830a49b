"""VGG-style discriminators: a stack of conv + batch norm + LeakyReLU blocks halving the size five
times, then flatten -> Linear 100 -> LeakyReLU -> Linear 1 (one logit per image).

`VGGDiscriminator(in_nc, image_size, d, down_kernel)`: conv 3x3 in->d (bias, LeakyReLU), then
[d s2, 2d, 2d s2, 4d, 4d s2, 8d, 8d s2, 8d, 8d s2] with batch norm + LeakyReLU(0.2) and no bias;
the stride-2 convs are down_kernel x down_kernel (padding 1), the others 3x3.
- down_kernel=4, image_size=128: ESRGAN's Discriminator_VGG_128 (RealSR's DF2K yml;
  shared/spec/methods.md §2.2).
- down_kernel=3: USR_DA's DiscriminatorVGG (§3.2), at any multiple of 32.
Every block is a bsrops.nn.PatchGANConv (the fused conv + norm + activation op).
"""
import torch.nn as nn


class VGGDiscriminator(nn.Module):
    def __init__(self, in_nc=3, image_size=128, d=64, down_kernel=3):
        super().__init__()
        from bsrops.nn import PatchGANConv

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
