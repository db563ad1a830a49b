"""bsrops.dpcb and bsrops.patchgan_conv on the Triton backend.

Under TRITON_INTERPRET=1 (tests/conftest.py) the `triton` backend serves CPU tensors, so the
ops' own paths (modules, autograd, opcheck) run the Triton fused kernels against the float64
references. The kernels are also compiled for sm_90 in a subprocess with TRITON_INTERPRET=0.
"""
import pytest
import torch

import bsrops
import test_dpcb as dp
import test_patchgan_conv as pg
from triton_sm90 import assert_compiles_for_sm90, require_interpreter, require_triton


def assert_only_triton(delta, names):
    assert all(delta.get(f"{name}.triton", 0) >= 1 for name in names), delta
    assert not any(name.endswith(".cpu") or name.endswith(".reference") for name in delta), delta


@pytest.mark.timeout(60)
@pytest.mark.parametrize("use", sorted(dp.USES))
def test_dpcb_triton_matches_official_structure(use):
    require_interpreter()
    ours, reference, x_img, x_cond = dp.make_pair(use)
    grads = [torch.randn_like(x_img), torch.randn_like(x_cond)]
    with bsrops.use_backend("triton"):
        actual, delta = dp.calls_delta(lambda: dp.outputs_and_grads(ours, ours, x_img, x_cond, grads))
    assert_only_triton(delta, ("_dpcb_epilogue", "_dpcb_epilogue_backward", "_leaky_relu_", "_leaky_relu_backward_",
                               "_relayout"))
    dp.assert_all_close(actual, dp.outputs_and_grads(dp.reference_run(reference), reference, x_img, x_cond, grads))


@pytest.mark.timeout(120)
@pytest.mark.parametrize("mix", dp.MIXES)
@pytest.mark.parametrize("cond", ["1x1", "image"])
def test_dpcb_triton_kernels_mix_layouts(mix, cond):
    require_interpreter()
    with bsrops.use_backend("triton"):
        _, delta = dp.calls_delta(lambda: dp.check_fused_kernels_mix_layouts(5, cond, mix.split(",")))
    assert_only_triton(delta, ("_dpcb_epilogue", "_dpcb_epilogue_backward", "_relayout",
                               "_leaky_relu_backward_"))


@pytest.mark.timeout(60)
def test_dpcb_triton_float32_one_output_and_opcheck():
    require_interpreter()
    ours, reference, x_img, x_cond = dp.make_pair("restorer", n=1, dtype=torch.float32)
    with bsrops.use_backend("triton"):
        _, out_cond = ours(x_img, x_cond.requires_grad_())
        out_cond.sum().backward()  # grad_img is None in the epilogue backward
        params = [p.detach().clone().requires_grad_() for p in ours.parameters()]
        _, delta = dp.calls_delta(lambda: torch.library.opcheck(
            torch.ops.bsrops.dpcb.default, (x_img.double().requires_grad_(), x_cond.detach().double(),
                                            *[p.double() for p in params], 0.2)))
    assert_only_triton(delta, ("_dpcb_epilogue",))
    reference([x_img, x_cond.detach().requires_grad_()])[1].sum().backward()
    for name, p in ours.named_parameters():
        expected = reference.get_parameter(name).grad
        if expected is not None:
            torch.testing.assert_close(p.grad, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("use", sorted(dp.USES))
def test_dpcb_triton_inference(use):
    """Without autograd (_dpcb_inference) the LeakyReLUs are the Triton kernel's (float64: no oneDNN post-op)."""
    require_interpreter()
    ours, reference, x_img, x_cond = dp.make_pair(use)
    with bsrops.use_backend("triton"), torch.no_grad():
        actual, delta = dp.calls_delta(lambda: ours(x_img, x_cond))
    assert delta == {"_leaky_relu_.triton": 2}, delta
    dp.assert_all_close(list(actual), list(reference([x_img.clone(), x_cond.clone()])))


@pytest.mark.timeout(60)
@pytest.mark.parametrize("block", pg.BLOCKS, ids=[f"{b[0]}-act{int(b[1])}" for b in pg.BLOCKS])
def test_patchgan_triton_matches_eager_modules(block):
    require_interpreter()
    norm, activation, affine, bias, k, stride, padding = block
    ours = pg.randomise(pg.PatchGANConv(3, 5, k, stride, padding, norm, 0.2, activation, bias,
                                        affine=affine).double())
    reference = pg.reference_block(ours)
    x = torch.randn(2, 3, 11, 8, dtype=torch.float64)
    grad = torch.randn(reference[0](x).shape, dtype=torch.float64)
    with bsrops.use_backend("triton"):
        actual, delta = pg.calls_delta(lambda: pg.outputs_and_grads(ours, x, grad))
    if norm != "none" or activation:
        assert_only_triton(delta, ("_patchgan_norm_act", "_patchgan_norm_act_backward"))
    pg.assert_all_close(actual, pg.outputs_and_grads(reference, x, grad))
    if norm == "batch":
        pg.assert_close_to_float64(ours.norm.running_var, reference[1].running_var)


@pytest.mark.timeout(60)
def test_patchgan_triton_batch_norm_eval():
    require_interpreter()
    ours = pg.randomise(pg.PatchGANConv(3, 4, 3, 1, 1, "batch").double())
    with torch.no_grad():
        ours.norm.running_mean.normal_()
        ours.norm.running_var.uniform_(0.5, 2.0)
    ours.eval()
    reference = pg.reference_block(ours).eval()
    x, grad = torch.randn(2, 3, 5, 6, dtype=torch.float64), torch.randn(2, 4, 5, 6, dtype=torch.float64)
    with bsrops.use_backend("triton"):
        actual = pg.outputs_and_grads(ours, x, grad)
    pg.assert_all_close(actual, pg.outputs_and_grads(reference, x, grad))


# ---- sm_90 compile check ----

F = dict(F64=False, BLOCK=1024)
COMPILE_CONFIGS = {
    "dpcb": {
        "_leaky_relu_kernel": [("fp32", dict(SLOPE=0.2, BLOCK=1024))],
        "_leaky_relu_backward_kernel": [("fp32", dict(SLOPE=0.2, BLOCK=1024))],
        "_epilogue_kernel": [("fp32", dict(POINTWISE=True, BLOCK=1024)),
                             ("fp64", dict(POINTWISE=False, BLOCK=1024))],
        "_epilogue_grad_kernel": [("fp32", dict(HAS_F1=True, HAS_F2=True, BLOCK=1024)),
                                  ("fp32", dict(HAS_F1=False, HAS_F2=True, BLOCK=1024))],
        "_grad_cond_plane_kernel": [("fp32", dict(**F))],
        "_relayout_kernel": [("fp32", dict(HAS_OTHER=True, BLOCK=1024)), ("fp32", dict(HAS_OTHER=False, BLOCK=1024))],
    },
    "patchgan_conv": {
        "_norm_act_kernel": [
            ("fp32", dict(NORM=1, DATA_STATS=True, UPDATE=False, HAS_W=False, HAS_B=False, ACTIVATION=True,
                          SLOPE=0.2, EPS=1e-5, MOMENTUM=0.1, **F)),
            ("fp32", dict(NORM=2, DATA_STATS=True, UPDATE=True, HAS_W=True, HAS_B=True, ACTIVATION=False,
                          SLOPE=0.2, EPS=1e-5, MOMENTUM=0.1, **F)),
            ("fp32", dict(NORM=0, DATA_STATS=False, UPDATE=False, HAS_W=False, HAS_B=False, ACTIVATION=True,
                          SLOPE=0.2, EPS=1e-5, MOMENTUM=0.1, **F)),
        ],
        "_norm_act_backward_kernel": [
            ("fp32", dict(NORM=1, DATA_STATS=True, HAS_W=False, WANT_GY=True, ACTIVATION=True, SLOPE=0.2, **F)),
            ("fp32", dict(NORM=2, DATA_STATS=False, HAS_W=True, WANT_GY=True, ACTIVATION=False, SLOPE=0.2, **F)),
        ],
    },
}

def test_compile_configs_cover_every_kernel():
    require_triton()
    import importlib

    for module_name, configs in COMPILE_CONFIGS.items():
        module = importlib.import_module("bsrops.triton." + module_name)
        assert {fn.__name__ for fn in module.KERNELS} == set(configs), module_name


@pytest.mark.timeout(120)
@pytest.mark.parametrize("module,name", [(m, n) for m, kernels in COMPILE_CONFIGS.items() for n in kernels])
def test_triton_compiles_for_sm90(module, name, tmp_path):
    require_triton()
    configs = [(dtype, constexprs, {"sums_ptr": "fp32"}) for dtype, constexprs in COMPILE_CONFIGS[module][name]]
    assert_compiles_for_sm90("bsrops.triton." + module, name, configs, tmp_path, timeout=110)
