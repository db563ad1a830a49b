"""DAN's and IKC's `BatchBlur` and DANv2's `DPCG` (greatlog/DAN), on bsrops.blur_downsample and bsrops.dpcb.

    from bsrops.compat.dan import BatchBlur, DPCG    # in place of DAN's own
"""
from torch import nn

from .. import nn as bsrops_nn
from ..ops._common import check_tensor
from ..ops.blur_downsample import blur_downsample


class BatchBlur(nn.Module):
    """DAN's BatchBlur(l): forward(input, kernel) -> (B, C, H, W), each image blurred by an l x l kernel.

    input (B, C, H, W); kernel (l, l), one for the batch, or B*l*l values read as (B, l, l) (DAN's (B, l, l),
    which it views so), one per image. A correlation (conv2d's), reflect padding (the edge pixel not repeated):
    out[i, j] = sum_{p,q} kernel[p, q] input[i + p - l // 2, j + q - l // 2], so an even l reads one pixel fewer
    after than before, DAN's split of the padding; l // 2 < H, W. Under torch.autocast it runs in the autocast
    dtype, as DAN's conv2d.
    """

    def __init__(self, l=15):  # noqa: E741 (DAN's name)
        super().__init__()
        self.l = l

    def forward(self, input, kernel):  # noqa: A002 (DAN's name)
        check_tensor("BatchBlur", "input", input, dims=4)
        check_tensor("BatchBlur", "kernel", kernel)
        size, batch = self.l, input.shape[0]
        if kernel.dim() == 2:
            if tuple(kernel.shape) != (size, size):
                raise ValueError(f"BatchBlur: a 2-D kernel must be (l, l) = ({size}, {size}), got "
                                 f"{tuple(kernel.shape)}")
            return blur_downsample(input, kernel, 1, "reflect", kernel_layout="shared")
        if kernel.numel() != batch * size * size:
            raise ValueError(f"BatchBlur: kernel must be (B, l, l) = ({batch}, {size}, {size}) or (l, l), got shape "
                             f"{tuple(kernel.shape)}")
        return blur_downsample(input, kernel.reshape(batch, size, size), 1, "reflect", kernel_layout="per_image")


class DPCG(bsrops_nn.DPCG):
    """DANv2's DPCG(nf1, nf2, ksize1, ksize2, nb): forward([img, cond]) -> that list, now [out_img, out_cond].

    As the official group: nb dual-path blocks (parameter names body.{b}.body1.0.weight, ..., so official state
    dicts load); the blocks update the list they are given, so the group's long skip adds the chain's output to
    itself and the result is twice the chain's output; the list passed in is updated in place and returned. cond
    is (B, nf, 1, 1) (the Restorer's kernel code) or image-sized (the Estimator's). Under torch.autocast the
    blocks run in the autocast dtype (the residual stream included: see docs/ops.md, Compat).
    """

    def __init__(self, nf1, nf2, ksize1, ksize2, nb):
        super().__init__(nf1, nf2, ksize1, ksize2, nb, legacy_doubling=True)

    def forward(self, x):
        x[0], x[1] = super().forward(x[0], x[1])
        return x
