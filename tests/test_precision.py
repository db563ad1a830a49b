"""The precision policy of the ops (docs/ops.md, Precision), on the CPU with bfloat16.

Under torch.autocast blur_downsample, dpcb and patchgan_conv run in the autocast dtype and usrnet_data_step in
float32: output dtypes, gradients in their inputs' dtypes, values against float64 within the bfloat16 tolerance
(twice the error of the reference run in bfloat16, tests/tolerances.py). bfloat16 inputs without autocast, mixed
dtypes promoted, float64 left alone, the ops called directly, and torch.compile under autocast."""
import math

import pytest
import torch
import torch.nn.functional as F

import bsrops
from bsrops.nn import DPCB
from bsrops.ops._precision import has_half_kernels, run_fused
from bsrops.reference import usrnet_data_step as usrnet_ref
from bsrops.reference.blur_downsample import blur_downsample_loop
from bsrops.reference.dpcb import DPCBReference
from logged_ops import LoggedOps
from tolerances import assert_close_to_float64

BF16 = torch.bfloat16


def autocast():
    return torch.autocast("cpu", dtype=BF16)


def outputs_and_grads(fn, leaves, grad_outs):
    """(outputs, gradients of `leaves`) of fn(*leaves), the output gradients in the outputs' dtypes."""
    leaves = [t.detach().requires_grad_() for t in leaves]
    outs = fn(*leaves)
    outs = list(outs) if isinstance(outs, (tuple, list)) else [outs]
    grads = torch.autograd.grad(outs, leaves, [g.to(o.dtype) for o, g in zip(outs, grad_outs)], allow_unused=True)
    return [o.detach() for o in outs], list(grads)


def assert_half_close(ours, exact, same_dtype, dtype=BF16):
    """Each result, whatever dtype it is returned in, within twice the error of the reference run in `dtype`
    (bfloat16 or float16; tests/tolerances.py), or within two of its ulps of its largest exact value: a sum of a few
    rounded products (a weight's gradient over a batch of 2) may be 1.5 ulps off in any arithmetic of that dtype,
    which the reference can happen to beat. None: an input the result does not depend on, in both."""
    for index, (actual, truth, bar) in enumerate(zip(ours, exact, same_dtype)):
        assert (actual is None) == (truth is None), index
        if actual is None:
            continue
        assert actual.shape == truth.shape, index
        scale = truth.abs().max().item()
        two_ulps = 2.0 ** (math.floor(math.log2(scale)) + 1) * torch.finfo(dtype).eps if scale > 0 else 0.0
        if (actual.double() - truth).abs().max().item() > two_ulps:
            assert_close_to_float64(actual, truth, dtype, bar)


def assert_float32_rounded_to_bfloat16(actual, truth):
    """actual: a float32 result (relative error 1e-5 of the largest value) rounded once to bfloat16."""
    bound = 2 ** -8 * truth.abs() + 1e-5 * truth.abs().max()
    assert actual.dtype == BF16 and ((actual.double() - truth).abs() <= bound).all()


def check_policy(fn, exact_fn, bf16_fn, leaves, grad_outs, out_dtype, cast=None):
    """fn under autocast: outputs in out_dtype, gradients in their leaves' dtypes, values as assert_half_close
    against exact_fn (float64, on the values autocast gives the op: the leaves at `cast`, default all, rounded to
    bfloat16) and bf16_fn (the reference in bfloat16); the output gradients rounded to the outputs' dtype as
    autograd hands them over."""
    with autocast():
        outs, grads = outputs_and_grads(fn, leaves, grad_outs)
    assert [o.dtype for o in outs] == [out_dtype] * len(outs)
    assert [g.dtype for g in grads if g is not None] == [t.dtype for t, g in zip(leaves, grads) if g is not None]
    rounded = [g.to(out_dtype) for g in grad_outs]
    cast = range(len(leaves)) if cast is None else cast
    values = [t.to(BF16).double() if i in cast else t.double() for i, t in enumerate(leaves)]
    exact = outputs_and_grads(exact_fn, values, [g.double() for g in rounded])
    same = outputs_and_grads(bf16_fn, [t.to(BF16) for t in leaves], rounded)
    for ours, truth, bar in zip((outs, grads), exact, same):
        assert_half_close(ours, truth, bar)


# ---- blur_downsample ----

BLUR_KERNELS = {"shared": (5, 5), "per_image": (2, 5, 5), "per_pixel": (2, 25, 6, 5), "per_channel": (2, 3, 5, 5),
                "per_image_pdm": (2, 25, 1, 1)}


def blur_inputs(layout):
    x = torch.randn(2, 3, 12, 9)
    kernel = torch.rand(BLUR_KERNELS[layout]) / 12
    return x, kernel, torch.randn(2, 3, 6, 5)


def blur_loop(x, kernel):
    """The float64 loop, per channel for a per-channel kernel, per image for PDM's (N, k*k, 1, 1)."""
    if kernel.dim() == 4 and kernel.shape[1] == x.shape[1]:
        return torch.cat([blur_downsample_loop(x[:, c:c + 1], kernel[:, c], 2) for c in range(x.shape[1])], 1)
    if kernel.dim() == 4 and kernel.shape[2:] == (1, 1):
        return blur_downsample_loop(x, kernel.view(kernel.shape[0], 5, 5), 2)
    return blur_downsample_loop(x, kernel, 2)


def blur_on_reference_backend(x, kernel):
    with bsrops.use_backend("reference"):
        return bsrops.blur_downsample(x, kernel, 2)


@pytest.mark.parametrize("backend", ["cpu", "reference"])
@pytest.mark.parametrize("layout", sorted(BLUR_KERNELS))
def test_blur_downsample_runs_in_the_autocast_dtype(layout, backend):
    x, kernel, grad = blur_inputs(layout)
    with bsrops.use_backend(backend):
        check_policy(lambda a, b: bsrops.blur_downsample(a, b, 2), blur_loop, blur_on_reference_backend, [x, kernel],
                     [grad], BF16)


def test_blur_downsample_bfloat16_inputs_and_mixed_dtypes():
    """bfloat16 in, bfloat16 out, without autocast; a bfloat16 kernel with a float32 image (PDM under its own
    autocast) promotes to float32: the result of the float32 op, the kernel's gradient in bfloat16."""
    x, kernel, grad = blur_inputs("per_channel")
    rounded = [t.to(BF16) for t in (x, kernel, grad)]
    ours = outputs_and_grads(lambda a, b: bsrops.blur_downsample(a, b, 2), rounded[:2], rounded[2:])
    assert [t.dtype for t in ours[0] + ours[1]] == [BF16] * 3
    exact = outputs_and_grads(blur_loop, [t.double() for t in rounded[:2]], [rounded[2].double()])
    same = outputs_and_grads(blur_on_reference_backend, rounded[:2], rounded[2:])
    for results, truth, bar in zip(ours, exact, same):
        assert_half_close(results, truth, bar)
    mixed = outputs_and_grads(lambda a, b: bsrops.blur_downsample(a, b, 2), [x, rounded[1]], [grad])
    wide = outputs_and_grads(lambda a, b: bsrops.blur_downsample(a, b, 2), [x, rounded[1].float()], [grad])
    assert mixed[0][0].dtype == torch.float32 and mixed[1][1].dtype == BF16
    assert torch.equal(mixed[0][0], wide[0][0]) and torch.equal(mixed[1][0], wide[1][0])
    assert torch.equal(mixed[1][1], wide[1][1].to(BF16))
    assert bsrops.blur_downsample(x.double(), kernel, 2).dtype == torch.float64


def test_autocast_leaves_float64_alone_and_reaches_direct_op_calls():
    x, kernel, _ = blur_inputs("per_image")
    with autocast():
        exact = bsrops.blur_downsample(x.double(), kernel.double(), 2)
        mixed = bsrops.blur_downsample(x.double(), kernel, 2)  # a float64 input: all in float64
        mixed_direct = torch.ops.bsrops.blur_downsample(x.double(), kernel, 2)
        direct = torch.ops.bsrops.blur_downsample(x, kernel, 2)
    assert torch.equal(exact, bsrops.blur_downsample(x.double(), kernel.double(), 2))
    assert torch.equal(mixed, exact) and torch.equal(mixed_direct, exact)
    assert direct.dtype == BF16 and torch.equal(direct, bsrops.blur_downsample(x.to(BF16), kernel.to(BF16), 2))


# ---- dpcb ----

DPCB_USES = {"restorer": (4, 3, 1, (7, 6), (1, 1)), "estimator": (3, 3, 3, (5, 6), (5, 6))}


def dpcb_case(use):
    nf, k1, k2, image, cond = DPCB_USES[use]
    module = DPCB(nf, nf, k1, k2)
    inputs = [torch.randn(2, nf, *image), torch.randn(2, nf, *cond)]
    return module, inputs, [torch.randn_like(t) for t in inputs]


def dpcb_functional(module_cls, state):
    """fn(x_img, x_cond, *parameters) over a module_cls with `state`'s layout (DPCB or the official structure)."""
    names = list(state)

    def fn(x_img, x_cond, *params):
        args = ([x_img, x_cond],) if module_cls is DPCBReference else (x_img, x_cond)
        return tuple(torch.func.functional_call(module_cls(*module_args(state)), dict(zip(names, params)), args))

    return fn


def module_args(state):
    w1, w3 = state["body1.0.weight"], state["body2.0.weight"]
    return w1.shape[0], w3.shape[1], w1.shape[-1], w3.shape[-1]


@pytest.mark.parametrize("backend", ["cpu", "reference"])
@pytest.mark.parametrize("use", sorted(DPCB_USES))
def test_dpcb_runs_in_the_autocast_dtype(use, backend):
    module, inputs, grads = dpcb_case(use)
    state = dict(module.named_parameters())
    leaves = inputs + [p.detach() for p in state.values()]
    with bsrops.use_backend(backend):
        check_policy(dpcb_functional(DPCB, state), dpcb_functional(DPCBReference, state),
                     dpcb_functional(DPCBReference, state), leaves, grads, BF16)


@pytest.mark.parametrize("use", sorted(DPCB_USES))
def test_dpcb_bfloat16_inputs_inference_and_mixed_dtypes(use):
    module, inputs, grads = dpcb_case(use)
    state = dict(module.named_parameters())
    leaves = [t.to(BF16) for t in inputs + [p.detach() for p in state.values()]]
    ours = outputs_and_grads(dpcb_functional(DPCB, state), leaves, grads)
    assert {t.dtype for t in ours[0] + ours[1]} == {BF16}
    exact = outputs_and_grads(dpcb_functional(DPCBReference, state), [t.double() for t in leaves],
                              [g.to(BF16).double() for g in grads])
    same = outputs_and_grads(dpcb_functional(DPCBReference, state), leaves, grads)
    for results, truth, bar in zip(ours, exact, same):
        assert_half_close(results, truth, bar)
    with torch.no_grad():  # _dpcb_inference
        inference = dpcb_functional(DPCB, state)(*leaves)
    assert {t.dtype for t in inference} == {BF16}
    assert_half_close(inference, exact[0], same[0])
    x_img = inputs[0].to(BF16).requires_grad_()
    out_img, out_cond = module(x_img, inputs[1])  # a bfloat16 image into a float32 block
    assert out_img.dtype == out_cond.dtype == torch.float32
    assert torch.equal(out_img, module(x_img.float(), inputs[1])[0])
    (grad,) = torch.autograd.grad(out_img.sum(), x_img)
    assert grad.dtype == BF16


def test_run_fused_copies_half_tensors_only_for_backends_without_half_kernels(monkeypatch):
    """run_fused: the CPU's fused kernels (float32 / float64) get a float32 copy of a bfloat16 tensor and the result
    comes back in bfloat16; where the backend has half kernels (the native CUDA one, which a meta tensor stands in
    for here) the kernel gets the bfloat16 tensor itself, no copy."""
    x = torch.randn(2, 3, 4, 5).to(BF16)
    assert not has_half_kernels("cpu")
    with LoggedOps() as calls:
        moved = run_fused("_relayout", x, None, True)
    assert moved.dtype == BF16 and torch.equal(moved, x)
    assert ("bsrops::_relayout", {torch.float32}) in calls and ("aten::_to_copy", {BF16}) in calls, calls
    monkeypatch.setattr(bsrops._backend, "active_backend", lambda device_type: "cuda")
    assert has_half_kernels("meta")
    x = x.to("meta")
    with LoggedOps() as calls:
        moved = run_fused("_relayout", x, None, True)
    assert calls == [("bsrops::_relayout", {BF16})] and moved.dtype == BF16


# ---- patchgan_conv ----

def patchgan_eager(norm, running):
    """conv, norm, LeakyReLU in eager PyTorch on (x, weight, norm_weight, norm_bias, bias); batch norm updates
    `running` (mean, var) in their dtype."""
    def fn(x, weight, norm_weight, norm_bias, bias=None):
        y = F.conv2d(x, weight, bias, 2, 1)
        if norm == "instance":
            y = F.instance_norm(y, weight=norm_weight, bias=norm_bias)
        elif norm == "batch":
            y = F.batch_norm(y, *running, norm_weight, norm_bias, True, 0.1, 1e-5)
        return F.leaky_relu(y, 0.2)

    return fn


def patchgan_ours(norm, running):
    def fn(x, weight, norm_weight, norm_bias, bias=None):
        return bsrops.patchgan_conv(x, weight, bias, 2, 1, norm, norm_weight, norm_bias, *running)

    return fn


def patchgan_leaves(norm):
    """x, weight, norm_weight, norm_bias, and the conv's bias without a norm (behind one, its exact gradient is 0:
    a bfloat16 result is all rounding noise there)."""
    leaves = [torch.randn(2, 3, 9, 8), torch.randn(5, 3, 4, 4) * 0.3, torch.rand(5) + 0.5, torch.randn(5)]
    return leaves + [torch.randn(5)] if norm == "none" else leaves


@pytest.mark.parametrize("backend", ["cpu", "reference"])
@pytest.mark.parametrize("norm", ["none", "instance", "batch"])
def test_patchgan_conv_runs_in_the_autocast_dtype(norm, backend):
    """The convolution in bfloat16, the norm in float32 (its parameters and running statistics stay float32)."""
    leaves = patchgan_leaves(norm)
    grad = torch.randn(2, 5, 4, 4)
    running = {dtype: (torch.zeros(5, dtype=dtype), torch.ones(5, dtype=dtype)) if norm == "batch" else (None, None)
               for dtype in (torch.float32, torch.float64, BF16)}
    with bsrops.use_backend(backend):
        check_policy(patchgan_ours(norm, running[torch.float32]), patchgan_eager(norm, running[torch.float64]),
                     patchgan_eager(norm, running[BF16]), leaves, [grad], BF16, cast=(0, 1, 4))
    if norm == "batch":  # updated once by each of the three runs
        for ours, truth, bar in zip(running[torch.float32], running[torch.float64], running[BF16]):
            assert ours.dtype == torch.float32
            assert_close_to_float64(ours, truth, BF16, bar)


def test_patchgan_conv_bfloat16_inputs_statistics_and_mixed_dtypes():
    leaves = patchgan_leaves("none")
    rounded = [t.to(BF16) for t in leaves]
    running = [torch.zeros(5, dtype=BF16), torch.ones(5, dtype=BF16)]
    (out,), grads = outputs_and_grads(patchgan_ours("batch", running), rounded, [torch.randn(2, 5, 4, 4)])
    assert out.dtype == BF16 and {g.dtype for g in grads} == {BF16} and running[0].dtype == BF16
    y = F.conv2d(rounded[0], rounded[1], rounded[4], 2, 1)
    _, mean, rstd, *_ = torch.ops.bsrops.patchgan_norm_act(y, rounded[2], rounded[3], None, None, "instance", True,
                                                           0.1, 1e-5, 0.2, True)
    assert mean.dtype == rstd.dtype == torch.float32  # the statistics in the dtype the norm computes in
    torch.testing.assert_close(mean, y.float().mean((2, 3)), rtol=1e-6, atol=1e-6)
    x = leaves[0].to(BF16)
    mixed = patchgan_ours("instance", (None, None))(x, *leaves[1:])
    assert mixed.dtype == torch.float32 and torch.equal(mixed, patchgan_ours("instance", (None, None))(x.float(),
                                                                                                        *leaves[1:]))


# ---- usrnet_data_step ----

def usrnet_inputs(layout):
    n, c, h, w, s = 2, 3, 4, 5, 2
    kernel = torch.rand((n, c, 3, 4) if layout == "per_channel" else (n, 3, 4))
    return [torch.randn(n, c, s * h, s * w), torch.randn(n, c, h, w), kernel / kernel.sum((-2, -1), keepdim=True),
            torch.rand(n) * 0.5 + 0.05]


def usrnet_official(z, y, kernel, alpha):
    """The official formulation, one channel at a time for a per-channel kernel."""
    if kernel.dim() == 3:
        return usrnet_ref.usrnet_data_step_official(z, y, kernel, alpha, 2)
    return torch.cat([usrnet_ref.usrnet_data_step_official(z[:, c:c + 1], y[:, c:c + 1], kernel[:, c], alpha, 2)
                      for c in range(z.shape[1])], 1)


@pytest.mark.parametrize("layout", ["per_image", "per_channel"])
def test_usrnet_data_step_runs_in_float32_under_autocast(layout):
    """bfloat16 z and y (a bfloat16 network's), float32 kernel and alpha: float32 result, within the float32
    tolerance of float64 on the same values; gradients in the inputs' dtypes. USRNetDataTerm alike."""
    z, y, kernel, alpha = usrnet_inputs(layout)
    leaves = [z.to(BF16), y.to(BF16), kernel, alpha]
    grad = torch.randn_like(z)
    step = lambda *t: bsrops.usrnet_data_step(*t, 2)  # noqa: E731
    term = lambda z, y, kernel, alpha: bsrops.USRNetDataTerm(y, kernel, 2).solve(z, alpha)  # noqa: E731
    exact = outputs_and_grads(usrnet_official, [t.double() for t in leaves], [grad.double()])
    for fn in (step, term):
        with autocast():
            (out,), grads = outputs_and_grads(fn, leaves, [grad])
        assert out.dtype == torch.float32 and [g.dtype for g in grads] == [BF16, BF16, torch.float32, torch.float32]
        assert_close_to_float64(out, exact[0][0])
        for actual, truth in zip(grads, exact[1]):
            if actual.dtype == BF16:
                assert_float32_rounded_to_bfloat16(actual, truth)
            else:
                assert_close_to_float64(actual, truth)


def test_usrnet_ops_called_directly_under_autocast_and_mixed_dtypes():
    z, y, kernel, alpha = usrnet_inputs("per_image")
    low = [t.to(BF16) for t in (z, y, kernel, alpha)]
    with autocast():
        direct = torch.ops.bsrops.usrnet_data_step(*low, 2)
        solve = torch.ops.bsrops.usrnet_solve(low[0], *torch.ops.bsrops._usrnet_precompute(low[1], low[2], 2),
                                              low[3], 2)
    expected = bsrops.usrnet_data_step(*(t.float() for t in low), 2)
    assert direct.dtype == solve.dtype == torch.float32
    assert torch.equal(direct, expected) and torch.equal(solve, expected)
    out = bsrops.usrnet_data_step(*low, 2)  # bfloat16 without autocast: computed in float32, returned in bfloat16
    assert out.dtype == BF16 and torch.equal(out, expected.to(BF16))
    mixed = bsrops.usrnet_data_step(z.double(), y, kernel.to(BF16), alpha, 2)
    assert mixed.dtype == torch.float64
    assert torch.equal(mixed, bsrops.usrnet_data_step(z.double(), y.double(), kernel.to(BF16).double(),
                                                      alpha.double(), 2))
    term = bsrops.USRNetDataTerm(y, kernel, 2)
    assert term.solve(z.double(), alpha).dtype == torch.float64 and term.solve(low[0], 0.5).dtype == torch.float32


@pytest.mark.slow
def test_torch_compile_under_autocast():
    """The autocast kernels of every op trace (aot_eager: the tracing, without inductor's codegen)."""
    x, kernel, _ = blur_inputs("per_channel")
    z, y, usrnet_kernel, alpha = usrnet_inputs("per_channel")
    block, (image, cond), _ = dpcb_case("restorer")
    weight, norm_weight, norm_bias = patchgan_leaves("instance")[1:]

    def step(x, kernel, z, image):
        with autocast():
            blurred = bsrops.blur_downsample(x, kernel, 2)
            solved = bsrops.usrnet_data_step(z, y, usrnet_kernel, alpha, 2)
            out_img, out_cond = block(image, cond)
            patch = bsrops.patchgan_conv(x, weight, None, 2, 1, "instance", norm_weight, norm_bias)
        return blurred, solved, out_img, out_cond, patch

    torch._dynamo.reset()
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    leaves = [t.clone().requires_grad_() for t in (x, kernel, z, image)]
    ours = compiled(*leaves)
    expected = step(*leaves)
    assert [o.dtype for o in ours] == [BF16, torch.float32, BF16, BF16, BF16]
    for actual, truth in zip(ours, expected):
        torch.testing.assert_close(actual, truth)
    grads = torch.autograd.grad([o.float().sum() for o in ours], leaves)
    assert [g.dtype for g in grads] == [torch.float32] * 4
    for actual, truth in zip(grads, torch.autograd.grad([o.float().sum() for o in expected], leaves)):
        torch.testing.assert_close(actual, truth)
