"""bsrops.usrnet_data_step / usrnet_solve on the Triton backend.

Under TRITON_INTERPRET=1 (tests/conftest.py) the `triton` backend serves CPU tensors, so the
op itself (forward, autograd) runs the Triton kernels against the official formulation in
float64 (tiny shapes: the interpreter runs the alias loops in Python). The kernels are also
compiled for sm_90 in a subprocess with TRITON_INTERPRET=0.
"""
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import bsrops
from bsrops.reference import usrnet_data_step as ref
from test_usrnet_data_step import (assert_fixed_chain_matches_official, broadcast_fbfy_inputs, calls_delta,
                                   forward_and_grads, make_inputs, solve_with_broadcast_fbfy)
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


@pytest.mark.timeout(120)
def test_triton_reads_a_broadcast_fbfy():
    """FBFy broadcast over every bin: the forward kernel reads its one element (fbfy_step 0), the backward a
    copy; both give the results of the FBFy stored in full."""
    require_interpreter()
    z, fb, f2b_mean, alpha, grad_x = broadcast_fbfy_inputs(1, 2, 2, 3)
    with bsrops.use_backend("triton"):
        (broadcast, full), delta = calls_delta(lambda: solve_with_broadcast_fbfy(
            z, fb, f2b_mean, alpha, torch.tensor([0.3, -0.7], dtype=z.dtype), grad_x))
    assert delta == {"usrnet_solve.triton": 2, "_usrnet_solve_backward.triton": 2}, delta
    for actual, expected in zip(broadcast, full):
        torch.testing.assert_close(actual, expected, rtol=0, atol=1e-12)


@pytest.mark.timeout(60)
def test_triton_checks_alpha_and_batch_zero():
    require_interpreter()
    z, y, kernel, alpha = make_inputs(2, 1, 2, 2, 2, 3, 3, "per_image")
    with bsrops.use_backend("triton"):
        with pytest.raises(ValueError, match="alpha must be finite and > 0"):
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


# ---- alpha's device-side check ----

@pytest.mark.timeout(60)
@pytest.mark.parametrize("alpha", [0.0, float("nan"), float("inf")])
def test_triton_kernels_assert_alpha_on_the_device(alpha, monkeypatch):
    """Both kernels check alpha with tl.device_assert (launched with debug=True). The interpreter never runs
    device_assert (its builder's options say debug=False whatever the launch asks; verified with triton 3.7.1), so
    the launcher checks CPU tensors on the host: here that check is off and the interpreter's debug on, to run the
    kernels' own assertion."""
    require_interpreter()
    import dataclasses

    import triton.runtime.interpreter as interpreter
    from bsrops.triton import usrnet_data_step as kernels

    z, y, kernel, _ = make_inputs(2, 1, 2, 2, 2, 3, 3, "per_image")
    fb, fbfy, f2b_mean = torch.ops.bsrops._usrnet_precompute(y, kernel, 2)
    bad = torch.tensor([0.5, alpha], dtype=z.dtype)
    with pytest.raises(ValueError, match="alpha must be finite and > 0, got .* for sample 1"):
        kernels.forward(z, fb, fbfy, f2b_mean, bad, 2)  # the host check
    monkeypatch.setattr(kernels, "check_alpha_values", lambda op, alpha: None)
    kernels.forward(z, fb, fbfy, f2b_mean, bad, 2)  # no check at all: the interpreter skips device_assert
    builder = interpreter.interpreter_builder
    monkeypatch.setattr(builder, "options", dataclasses.replace(builder.options, debug=True))
    kernels.forward(z, fb, fbfy, f2b_mean, bad.abs() + 0.5 if alpha == 0 else torch.full_like(bad, 0.5), 2)
    with pytest.raises(Exception, match="usrnet_solve: alpha must be finite and > 0"):
        kernels.forward(z, fb, fbfy, f2b_mean, bad, 2)
    with pytest.raises(Exception, match="usrnet_solve: alpha must be finite and > 0"):
        kernels.backward(torch.ones_like(z), z, fb, fbfy, f2b_mean, bad, 2, [True] * 5)


DEVICE_CHECK_SCRIPT = textwrap.dedent("""
    import re
    import sys
    import triton
    from triton.backends.compiler import GPUTarget
    from bsrops.triton import usrnet_data_step as module

    fn = getattr(module, sys.argv[1])
    constexprs = dict(BLOCK=128, GRAD_Z=True, GRAD_FB=True, GRAD_FBFY=True)
    constexprs = {k: v for k, v in constexprs.items() if k in fn.arg_names}
    signature = {arg: "constexpr" if arg in constexprs else "*fp32" if arg.endswith("_ptr") else "i32"
                 for arg in fn.arg_names}
    compiled = triton.compile(triton.compiler.ASTSource(fn=fn, signature=signature, constexprs=constexprs),
                              target=GPUTarget("cuda", 90, 32), options=module.DEVICE_CHECKS)
    ptx = compiled.asm["ptx"]
    arrays = re.findall(r"\\.b8 \\w+\\[\\d+\\] = \\{([\\d, ]+)\\}", ptx)  # the messages: byte arrays
    strings = [bytes(int(b) for b in body.split(",")) for body in arrays]
    print("ASSERTS", ptx.count("__assertfail"), any(b"alpha must be finite" in s for s in strings))
""")


@pytest.mark.timeout(120)
def test_triton_device_check_survives_compilation(tmp_path):
    """Compiled for sm_90 with the launch's options (DEVICE_CHECKS), the solve kernel keeps its assertion."""
    require_triton()
    env = {**os.environ, "TRITON_INTERPRET": "0", "TRITON_CACHE_DIR": str(tmp_path / "cache")}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run([sys.executable, "-c", DEVICE_CHECK_SCRIPT, "_solve_kernel"], cwd=root, env=env,
                          capture_output=True, text=True, timeout=110)
    assert proc.returncode == 0, proc.stderr[-4000:]
    count, message = proc.stdout.split("ASSERTS")[-1].split()
    assert int(count) >= 1 and message == "True", proc.stdout
