"""The blur and decimation of PDM-SR's `KernelModel` (greatlog/UnpairedSR, codes/config/PDM-SR/archs/deg_arch.py),
on bsrops.blur_downsample.

    from bsrops.compat.unpairedsr import blur
    x = blur(x, kernel, self.scale)    # in KernelModel.forward, in place of the pad / unfold / multiply / sum
"""
import math

import torch

from ..ops._common import check_tensor
from ..ops.blur_downsample import blur_downsample


def blur(x, kernel, scale):
    """x (B, C, H, W) blurred by `kernel` and decimated by `scale` -> (B, C, H/s, W/s), as KernelModel does it.

    kernel: the softmax output of KernelModel's kernel network, k*k taps on dim 1 (tap (p, q) at channel
    p*k + q): (B, k*k, 1, 1), one kernel per image, or (B, k*k, H/s, W/s), one per LR pixel ((B, k*k, H, W) at
    scale 1); KernelModel's view of it as (B, 1, k*k, ., .) is taken too. out[i, j] = sum_{p,q}
    K[p*k + q] x[s*i + p - k // 2, s*j + q - k // 2], reflect padding (the edge pixel not repeated; k // 2 < H,
    W); k odd, H and W multiples of s. The per-pixel kernel at scale > 1, which KernelModel's own multiply cannot
    broadcast (its kernel has the HR size), is defined here.

    The result has the dtype PDM-SR's unfold, multiply and sum give: the promoted dtype of x and kernel, under
    torch.autocast too (which casts none of them), so a bfloat16 kernel from an autocast softmax and a float32 x
    give float32.
    """
    check_tensor("blur", "x", x, dims=4)
    check_tensor("blur", "kernel", kernel)
    if kernel.dim() == 5 and kernel.shape[1] == 1:
        kernel = kernel.squeeze(1)
    n, _, height, width = x.shape
    if isinstance(scale, bool) or not isinstance(scale, int) or scale < 1 or height % scale or width % scale:
        raise ValueError(f"blur: scale must be an int >= 1 dividing x's H and W, got {scale!r} for x of shape "
                         f"{tuple(x.shape)}")
    k = math.isqrt(kernel.shape[1]) if kernel.dim() == 4 else 0
    lr = (height // scale, width // scale)
    if kernel.dim() != 4 or kernel.shape[0] != n or k * k != kernel.shape[1] or kernel.shape[2:] not in ((1, 1), lr):
        raise ValueError(f"blur: kernel must be (B, k*k, 1, 1) or (B, k*k, H/s, W/s) = ({n}, k*k, {lr[0]}, {lr[1]}), "
                         f"got shape {tuple(kernel.shape)}")
    if k % 2 == 0:
        raise ValueError(f"blur: k must be odd (KernelModel pads k // 2 on each side), got k = {k}")
    layout = "per_image" if kernel.shape[2:] == (1, 1) else "per_pixel"
    with torch.autocast(x.device.type, enabled=False):
        return blur_downsample(x, kernel, scale, "reflect", kernel_layout=layout)
