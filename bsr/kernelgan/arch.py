"""KernelGAN's networks (Bell-Kligler et al., NeurIPS 2019; docs/methods.md).

- `KernelGenerator`: a deep *linear* network (no activations, no bias, no padding): conv 7x7 1->64,
  5x5, 3x3, 1x1, 1x1 64->64, then 1x1 64->1 with stride 2. The three colour channels go through
  it as a batch of grey images. Being linear, it is one convolution with a 13x13 kernel followed
  by 2x decimation; `kernel()` extracts that kernel by pushing a delta through the layers (the
  stride is left out there, so the stride has to be on the last 1x1 layer for the equivalence to
  be exact). A 64x64 crop comes out 26x26.
- `KernelDiscriminator`: spectral-norm conv 7x7 3->64 (no activation), five [SN conv 1x1,
  BatchNorm, ReLU], SN conv 1x1 64->1, sigmoid: a 7x7 receptive field, 26x26 in -> 20x20 map.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

G_STRUCTURE = (7, 5, 3, 1, 1, 1)


class KernelGenerator(nn.Module):
    def __init__(self, channels=64, structure=G_STRUCTURE, scale=2):
        super().__init__()
        widths = [1] + [channels] * (len(structure) - 1) + [1]
        strides = [1] * (len(structure) - 1) + [scale]
        self.layers = nn.Sequential(*[nn.Conv2d(cin, cout, k, stride=s, bias=False)
                                      for cin, cout, k, s in zip(widths, widths[1:], structure, strides)])
        self.kernel_size = sum(structure) - len(structure) + 1

    def forward(self, x):
        """(N, 3, H, W) -> (N, 3, h, w): every colour channel through the same grey network."""
        n, c, h, w = x.shape
        out = self.layers(x.reshape(n * c, 1, h, w))
        return out.reshape(n, c, *out.shape[-2:])

    def kernel(self):
        """The kernel k the network applies, in correlation orientation: G(x) = decimate(correlate(x, k)) per
        channel (the orientation RealSR's imresize, scipy's `correlate`, uses it in). Differentiable."""
        k = self.kernel_size
        delta = torch.ones(1, 1, 1, 1, device=self.layers[0].weight.device, dtype=self.layers[0].weight.dtype)
        out = F.conv2d(delta, self.layers[0].weight, padding=k - 1)
        for layer in self.layers[1:]:
            out = F.conv2d(out, layer.weight)
        return out.squeeze(0).squeeze(0).flip(0, 1)

    def output_size(self, crop):
        size = crop
        for layer in self.layers:
            size = (size - layer.kernel_size[0]) // layer.stride[0] + 1
        return size


class KernelDiscriminator(nn.Module):
    def __init__(self, channels=64, layers=7, kernel_size=7):
        super().__init__()
        sn = nn.utils.spectral_norm
        body = [sn(nn.Conv2d(3, channels, kernel_size))]
        for _ in range(layers - 2):
            body += [sn(nn.Conv2d(channels, channels, 1)), nn.BatchNorm2d(channels), nn.ReLU(True)]
        body += [sn(nn.Conv2d(channels, 1, 1)), nn.Sigmoid()]
        self.body = nn.Sequential(*body)
        self.shave = kernel_size - 1

    def forward(self, x):
        return self.body(x)


def init_weights(module):
    """KernelGAN's init: Xavier-normal convs with gain 0.1 and zero bias; BatchNorm weight ~ N(1, 0.02)."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            weight = m.weight_orig if hasattr(m, "weight_orig") else m.weight
            nn.init.xavier_normal_(weight, 0.1)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)
