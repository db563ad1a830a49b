"""bsrops.dpcb / bsrops.nn.DPCB / DPCG against nn.Module references written from the official
structure (float64, random weights): outputs and every input / parameter gradient, both DANv2
uses (Restorer: 1x1 condition; Estimator: image-sized condition), both DPCG modes, backends,
registration (opcheck, torch.compile) and bad inputs."""
import collections
import pathlib
import re

import pytest
import torch

import bsrops
from bsrops.nn import DPCB, DPCG
from bsrops.reference.dpcb import DPCBReference
from python_formula import FALLBACKS, assert_equal_tensors, native_and_python, needs_native, run_fallback
from reference_modules import DPCGReference
from tolerances import assert_close_to_float64

# name: (nf, ksize1, ksize2, image (H, W), condition (H, W))
USES = {
    "restorer": (4, 3, 1, (7, 10), (1, 1)),
    "estimator": (3, 3, 3, (6, 5), (6, 5)),
}
BACKEND_CALLS = {
    "cpu": ("_dpcb_epilogue.cpu", "_dpcb_epilogue_backward.cpu", "_leaky_relu_.cpu", "_leaky_relu_backward_.cpu",
            "_relayout.cpu"),
    "reference": ("dpcb.reference", "_dpcb_epilogue_backward.reference", "_leaky_relu_backward_.reference",
                  "_relayout.reference"),
}


def calls_delta(run):
    before = bsrops.kernel_calls()
    result = run()
    after = bsrops.kernel_calls()
    return result, {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)}


def make_pair(use, n=2, dtype=torch.float64):
    nf, k1, k2, image, cond = USES[use]
    ours = DPCB(nf, nf, k1, k2).to(dtype)
    reference = DPCBReference(nf, nf, k1, k2).to(dtype)
    reference.load_state_dict(ours.state_dict())
    x_img = torch.randn(n, nf, *image, dtype=dtype)
    x_cond = torch.randn(n, nf, *cond, dtype=dtype)
    return ours, reference, x_img, x_cond


def outputs_and_grads(run, module, x_img, x_cond, grads):
    x_img, x_cond = x_img.detach().requires_grad_(), x_cond.detach().requires_grad_()
    module.zero_grad(set_to_none=True)
    out_img, out_cond = run(x_img, x_cond)
    torch.autograd.backward([out_img, out_cond], grads)
    params = [p.grad for p in module.parameters()]
    return [out_img.detach(), out_cond.detach(), x_img.grad, x_cond.grad, *params]


def reference_run(reference):
    return lambda a, b: tuple(reference([a, b]))


def assert_all_close(actual, expected):
    assert len(actual) == len(expected)
    for index, (a, e) in enumerate(zip(actual, expected)):
        assert a.shape == e.shape, (index, a.shape, e.shape)
        assert_close_to_float64(a, e)


@pytest.mark.parametrize("backend", ["cpu", "reference"])
@pytest.mark.parametrize("use", sorted(USES))
def test_dpcb_matches_official_structure(use, backend):
    ours, reference, x_img, x_cond = make_pair(use)
    grads = [torch.randn_like(x_img), torch.randn_like(x_cond)]
    with bsrops.use_backend(backend):
        actual, delta = calls_delta(lambda: outputs_and_grads(ours, ours, x_img, x_cond, grads))
    assert all(delta.get(name, 0) >= 1 for name in BACKEND_CALLS[backend]), delta
    other = "reference" if backend == "cpu" else "cpu"
    assert not any(name.endswith("." + other) for name in delta), delta
    expected = outputs_and_grads(reference_run(reference), reference, x_img, x_cond, grads)
    assert_all_close(actual, expected)


def test_dpcb_float32_and_non_contiguous_inputs():
    ours, reference, x_img, x_cond = make_pair("estimator", dtype=torch.float32)
    x_img = x_img.to(memory_format=torch.channels_last)
    x_cond = x_cond.transpose(2, 3).contiguous().transpose(2, 3)
    grads = [torch.randn_like(x_img), torch.randn_like(x_cond)]
    actual = outputs_and_grads(ours, ours, x_img, x_cond, grads)
    exact = outputs_and_grads(reference_run(reference.double()), reference, x_img.double(), x_cond.double(),
                              [g.double() for g in grads])
    for a, e in zip(actual, exact):
        assert a.dtype == torch.float32
        assert_close_to_float64(a, e)


def test_dpcb_batch_zero_and_one_output_used():
    ours, _, x_img, x_cond = make_pair("restorer", n=0)
    x_img.requires_grad_()
    out_img, out_cond = ours(x_img, x_cond)
    out_img.sum().backward()
    assert out_img.shape == x_img.shape and out_cond.shape == x_cond.shape
    assert x_img.grad.shape == x_img.shape and not ours.body1[0].weight.grad.any()
    # only out_cond feeds the loss: the image path's weights get no gradient signal
    ours, reference, x_img, x_cond = make_pair("restorer")
    ours.zero_grad(set_to_none=True)
    _, out_cond = ours(x_img, x_cond.requires_grad_())
    out_cond.sum().backward()
    reference.zero_grad(set_to_none=True)
    reference([x_img, x_cond.detach().requires_grad_()])[1].sum().backward()
    for name, p in ours.named_parameters():
        expected = reference.get_parameter(name).grad
        assert_close_to_float64(p.grad if p.grad is not None else torch.zeros_like(p),
                                expected if expected is not None else torch.zeros_like(p))


@pytest.mark.parametrize("legacy_doubling", [True, False])
@pytest.mark.parametrize("use", sorted(USES))
def test_dpcg_modes_and_official_state_dict(use, legacy_doubling):
    nf, k1, k2, image, cond = USES[use]
    reference = DPCGReference(nf, nf, k1, k2, nb=2).double()
    ours = DPCG(nf, nf, k1, k2, nb=2, legacy_doubling=legacy_doubling).double()
    ours.load_state_dict(reference.state_dict())  # official keys: body.{b}.body1.0.weight, ...
    assert "body.1.body2.2.bias" in ours.state_dict()
    x_img, x_cond = torch.randn(2, nf, *image, dtype=torch.float64), torch.randn(2, nf, *cond, dtype=torch.float64)
    grads = [torch.randn_like(x_img), torch.randn_like(x_cond)]
    actual = outputs_and_grads(ours, ours, x_img, x_cond, grads)
    if legacy_doubling:  # the official module, list aliasing included
        expected = outputs_and_grads(reference_run(reference), reference, x_img, x_cond, grads)
    else:  # intended: input + chain output
        def intended(a, b):
            chain = reference.body([a, b])
            return a + chain[0], b + chain[1]
        expected = outputs_and_grads(intended, reference, x_img, x_cond, grads)
    assert_all_close(actual, expected)


def test_gradcheck():
    ours, _, x_img, x_cond = make_pair("estimator", n=1)
    params = [p.detach().requires_grad_() for p in ours.parameters()]
    assert torch.autograd.gradcheck(lambda a, b, *w: bsrops.dpcb(a, b, *w),
                                    (x_img.requires_grad_(), x_cond.requires_grad_(), *params), fast_mode=True)


@pytest.mark.parametrize("use", sorted(USES))
def test_opcheck(use):
    ours, _, x_img, x_cond = make_pair(use, n=1)
    params = [p.detach().clone().requires_grad_() for p in ours.parameters()]
    torch.library.opcheck(torch.ops.bsrops.dpcb.default, (x_img.requires_grad_(), x_cond, *params, 0.2))
    out = torch.ops.bsrops.dpcb(x_img.detach(), x_cond, *[p.detach() for p in params], 0.2)
    h1, f1 = out[2], out[3]
    torch.library.opcheck(torch.ops.bsrops._leaky_relu_.default, (h1.clone(), 0.1))
    torch.library.opcheck(torch.ops.bsrops._leaky_relu_backward_.default, (torch.randn_like(h1), h1, 0.1))
    torch.library.opcheck(torch.ops.bsrops._dpcb_epilogue.default, (x_img.detach(), f1, x_cond, out[5]))
    torch.library.opcheck(torch.ops.bsrops._dpcb_epilogue_backward.default,
                          (torch.randn_like(f1), torch.randn_like(out[5]), f1, out[5], True))
    torch.library.opcheck(torch.ops.bsrops._relayout.default, (f1, torch.randn_like(x_img), False))


@pytest.mark.slow
def test_torch_compile_fullgraph():
    ours, _, x_img, x_cond = make_pair("restorer", dtype=torch.float32)
    torch._dynamo.reset()
    compiled = torch.compile(lambda a, b: sum(t.square().sum() for t in ours(a, b)), fullgraph=True)
    x_img.requires_grad_()
    value = compiled(x_img, x_cond)
    value.backward()
    grad = x_img.grad.clone()
    x_img.grad = None
    expected = sum(t.square().sum() for t in ours(x_img, x_cond))
    expected.backward()
    torch.testing.assert_close(value, expected)
    torch.testing.assert_close(grad, x_img.grad)


def test_native_formula_uses_the_python_formulas_size_thresholds():
    """csrc/common/conv_block.h repeats the layout and post-op thresholds of bsrops/ops/_common.py (the C++
    composites must choose as the Python ones do, and the Python ones must work without _C): the two must agree."""
    from bsrops.ops import _common
    header = (pathlib.Path(__file__).parents[1] / "csrc" / "common" / "conv_block.h").read_text()
    for cpp_name, value in (("kNativeConvMaxValues", _common.NATIVE_CONV_MAX_VALUES),
                            ("kOneDnnPostOpMinValues", _common.ONEDNN_POST_OP_MIN_VALUES)):
        match = re.search(rf"constexpr int64_t {cpp_name} = (\d+);", header)
        assert match is not None, cpp_name
        assert int(match.group(1)) == value, cpp_name


def test_aot_tracing_after_a_python_backend_block_runs_the_native_formula():
    """opcheck's AOT tracing inside use_backend("reference") resolves dpcb's AutogradCPU kernel to the Python
    formula installed there; after the block the tracing must find the native one again (not autograd's
    not-implemented fallback, which left every gradient None under torch.compile)."""
    ours, _, x_img, x_cond = make_pair("restorer", n=1)
    args = (x_img.requires_grad_(), x_cond, *[p.detach() for p in ours.parameters()], 0.2)
    with bsrops.use_backend("reference"):
        torch.library.opcheck(torch.ops.bsrops.dpcb.default, args, test_utils=("test_aot_dispatch_dynamic",))
    torch.library.opcheck(torch.ops.bsrops.dpcb.default, args, test_utils=("test_aot_dispatch_dynamic",))


def test_channel_mismatch_in_module_is_a_clear_error():
    with pytest.raises(ValueError, match="nf1 \\(4\\) must equal nf2 \\(8\\)"):
        DPCB(4, 8)


def _args(**change):
    nf = 4
    args = dict(x_img=torch.randn(2, nf, 6, 7), x_cond=torch.randn(2, nf, 1, 1),
                w1=torch.randn(nf, nf, 3, 3), b1=torch.randn(nf), w2=torch.randn(nf, nf, 3, 3), b2=None,
                w3=torch.randn(nf, nf, 1, 1), b3=None, w4=torch.randn(nf, nf, 1, 1), b4=torch.randn(nf))
    args.update(change)
    return args


BAD_INPUTS = [
    (dict(x_cond=torch.randn(2, 8, 1, 1)), ValueError, "nf1 must equal nf2"),
    (dict(x_cond=torch.randn(2, 4, 3, 3)), ValueError, "neither 1x1 nor image-sized"),
    (dict(x_cond=torch.randn(3, 4, 1, 1)), ValueError, "x_cond must have x_img's batch 2"),
    (dict(x_img=torch.randn(4, 6, 7)), ValueError, "x_img must have 4 dimensions"),
    (dict(w1=torch.randn(4, 4, 2, 2)), ValueError, "w1 must be \\(4, 4, k, k\\) with odd k"),
    (dict(w2=torch.randn(4, 4, 5, 5)), ValueError, "w2 must have the shape of the path's first weight"),
    (dict(b1=torch.randn(3)), ValueError, "b1 must be \\(4,\\)"),
    (dict(x_cond=torch.randint(0, 3, (2, 4, 1, 1))), TypeError, "x_cond must be float16/bfloat16/float32/float64"),
    (dict(x_img=torch.randn(2, 4, 6, 7).to(torch.complex64)), TypeError,
     "x_img must be float16/bfloat16/float32/float64"),
    (dict(w3=[1.0]), TypeError, "w3 must be a torch.Tensor"),
    (dict(b3=torch.randn(4, device="meta")), ValueError, "b3 is on meta but x_img is on cpu"),
    (dict(w2=torch.randn(4, 4, 3, 3, device="meta")), ValueError, "w2 is on meta but x_img is on cpu"),
    (dict(x_cond=torch.randn(2, 4, 1, 1, device="meta")), ValueError, "x_cond is on meta but x_img is on cpu"),
]


@pytest.mark.parametrize("change,error,message", BAD_INPUTS)
def test_bad_input_gives_clear_error(change, error, message):
    with pytest.raises(error, match=message):
        bsrops.dpcb(**_args(**change))


@pytest.mark.parametrize("slope", [-0.1, float("nan"), float("inf")])
def test_negative_slope_must_be_a_finite_non_negative_float(slope):
    """NaN passed the old `negative_slope < 0` test (and made every output and gradient NaN)."""
    with pytest.raises(ValueError, match="negative_slope must be a finite float >= 0"):
        bsrops.dpcb(**_args(), negative_slope=slope)
    args = [value.requires_grad_() if name == "x_img" else value for name, value in _args().items()]
    for backend in ("cpu", "reference"):  # the op itself, called directly
        with bsrops.use_backend(backend), pytest.raises(ValueError, match="negative_slope must be a finite float"):
            torch.ops.bsrops.dpcb(*args, slope)
        with bsrops.use_backend(backend), pytest.raises(ValueError, match="negative_slope must be a finite float"):
            torch.ops.bsrops._dpcb_inference(*args, slope)


def test_native_epilogue_checks_shapes_too():
    with pytest.raises(RuntimeError, match="condition must be \\(N, C, 1, 1\\) or"):
        torch.ops.bsrops._dpcb_epilogue(torch.randn(1, 2, 4, 4), torch.randn(1, 2, 4, 4), torch.randn(1, 2, 2, 2),
                                        torch.randn(1, 2, 2, 2))


# ---- the fused kernels on any mix of NCHW and channels_last operands ----

FORMATS = {"nchw": torch.contiguous_format, "cl": torch.channels_last}


def _formatted(t, name):
    return t.contiguous(memory_format=FORMATS[name])


def _assert_format(t, name):
    assert t.is_contiguous(memory_format=FORMATS[name]), (t.shape, t.stride(), name)


def check_fused_kernels_mix_layouts(channels, cond, formats, dtype=torch.float64):
    """Every fused kernel of the op on operands in the given formats (x, f1, grad, conv-side) against the
    same maths in eager PyTorch on the same values in float64. 13 x 23 pixels: one full 256-pixel tile and
    a partial one; 5 channels: the transposes' remainders, 16: their full 8 x 8 blocks (in float32 the
    register shuffles)."""
    x_format, f_format, grad_format, conv_format = formats
    make = lambda *shape: torch.randn(*shape, dtype=torch.float64).to(dtype)  # noqa: E731
    image = (2, channels, 13, 23)
    cond_shape = image if cond == "image" else (2, channels, 1, 1)
    x, f1 = _formatted(make(*image), x_format), _formatted(make(*image), f_format)
    x_cond, f2 = _formatted(make(*cond_shape), x_format), _formatted(make(*cond_shape), f_format)
    ops = torch.ops.bsrops
    d = lambda t: t.double()  # noqa: E731
    out, out_cond = ops._dpcb_epilogue(x, f1, x_cond, f2)
    assert_close_to_float64(out, d(x) + d(f1) * d(f2))
    assert_close_to_float64(out_cond, d(x_cond) + d(f2))
    _assert_format(out, x_format)
    grad_img, grad_cond = _formatted(make(*image), grad_format), _formatted(make(*cond_shape), grad_format)
    product = d(grad_img) * d(f1)
    expected_f2 = d(grad_cond) + (product if cond == "image" else product.sum((2, 3), keepdim=True))
    channels_last = conv_format == "cl"
    for give_f1, give_f2 in ((True, True), (True, False), (False, True)):
        grad_f1, grad_f2 = ops._dpcb_epilogue_backward(grad_img, grad_cond, f1 if give_f1 else None,
                                                       f2 if give_f2 else None, channels_last)
        if give_f2:
            assert_close_to_float64(grad_f1, d(grad_img) * d(f2))
            _assert_format(grad_f1, conv_format)
        else:
            assert grad_f1.numel() == 0
        if give_f1:
            assert_close_to_float64(grad_f2, expected_f2)
            if cond == "image":
                _assert_format(grad_f2, conv_format)
        else:
            assert grad_f2.numel() == 0
    for other in (None, grad_img, _formatted(grad_img, conv_format)):  # other in out's layout: direct transposes
        moved = ops._relayout(x, other, channels_last)
        assert_close_to_float64(moved, d(x) if other is None else d(x) + d(other))
        _assert_format(moved, conv_format)
        assert moved.data_ptr() != x.data_ptr()
    grad_h, h = _formatted(make(*image), grad_format), _formatted(make(*image), conv_format)
    expected = torch.where(h > 0, d(grad_h), d(grad_h) * 0.3)
    ops._leaky_relu_backward_(grad_h, h, 0.3)
    assert_close_to_float64(grad_h, expected)


MIXES = ["nchw,cl,nchw,cl", "cl,nchw,cl,nchw", "cl,cl,cl,cl", "nchw,nchw,nchw,nchw"]


@pytest.mark.parametrize("threads", [1, 2])
def test_fused_kernels_channels_last_runs_over_images(threads):
    """channels_last operands with a 1 x 1 condition, where the kernels run each pixel's C values as one run: a
    parallel chunk may start inside an image and end in the next; values as in float64."""
    make = lambda *shape: torch.randn(*shape, dtype=torch.float64).float()  # noqa: E731
    x, f1, grad_img = (_formatted(make(3, 16, 40, 61), "cl") for _ in range(3))
    x_cond, f2, grad_cond = make(3, 16, 1, 1), make(3, 16, 1, 1), make(3, 16, 1, 1)
    d = lambda t: t.double()  # noqa: E731
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        out, _ = torch.ops.bsrops._dpcb_epilogue(x, f1, x_cond, f2)
        grad_f1, grad_f2 = torch.ops.bsrops._dpcb_epilogue_backward(grad_img, grad_cond, f1, f2, True)
    finally:
        torch.set_num_threads(before)
    assert_close_to_float64(out, d(x) + d(f1) * d(f2))
    assert_close_to_float64(grad_f1, d(grad_img) * d(f2))
    assert_close_to_float64(grad_f2, d(grad_cond) + (d(grad_img) * d(f1)).sum((2, 3), keepdim=True))
    _assert_format(out, "cl")
    _assert_format(grad_f1, "cl")


@pytest.mark.parametrize("backend,dtype", [("cpu", torch.float64), ("cpu", torch.float32),
                                           ("reference", torch.float64)])
@pytest.mark.parametrize("mix", MIXES)
@pytest.mark.parametrize("cond", ["1x1", "image"])
@pytest.mark.parametrize("channels", [5, 16])
def test_fused_kernels_mix_layouts(backend, dtype, mix, cond, channels):
    with bsrops.use_backend(backend):
        _, delta = calls_delta(lambda: check_fused_kernels_mix_layouts(channels, cond, mix.split(","), dtype))
    assert delta.get(f"_relayout.{backend}", 0) == 3, delta


@pytest.mark.parametrize("use", sorted(USES))
@pytest.mark.parametrize("x_format", sorted(FORMATS))
def test_output_and_gradient_layouts_follow_the_inputs(use, x_format):
    ours, _, x_img, x_cond = make_pair(use)
    x_img = _formatted(x_img, x_format).requires_grad_()
    out_img, out_cond = ours(x_img, x_cond)
    _assert_format(out_img, x_format)
    out_img.backward(_formatted(torch.randn_like(out_img), x_format))
    _assert_format(x_img.grad, x_format)


@pytest.mark.parametrize("x_format", sorted(FORMATS))
def test_dpcg_runs_its_chain_in_channels_last(x_format):
    """On the CPU the group moves its inputs to channels_last once: no block relayouts x_img (forward or
    backward: the backward's _relayout calls are the two residual gradients' adds of each block), and out_img
    and the input gradients come back in the inputs' layouts."""
    nf, k1, k2, image, cond = USES["restorer"]
    ours = DPCG(nf, nf, k1, k2, nb=3)
    x_img = _formatted(torch.randn(2, nf, *image), x_format).requires_grad_()
    x_cond = torch.randn(2, nf, *cond, requires_grad=True)
    (out_img, out_cond), delta = calls_delta(lambda: ours(x_img, x_cond))
    _, delta_backward = calls_delta(lambda: out_img.backward(_formatted(torch.randn_like(out_img), x_format)))
    assert "_relayout.cpu" not in delta, delta
    assert delta_backward["_relayout.cpu"] == 2 * 3, delta_backward
    _assert_format(out_img, x_format)
    _assert_format(x_img.grad, x_format)


@pytest.mark.parametrize("n,height,expected", [(1, 8, "nchw"), (1, 80, "cl"), (2, 8, "cl")])
def test_convolutions_in_channels_last_except_one_small_image(n, height, expected):
    """h1 and f1 (the image path's convolution outputs) are channels_last on the CPU, except for a single image
    of at most 20480 values, which torch convolves with its own kernel (NCHW); the values match the
    float64 reference either way."""
    nf, k1, k2, _, cond = USES["restorer"]
    x_img, x_cond = torch.randn(n, 64, height, 40, dtype=torch.float64), torch.randn(n, 64, 1, 1, dtype=torch.float64)
    weights = [torch.randn(64, 64, k, k, dtype=torch.float64) * 0.05 for k in (k1, k1, k2, k2)]
    biases = [torch.randn(64, dtype=torch.float64) for _ in range(4)]
    args = [x_img, x_cond, *(t for pair in zip(weights, biases) for t in pair)]
    out_img, out_cond, h1, f1, h2, f2 = torch.ops.bsrops.dpcb(*args, 0.2)
    _assert_format(h1, expected)
    _assert_format(f1, expected)
    expected_values = bsrops.reference.dpcb.dpcb_reference(*args, 0.2)
    torch.testing.assert_close(out_img, expected_values[0])
    torch.testing.assert_close(f1, expected_values[3])


def test_backward_frees_intermediates_once_used():
    """h1, f1, h2, f2 are context attributes the backward drops as it goes: when the image path's first
    convolution runs its backward, f1 and h1 are gone (autograd's saved tensors would live until the end)."""
    import weakref

    from torch.utils._python_dispatch import TorchDispatchMode

    ours, _, x_img, x_cond = make_pair("estimator")
    out_img, out_cond = ours(x_img.requires_grad_(), x_cond.requires_grad_())
    h1, f1, h2, f2 = (weakref.ref(t) for t in out_img.grad_fn.intermediates)
    alive = []

    class Log(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func is torch.ops.aten.convolution_backward.default:
                alive.append([ref() is not None for ref in (h1, f1, h2, f2)])
            return func(*args, **(kwargs or {}))

    with Log():
        torch.autograd.backward([out_img, out_cond], [torch.randn_like(out_img), torch.randn_like(out_cond)])
    # the four convolution backwards: conv2 (image), conv1, conv4 (condition), conv3
    assert alive == [[True, False, True, False], [False, False, True, False], [False, False, True, False],
                     [False, False, False, False]]


@pytest.mark.parametrize("use", sorted(USES))
def test_second_backward_through_a_retained_graph_recomputes(use):
    ours, reference, x_img, x_cond = make_pair(use)
    grads = [torch.randn_like(x_img), torch.randn_like(x_cond)]

    def twice(run, module):
        a, b = x_img.detach().requires_grad_(), x_cond.detach().requires_grad_()
        module.zero_grad(set_to_none=True)
        outs = run(a, b)
        torch.autograd.backward(outs, grads, retain_graph=True)
        torch.autograd.backward(outs, grads)
        return [a.grad, b.grad, *(p.grad for p in module.parameters())]

    assert_all_close(twice(ours, ours), twice(reference_run(reference), reference))


def test_intermediate_modified_in_place_is_a_clear_error():
    ours, _, x_img, x_cond = make_pair("restorer")
    params = [p for p in ours.parameters()]
    out_img, _, h1, *_ = torch.ops.bsrops.dpcb(x_img.requires_grad_(), x_cond, *params, 0.2)
    h1.mul_(2)
    with pytest.raises(RuntimeError, match="h1, f1, h2 or f2 .* was modified in place"):
        out_img.sum().backward()


def ops_run(run):
    """run()'s result and the names of the ops it ran, nested ones included (the profiler's events)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        result = run()
    return result, collections.Counter(event.name for event in profile.events())


def inference_inputs(use, dtype, x_format, n=2):
    ours, reference, x_img, x_cond = make_pair(use, n=n, dtype=dtype)
    if x_format == "strided":  # a view: every other column of a wider image
        x_img = torch.cat([x_img, x_img], dim=3)[..., ::2]
    else:
        x_img = _formatted(x_img, x_format)
    return ours, reference, x_img, x_cond


INFERENCE_FORMATS = ["nchw", "cl", "strided"]


@pytest.mark.parametrize("grad_mode", ["inference_mode", "no_grad"])
@pytest.mark.parametrize("x_format", INFERENCE_FORMATS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("use", sorted(USES))
def test_inference_path_matches_reference(use, dtype, x_format, grad_mode, monkeypatch):
    """Without autograd the functional runs _dpcb_inference: convolutions on x as given (no channels_last
    copies), the outputs written in place of f1 and f2, the inputs untouched; on the CPU in float32 the
    LeakyReLUs are oneDNN post-ops (here at any size), elsewhere the _leaky_relu_ kernel."""
    monkeypatch.setattr(bsrops.ops._common, "ONEDNN_POST_OP_MIN_VALUES", 0)
    ours, reference, x_img, x_cond = inference_inputs(use, dtype, x_format)
    x_img_before, x_cond_before = x_img.clone(), x_cond.clone()
    with getattr(torch, grad_mode)():
        ((out_img, out_cond), delta), ran = ops_run(lambda: calls_delta(lambda: ours(x_img, x_cond)))
    expected = reference_run(reference.double())(x_img.double(), x_cond.double())
    assert_close_to_float64(out_img, expected[0])
    assert_close_to_float64(out_cond, expected[1])
    assert out_img.dtype == dtype and not out_img.requires_grad
    assert ran["bsrops::_dpcb_inference"] == 1 and ran["bsrops::dpcb"] == 0, ran
    assert ran["aten::addcmul"] == 1 and ran["aten::add_"] == 1, ran
    post_ops = dtype == torch.float32 and torch.backends.mkldnn.is_available()
    assert ran["mkldnn::_convolution_pointwise"] == (2 if post_ops else 0), ran
    assert delta == ({} if post_ops else {"_leaky_relu_.cpu": 2}), delta  # no relayout, no epilogue
    _assert_format(out_img, "cl" if x_format == "cl" else "nchw")
    torch.testing.assert_close(x_img, x_img_before, rtol=0, atol=0)
    torch.testing.assert_close(x_cond, x_cond_before, rtol=0, atol=0)


@pytest.mark.parametrize("margin", [0, 1], ids=["at", "below"])
def test_onednn_post_op_from_its_size_threshold(margin, monkeypatch):
    """oneDNN's conv + LeakyReLU post-op runs on inputs of at least ONEDNN_POST_OP_MIN_VALUES values, conv2d and
    the _leaky_relu_ kernel below; both give the float64 reference's values."""
    ours, reference, x_img, x_cond = inference_inputs("restorer", torch.float32, "nchw")
    monkeypatch.setattr(bsrops.ops._common, "ONEDNN_POST_OP_MIN_VALUES", x_img.numel() + margin)
    with torch.no_grad():
        ((out_img, out_cond), delta), ran = ops_run(lambda: calls_delta(lambda: ours(x_img, x_cond)))
    expected = reference_run(reference.double())(x_img.double(), x_cond.double())
    assert_close_to_float64(out_img, expected[0])
    assert_close_to_float64(out_cond, expected[1])
    image_post_op = margin == 0  # the (N, C, 1, 1) condition stays below the threshold
    assert ran["mkldnn::_convolution_pointwise"] == int(image_post_op), ran
    assert delta == {"_leaky_relu_.cpu": 2 - int(image_post_op)}, delta


@pytest.mark.parametrize("use", sorted(USES))
def test_inference_path_batch_zero_dpcg_and_reference_backend(use):
    ours, reference, x_img, x_cond = make_pair(use, n=0, dtype=torch.float32)
    with torch.no_grad():
        out_img, out_cond = ours(x_img, x_cond)
    assert out_img.shape == x_img.shape and out_cond.shape == x_cond.shape
    nf, k1, k2, image, cond = USES[use]
    group = DPCG(nf, nf, k1, k2, nb=3)
    official = DPCGReference(nf, nf, k1, k2, nb=3)
    official.load_state_dict(group.state_dict())
    x_img, x_cond = torch.randn(2, nf, *image), torch.randn(2, nf, *cond)
    with torch.inference_mode():
        actual = group(x_img, x_cond)
        with bsrops.use_backend("reference"):
            reference_outputs, delta = calls_delta(lambda: group(x_img, x_cond))
    assert delta == {"_dpcb_inference.reference": 3}, delta
    exact = official.double()([x_img.double(), x_cond.double()])
    for a, r, e in zip(actual, reference_outputs, exact):
        assert_close_to_float64(a, e)
        assert_close_to_float64(r, e)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("use", sorted(USES))
def test_inference_opcheck(use, dtype):
    ours, _, x_img, x_cond = make_pair(use, n=2, dtype=dtype)
    params = [p.detach() for p in ours.parameters()]
    torch.library.opcheck(torch.ops.bsrops._dpcb_inference.default, (x_img, x_cond, *params, 0.2))
    torch.library.opcheck(torch.ops.bsrops._dpcb_inference.default,
                          (_formatted(x_img, "cl"), x_cond, *params, 0.1))


@pytest.mark.slow
def test_torch_compile_fullgraph_inference():
    ours, _, x_img, x_cond = make_pair("estimator", dtype=torch.float32)
    torch._dynamo.reset()
    compiled = torch.compile(lambda a, b: ours(a, b), fullgraph=True)
    with torch.no_grad():
        actual, expected = compiled(x_img, x_cond), ours(x_img, x_cond)
    for a, e in zip(actual, expected):
        torch.testing.assert_close(a, e)


def test_native_backward_kernels_check_shapes():
    image, cond = torch.randn(1, 2, 4, 4), torch.randn(1, 2, 1, 1)
    with pytest.raises(RuntimeError, match="f1 must have grad_img's shape"):
        torch.ops.bsrops._dpcb_epilogue_backward(image, cond, torch.randn(1, 2, 4, 3), None, True)
    with pytest.raises(RuntimeError, match="f2 must have grad_cond's shape"):
        torch.ops.bsrops._dpcb_epilogue_backward(image, cond, None, image, True)
    with pytest.raises(RuntimeError, match="other must have x's shape"):
        torch.ops.bsrops._relayout(image, cond, True)
    with pytest.raises(RuntimeError, match="x must be \\(N, C, H, W\\)"):
        torch.ops.bsrops._relayout(image[0], None, True)


# ---- the native autograd formula (C++) against the Python one ----

def formula_run(use, n, dtype, wanted, only_cond):
    """Outputs, the node's type name, and the gradients of the wanted inputs (None for the others)."""
    ours, _, x_img, x_cond = make_pair(use, n=n, dtype=dtype)
    args = [x_img, x_cond, *(p.detach() for p in ours.parameters())]
    args = [a.clone().requires_grad_(i in wanted) for i, a in enumerate(args)]
    out = torch.ops.bsrops.dpcb(*args, 0.2)
    grads = [None if only_cond else torch.randn_like(out[0]), torch.randn_like(out[1])]
    used = [(o, g) for o, g in zip(out[:2], grads) if g is not None]
    torch.autograd.backward([o for o, _ in used], [g for _, g in used])
    return [o.detach() for o in out], type(out[0].grad_fn).__name__, [a.grad for a in args]


@pytest.mark.skipif(needs_native, reason="needs the native extension")
@pytest.mark.parametrize("only_cond", [False, True], ids=["both_outputs", "out_cond_only"])
@pytest.mark.parametrize("wanted", [range(10), (0,), (3, 8, 9)], ids=["all", "x_img", "b1_w4_b4"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("n", [1, 2], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("use", sorted(USES))
def test_native_formula_matches_the_python_formula(use, n, dtype, wanted, only_cond):
    """With _C, dpcb's Autograd kernel and CPU composite are C++; without it (and under the Python backends) they
    are the Python formula. Both run the same ops in the same order: outputs and gradients equal bit for bit, on
    both condition shapes, in either convolution layout, in half precision (float32 copies for the fused CPU
    kernels), whichever inputs require a gradient and whichever outputs are used."""
    from bsrops.ops import dpcb as module

    formulas = [("dpcb", module._forward_composite, module._python_autograd)]
    native, python = native_and_python(lambda: formula_run(use, n, dtype, wanted, only_cond), formulas)
    assert native[1] == "DpcbBackward" and python[1] != native[1], (native[1], python[1])
    assert_equal_tensors(native[0] + native[2], python[0] + python[2])


def test_python_backends_run_the_python_formula():
    """Under the reference and triton backends dpcb's node is the Python formula's (run_fused's precision policy);
    on the native backends it is the C++ node."""
    ours, _, x_img, x_cond = make_pair("restorer", dtype=torch.float32)
    names = {}
    for backend in ("cpu", "reference", "triton"):
        with bsrops.use_backend(backend):
            names[backend] = type(ours(x_img.requires_grad_(), x_cond)[0].grad_fn).__name__
    native = "DpcbBackward" if bsrops._extension.native is not None else names["reference"]
    assert names["cpu"] == native and names["reference"] == names["triton"] != "DpcbBackward", names


FALLBACK_CODE = """
import torch, bsrops
from bsrops.reference.dpcb import dpcb_reference
torch.manual_seed(0)
args = [torch.randn(2, 3, 5, 4, dtype=torch.float64), torch.randn(2, 3, 1, 1, dtype=torch.float64)]
for k in (3, 3, 1, 1):
    args += [torch.randn(3, 3, k, k, dtype=torch.float64) * 0.3, torch.randn(3, dtype=torch.float64)]
grads = [torch.randn(2, 3, 5, 4, dtype=torch.float64), torch.randn(2, 3, 1, 1, dtype=torch.float64)]
results = []
for run in (lambda *a: dpcb_reference(*a, 0.2)[:2], bsrops.dpcb):
    leaves = [a.clone().requires_grad_() for a in args]
    out = run(*leaves)
    torch.autograd.backward(out, grads)
    results.append([*out, *(a.grad for a in leaves)])
assert all(torch.allclose(a, b) for a, b in zip(*results))
print(bsrops.backend_info()['backend'], type(out[0].grad_fn).__name__)
"""


@pytest.mark.parametrize("fallback", sorted(FALLBACKS))
def test_fallback_runs_the_python_formula(fallback):
    """Without _C, and with a _C built for another torch, dpcb runs the Python formula (not the C++ node) and its
    outputs and gradients match the reference."""
    backend, node = run_fallback(FALLBACK_CODE, fallback).split()
    assert backend == "reference" and node != "DpcbBackward", (backend, node)
