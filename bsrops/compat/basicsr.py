"""BasicSR's `filter2D` (basicsr/utils/img_process_util.py) on bsrops.blur_downsample.

    from bsrops.compat.basicsr import filter2D    # in place of basicsr.utils.img_process_util's
"""
from ..ops._common import check_tensor
from ..ops.blur_downsample import blur_downsample


def filter2D(img, kernel):  # noqa: N802 (BasicSR's name)
    """img (b, c, h, w) correlated with kernel (b, k, k), one kernel per image, or (1, k, k), one for the batch
    -> (b, c, h, w): out[i, j] = sum_{p,q} kernel[p, q] img[i + p - k // 2, j + q - k // 2] (conv2d's
    correlation), reflect padding (the edge pixel not repeated; k // 2 < h, w). k must be odd: an even k raises
    ValueError, as BasicSR's does. Under torch.autocast it runs in the autocast dtype, as BasicSR's conv2d."""
    check_tensor("filter2D", "img", img, dims=4)
    check_tensor("filter2D", "kernel", kernel)
    if kernel.dim() != 3 or kernel.shape[1] != kernel.shape[2] or kernel.shape[0] not in (1, img.shape[0]):
        raise ValueError(f"filter2D: kernel must be (b, k, k) with b = {img.shape[0]} (img's batch) or (1, k, k), "
                         f"got shape {tuple(kernel.shape)}")
    if kernel.shape[-1] % 2 == 0:
        raise ValueError(f"filter2D: kernel size must be odd (BasicSR pads k // 2 on each side), got k = "
                         f"{kernel.shape[-1]}")
    layout = "shared" if kernel.shape[0] == 1 else "per_image"
    return blur_downsample(img, kernel, 1, "reflect", kernel_layout=layout)
