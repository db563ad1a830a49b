"""bsrops.usrnet_data_step / usrnet_solve on the Triton backend.

Under TRITON_INTERPRET=1 (tests/conftest.py) the `triton` backend serves CPU tensors, so the
op itself (forward, autograd) runs the Triton kernels against the official formulation in
float64 (tiny shapes: the interpreter runs the alias loops in Python). The kernels are also
compiled for sm_90 in a subprocess with TRITON_INTERPRET=0.
"""
import pytest
import torch

import bsrops
from bsrops.reference import usrnet_data_step as ref
from test_usrnet_data_step import assert_fixed_chain_matches_official, calls_delta, forward_and_grads, make_inputs
from tolerances import FLOAT32_RTOL, assert_close_to_float64, relative_error
from triton_sm90 import assert_compiles_for_sm90, jitted_kernels, require_interpreter, require_triton


# n, c, h, w, scale, kh, kw, layout, dtype
CASES = [
    (2, 3, 3, 4, 2, 3, 3, "per_image", torch.float64),
    (1, 2, 3, 3, 3, 4, 4, "shared", torch.float64),
    (2, 1, 4, 3, 1, 3, 2, "per_image", torch.float32),
]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("case", CASES, ids=lambda case: "-".join(str(x) for x in case[:8]) + str(case[8])[5:])
def test_triton_matches_official(case):
    require_interpreter()
    *shape, dtype = case
    inputs = make_inputs(*shape, dtype=dtype)
    scale = shape[4]
    with bsrops.use_backend("triton"):
        assert bsrops.backend_info("cpu")["backend"] == "triton"
        (ours, grad_out), delta = calls_delta(lambda: forward_and_grads(bsrops.usrnet_data_step, *inputs, scale))
    assert delta["usrnet_solve.triton"] == 1 and delta["_usrnet_solve_backward.triton"] == 1, delta
    assert "usrnet_solve.cpu" not in delta and "_usrnet_solve_backward.cpu" not in delta
    expected, _ = forward_and_grads(ref.usrnet_data_step_official, *(t.double() for t in inputs), scale,
                                    grad_out.double())
    same_dtype, _ = forward_and_grads(ref.usrnet_data_step_official, *inputs, scale, grad_out)
    for name, actual, truth, baseline, like in zip(("x", "grad_z", "grad_y", "grad_kernel", "grad_alpha"), ours,
                                                   expected, same_dtype, (inputs[0], *inputs)):
        assert actual.shape == like.shape and actual.dtype == dtype
        if name == "grad_alpha" and dtype == torch.float32:
            # a sum over every pixel, with cancellation: the bar is the official code's own float32 error
            assert relative_error(actual, truth) <= max(FLOAT32_RTOL, 2 * relative_error(baseline, truth))
        else:
            assert_close_to_float64(actual, truth)


@pytest.mark.timeout(120)
def test_triton_data_term_chain_with_fixed_y_and_kernel_matches_official():
    require_interpreter()
    assert_fixed_chain_matches_official("triton", "usrnet_solve.triton", (1, 2, 3, 2, 2, 3, 3, "per_image"))


@pytest.mark.timeout(120)
def test_triton_solve_backward_with_arbitrary_invariants_matches_cpu():
    """Every gradient and mask on non-Hermitian FB / FBFy, against the native CPU kernel."""
    require_interpreter()
    z, _, _, alpha = make_inputs(2, 2, 2, 3, 2, 3, 3, "per_image")
    fb, fbfy = torch.randn(2, 4, 6, 2, dtype=torch.float64), torch.randn(2, 2, 4, 6, 2, dtype=torch.float64)
    f2b_mean, grad_x = torch.rand(2, 2, 3, dtype=torch.float64) + 0.5, torch.randn_like(z)
    args = (z, fb, fbfy, f2b_mean, alpha, 2)
    expected_x = torch.ops.bsrops.usrnet_solve(*args)
    masks = ([True] * 5, [False, True, False, True, False])
    expected = [torch.ops.bsrops._usrnet_solve_backward(grad_x, *args, mask) for mask in masks]
    with bsrops.use_backend("triton"):
        (x, grads), delta = calls_delta(lambda: (torch.ops.bsrops.usrnet_solve(*args),
                                                 [torch.ops.bsrops._usrnet_solve_backward(grad_x, *args, mask)
                                                  for mask in masks]))
    assert delta == {"usrnet_solve.triton": 1, "_usrnet_solve_backward.triton": 2}, delta
    assert_close_to_float64(x, expected_x)
    for ours, truth in zip(grads, expected):
        for actual, value in zip(ours, truth):
            assert actual.shape == value.shape
            if value.numel():
                assert_close_to_float64(actual, value)


@pytest.mark.timeout(60)
def test_triton_checks_alpha_and_batch_zero():
    require_interpreter()
    z, y, kernel, alpha = make_inputs(2, 1, 2, 2, 2, 3, 3, "per_image")
    with bsrops.use_backend("triton"):
        with pytest.raises(RuntimeError, match="alpha must be finite and > 0"):
            bsrops.usrnet_data_step(z, y, kernel, torch.tensor([0.5, -1.0], dtype=z.dtype), 2)
        ((out, grad_z, *_), _), delta = calls_delta(lambda: forward_and_grads(bsrops.usrnet_data_step, z[:0], y[:0],
                                                                              kernel[:0], alpha[:0], 2))
    assert out.shape == (0, 1, 4, 4) and grad_z.shape == (0, 1, 4, 4)
    assert delta["usrnet_solve.triton"] == 1, delta


@pytest.mark.timeout(120)
def test_triton_opcheck():
    require_interpreter()
    z, y, kernel, alpha = make_inputs(1, 1, 2, 2, 2, 2, 2, "per_image")
    fb, fbfy, f2b_mean = torch.ops.bsrops._usrnet_precompute(y, kernel, 2)
    with bsrops.use_backend("triton"):
        _, delta = calls_delta(lambda: torch.library.opcheck(
            torch.ops.bsrops.usrnet_solve.default,
            (z.requires_grad_(), fb.requires_grad_(), fbfy, f2b_mean, alpha.requires_grad_(), 2)))
    assert delta.get("usrnet_solve.triton", 0) >= 1 and delta.get("_usrnet_solve_backward.triton", 0) >= 1, delta


# ---- sm_90 compile check ----

# Per kernel: (element type of every pointer, constexprs).
COMPILE_CONFIGS = {
    "_solve_kernel": [("fp32", dict(BLOCK=128)), ("fp64", dict(BLOCK=64))],
    "_solve_backward_kernel": [
        ("fp32", dict(GRAD_Z=True, GRAD_FB=False, GRAD_FBFY=False, BLOCK=128)),
        ("fp64", dict(GRAD_Z=True, GRAD_FB=True, GRAD_FBFY=True, BLOCK=64)),
    ],
}


def test_compile_configs_cover_every_kernel():
    require_triton()
    from bsrops.triton import usrnet_data_step as module

    assert {fn.__name__ for fn in module.KERNELS} == jitted_kernels(module) == set(COMPILE_CONFIGS)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", sorted(COMPILE_CONFIGS))
def test_triton_compiles_for_sm90(name, tmp_path):
    require_triton()
    configs = [(dtype, constexprs, {}) for dtype, constexprs in COMPILE_CONFIGS[name]]
    assert_compiles_for_sm90("bsrops.triton.usrnet_data_step", name, configs, tmp_path, timeout=110)
