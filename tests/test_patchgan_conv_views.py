"""bsrops.patchgan_conv with every tensor argument, and the gradient of its output, fed in turn as a strided, an
expanded and a storage-offset view (tests/conftest.py: view_kind, assert_views_match): outputs, gradients and the
updated running statistics equal those of the same values fed contiguous, and the float64 reference.

The fused kernels read norm_weight / norm_bias through raw pointers: a strided norm_weight gave outputs 1.95
away and weight gradients 35.7 away from the contiguous call, an expanded one read past its storage; oneDNN's
conv + LeakyReLU post-op (norm='none' without autograd, float32) read a strided or expanded bias the same way."""
import os

import pytest
import torch

import bsrops
from triton_sm90 import TRITON_ERROR

# the Triton backend serves CPU tensors when interpreted (tests/conftest.py sets TRITON_INTERPRET=1)
TRITON = [] if TRITON_ERROR or os.environ.get("TRITON_INTERPRET") != "1" else ["triton"]

C = 4
GRAD = ["x", "weight", "bias", "norm_weight", "norm_bias"]
# the fused kernels run on cpu (cpu_shared has none of its own for this op), reference and triton
BACKENDS = ["cpu", "reference"] + TRITON


def make_args(norm, dtype=torch.float64):
    g = torch.Generator().manual_seed(3)
    args = dict(x=torch.randn(2, 3, 5, 4, generator=g), weight=torch.randn(C, 3, 3, 3, generator=g),
                bias=torch.randn(C, generator=g), norm_weight=torch.rand(C, generator=g) + 0.5,
                norm_bias=torch.randn(C, generator=g))
    if norm == "batch":
        args.update(running_mean=torch.randn(C, generator=g), running_var=torch.rand(C, generator=g) + 0.5)
    return {k: v.to(dtype) for k, v in args.items()}


def block(norm, training):
    def run(**args):
        return bsrops.patchgan_conv(stride=1, padding=1, norm=norm, training=training, momentum=0.3, **args)
    return run


@pytest.mark.parametrize("norm,training", [("instance", True), ("batch", True), ("batch", False)],
                         ids=["instance", "batch-train", "batch-eval"])
def test_every_argument_as_a_view(norm, training, view_kind, assert_views_match):
    errors = {}
    if norm == "batch" and training and view_kind == "expanded":  # updated in place: one location per channel
        errors = {name: (ValueError, f"{name} is updated in place in training mode and must not be an expanded")
                  for name in ("running_mean", "running_var")}
    # the backends differ in the fused norm kernels only, which x, weight and bias (the convolution's) never reach;
    # those three go to aten's convolution alike in every mode: varied with instance norm on the CPU
    fused = [name for name in make_args(norm) if name.startswith(("norm", "running"))] + ["grad_out0"]
    assert_views_match(block(norm, training), make_args(norm), GRAD, view_kind, BACKENDS, errors,
                       only={backend: fused for backend in BACKENDS if backend != "cpu" or norm != "instance"})


def test_no_norm_inference_float32(view_kind, assert_views_match, monkeypatch):
    """norm='none' without autograd: oneDNN's conv + LeakyReLU post-op (CPU float32), here at any size."""
    monkeypatch.setattr(bsrops.ops._common, "ONEDNN_POST_OP_MIN_VALUES", 0)
    def run(**args):
        with torch.no_grad():
            return bsrops.patchgan_conv(norm="none", stride=1, padding=1, **args)
    args = make_args("none", torch.float32)
    del args["norm_weight"], args["norm_bias"]
    assert_views_match(run, args, [], view_kind, ["cpu"])


@pytest.mark.parametrize("backend", BACKENDS)
def test_fused_kernel_updates_strided_running_stats_in_place(backend):
    """_patchgan_norm_act, the op that updates the buffers in place, given strided running statistics: the update
    lands in the caller's views, as in contiguous buffers, and nothing between their elements is written."""
    g = torch.Generator().manual_seed(5)
    y = torch.randn(2, C, 3, 3, generator=g, dtype=torch.float64)
    weight, bias = torch.rand(C, generator=g, dtype=torch.float64) + 0.5, torch.randn(C, generator=g,
                                                                                      dtype=torch.float64)
    stats = [torch.randn(C, generator=g, dtype=torch.float64), torch.rand(C, generator=g, dtype=torch.float64) + 0.5]
    buffers = [torch.zeros(2 * C, dtype=torch.float64) for _ in stats]
    views = [b[::2].copy_(t) for b, t in zip(buffers, stats)]
    plain = [t.clone() for t in stats]
    with bsrops.use_backend(backend):
        expected = torch.ops.bsrops._patchgan_norm_act(y, weight, bias, *plain, "batch", True, 0.3, 1e-5, 0.2, True)
        actual = torch.ops.bsrops._patchgan_norm_act(y, weight, bias, *views, "batch", True, 0.3, 1e-5, 0.2, True)
    for a, e in zip((*actual, *views), (*expected, *plain)):
        torch.testing.assert_close(a, e, rtol=0, atol=1e-12)
    assert not torch.equal(plain[0], stats[0])  # updated
    assert not any(b[1::2].any() for b in buffers)
