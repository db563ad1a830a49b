"""bsrops.usrnet_data_step, usrnet_solve and _usrnet_precompute with every tensor argument, and the gradients of
their outputs, fed in turn as a strided, an expanded and a storage-offset view (tests/conftest.py: view_kind,
assert_views_match), on every backend the CPU reaches: outputs and gradients equal those of the same values fed
contiguous, and the float64 reference.

FB / FBFy (and their gradients) are complex spectra as real (..., 2) views: view_as_complex needs an even storage
offset, so an odd-offset view raised "Tensor must have a storage_offset divisible by 2" in the reference solve and
in every backend's precompute backward."""
import os

import pytest
import torch

import bsrops
from triton_sm90 import TRITON_ERROR

# the Triton backend serves CPU tensors when interpreted (tests/conftest.py sets TRITON_INTERPRET=1)
TRITON = [] if TRITON_ERROR or os.environ.get("TRITON_INTERPRET") != "1" else ["triton"]

# (backends, scale): the interpreted Triton kernels take ~1 s per call at scale 2 (their alias loops run in
# Python), ~0.2 s at scale 1; how they take their arguments does not depend on the scale
GROUPS = [(("cpu", "cpu_shared", "reference"), 2)] + [((name,), 1) for name in TRITON]
GROUP_IDS = ["-".join(backends) for backends, _ in GROUPS]
N, C, H, W = 2, 1, 3, 3  # LR size


def lr_inputs(layout="per_image"):
    g = torch.Generator().manual_seed(7)
    y = torch.randn(N, C, H, W, generator=g, dtype=torch.float64)
    kernel = torch.rand((3, 3) if layout == "shared" else (N, 3, 3), generator=g, dtype=torch.float64)
    return y, kernel / kernel.sum((-2, -1), keepdim=True)


def hr_inputs(scale):
    g = torch.Generator().manual_seed(8)
    return (torch.randn(N, C, scale * H, scale * W, generator=g, dtype=torch.float64),
            torch.rand(N, generator=g, dtype=torch.float64) + 0.2)


@pytest.mark.parametrize("layout", ["shared", "per_image"])
@pytest.mark.parametrize("group", GROUPS, ids=GROUP_IDS)
def test_data_step_every_argument_as_a_view(group, layout, view_kind, assert_views_match):
    backends, scale = group
    if backends == ("triton",) and layout == "shared":
        pytest.skip("triton runs usrnet_solve only, which the kernel layout does not reach")
    (y, kernel), (z, alpha) = lr_inputs(layout), hr_inputs(scale)
    if layout == "shared":
        alpha = alpha.view(N, 1, 1, 1)

    def run(z, y, kernel, alpha):
        return bsrops.usrnet_data_step(z, y, kernel, alpha, scale)

    # cpu_shared and triton replace usrnet_solve only, which y and kernel never reach; the shared layout (a (k, k)
    # kernel, alpha (N, 1, 1, 1)) differs in those two arguments only
    only = {"cpu_shared": ["z", "alpha", "grad_out0"], "triton": ["z", "alpha", "grad_out0"]}
    if layout == "shared":
        only = {backend: ["kernel", "alpha"] for backend in backends}
    assert_views_match(run, dict(z=z, y=y, kernel=kernel, alpha=alpha), ["z", "y", "kernel", "alpha"], view_kind,
                       backends, only=only)


@pytest.mark.parametrize("kernel_channels", [2, 1], ids=["per_channel", "one_for_all"])
def test_data_step_with_a_4d_kernel_every_argument_as_a_view(kernel_channels, view_kind, assert_views_match):
    """Per-channel (N, C, kh, kw) and (N, 1, kh, kw) kernels, which run as views (per channel: z, y and the kernel
    as N*C single-channel images)."""
    g = torch.Generator().manual_seed(9)
    z = torch.randn(N, 2, 2 * H, 2 * W, generator=g, dtype=torch.float64)
    y = torch.randn(N, 2, H, W, generator=g, dtype=torch.float64)
    kernel = torch.rand(N, kernel_channels, 3, 2, generator=g, dtype=torch.float64)
    alpha = torch.rand(N, generator=g, dtype=torch.float64) + 0.2

    def run(z, y, kernel, alpha):
        return bsrops.usrnet_data_step(z, y, kernel, alpha, 2)

    assert_views_match(run, dict(z=z, y=y, kernel=kernel, alpha=alpha), ["z", "y", "kernel", "alpha"], view_kind,
                       ["cpu", "reference"])


@pytest.mark.parametrize("group", GROUPS, ids=GROUP_IDS)
def test_solve_every_argument_as_a_view(group, view_kind, assert_views_match):
    backends, scale = group
    y, kernel = lr_inputs()
    fb, fbfy, f2b_mean = torch.ops.bsrops._usrnet_precompute(y, kernel, scale)
    z, alpha = hr_inputs(scale)

    def run(z, FB, FBFy, F2B_mean, alpha):
        return torch.ops.bsrops.usrnet_solve(z, FB, FBFy, F2B_mean, alpha, scale)

    args = dict(z=z, FB=fb, FBFy=fbfy, F2B_mean=f2b_mean, alpha=alpha)
    assert_views_match(run, args, list(args), view_kind, backends)


def test_precompute_every_argument_as_a_view(view_kind, assert_views_match):
    y, kernel = lr_inputs()

    def run(y, kernel):
        return torch.ops.bsrops._usrnet_precompute(y, kernel, 2)

    # the composite precompute is the same on every backend but the reference
    assert_views_match(run, dict(y=y, kernel=kernel), ["y", "kernel"], view_kind, ["cpu", "reference"])
