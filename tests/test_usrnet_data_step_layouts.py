"""bsrops.usrnet_data_step / USRNetDataTerm with KAIR's (N, 1, kh, kw) kernel and per-channel (N, C, kh, kw)
kernels, against the official formulation in float64 (one channel at a time for a per-channel kernel): values and
the gradients of z, y, the kernel (in its own shape) and alpha, over scales, non-square images and kernels, alpha
forms and empty batches, on every backend the CPU reaches."""
import pytest
import torch

import bsrops
from bsrops.reference import usrnet_data_step as ref
from test_usrnet_data_step import case_id
from tolerances import assert_close_to_float64

# n, c, h, w (LR), scale, kh, kw, kernel layout ("per_channel" (N, C, kh, kw), "one_for_all" (N, 1, kh, kw))
CASES = [
    (2, 3, 5, 4, 2, 3, 4, "per_channel"),
    (1, 2, 4, 6, 3, 5, 5, "per_channel"),
    (2, 3, 3, 5, 4, 8, 7, "per_channel"),
    (2, 2, 6, 5, 1, 4, 4, "per_channel"),
    (2, 3, 4, 5, 2, 5, 4, "one_for_all"),
    (1, 1, 5, 3, 3, 6, 6, "one_for_all"),
]


def make_inputs(n, c, h, w, s, kh, kw, layout):
    z = torch.randn(n, c, s * h, s * w, dtype=torch.float64)
    y = torch.randn(n, c, h, w, dtype=torch.float64)
    kernel = torch.rand((n, c if layout == "per_channel" else 1, kh, kw), dtype=torch.float64)
    kernel = kernel / kernel.sum((-2, -1), keepdim=True)
    return z, y, kernel, torch.rand(n, dtype=torch.float64) * 0.5 + 0.05


def official(z, y, kernel, alpha, scale):
    """The official formulation with a per-image kernel, one channel at a time for a per-channel one."""
    if kernel.shape[1] == 1:
        return ref.usrnet_data_step_official(z, y, kernel[:, 0], alpha, scale)
    return torch.cat([ref.usrnet_data_step_official(z[:, c:c + 1], y[:, c:c + 1], kernel[:, c], alpha, scale)
                      for c in range(z.shape[1])], 1)


def forward_and_grads(fn, inputs, grad_out=None):
    leaves = [t.detach().requires_grad_() for t in inputs]
    out = fn(*leaves)
    grad_out = torch.randn_like(out) if grad_out is None else grad_out
    return (out.detach(), *torch.autograd.grad(out, leaves, grad_out)), grad_out


def assert_matches_official(fn, inputs, scale):
    ours, grad_out = forward_and_grads(fn, inputs)
    truth, _ = forward_and_grads(lambda *t: official(*t, scale), inputs, grad_out)
    for name, actual, expected, like in zip(("x", "grad_z", "grad_y", "grad_kernel", "grad_alpha"), ours, truth,
                                            (inputs[0], *inputs)):
        assert actual.shape == like.shape and actual.dtype == torch.float64, name
        assert_close_to_float64(actual, expected)


@pytest.mark.parametrize("backend", ["cpu", "cpu_shared", "reference"])
@pytest.mark.parametrize("case", CASES, ids=[case_id(c) for c in CASES])
def test_data_step_matches_official(case, backend):
    inputs = make_inputs(*case)
    with bsrops.use_backend(backend):
        assert_matches_official(lambda *t: bsrops.usrnet_data_step(*t, case[4]), inputs, case[4])


@pytest.mark.parametrize("alpha_form", ["float", "column"])
def test_alpha_forms(alpha_form):
    z, y, kernel, alpha = make_inputs(*CASES[0])
    if alpha_form == "float":
        expected = official(z, y, kernel, 0.3, 2)
        assert_close_to_float64(bsrops.usrnet_data_step(z, y, kernel, 0.3, 2), expected)
        assert_close_to_float64(bsrops.USRNetDataTerm(y, kernel, 2).solve(z, 0.3), expected)
        return
    assert_matches_official(lambda z, y, k, a: bsrops.usrnet_data_step(z, y, k, a.view(-1, 1, 1, 1), 2),
                            (z, y, kernel, alpha), 2)


@pytest.mark.parametrize("backend", ["cpu", "cpu_shared", "reference"])
@pytest.mark.parametrize("case", [CASES[0], CASES[4]], ids=[case_id(CASES[0]), case_id(CASES[4])])
def test_data_term_chain_matches_official(case, backend):
    """K solves over one precompute, with y and the kernel differentiated (through the invariants) and fixed
    (USRNetDataTerm's normal-equations backward)."""
    z, y, kernel, _ = make_inputs(*case)
    scale = case[4]
    alphas = torch.rand(z.shape[0], 3, dtype=torch.float64) + 0.05

    def chain(solve, z, alphas):
        x = z
        for i in range(alphas.shape[1]):
            x = torch.tanh(solve(x, alphas[:, i]))  # a stand-in for the prior between the steps
        return x

    def ours(z, y, kernel, alphas):
        return chain(bsrops.USRNetDataTerm(y, kernel, scale).solve, z, alphas)

    def truth(z, y, kernel, alphas):
        return chain(lambda x, a: official(x, y, kernel, a, scale), z, alphas)

    with bsrops.use_backend(backend):
        results, grad_out = forward_and_grads(ours, (z, y, kernel, alphas))
        fixed, _ = forward_and_grads(lambda z, alphas: ours(z, y, kernel, alphas), (z, alphas), grad_out)
    expected, _ = forward_and_grads(truth, (z, y, kernel, alphas), grad_out)
    for actual, exact in zip(results, expected):
        assert actual.shape == exact.shape
        assert_close_to_float64(actual, exact)
    for actual, exact in zip(fixed, (expected[0], expected[1], expected[4])):
        assert_close_to_float64(actual, exact)


def test_batch_zero():
    z, y, kernel, alpha = (t[:0] for t in make_inputs(*CASES[0]))
    (out, *grads), _ = forward_and_grads(lambda *t: bsrops.usrnet_data_step(*t, 2), (z, y, kernel, alpha))
    assert out.shape == z.shape and [g.shape for g in grads] == [t.shape for t in (z, y, kernel, alpha)]


def test_gradcheck_per_channel():
    inputs = [t.requires_grad_() for t in make_inputs(1, 2, 3, 4, 2, 3, 2, "per_channel")]
    assert torch.autograd.gradcheck(lambda *t: bsrops.usrnet_data_step(*t, 2), tuple(inputs), fast_mode=True)


def test_meta_tensors_give_the_output_shape():
    """Shapes without data (meta tensors, whose device has no autocast state), per-channel kernel included."""
    z, y, kernel, alpha = (t.to("meta") for t in make_inputs(*CASES[0]))
    assert bsrops.usrnet_data_step(z, y, kernel, alpha, 2).shape == z.shape
    assert bsrops.USRNetDataTerm(y, kernel, 2).solve(z, 0.5).shape == z.shape
