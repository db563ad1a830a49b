"""bsrops.usrnet_data_step / USRNetDataTerm on the native CPU kernels (whose fused solve is the
per-element code the CUDA kernels run) against the official formulation in float64, the normal
equations, gradcheck, opcheck, torch.compile and bad inputs."""
import pytest
import torch

import bsrops
from bsrops.reference import usrnet_data_step as ref
from tolerances import FLOAT64_ATOL, assert_close_to_float64
from triton_sm90 import require_interpreter

# n, c, h, w (LR), scale, kh, kw, kernel layout ("shared" (kh, kw) / "per_image" (N, kh, kw))
CASES = [
    (2, 3, 5, 7, 1, 3, 3, "per_image"),
    (2, 1, 6, 5, 2, 4, 4, "shared"),
    (1, 3, 4, 6, 3, 5, 5, "per_image"),
    (2, 3, 7, 8, 4, 25, 25, "per_image"),
    (1, 1, 3, 5, 4, 8, 8, "shared"),
    (2, 3, 6, 4, 2, 7, 6, "per_image"),
    (1, 3, 9, 7, 3, 24, 20, "shared"),
    (3, 1, 2, 3, 4, 1, 1, "per_image"),
]
# LR grids of one or two rows or columns: lanes whose pair is its own mirror (v = 0, v = w/2, u = -u) or whose
# column holds no other representative
EDGE_CASES = [
    (2, 2, 1, 1, 2, 2, 2, "per_image"),
    (1, 2, 1, 4, 3, 3, 3, "shared"),
    (2, 1, 3, 1, 2, 2, 2, "per_image"),
    (1, 3, 2, 2, 4, 5, 5, "per_image"),
]


def case_id(case):
    n, c, h, w, s, kh, kw, layout = case
    return f"{n}x{c}x{h}x{w}-s{s}-k{kh}x{kw}-{layout}"


def make_inputs(n, c, h, w, s, kh, kw, layout, dtype=torch.float64):
    z = torch.randn(n, c, s * h, s * w, dtype=torch.float64)
    y = torch.randn(n, c, h, w, dtype=torch.float64)
    kernel = torch.rand((kh, kw) if layout == "shared" else (n, kh, kw), dtype=torch.float64)
    kernel = kernel / kernel.sum(dim=(-2, -1), keepdim=True)
    alpha = torch.rand(n, dtype=torch.float64) * 0.5 + 0.05
    return tuple(t.to(dtype) for t in (z, y, kernel, alpha))


def forward_and_grads(fn, z, y, kernel, alpha, scale, grad_out=None):
    inputs = [t.detach().requires_grad_() for t in (z, y, kernel, alpha)]
    out = fn(*inputs, scale)
    grad_out = torch.randn_like(out) if grad_out is None else grad_out
    return (out.detach(), *torch.autograd.grad(out, inputs, grad_out)), grad_out


def calls_delta(run):
    before = bsrops.kernel_calls()
    result = run()
    after = bsrops.kernel_calls()
    return result, {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)}


def assert_matches_official(fn, case):
    n, c, h, w, s, *_ = case
    inputs = make_inputs(*case)
    ours, grad_out = forward_and_grads(fn, *inputs, s)
    expected, _ = forward_and_grads(ref.usrnet_data_step_official, *inputs, s, grad_out)
    for name, actual, truth, like in zip(("x", "grad_z", "grad_y", "grad_kernel", "grad_alpha"), ours, expected,
                                         (inputs[0], *inputs)):
        assert actual.shape == like.shape and actual.dtype == torch.float64, name
        assert_close_to_float64(actual, truth)


@pytest.mark.parametrize("case", CASES, ids=[case_id(c) for c in CASES])
def test_cpu_matches_official_float64(case):
    _, delta = calls_delta(lambda: assert_matches_official(bsrops.usrnet_data_step, case))
    assert delta == {"usrnet_data_step.composite": 1, "_usrnet_precompute.composite": 2, "usrnet_solve.cpu": 1,
                     "_usrnet_data_step_backward.composite": 1, "_usrnet_solve_backward.cpu": 1,
                     "_usrnet_precompute_backward.composite": 1}, delta


def test_cpu_inverts_large_spectra_in_plane_groups():
    """HR 512 x 512 in float64: each half spectrum (6 planes, 12.6 MB) is more than the native CPU solve inverts
    in one call, so x and grad_z come from irfft2 over groups of planes written into the output."""
    case = (2, 3, 128, 128, 4, 5, 6, "per_image")
    _, delta = calls_delta(lambda: assert_matches_official(bsrops.usrnet_data_step, case))
    assert delta["usrnet_solve.cpu"] == 1 and delta["_usrnet_solve_backward.cpu"] == 1, delta


@pytest.mark.parametrize("case", CASES[::2], ids=[case_id(c) for c in CASES[::2]])
def test_cpu_shared_maths_matches_official_float64(case):
    """The per-element functions of usrnet_data_step.h, which the CUDA kernels run."""
    with bsrops.use_backend("cpu_shared"):
        assert bsrops.backend_info("cpu")["backend"] == "cpu_shared"
        _, delta = calls_delta(lambda: assert_matches_official(bsrops.usrnet_data_step, case))
    assert delta["_usrnet_solve_shared.cpu"] == 1 and delta["_usrnet_solve_shared_backward.cpu"] == 1, delta
    assert "usrnet_solve.cpu" not in delta and "_usrnet_solve_backward.cpu" not in delta


@pytest.mark.parametrize("backend", ["cpu", "cpu_shared"])
@pytest.mark.parametrize("case", EDGE_CASES, ids=[case_id(c) for c in EDGE_CASES])
def test_lr_grids_of_one_or_two_rows_or_columns(case, backend):
    with bsrops.use_backend(backend):
        assert_matches_official(bsrops.usrnet_data_step, case)


def solve_with_broadcast_fbfy(z, fb, f2b_mean, alpha, value, grad_x):
    """usrnet_solve and every output of its backward, for FBFy = `value` (a complex number as a (2,) tensor)
    broadcast over every bin (strides (0, 0, 0, 0, 1), the form the kernels read as it is) and for the same FBFy
    stored in full: two tuples."""
    fbfy = value.expand(*z.shape, 2)
    assert fbfy.stride() == (0, 0, 0, 0, 1)
    return [(torch.ops.bsrops.usrnet_solve(z, fb, t, f2b_mean, alpha, 2),
             *torch.ops.bsrops._usrnet_solve_backward(grad_x, z, fb, t, f2b_mean, alpha, 2, [True] * 5))
            for t in (fbfy, fbfy.contiguous())]


def broadcast_fbfy_inputs(n, c, h, w, dtype=torch.float64):
    """z, FB (not Hermitian), F2B_mean, alpha, grad_x for solve_with_broadcast_fbfy at scale 2."""
    g = torch.Generator().manual_seed(5)
    z, grad_x = (torch.randn(n, c, 2 * h, 2 * w, generator=g, dtype=dtype) for _ in range(2))
    fb = torch.randn(n, 2 * h, 2 * w, 2, generator=g, dtype=dtype)
    f2b_mean = torch.rand(n, h, w, generator=g, dtype=dtype) + 0.5
    return z, fb, f2b_mean, torch.rand(n, generator=g, dtype=dtype) + 0.1, grad_x


@pytest.mark.parametrize("backend", ["cpu", "cpu_shared", "reference"])
@pytest.mark.parametrize("value", [(0.0, 0.0), (0.3, -0.7)], ids=["zero", "complex"])
def test_fbfy_broadcast_over_every_bin(value, backend):
    """An FBFy of one complex value broadcast over every bin (USRNetDataTerm's zero FBFy on a GPU): the
    per-element kernels read that value instead of a copy; every backend gives the results of the FBFy stored in
    full. A scalar broadcast over the real and imaginary parts too (every stride 0) is copied."""
    z, fb, f2b_mean, alpha, grad_x = broadcast_fbfy_inputs(2, 3, 3, 4)
    with bsrops.use_backend(backend):
        broadcast, full = solve_with_broadcast_fbfy(z, fb, f2b_mean, alpha, torch.tensor(value, dtype=z.dtype),
                                                    grad_x)
    for actual, expected in zip(broadcast, full):
        assert actual.shape == expected.shape
        torch.testing.assert_close(actual, expected, rtol=0, atol=1e-12)
    scalar = torch.tensor(value[0], dtype=z.dtype).expand(*z.shape, 2)
    with bsrops.use_backend(backend):
        x, stored = (torch.ops.bsrops.usrnet_solve(z, fb, t, f2b_mean, alpha, 2) for t in (scalar, scalar.contiguous()))
    torch.testing.assert_close(x, stored, rtol=0, atol=1e-12)


@pytest.mark.parametrize("case", CASES[1::3], ids=[case_id(c) for c in CASES[1::3]])
def test_reference_backend_matches_official_float64(case):
    with bsrops.use_backend("reference"):
        _, delta = calls_delta(lambda: assert_matches_official(bsrops.usrnet_data_step, case))
    assert delta == {"usrnet_data_step.reference": 1, "_usrnet_data_step_backward.reference": 1}, delta


def data_term_chain(z, y, kernel, alphas, scale):
    term = bsrops.USRNetDataTerm(y, kernel, scale)
    x = z
    for i in range(alphas.shape[1]):
        x = torch.tanh(term.solve(x, alphas[:, i]))  # a stand-in for the prior between the steps
    return x


def official_chain(z, y, kernel, alphas, scale):
    fb, fbc, f2b, fbfy = ref.official_precompute(y, kernel, scale)
    x = z
    for i in range(alphas.shape[1]):
        x = torch.tanh(ref.data_net(x, fb, fbc, f2b, fbfy, alphas[:, i].view(-1, 1, 1, 1), scale))
    return x


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_data_term_chain_matches_official_chain(backend):
    """K solves over one precompute: gradients reach y and the kernel through the shared invariants."""
    z, y, kernel, _ = make_inputs(2, 3, 6, 5, 4, 9, 9, "per_image")
    alphas = torch.rand(2, 3, dtype=torch.float64) + 0.05
    with bsrops.use_backend(backend):
        (ours, grad_out), delta = calls_delta(lambda: forward_and_grads(data_term_chain, z, y, kernel, alphas, 4))
    expected, _ = forward_and_grads(official_chain, z, y, kernel, alphas, 4, grad_out)
    for actual, truth in zip(ours, expected):
        assert_close_to_float64(actual, truth)
    suffix = ".cpu" if backend == "cpu" else ".reference"
    assert delta[f"usrnet_solve{suffix}"] == 3 and delta[f"_usrnet_solve_backward{suffix}"] == 3, delta


@pytest.mark.parametrize("backend", ["cpu", "cpu_shared", "reference"])
def test_data_term_chain_with_fixed_y_and_kernel_matches_official_chain(backend):
    """USRNet's loop: gradients to z and alpha only, through <z - x, grad_z> / alpha (no spectrum of z)."""
    solve = {"cpu": "usrnet_solve.cpu", "cpu_shared": "_usrnet_solve_shared.cpu",
             "reference": "usrnet_solve.reference"}[backend]
    assert_fixed_chain_matches_official(backend, solve, (2, 3, 5, 6, 3, 7, 7, "per_image"))


def assert_fixed_chain_matches_official(backend, solve, case):
    z, y, kernel, _ = make_inputs(*case)
    scale = case[4]
    alphas = torch.rand(case[0], 3, dtype=torch.float64) + 0.05
    grad_out = torch.randn_like(z)
    grads = []
    for chain, name in ((data_term_chain, backend), (official_chain, None)):
        inputs = [z.clone().requires_grad_(), alphas.clone().requires_grad_()]
        with bsrops.use_backend(name or "reference"):
            out, delta = calls_delta(lambda: torch.autograd.grad(chain(inputs[0], y, kernel, inputs[1], scale), inputs,
                                                                 grad_out) + (chain(z, y, kernel, alphas, scale),))
        grads.append((*out, delta))
    (*ours, delta), (*expected, _) = grads
    for actual, truth in zip(ours, expected):
        assert_close_to_float64(actual, truth)
    # 3 solves forward, 3 backward (grad_z is the solve of y = 0, z = grad_x), 3 in the gradient-free chain
    assert delta[solve] == 9 and not any("backward" in name for name in delta), delta


def test_data_term_alpha_forms_give_their_own_gradient_shapes():
    z, y, kernel, alpha = make_inputs(2, 1, 4, 3, 2, 3, 3, "shared")
    term = bsrops.USRNetDataTerm(y, kernel, 2)
    flat, column = alpha.clone().requires_grad_(), alpha.view(2, 1, 1, 1).clone().requires_grad_()
    grad_out = torch.randn_like(z)
    for a in (flat, column):
        term.solve(z, a).backward(grad_out)
    assert flat.grad.shape == (2,) and column.grad.shape == (2, 1, 1, 1)
    torch.testing.assert_close(column.grad.flatten(), flat.grad)
    assert torch.autograd.gradcheck(lambda z, a: term.solve(z, a), (z.clone().requires_grad_(), flat.detach()
                                                                      .clone().requires_grad_()), fast_mode=True)


@pytest.mark.parametrize("scale,k,layout", [(1, 3, "shared"), (2, 6, "per_image"), (3, 25, "per_image"),
                                            (4, 8, "shared")])
def test_output_solves_the_normal_equations(scale, k, layout):
    """A^T (A x - y) + alpha (x - z) = 0, A = blur_downsample(circular, flip=True): an independent check."""
    z, y, kernel, alpha = make_inputs(2, 3, 9, 10, scale, k, k, layout)
    x = bsrops.usrnet_data_step(z, y, kernel, alpha, scale)
    x_var = x.clone().requires_grad_()
    ax = bsrops.blur_downsample(x_var, kernel, scale, "circular", True)
    (normal,) = torch.autograd.grad(ax, x_var, ax.detach() - y)  # A^T (A x - y)
    residual = normal + alpha.view(-1, 1, 1, 1) * (x - z)
    assert residual.abs().max().item() <= FLOAT64_ATOL
    assert (x - z).abs().max().item() > 1e-3  # the data term moved x


def test_alpha_forms_agree_and_keep_their_shape():
    z, y, kernel, alpha = make_inputs(2, 1, 4, 4, 2, 3, 3, "per_image")
    expected = bsrops.usrnet_data_step(z, y, kernel, alpha, 2)
    column = alpha.view(2, 1, 1, 1).clone().requires_grad_()
    out = bsrops.usrnet_data_step(z, y, kernel, column, 2)
    (grad,) = torch.autograd.grad(out.sum(), column)
    assert grad.shape == (2, 1, 1, 1)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    same = bsrops.usrnet_data_step(z, y, kernel, 0.3, 2)
    torch.testing.assert_close(same, bsrops.usrnet_data_step(z, y, kernel, torch.full((2,), 0.3, dtype=z.dtype), 2))


def test_float32_and_half_precision():
    z, y, kernel, alpha = make_inputs(2, 3, 8, 6, 4, 7, 7, "per_image")
    exact = bsrops.usrnet_data_step(z, y, kernel, alpha, 4)
    single = bsrops.usrnet_data_step(*(t.float() for t in (z, y, kernel, alpha)), 4)
    assert single.dtype == torch.float32
    assert_close_to_float64(single, exact)
    for dtype in (torch.float16, torch.bfloat16):
        low = [t.to(dtype) for t in (z, y, kernel, alpha)]
        out = bsrops.usrnet_data_step(*low, 4)
        assert out.dtype == dtype
        torch.testing.assert_close(out, bsrops.usrnet_data_step(*(t.float() for t in low), 4).to(dtype), rtol=0, atol=0)


def test_non_contiguous_inputs_and_batch_zero():
    z, y, kernel, alpha = make_inputs(2, 3, 5, 4, 2, 4, 4, "per_image")
    z_t = z.transpose(2, 3).contiguous().transpose(2, 3)
    y_cl = y.to(memory_format=torch.channels_last)
    kernel_t = kernel.transpose(1, 2).contiguous().transpose(1, 2)
    assert not z_t.is_contiguous() and not kernel_t.is_contiguous()
    torch.testing.assert_close(bsrops.usrnet_data_step(z_t, y_cl, kernel_t, alpha, 2),
                               bsrops.usrnet_data_step(z, y, kernel, alpha, 2), rtol=0, atol=FLOAT64_ATOL)
    (out, grad_z, grad_y, grad_kernel, grad_alpha), _ = forward_and_grads(
        bsrops.usrnet_data_step, z[:0], y[:0], kernel[:0], alpha[:0], 2)
    assert out.shape == (0, 3, 10, 8) and grad_z.shape == z[:0].shape and grad_kernel.shape == (0, 4, 4)
    assert grad_alpha.shape == (0,)


@pytest.mark.parametrize("backend", ["cpu", "cpu_shared"])
def test_gradcheck_data_step_and_solve_with_arbitrary_invariants(backend):
    z, y, kernel, alpha = make_inputs(2, 2, 3, 4, 2, 3, 2, "per_image")
    with bsrops.use_backend(backend):
        _gradcheck_all(z, y, kernel, alpha)


def _gradcheck_all(z, y, kernel, alpha):
    assert torch.autograd.gradcheck(lambda *t: bsrops.usrnet_data_step(*t, 2),
                                    tuple(t.requires_grad_() for t in (z, y, kernel, alpha)), fast_mode=True)
    # usrnet_solve is a function of any FB, FBFy (not only Hermitian spectra) and F2B_mean > -alpha
    fb = torch.randn(2, 6, 8, 2, dtype=torch.float64, requires_grad=True)
    fbfy = torch.randn(2, 2, 6, 8, 2, dtype=torch.float64, requires_grad=True)
    f2b_mean = (torch.rand(2, 3, 4, dtype=torch.float64) + 0.5).requires_grad_()
    assert torch.autograd.gradcheck(lambda *t: torch.ops.bsrops.usrnet_solve(*t, 2),
                                    (z, fb, fbfy, f2b_mean, alpha), fast_mode=True)
    shared = torch.rand(3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *t: torch.ops.bsrops._usrnet_precompute(*t, 2), (y, shared),
                                    fast_mode=True)


def test_only_requested_gradients_are_computed():
    z, y, kernel, alpha = make_inputs(1, 2, 3, 3, 2, 3, 3, "per_image")
    term = bsrops.USRNetDataTerm(y, kernel, 2)
    grads = torch.ops.bsrops._usrnet_solve_backward(torch.ones_like(z), z, term.FB, term.FBFy, term.F2B_mean, alpha,
                                                    2, [False, False, False, False, True])
    assert [g.numel() for g in grads[:4]] == [0, 0, 0, 0] and grads[4].shape == alpha.shape
    # grad_z alone skips z's spectrum in the fast pass: it must equal grad_z of the full backward
    grad_x = torch.randn_like(z)
    full, only_z = (torch.ops.bsrops._usrnet_solve_backward(grad_x, z, term.FB, term.FBFy, term.F2B_mean, alpha, 2, mask)
                    for mask in ([True] * 5, [True, False, False, False, False]))
    assert only_z[1].numel() == 0 and only_z[4].numel() == 0
    torch.testing.assert_close(only_z[0], full[0], rtol=0, atol=1e-12)
    grads = torch.ops.bsrops._usrnet_data_step_backward(torch.ones_like(z), z, y, kernel, alpha, 2,
                                                        [False, True, False, False])
    assert grads[1].shape == y.shape and [grads[i].numel() for i in (0, 2, 3)] == [0, 0, 0]


def test_opcheck():
    z, y, kernel, alpha = make_inputs(2, 2, 3, 4, 2, 3, 3, "per_image")
    for requires_grad in (False, True):
        args = [t.clone().requires_grad_(requires_grad) for t in (z, y, kernel, alpha)]
        torch.library.opcheck(torch.ops.bsrops.usrnet_data_step.default, (*args, 2))
        fb, fbfy, f2b_mean = (t.detach().clone().requires_grad_(requires_grad)
                              for t in torch.ops.bsrops._usrnet_precompute(y, kernel, 2))
        torch.library.opcheck(torch.ops.bsrops.usrnet_solve.default, (args[0], fb, fbfy, f2b_mean, args[3], 2))
        torch.library.opcheck(torch.ops.bsrops._usrnet_precompute.default, (args[1], args[2], 2))


@pytest.mark.slow
def test_torch_compile_fullgraph_no_graph_break():
    z, y, kernel, alpha = make_inputs(2, 3, 4, 5, 2, 3, 3, "per_image", dtype=torch.float32)
    alphas = torch.stack([alpha, alpha * 2], dim=1)

    def step(z, y, kernel, alphas):
        return data_term_chain(z, y, kernel, alphas, 2).sum() + bsrops.usrnet_data_step(z, y, kernel, alphas[:, 0],
                                                                                        2).square().sum()

    torch._dynamo.reset()
    compiled = torch.compile(step, fullgraph=True)
    inputs = [t.clone().requires_grad_() for t in (z, y, kernel, alphas)]
    value = compiled(*inputs)
    grads = torch.autograd.grad(value, inputs)
    eager = [t.clone().requires_grad_() for t in (z, y, kernel, alphas)]
    expected = step(*eager)
    torch.testing.assert_close(value, expected)
    for actual, truth in zip(grads, torch.autograd.grad(expected, eager)):
        torch.testing.assert_close(actual, truth)
    # y and kernel fixed: USRNetDataTerm differentiates through _SolveForZAndAlpha
    fixed = torch.compile(lambda z, alphas: data_term_chain(z, y, kernel, alphas, 2).sum(), fullgraph=True)
    inputs, eager = ([t.clone().requires_grad_() for t in (z, alphas)] for _ in range(2))
    value, expected = fixed(*inputs), data_term_chain(eager[0], y, kernel, eager[1], 2).sum()
    torch.testing.assert_close(value, expected)
    for actual, truth in zip(torch.autograd.grad(value, inputs), torch.autograd.grad(expected, eager)):
        torch.testing.assert_close(actual, truth)


def test_term_makes_its_zero_fbfy_at_construction():
    """USRNetDataTerm's solves with y and kernel fixed read the zero FBFy made by the constructor (no buffer
    allocated and cached inside a solve, which a CUDA graph capture would own); their values and gradients are
    those of usrnet_solve's own backward, for a term built with and without grad mode."""
    z, y, kernel, alpha = make_inputs(2, 3, 4, 5, 2, 3, 3, "per_image")
    term = bsrops.USRNetDataTerm(y, kernel, 2)
    zero = term._zero_fbfy
    assert zero is not None and zero.shape == term.FBFy.shape and not zero.any()
    with torch.no_grad():
        inference_term = bsrops.USRNetDataTerm(y, kernel, 2)
    assert inference_term._zero_fbfy is None
    grad_x = torch.randn_like(z)
    inputs = [t.clone().requires_grad_() for t in (z, alpha)]
    expected = torch.ops.bsrops.usrnet_solve(inputs[0], term.FB, term.FBFy, term.F2B_mean, inputs[1], 2)
    expected_grads = torch.autograd.grad(expected, inputs, grad_x)
    for solver in (term, term, inference_term):
        inputs, saved = [t.clone().requires_grad_() for t in (z, alpha)], []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
            x = solver.solve(*inputs)
        if solver is term:  # the constructor's buffer itself, saved for the backward
            assert any(t.data_ptr() == zero.data_ptr() for t in saved)
        torch.testing.assert_close(x, expected, rtol=0, atol=FLOAT64_ATOL)
        for actual, truth in zip(torch.autograd.grad(x, inputs, grad_x), expected_grads):
            torch.testing.assert_close(actual, truth, rtol=1e-10, atol=1e-12)
    assert term._zero_fbfy is zero and inference_term._zero_fbfy is None


def _bad(**change):
    args = dict(z=torch.randn(2, 3, 8, 12), y=torch.randn(2, 3, 4, 6), kernel=torch.rand(3, 3), alpha=0.5, scale=2)
    args.update(change)
    return args


BAD_INPUTS = [
    (_bad(z=torch.randn(2, 3, 8, 10)), ValueError, r"z must be \(N, C, s\*h, s\*w\) = \(2, 3, 8, 12\)"),
    (_bad(scale=3), ValueError, r"z must be \(N, C, s\*h, s\*w\) = \(2, 3, 12, 18\)"),
    (_bad(kernel=torch.rand(9, 3)), ValueError, r"kernel \(9, 3\) must not be larger than the HR image \(8, 12\)"),
    (_bad(kernel=torch.rand(3, 3, 3)), ValueError,
     r"kernel must be \(kh, kw\), \(N, kh, kw\), \(N, 1, kh, kw\) or per channel \(N, C, kh, kw\) with N = 2, C = 3"),
    (_bad(kernel=torch.rand(2, 2, 3, 3)), ValueError, r"or per channel \(N, C, kh, kw\) with N = 2, C = 3, got shape "
                                                       r"\(2, 2, 3, 3\)"),
    (_bad(kernel=torch.rand(1, 3, 3, 3)), ValueError, r"with N = 2, C = 3, got shape \(1, 3, 3, 3\)"),
    (_bad(y=torch.randn(3, 3, 4, 6)), ValueError, r"z must be \(N, C, s\*h, s\*w\) = \(3, 3, 8, 12\)"),
    (_bad(y=torch.randn(3, 4, 6)), ValueError, r"y must be \(N, C, h, w\)"),
    (_bad(alpha=torch.rand(3)), ValueError, r"alpha must be a float, \(N,\) or \(N, 1, 1, 1\) with N = 2"),
    (_bad(alpha="0.5"), TypeError, "alpha must be a float or a tensor"),
    (_bad(scale=0), ValueError, "scale must be >= 1"),
    (_bad(scale=2.0), TypeError, "scale must be an int"),
    (_bad(kernel=torch.randint(0, 3, (3, 3))), TypeError, "kernel must be float16/bfloat16/float32/float64"),
    (_bad(alpha=torch.ones(2, dtype=torch.int64)), TypeError, "alpha must be float16/bfloat16/float32/float64"),
    (_bad(y=torch.randint(0, 3, (2, 3, 4, 6))), TypeError, "y must be float16/bfloat16/float32/float64"),
    (_bad(kernel=torch.rand(3, 3, device="meta")), ValueError, "kernel is on meta but y is on cpu"),
    (_bad(alpha=torch.rand(2, device="meta")), ValueError, "alpha is on meta but z is on cpu"),
    (_bad(z=[[1.0]]), TypeError, "z must be a torch.Tensor"),
]


@pytest.mark.parametrize("args,error,message", BAD_INPUTS)
def test_bad_input_gives_clear_error(args, error, message):
    with pytest.raises(error, match=message):
        bsrops.usrnet_data_step(**args)


ALPHA_BACKENDS = ["cpu", "cpu_shared", "reference", "triton"]


@pytest.mark.parametrize("backend", ALPHA_BACKENDS)
@pytest.mark.parametrize("alpha", [0.0, -0.5, float("nan"), float("inf")])
def test_alpha_values_are_checked_inside_the_kernels(alpha, backend):
    """One policy on every backend the CPU reaches: alpha <= 0 or non-finite is a ValueError naming alpha, from the
    kernels for a tensor (no Python branch on its values: torch.compile traces the wrappers), at once for a number.
    The reference backend accepted alpha = 0 (every output non-finite). (CUDA and Triton on a GPU: a device-side
    assertion, tests/test_gpu.py.)"""
    if backend == "triton":
        require_interpreter()
    args = _bad(alpha=torch.tensor([0.5, alpha]))
    term = bsrops.USRNetDataTerm(args["y"], args["kernel"], 2)
    z = args["z"].requires_grad_()
    with bsrops.use_backend(backend):
        with pytest.raises(ValueError, match="alpha must be finite and > 0, got .* for sample 1"):
            bsrops.usrnet_data_step(**args)
        with pytest.raises(ValueError, match="alpha must be finite and > 0, got .* for sample 1"):
            term.solve(z, args["alpha"])
        with pytest.raises(ValueError, match="alpha must be finite and > 0, got .* for sample 1"):
            torch.ops.bsrops.usrnet_solve(z, term.FB, term.FBFy, term.F2B_mean, args["alpha"], 2)
        with pytest.raises(ValueError, match="alpha must be finite and > 0"):
            term.solve(z, alpha)
        with pytest.raises(ValueError, match="alpha must be finite and > 0"):
            bsrops.usrnet_data_step(**_bad(alpha=alpha))
        mask = [True, False, False, False, True]
        with pytest.raises(ValueError, match="alpha must be finite and > 0, got .* for sample 1"):
            torch.ops.bsrops._usrnet_solve_backward(torch.ones_like(z), z, term.FB, term.FBFy, term.F2B_mean,
                                                    args["alpha"], 2, mask)


def test_native_ops_check_shapes_too():
    term = bsrops.USRNetDataTerm(torch.randn(2, 3, 4, 6), torch.rand(3, 3), 2)
    with pytest.raises(RuntimeError, match=r"FBFy must be \(N, C, H, W, 2\)"):
        torch.ops.bsrops.usrnet_solve(torch.randn(2, 3, 8, 12), term.FB, term.FBFy[:, :2], term.F2B_mean,
                                      torch.ones(2), 2)
    with pytest.raises(RuntimeError, match=r"z must be \(N, C, s\*h, s\*w\)"):
        torch.ops.bsrops.usrnet_data_step(torch.randn(2, 3, 8, 11), torch.randn(2, 3, 4, 6), torch.rand(3, 3),
                                          torch.ones(2), 2)
    with pytest.raises(RuntimeError, match="must not be larger than the HR image"):
        torch.ops.bsrops._usrnet_precompute(torch.randn(2, 3, 4, 6), torch.rand(9, 3), 2)
