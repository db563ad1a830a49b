"""The embedded demo data: colour photographs that scikit-image ships.

- train: astronaut, coffee, rocket, hubble_deep_field, immunohistochemistry,
  stereo_motorcycle (left view);
- validation: chelsea, retina (centre 512x512 crop).
- unpaired methods: HR = astronaut, rocket, immunohistochemistry; target-domain LR =
  coffee, hubble_deep_field, stereo_motorcycle degraded by DEMO_DEGRADATION; validation
  images get the same degradation, so their PSNR against the HR is measurable and the
  true kernel is known.

DEMO_DEGRADATION, the fixed "unknown" degradation of the unpaired demo (documented here,
never given to the methods): an anisotropic Gaussian blur of size 21 with standard
deviations 0.6·s and 0.35·s along axes rotated by θ = π/6, applied as a correlation with
reflect padding and decimated to the upper-left pixel of each s x s cell
(`bsrops.blur_downsample`), then white Gaussian noise σ = 5/255 (seeded per image) and
8-bit quantisation.
"""
import math

import numpy as np
import torch

from .datasets import ImageSet
from .io import to_tensor
from .transforms import modcrop

TRAIN = ("astronaut", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry", "stereo_motorcycle")
VALIDATION = ("chelsea", "retina")
UNPAIRED_HR = ("astronaut", "rocket", "immunohistochemistry")
UNPAIRED_LR = ("coffee", "hubble_deep_field", "stereo_motorcycle")
DEMO_DEGRADATION = {"kernel_size": 21, "sigma_major": 0.6, "sigma_minor": 0.35, "theta": math.pi / 6,
                    "padding": "reflect", "noise": 5 / 255}


def load(name):
    """One skimage.data photograph as (H, W, 3) uint8 RGB (the preprocessing above applied)."""
    import skimage.data

    image = getattr(skimage.data, name)()
    if name == "stereo_motorcycle":
        image = image[0]
    if name == "retina":
        h, w = image.shape[:2]
        image = image[(h - 512) // 2:(h + 512) // 2, (w - 512) // 2:(w + 512) // 2]
    return np.ascontiguousarray(image)


def image_set(names):
    return ImageSet((name, load(name)) for name in names)


def demo_kernel(scale):
    """The (k, k) kernel of DEMO_DEGRADATION at scale `scale`."""
    from bsr import kernels

    d = DEMO_DEGRADATION
    cov = kernels.covariance(d["sigma_major"] * scale, d["sigma_minor"] * scale, d["theta"])
    return kernels.gaussian_kernels(cov, d["kernel_size"])[0].float()


def demo_degrade(hr, scale, index):
    """(3, H, W) HR in [0, 1] -> (3, H/s, W/s) LR by DEMO_DEGRADATION, noise seeded by `index`."""
    from bsr import degradations

    lr = degradations.blur_downsample(hr[None], demo_kernel(scale), scale, DEMO_DEGRADATION["padding"])
    lr = degradations.add_noise(lr, DEMO_DEGRADATION["noise"], torch.Generator().manual_seed(1000 + index))
    return (lr[0].clamp(0, 1) * 255).round() / 255


def degrade_for_validation(hr, scale, index):
    """(1, 3, H, W) HR -> {"lr": (1, 3, H/s, W/s) by DEMO_DEGRADATION, noise seeded by `index`; "kernel": its
    (k, k) kernel}: the degradation of an unpaired method's validation image."""
    return {"lr": demo_degrade(hr[0], scale, index)[None], "kernel": demo_kernel(scale)}


def unpaired_lr_set(scale):
    """The target-domain LR images of the unpaired demo."""
    items = []
    for index, name in enumerate(UNPAIRED_LR):
        hr = to_tensor(modcrop(load(name), scale))
        lr = demo_degrade(hr, scale, index)
        items.append((name, (lr.permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()))
    return ImageSet(items)


def unpaired_validation(scale, multiple):
    """Validation items of the unpaired demo: HR, its LR by DEMO_DEGRADATION, the true kernel."""
    items = []
    for index, name in enumerate(VALIDATION):
        hr = to_tensor(modcrop(load(name), multiple))[None]
        items.append({"name": name, "hr": hr, **degrade_for_validation(hr, scale, len(UNPAIRED_LR) + index)})
    return items
