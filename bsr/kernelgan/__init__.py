"""KernelGAN: estimate an image's own downscaling kernel (RealSR's kernel pool).

    python -m bsr.kernelgan photo.png [more.png ...] --out kernels/ [--x4] [--iterations 3000]

writes `<name>_kernel_x2.mat` (and `<name>_kernel_x4.mat` with --x4), MATLAB files holding
`Kernel`, the layout RealSR's `create_kernel_dataset.py` reads (bsr.kernels). Python:
`estimate_kernel(image)`.

What the official code does (sefibk/KernelGAN; docs/methods.md), reproduced here:
a linear generator G (arch.py) learns to downscale 64x64 crops of the image by 2
so that a patch discriminator D cannot tell its 26x26 outputs from 26x26 crops of the image
itself (the image's patch statistics recur across scales). Losses: L1 between D's map and
1/0 labels; G adds five constraints on its kernel k: 5 x MSE to a bicubic downscale of its input,
0.5 x |1 - sum k|, 0.5 x mean |k * boundary mask|, 0 x centre-of-mass MSE, 0 x mean |k|^0.2 (the
last two switched on, 1 and 5, once the bicubic weight has decayed below 5e-3). Schedule: both
learning rates / 10 every 750 iterations; once the bicubic loss is < 0.4 three iterations in a
row, its weight / 100 every 200 iterations (floor 5e-6). Adam 2e-4, betas (0.5, 0.999), 3000
iterations of batch 1, images in [-1, 1], N(0, 1/255) noise on D's inputs, crops drawn with
probability following the image's blurred gradient magnitude (top-left corners even).
The final 13x13 kernel: values below 0.75 x the 41st largest are cut (subtracted, clipped at 0),
renormalised, shifted (cubic spline) so that its centre of mass sits where a x2 decimation
expects it, which pads it to 17x17 (more if the centre was off by over a pixel); the x4 kernel is
the x2 kernel convolved with itself dilated by 2, cropped (33x33 from 17x17). Kernels are in
correlation orientation: LR = decimate(correlate(HR, k)), as RealSR applies them.

Quirk kept by default (docs/fidelity.md): the bicubic loss convolves with a (3, 3, 8, 8) kernel without
groups, so its target is the bicubic downscale of the *sum* of the colour channels in every
channel (KernelGAN issues #28, #47; it stops mattering once its weight has decayed).
`grouped_bicubic_loss=True` gives the per-channel target the paper describes.

Modules: arch (G and D), losses (G's bicubic loss and kernel constraints), crops (where crops are
drawn), train (the schedule, one image's training, estimate_kernel), postprocess (the final x2 and
x4 kernels), cli (python -m bsr.kernelgan).
"""
from .arch import KernelDiscriminator, KernelGenerator, init_weights
from .cli import main
from .crops import CROP, crop_corner, crop_probabilities, gradient_map
from .losses import LAMBDAS, bicubic_loss, bicubic_x2_kernel, boundary_mask, constraint_losses, shave_to
from .postprocess import cut_negligible, final_kernels, x4_kernel
from .train import KernelGAN, Schedule, estimate_kernel

__all__ = ["CROP", "KernelDiscriminator", "KernelGAN", "KernelGenerator", "LAMBDAS", "Schedule", "bicubic_loss",
           "bicubic_x2_kernel", "boundary_mask", "constraint_losses", "crop_corner", "crop_probabilities",
           "cut_negligible", "estimate_kernel", "final_kernels", "gradient_map", "init_weights", "main", "shave_to",
           "x4_kernel"]
