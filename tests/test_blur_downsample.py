"""bsrops.blur_downsample on the native CPU kernels (and the CUDA maths via cpu_shared)
against the float64 loop reference: values, gradients, layouts, dtypes, errors, registration."""
import itertools
import subprocess
import sys

import pytest
import torch

import bsrops
from bsrops.reference.blur_downsample import (PADDINGS, blur_downsample_loop, blur_downsample_reference,
                                              geometry)
from tolerances import assert_close_to_float64

LAYOUTS = ("shared", "per_image", "per_pixel")


def make_kernel(layout, n, k, out_h, out_w, dtype=torch.float64):
    shape = {"shared": (k, k), "per_image": (n, k, k), "per_pixel": (n, k * k, out_h, out_w)}[layout]
    return torch.randn(shape, dtype=dtype)


def make_inputs(layout, k, stride, n=2, c=3, height=11, width=14, dtype=torch.float64):
    x = torch.randn(n, c, height, width, dtype=dtype)
    out_h, out_w, *_ = geometry(height, width, k, stride, False)
    return x, make_kernel(layout, n, k, out_h, out_w, dtype)


def forward_and_grads(x, kernel, stride, padding, flip, fn=bsrops.blur_downsample, grad_out=None):
    x, kernel = x.detach().requires_grad_(), kernel.detach().requires_grad_()
    out = fn(x, kernel, stride, padding, flip)
    grad_out = torch.randn_like(out) if grad_out is None else grad_out
    grad_x, grad_kernel = torch.autograd.grad(out, (x, kernel), grad_out)
    return out.detach(), grad_x, grad_kernel, grad_out


def assert_matches_loop(x, kernel, stride, padding, flip):
    out, grad_x, grad_kernel, grad_out = forward_and_grads(x, kernel, stride, padding, flip)
    ref_out, ref_gx, ref_gk, _ = forward_and_grads(x.double(), kernel.double(), stride, padding, flip,
                                                   blur_downsample_loop, grad_out.double())
    assert out.shape == ref_out.shape
    for actual, expected in ((out, ref_out), (grad_x, ref_gx), (grad_kernel, ref_gk)):
        assert actual.shape == expected.shape and actual.dtype == x.dtype
        assert_close_to_float64(actual, expected)


def calls_delta(run):
    before = bsrops.kernel_calls()
    run()
    after = bsrops.kernel_calls()
    return {name: after[name] - before.get(name, 0) for name in after if after[name] != before.get(name, 0)}


MATRIX = list(itertools.product(LAYOUTS, PADDINGS, (1, 2, 3, 4), (3, 4), (False, True)))


@pytest.mark.parametrize("layout,padding,stride,k,flip", MATRIX)
def test_cpu_matches_float64_loop(layout, padding, stride, k, flip):
    x, kernel = make_inputs(layout, k, stride)
    delta = calls_delta(lambda: assert_matches_loop(x, kernel, stride, padding, flip))
    assert delta == {"blur_downsample.cpu": 1, "_blur_downsample_backward.cpu": 1}


@pytest.mark.parametrize("layout,padding,stride,k,flip", MATRIX[::3])
def test_cpu_shared_maths_matches_float64_loop(layout, padding, stride, k, flip):
    """The per-element functions of blur_downsample.h, which the CUDA kernels run."""
    x, kernel = make_inputs(layout, k, stride, height=9, width=12)
    with bsrops.use_backend("cpu_shared"):
        assert bsrops.backend_info("cpu")["backend"] == "cpu_shared"
        delta = calls_delta(lambda: assert_matches_loop(x, kernel, stride, padding, flip))
    assert delta["_blur_downsample_shared.cpu"] == 1 and delta["_blur_downsample_shared_backward.cpu"] == 1
    assert "blur_downsample.cpu" not in delta


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("channels", [1, 4, 5, 9])
def test_cpu_shared_forward_channel_groups(channels, layout):
    """The CUDA forward's channel groups (up to four channels per thread): full, partial and several groups."""
    x, kernel = make_inputs(layout, 3, 2, c=channels, height=9, width=12)
    with bsrops.use_backend("cpu_shared"):
        assert_matches_loop(x, kernel, 2, "reflect", True)


# The CUDA forward's compile-time (k, s) pairs (dispatch_shape) and generic pairs, odd and even, over several
# 16 x 16 output tiles with partial last ones. In float64 the windows of (21, 4) and (25, 4) exceed the shared
# memory a block may use, so the per-image and shared kernels take the channel-group path there.
# k, stride, height, width
SHAPE_CASES = [(21, 1, 37, 40), (11, 1, 20, 17), (21, 4, 70, 90), (25, 4, 75, 66), (4, 3, 40, 35), (7, 2, 33, 18),
               (11, 4, 76, 58)]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("index,case", list(enumerate(SHAPE_CASES)))
def test_cpu_shared_forward_kernel_shapes_and_tiles(index, case, layout, dtype):
    k, stride, height, width = case
    padding, flip = PADDINGS[index % len(PADDINGS)], index % 2 == 1
    x, kernel = make_inputs(layout, k, stride, c=5, height=height, width=width, dtype=dtype)
    expected = blur_downsample_loop(x, kernel, stride, padding, flip)
    with bsrops.use_backend("cpu_shared"):
        out = bsrops.blur_downsample(x, kernel, stride, padding, flip)
    assert out.dtype == dtype
    assert_close_to_float64(out, expected)


@pytest.mark.parametrize("layout,padding,stride,k,flip", MATRIX[1::7])
def test_reference_backend_matches_float64_loop(layout, padding, stride, k, flip):
    x, kernel = make_inputs(layout, k, stride)
    with bsrops.use_backend("reference"):
        assert bsrops.backend_info("cpu")["backend"] == "reference"
        delta = calls_delta(lambda: assert_matches_loop(x, kernel, stride, padding, flip))
    assert delta == {"blur_downsample.reference": 1, "_blur_downsample_backward.reference": 1}


@pytest.mark.parametrize("k", [1, 2, 5, 8, 21])
@pytest.mark.parametrize("stride", [1, 4])
def test_kernel_sizes_on_larger_image(k, stride):
    x, kernel = make_inputs("per_pixel", k, stride, n=1, c=2, height=29, width=24)
    assert_matches_loop(x, kernel, stride, "reflect", False)


@pytest.mark.parametrize("padding", ["replicate", "zeros"])
def test_kernel_wider_than_image_for_unbounded_paddings(padding):
    x, kernel = make_inputs("per_image", 9, 2, n=2, c=1, height=4, width=3)
    assert_matches_loop(x, kernel, 2, padding, True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_low_precision_dtypes(dtype, layout):
    x, kernel = make_inputs(layout, 5, 2, height=16, width=13)
    x, kernel = x.to(dtype), (kernel / 5).to(dtype)
    out, grad_x, grad_kernel, grad_out = forward_and_grads(x, kernel, 2, "reflect", False)
    exact = forward_and_grads(x.double(), kernel.double(), 2, "reflect", False, blur_downsample_loop,
                              grad_out.double())
    same_dtype = forward_and_grads(x, kernel, 2, "reflect", False, blur_downsample_reference, grad_out)
    for actual, expected, baseline in zip((out, grad_x, grad_kernel), exact, same_dtype):
        assert actual.dtype == dtype
        assert_close_to_float64(actual, expected, reference_same_dtype=baseline if dtype != torch.float32 else None)


def test_non_contiguous_and_channels_last_inputs():
    x, kernel = make_inputs("per_pixel", 4, 3, height=13, width=10)
    assert_matches_loop(x.to(memory_format=torch.channels_last), kernel, 3, "symmetric", False)
    wide = torch.randn(2, 3, 10, 26, dtype=torch.float64)[..., ::2]  # strided view
    kernel_t = make_kernel("per_pixel", 2, 4, 4, 5).transpose(2, 3).contiguous().transpose(2, 3)
    assert not wide.is_contiguous() and not kernel_t.is_contiguous()
    assert_matches_loop(wide, kernel_t, 3, "circular", True)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_batch_zero_gives_empty_result(layout):
    x, kernel = make_inputs(layout, 3, 2, n=0)
    if layout == "shared":
        kernel = torch.randn(3, 3, dtype=torch.float64)
    out, grad_x, grad_kernel, _ = forward_and_grads(x, kernel, 2, "reflect", False)
    assert out.shape == (0, 3, 6, 7) and grad_x.shape == x.shape and grad_kernel.shape == kernel.shape
    assert torch.all(grad_kernel == 0)


@pytest.mark.parametrize("layout,flip", [("per_pixel", False), ("per_image", True), ("shared", False)])
def test_gradcheck(layout, flip):
    x, kernel = make_inputs(layout, 4, 3, n=1, c=2, height=7, width=8)
    assert torch.autograd.gradcheck(lambda a, b: bsrops.blur_downsample(a, b, 3, "symmetric", flip),
                                    (x.requires_grad_(), kernel.requires_grad_()), fast_mode=True)


def test_only_requested_gradients_are_computed():
    x, kernel = make_inputs("per_pixel", 3, 2)
    kernel.requires_grad_()
    out = bsrops.blur_downsample(x, kernel, 2)
    (grad_kernel,) = torch.autograd.grad(out.sum(), kernel)
    _, _, ref_gk, _ = forward_and_grads(x, kernel, 2, "reflect", False, blur_downsample_loop,
                                        torch.ones_like(out))
    assert_close_to_float64(grad_kernel, ref_gk)
    grad_x, grad_k = torch.ops.bsrops._blur_downsample_backward(torch.ones_like(out), x, kernel.detach(), 2,
                                                                "reflect", False, [False, True])
    assert grad_x.numel() == 0 and grad_k.shape == kernel.shape


@pytest.mark.parametrize("layout", LAYOUTS)
def test_opcheck(layout):
    x, kernel = make_inputs(layout, 4, 2, height=8, width=9)
    for requires_grad in (False, True):
        torch.library.opcheck(torch.ops.bsrops.blur_downsample.default,
                              (x.clone().requires_grad_(requires_grad), kernel.clone().requires_grad_(requires_grad),
                               2, "replicate", True))


@pytest.mark.slow
def test_torch_compile_fullgraph_no_graph_break():
    x, kernel = make_inputs("per_pixel", 5, 2, dtype=torch.float32)
    torch._dynamo.reset()
    compiled = torch.compile(lambda a, b: bsrops.blur_downsample(a, b, 2).square().sum(), fullgraph=True)
    x.requires_grad_()
    value = compiled(x, kernel)
    value.backward()
    eager_x = x.detach().requires_grad_()
    expected = bsrops.blur_downsample(eager_x, kernel, 2).square().sum()
    expected.backward()
    torch.testing.assert_close(value, expected)
    torch.testing.assert_close(x.grad, eager_x.grad)


def test_backend_info_reports_native_cpu():
    info = bsrops.backend_info("cpu")
    assert info["backend"] == "cpu" and info["extension"]["loaded"] and info["extension"]["openmp"]


def test_unknown_backend_is_rejected():
    with pytest.raises(ValueError, match="backend must be one of"):
        with bsrops.use_backend("fastest"):
            pass


BAD_INPUTS = [
    (dict(x=torch.randn(3, 8, 8)), ValueError, "x must be \\(N, C, H, W\\)"),
    (dict(kernel=torch.randn(3, 4)), ValueError, "shared kernel must be \\(k, k\\)"),
    (dict(kernel=torch.randn(3, 3, 3)), ValueError, "per-image kernel must be \\(N, k, k\\) with N = 2, or \\(1, k, k\\)"),
    (dict(kernel=torch.randn(2, 9, 4, 5)), ValueError, "per-pixel kernel must be \\(N, k\\*k, Ho, Wo\\) = \\(2, k\\*k, 4, 4\\)"),
    (dict(kernel=torch.randn(2, 8, 4, 4)), ValueError, r"a per-image one \(2, k\*k, 1, 1\), a per-channel one "
                                                      r"\(2, 3, k, k\) or \(2, 1, k, k\); got \(2, 8, 4, 4\)"),
    (dict(kernel=torch.randn(2, 3, 4, 5)), ValueError, "4-D kernel fits no layout"),
    (dict(kernel=torch.randn(1, 9, 4, 4)), ValueError, "4-D kernel fits no layout"),
    (dict(kernel=torch.randn(2, 3, 3, 3, 3)), ValueError, "kernel must be \\(k, k\\), \\(N, k, k\\) or"),
    (dict(stride=0), ValueError, "stride must be >= 1"),
    (dict(stride=2.0), TypeError, "stride must be an int"),
    (dict(padding="mirror"), ValueError, "padding must be one of"),
    (dict(kernel=torch.randn(17, 17)), ValueError, "reflect padding of 8 pixels"),
    (dict(kernel=torch.randn(19, 19), padding="circular"), ValueError, "circular padding of 9 pixels"),
    (dict(kernel=torch.randint(0, 3, (3, 3))), TypeError, "kernel must be float16/bfloat16/float32/float64"),
    (dict(kernel_layout="pixel"), ValueError, "kernel_layout must be one of shared, per_image, per_channel, per_pixel"),
    (dict(kernel_layout="per_pixel"), ValueError, r"kernel of shape \(3, 3\) is not a per_pixel kernel"),
    (dict(kernel=torch.randn(2, 3, 3, 3), kernel_layout="per_image"), ValueError,
     r"kernel of shape \(2, 3, 3, 3\) is not a per_image kernel"),
    (dict(x=torch.randint(0, 5, (2, 3, 8, 8))), TypeError, "x must be float16/bfloat16/float32/float64"),
    (dict(kernel=torch.randn(3, 3, device="meta")), ValueError, "kernel is on meta but x is on cpu"),
    (dict(x=[[1.0]]), TypeError, "x must be a torch.Tensor"),
]


@pytest.mark.parametrize("change,error,message", BAD_INPUTS)
def test_bad_input_gives_clear_error(change, error, message):
    args = dict(x=torch.randn(2, 3, 8, 4 * 2), kernel=torch.randn(3, 3), stride=2, padding="reflect")
    args.update(change)
    with pytest.raises(error, match=message):
        bsrops.blur_downsample(**args)


def test_native_op_checks_shapes_too():
    with pytest.raises(RuntimeError, match="per-pixel kernel must be"):
        torch.ops.bsrops.blur_downsample(torch.randn(1, 1, 8, 8), torch.randn(1, 9, 3, 3), 2)
    with pytest.raises(RuntimeError, match="padding must be one of"):
        torch.ops.bsrops.blur_downsample(torch.randn(1, 1, 8, 8), torch.randn(3, 3), 2, "mirror")
    with pytest.raises(RuntimeError, match="kernel dtype Double must equal x dtype Float"):
        torch.ops.bsrops.blur_downsample(torch.randn(1, 1, 8, 8), torch.randn(3, 3, dtype=torch.float64), 2)
    with pytest.raises(RuntimeError, match=r"kernel must be \(N, k, k\) with N = 2"):  # the entry point's layouts
        torch.ops.bsrops.blur_downsample(torch.randn(2, 1, 8, 8), torch.randn(1, 3, 3), 2)


def run_python(code, **env):
    import os

    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env={**os.environ, "BSROPS_REQUIRE_EXT": "0", **env}, timeout=120)
    return result


def test_fallback_without_extension_warns_and_uses_reference():
    code = ("import warnings, torch\n"
            "warnings.simplefilter('error')\n"
            "import bsrops\n"
            "x = torch.randn(1, 2, 8, 8); k = torch.rand(3, 3)\n"
            "y = bsrops.blur_downsample(x, k, 2)\n"
            "print(bsrops.backend_info()['backend'], sorted(bsrops.kernel_calls()))")
    result = run_python(code, BSROPS_DISABLE_EXT="1")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[0] == "reference" and "blur_downsample.reference" in result.stdout


def test_torch_version_mismatch_warns_and_falls_back():
    code = ("import torch; torch.__version__ = '0.0.1'\n"
            "import warnings\n"
            "with warnings.catch_warnings(record=True) as caught:\n"
            "    warnings.simplefilter('always')\n"
            "    import bsrops\n"
            "print(bsrops.backend_info()['backend'])\n"
            "print([str(w.message) for w in caught if 'reference kernels' in str(w.message)])")
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("reference") and "built for torch" in result.stdout


def test_require_ext_makes_missing_extension_an_import_error():
    result = run_python("import bsrops", BSROPS_DISABLE_EXT="1", BSROPS_REQUIRE_EXT="1")
    assert result.returncode != 0 and "BSROPS_REQUIRE_EXT=1" in result.stderr


def test_env_backend_selection_at_import():
    code = ("import torch, bsrops\n"
            "bsrops.blur_downsample(torch.randn(1, 1, 6, 6), torch.rand(3, 3))\n"
            "print(bsrops.backend_info()['backend'], sorted(bsrops.kernel_calls()))")
    result = run_python(code, BSROPS_BACKEND="reference")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("reference") and "blur_downsample.reference" in result.stdout


def test_use_backend_is_process_wide_and_refuses_another_threads_other_backend():
    """use_backend swaps the dispatcher's kernels, which every thread shares: another thread's calls run on the
    backend too (kept, documented), and entering a different backend from another thread meanwhile is a
    RuntimeError naming both. Nesting in one thread, and one backend entered by two threads, keep working."""
    import threading

    x, kernel = torch.randn(1, 1, 6, 6), torch.rand(3, 3)
    entered, release = threading.Event(), threading.Event()

    def holder():
        with bsrops.use_backend("reference"):
            entered.set()
            release.wait(30)

    thread = threading.Thread(target=holder, name="holder")
    thread.start()
    try:
        assert entered.wait(30)
        # process-wide: this thread's calls run on the reference as well
        assert "blur_downsample.reference" in calls_delta(lambda: bsrops.blur_downsample(x, kernel, 2))
        with pytest.raises(RuntimeError, match=r"use_backend\('cpu_shared'\) in thread 'MainThread' while thread "
                                               r"'holder' is inside use_backend\('reference'\)"):
            with bsrops.use_backend("cpu_shared"):
                pass
        with bsrops.use_backend("reference"):  # the same backend: fine, and it outlives the holder's block
            release.set()
            thread.join(30)
            assert bsrops.backend_info("cpu")["backend"] == "reference"
            assert "blur_downsample.reference" in calls_delta(lambda: bsrops.blur_downsample(x, kernel, 2))
    finally:
        release.set()
        thread.join(30)
    assert bsrops.backend_info("cpu")["backend"] == "cpu"
    with bsrops.use_backend("reference"):  # nesting in one thread
        with bsrops.use_backend("cpu_shared"):
            assert "blur_downsample.cpu_shared" in calls_delta(lambda: bsrops.blur_downsample(x, kernel, 2))
        assert "blur_downsample.reference" in calls_delta(lambda: bsrops.blur_downsample(x, kernel, 2))
    assert "blur_downsample.cpu" in calls_delta(lambda: bsrops.blur_downsample(x, kernel, 2))
