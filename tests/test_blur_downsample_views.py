"""bsrops.blur_downsample with x, the kernel (every layout) and the gradient of its output fed in turn as a
strided, an expanded and a storage-offset view (tests/conftest.py: view_kind, assert_views_match), on every
backend the CPU reaches: outputs and gradients equal those of the same values fed contiguous, and the float64
reference."""
import os

import pytest
import torch

import bsrops
from triton_sm90 import TRITON_ERROR

# the Triton backend serves CPU tensors when interpreted (tests/conftest.py sets TRITON_INTERPRET=1)
TRITON = [] if TRITON_ERROR or os.environ.get("TRITON_INTERPRET") != "1" else ["triton"]

BACKENDS = ["cpu", "cpu_shared", "reference"] + TRITON
# the op's three layouts, and the entry point's others (views of them: tests/test_blur_downsample_layouts.py)
KERNELS = {"shared": (3, 3), "per_image": (2, 3, 3), "per_pixel": (2, 9, 3, 2), "shared_1": (1, 3, 3),
           "per_image_pdm": (2, 9, 1, 1), "per_channel": (2, 2, 3, 3), "per_channel_1": (2, 1, 3, 3)}
# the Triton launchers copy x, kernel and grad_out alike whatever the layout: one layout there (the interpreter
# takes ~0.4 s per call)
TRITON_LAYOUTS = ("per_pixel",)


@pytest.mark.parametrize("layout", sorted(KERNELS))
def test_every_argument_as_a_view(layout, view_kind, assert_views_match):
    g = torch.Generator().manual_seed(6)
    args = dict(x=torch.randn(2, 2, 5, 4, generator=g, dtype=torch.float64),
                kernel=torch.rand(KERNELS[layout], generator=g, dtype=torch.float64))

    def run(x, kernel):  # both flips, over the layouts (the reference flips the kernel with a copy)
        return bsrops.blur_downsample(x, kernel, 2, "reflect", flip=layout == "per_image")

    backends = [b for b in BACKENDS if b != "triton" or layout in TRITON_LAYOUTS]
    assert_views_match(run, args, ["x", "kernel"], view_kind, backends)
