"""bsrops.dpcb with every tensor argument, and the gradients of both outputs, fed in turn as a strided, an expanded
and a storage-offset view (tests/conftest.py: view_kind, assert_views_match): outputs and gradients equal those of
the same values fed contiguous, and the float64 reference, under autograd and without (_dpcb_inference).

In float32 on the CPU the first convolution of each path is oneDNN's conv + LeakyReLU post-op, which read a
strided or expanded bias (b1, b3) as a plain array: outputs 2.3-64 away from the contiguous call."""
import os

import pytest
import torch

import bsrops
from triton_sm90 import TRITON_ERROR

# the Triton backend serves CPU tensors when interpreted (tests/conftest.py sets TRITON_INTERPRET=1)
TRITON = [] if TRITON_ERROR or os.environ.get("TRITON_INTERPRET") != "1" else ["triton"]

NF = 3
NAMES = ("w1", "b1", "w2", "b2", "w3", "b3", "w4", "b4")
# the fused kernels run on cpu (cpu_shared has none of its own for this op), reference and triton
BACKENDS = ["cpu", "reference"] + TRITON


def make_args(cond, dtype):
    g = torch.Generator().manual_seed(4)
    shapes = dict(x_img=(2, NF, 5, 4), x_cond=(2, NF, *((1, 1) if cond == "1x1" else (5, 4))),
                  w1=(NF, NF, 3, 3), b1=(NF,), w2=(NF, NF, 3, 3), b2=(NF,), w3=(NF, NF, 1, 1), b3=(NF,),
                  w4=(NF, NF, 1, 1), b4=(NF,))
    return {name: (torch.randn(shape, generator=g, dtype=torch.float64) * 0.5).to(dtype)
            for name, shape in shapes.items()}


@pytest.fixture(autouse=True)
def onednn_post_ops_at_any_size(monkeypatch):
    """The post-op at these small sizes too (below ONEDNN_POST_OP_MIN_VALUES it is conv2d + the LeakyReLU kernel)."""
    monkeypatch.setattr(bsrops.ops._common, "ONEDNN_POST_OP_MIN_VALUES", 0)


def run(**args):
    return bsrops.dpcb(**args)


def run_inference(**args):
    with torch.no_grad():
        return bsrops.dpcb(**args)


# The backends differ in the fused elementwise kernels only, which read x_img, x_cond and the output gradients
# (the weights and biases go to the convolutions alone): there the other arguments are varied on the CPU only.
ACTIVATIONS = ["x_img", "x_cond", "grad_out0", "grad_out1"]


@pytest.mark.parametrize("cond", ["1x1", "image"])
def test_every_argument_as_a_view(cond, view_kind, assert_views_match):
    """The weights and biases (whose handling does not depend on the condition's shape) with the 1x1 one."""
    args = make_args(cond, torch.float32)
    assert_views_match(run, args, list(args), view_kind, BACKENDS,
                       only={backend: ACTIVATIONS for backend in BACKENDS if backend != "cpu" or cond == "image"})


@pytest.mark.parametrize("cond", ["1x1", "image"])
def test_every_argument_as_a_view_without_autograd(cond, view_kind, assert_views_match):
    """_dpcb_inference: the convolutions and torch's addcmul / add_ around the in-place LeakyReLU."""
    only = {backend: ["x_img", "x_cond"] for backend in BACKENDS if backend != "cpu" or cond == "image"}
    assert_views_match(run_inference, make_args(cond, torch.float32), [], view_kind, BACKENDS, only=only)
