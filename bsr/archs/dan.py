"""DANv2 networks (greatlog/DAN `codes/config/DANv2/models/modules/dan_arch.py`; docs/methods.md).

Module and parameter names follow the official code, so an official
DANv2 state dict loads with `DAN.load_state_dict`:
Restorer.{head1, head2, body.g.body.b.body{1,2}.{0,2}, fusion, upscale.i},
Estimator.{head_LR.0, head_HR.0, body.body.b.body{1,2}.{0,2}, tail.{0,2}},
buffers encoder (1, k², L), init_kernel (1, k, k), init_ker_map (1, L).

The dual-path blocks are bsrops.nn.DPCB / DPCG (one fused op for the modulation and the
residuals). `legacy_doubling=True` reproduces the official group "skip", which doubles the
chain output through list aliasing (docs/fidelity.md); released weights need it.
"""
import torch
import torch.nn as nn

from bsrops.nn import DPCG


def kernel_pca(kernels, code_length):
    """PCA matrix (k², L) of flattened kernels (N, k, k), as the official creat_PCA.py:
    centre the kernels, SVD of the (k², N) data matrix, keep the first L left singular vectors.
    Codes are `kernel_vec @ P` (no mean subtraction, as the official encoder)."""
    data = kernels.reshape(kernels.shape[0], -1).double()
    data = data - data.mean(0, keepdim=True)
    u, _, _ = torch.linalg.svd(data.t(), full_matrices=False)
    return u[:, :code_length].float().contiguous()


def delta_kernel(ksize):
    """(ksize, ksize) identity blur: 1 at the centre (DAN's initial kernel)."""
    kernel = torch.zeros(ksize, ksize)
    kernel[ksize // 2, ksize // 2] = 1
    return kernel


def conv(in_nc, out_nc, ksize, stride=1, padding=None):
    return nn.Conv2d(in_nc, out_nc, ksize, stride, ksize // 2 if padding is None else padding)


class Estimator(nn.Module):
    """Kernel estimator: LR features (5×5 head) modulated by SR features ((4s+1)² stride-s head)
    in one DPCG with 3×3 on both paths, then conv → global pool → 1×1 conv → softmax kernel."""

    def __init__(self, in_nc=3, nf=64, num_blocks=5, scale=4, kernel_size=21, legacy_doubling=True):
        super().__init__()
        self.ksize = kernel_size
        self.head_LR = nn.Sequential(conv(in_nc, nf // 2, 5))
        self.head_HR = nn.Sequential(conv(in_nc, nf // 2, 4 * scale + 1, stride=scale, padding=2 * scale))
        self.body = DPCG(nf // 2, nf // 2, 3, 3, num_blocks, legacy_doubling=legacy_doubling)
        self.tail = nn.Sequential(
            conv(nf // 2, nf, 3), nn.AdaptiveAvgPool2d(1), conv(nf, kernel_size ** 2, 1), nn.Softmax(1)
        )

    def forward(self, sr, lr):
        """sr (B, C, s·h, s·w), lr (B, C, h, w) -> kernel (B, k²), non-negative, rows sum to 1."""
        features, _ = self.body(self.head_LR(lr), self.head_HR(sr))
        return self.tail(features).flatten(1)


def upscaler(nf, out_nc, scale):
    """Pixel-shuffle upsampler of the official Restorer (×4 as two ×2 stages; no activations)."""
    if scale == 1:
        return conv(nf, out_nc, 3)
    if scale == 4:
        return nn.Sequential(
            conv(nf, nf * 4, 3), nn.PixelShuffle(2), conv(nf, nf * 4, 3), nn.PixelShuffle(2), conv(nf, out_nc, 3)
        )
    return nn.Sequential(conv(nf, nf * scale ** 2, 3), nn.PixelShuffle(scale), conv(nf, out_nc, 3))


class Restorer(nn.Module):
    """SR network conditioned on a kernel code: the code becomes a (B, nf, 1, 1) condition that
    modulates the image features channel-wise in ng groups of nb DPCBs (3×3 image, 1×1 code)."""

    def __init__(self, in_nc=3, nf=64, nb=10, ng=5, scale=4, input_para=10, legacy_doubling=True):
        super().__init__()
        self.head1 = conv(in_nc, nf, 3)
        self.head2 = conv(input_para, nf, 1)
        self.body = nn.Sequential(*[DPCG(nf, nf, 3, 1, nb, legacy_doubling=legacy_doubling) for _ in range(ng)])
        self.fusion = conv(nf, nf, 3)
        self.upscale = upscaler(nf, in_nc, scale)

    def forward(self, lr, ker_code):
        """lr (B, C, h, w), ker_code (B, L) -> SR (B, C, s·h, s·w), not clamped (as the official)."""
        features, condition = self.head1(lr), self.head2(ker_code[:, :, None, None])
        for group in self.body:
            features, condition = group(features, condition)
        return self.upscale(self.fusion(features))


class DAN(nn.Module):
    """DANv2: alternate `loop` times Restorer(lr, code) -> SR and Estimator(SR, lr) -> kernel,
    starting from the delta kernel's code. Both cross inputs are detached (as the official), so
    only the last iteration can receive gradients: the earlier ones run without autograd."""

    def __init__(self, pca, nf=64, nb=10, ng=5, in_nc=3, scale=4, loop=4, legacy_doubling=True):
        super().__init__()
        k2, code_length = pca.shape
        self.ksize = int(round(k2 ** 0.5))
        if self.ksize ** 2 != k2:
            raise ValueError(f"pca must be (k*k, L) for a square kernel, got shape {tuple(pca.shape)}")
        if loop < 1:
            raise ValueError(f"loop must be >= 1, got {loop}")
        self.loop, self.scale = loop, scale
        self.Restorer = Restorer(in_nc, nf, nb, ng, scale, code_length, legacy_doubling)
        self.Estimator = Estimator(in_nc, 64, 5, scale, self.ksize, legacy_doubling)
        self.register_buffer("encoder", pca.float()[None])
        self.register_buffer("init_kernel", delta_kernel(self.ksize)[None])
        self.register_buffer("init_ker_map", self.encode(self.init_kernel.flatten(1)))

    def encode(self, kernels):
        """Flattened kernels (B, k²) -> PCA codes (B, L)."""
        return kernels @ self.encoder[0]

    def forward(self, lr):
        """lr (B, C, h, w) -> (SR of the last iteration, its kernel (B, k²))."""
        code = self.init_ker_map.expand(lr.shape[0], -1)
        with torch.no_grad():
            for _ in range(self.loop - 1):
                code = self.encode(self.Estimator(self.Restorer(lr, code), lr))
        sr = self.Restorer(lr, code)
        return sr, self.Estimator(sr.detach(), lr)
