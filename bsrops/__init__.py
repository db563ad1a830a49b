"""bsrops: fused kernels for blind super-resolution, as torch.ops.bsrops custom ops.

    import bsrops
    y = bsrops.blur_downsample(x, kernel, stride=4)      # per-pixel, per-image or shared kernels
    x = bsrops.usrnet_data_step(z, y, kernel, alpha, 4)  # USRNet's closed-form data step
    term = bsrops.USRNetDataTerm(y, kernel, 4); x = term.solve(z, alpha)   # invariants hoisted
    out_img, out_cond = bsrops.dpcb(x_img, x_cond, w1, b1, w2, b2, w3, b3, w4, b4)  # DANv2 DPCB
    out = bsrops.patchgan_conv(x, weight, bias, stride=2, padding=1, norm="instance")
    bsrops.nn.DPCB / DPCG / PatchGANConv                  # modules, official names
    bsrops.backend_info("cpu")                             # which backend runs, and the build
    with bsrops.use_backend("reference"): ...              # or BSROPS_BACKEND=...

bsrops holds the ops and op-shaped modules: `bsrops.ops` (one module per op: validation, fake kernels,
autograd, backend registration), `bsrops.nn` (the modules over them), `bsrops.reference` (the pure-PyTorch
reference kernels and baselines) and `bsrops.triton` (the Triton kernels). Networks built from them, the
discriminators included, live in the `bsr` package.
"""
from . import _extension  # loads _C, the native kernels (the op modules below define the schemas)
from ._backend import BACKENDS, backend_info, kernel_calls, use_backend
from ._extension import build_info
from .ops.blur_downsample import blur_downsample
from .ops.usrnet_data_step import USRNetDataTerm, usrnet_data_step
from .ops.dpcb import dpcb
from .ops.patchgan_conv import patchgan_conv
from . import nn
from ._backend import install_defaults as _install_defaults

_install_defaults()

__all__ = ["BACKENDS", "backend_info", "blur_downsample", "build_info", "dpcb", "kernel_calls", "nn", "patchgan_conv",
           "use_backend", "usrnet_data_step", "USRNetDataTerm"]
