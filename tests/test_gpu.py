"""Every op on a CUDA device, on the `cuda` (CUDA C++) and `triton` (compiled Triton) backends, against
the float64 CPU references: outputs and all gradients, and which kernels ran. Skipped without a CUDA
device (CI has none). Run with Triton compiling for the GPU, not interpreting:

    TRITON_INTERPRET=0 python -m pytest tests/test_gpu.py
"""
import functools
import os

import pytest
import torch

import bsrops
import test_blur_downsample as bd
import test_dpcb as dp
import test_patchgan_conv as pg
import test_precision as tp
import test_usrnet_data_step as ud
from bsrops.nn import PatchGANConv
from bsrops.ops._precision import run_fused
from bsrops.reference import usrnet_data_step as usrnet_ref
from bsrops.reference.blur_downsample import PADDINGS, blur_downsample_loop, blur_downsample_reference
from logged_ops import LoggedOps
from tolerances import assert_close_to_float64, relative_error

if not torch.cuda.is_available():
    pytest.skip("no CUDA device: the GPU checks run on a machine with one", allow_module_level=True)
if os.environ.get("TRITON_INTERPRET") == "1":
    pytest.skip("TRITON_INTERPRET=1 would interpret the Triton kernels: run with TRITON_INTERPRET=0",
                allow_module_level=True)

torch.backends.cudnn.allow_tf32 = False  # float32 convolutions in float32 (TF32 would err ~1e-3)
BACKENDS = ("cuda", "triton")
CUDA = torch.device("cuda")


def ran_on(delta, backend):
    """Only `backend`'s kernels ran (no cpu / reference fallback)."""
    assert any(name.endswith("." + backend) for name in delta), delta
    assert not any(name.endswith(".cpu") or name.endswith(".reference") for name in delta), delta


def on_cuda(tensors):
    return [t.to(CUDA) if isinstance(t, torch.Tensor) else t for t in tensors]


def assert_close_cpu(actual, expected):
    for a, e in zip(actual, expected):
        assert a.is_cuda and a.shape == e.shape, (a.device, a.shape, e.shape)
        assert_close_to_float64(a.cpu(), e.cpu())


# every layout x padding, strides 1-4 with odd and even kernels and both flips spread over them
BLUR_CASES = [(layout, padding, *((1, 3), (2, 4), (3, 3), (4, 4))[i % 4], i % 2 == 1)
              for i, (layout, padding) in enumerate((a, b) for a in bd.LAYOUTS for b in PADDINGS)]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("layout,padding,stride,k,flip", BLUR_CASES)
def test_blur_downsample(layout, padding, stride, k, flip, backend, dtype):
    x, kernel = bd.make_inputs(layout, k, stride, dtype=dtype)
    expected = bd.forward_and_grads(x.double(), kernel.double(), stride, padding, flip, blur_downsample_loop)
    with bsrops.use_backend(backend):
        actual, delta = dp.calls_delta(lambda: bd.forward_and_grads(
            *on_cuda([x, kernel]), stride, padding, flip, grad_out=expected[3].to(CUDA, dtype)))
    ran_on(delta, backend)
    assert_close_cpu(actual[:3], expected[:3])


# Past one block of every blur kernel, each with a partial last block: the CUDA per-pixel grad-kernel's 32 x 8
# output tiles, the per-image grad-kernel's row bands (few (n, tap) blocks) and column lanes (Wo > 256), grad_x's
# interior rows and columns under a wide kernel, the Triton forward's tap tiles, pixel and channel blocks.
# n, c, height, width, k, stride, layout, padding, flip
LARGE_BLUR_CASES = [
    (2, 3, 50, 133, 21, 4, "per_pixel", "reflect", False),  # 13 x 34 outputs
    (1, 2, 37, 300, 3, 1, "per_image", "circular", True),  # 9 (n, tap) blocks, 300 output columns
    (3, 3, 64, 72, 21, 4, "shared", "symmetric", True),
    (2, 5, 45, 40, 13, 3, "per_pixel", "replicate", True),
    (2, 3, 29, 35, 4, 2, "per_image", "zeros", False),
]


@functools.lru_cache(maxsize=None)
def large_blur_case(case):
    """x, kernel (float32 values in float64) and the float64 loop's (out, grad_x, grad_kernel, grad_out): the
    reference takes seconds, so each case computes it once for every backend and dtype."""
    n, c, height, width, k, stride, layout, padding, flip = case
    torch.manual_seed(19)
    x, kernel = (t.float().double() for t in bd.make_inputs(layout, k, stride, n=n, c=c, height=height,
                                                            width=width))
    out_h, out_w = bd.geometry(height, width, k, stride, flip)[:2]
    grad_out = torch.randn(n, c, out_h, out_w, dtype=torch.float64).float().double()
    return x, kernel, bd.forward_and_grads(x, kernel, stride, padding, flip, blur_downsample_loop, grad_out)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", LARGE_BLUR_CASES)
def test_blur_downsample_past_one_block(case, backend, dtype):
    stride, padding, flip = case[5], case[7], case[8]
    x, kernel, expected = large_blur_case(case)
    with bsrops.use_backend(backend):
        actual, delta = dp.calls_delta(lambda: bd.forward_and_grads(
            *on_cuda([x.to(dtype), kernel.to(dtype)]), stride, padding, flip, grad_out=expected[3].to(CUDA, dtype)))
    ran_on(delta, backend)
    assert_close_cpu(actual[:3], expected[:3])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16],
                         ids=["f64", "f32", "bf16", "f16"])
@pytest.mark.parametrize("layout", bd.LAYOUTS)
@pytest.mark.parametrize("index,case", list(enumerate(bd.SHAPE_CASES)))
def test_blur_downsample_cuda_forward_kernel_shapes(index, case, layout, dtype):
    """The CUDA forward's compile-time (k, s) pairs and the generic one, its shared-memory windows (per-image
    and shared kernels; float64's (21, 4) and (25, 4) windows are too large and take the channel groups) over
    several output tiles with partial last ones, from an offset view of x, against the float64 loop."""
    k, stride, height, width = case
    padding, flip = PADDINGS[index % len(PADDINGS)], index % 2 == 1
    x, kernel = bd.make_inputs(layout, k, stride, c=5, height=height, width=width)
    x, kernel = x.to(dtype), (kernel / k).to(dtype)
    x = torch.nn.functional.pad(x, (3, 0))[..., 3:]  # a view at an offset, not contiguous
    expected = blur_downsample_loop(x.double(), kernel.double(), stride, padding, flip)
    with bsrops.use_backend("cuda"):
        out, delta = dp.calls_delta(lambda: bsrops.blur_downsample(x.to(CUDA), kernel.to(CUDA), stride, padding,
                                                                   flip))
    ran_on(delta, "cuda")
    assert out.dtype == dtype
    same_dtype = None if dtype in (torch.float32, torch.float64) else \
        blur_downsample_reference(x, kernel, stride, padding, flip)
    assert_close_to_float64(out.cpu(), expected, reference_same_dtype=same_dtype)


def test_blur_downsample_cuda_forward_indexes_in_64_bits_beyond_int32():
    """x past fits_int32_offsets (2^31 - 2^24 elements) runs the int64_t forward: its first and last outputs
    match those of crops of x that hold every pixel they read (the same sums, in int32_t offsets)."""
    x = torch.rand(1, 1, 46400, 46400, device=CUDA, dtype=torch.float16)  # 2.15e9 elements
    assert x.numel() > 2 ** 31
    kernel = torch.rand(5, 5, device=CUDA, dtype=torch.float16)
    with bsrops.use_backend("cuda"):
        out = bsrops.blur_downsample(x, kernel, 4, "reflect")
        first = bsrops.blur_downsample(x[..., :40, :40].contiguous(), kernel, 4, "reflect")
        last = bsrops.blur_downsample(x[..., -40:, -40:].contiguous(), kernel, 4, "reflect")
    assert out.shape == (1, 1, 11600, 11600)
    torch.testing.assert_close(out[..., :8, :8], first[..., :8, :8])
    torch.testing.assert_close(out[..., -8:, -8:], last[..., -8:, -8:])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("layout", bd.LAYOUTS)
def test_blur_downsample_backward_is_deterministic(layout, backend):
    """Two backward passes give bitwise equal gradients (fixed-order sums, no atomics)."""
    x, kernel = on_cuda(bd.make_inputs(layout, 21, 4, n=4, c=3, height=64, width=64, dtype=torch.float32))
    grad_out = torch.randn(4, 3, 16, 16, device=CUDA)
    with bsrops.use_backend(backend):
        first, second = (torch.ops.bsrops._blur_downsample_backward(grad_out, x, kernel, 4, "reflect", False,
                                                                    [True, True]) for _ in range(2))
    for a, b in zip(first, second):
        assert torch.equal(a, b)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", ud.CASES + ud.EDGE_CASES, ids=[ud.case_id(c) for c in ud.CASES + ud.EDGE_CASES])
def test_usrnet_data_step(case, backend):
    n, c, h, w, s, *_ = case
    inputs = ud.make_inputs(*case)
    expected, grad_out = ud.forward_and_grads(usrnet_ref.usrnet_data_step_official, *inputs, s)
    with bsrops.use_backend(backend):
        (actual, _), delta = ud.calls_delta(lambda: ud.forward_and_grads(
            bsrops.usrnet_data_step, *on_cuda(inputs), s, grad_out.to(CUDA)))
    ran_on(delta, backend)
    assert_close_cpu(actual, expected)


# n, c, h, w (LR), scale: pair_lanes = h * (w // 2 + 1) past the CUDA backward's 256-lane block, so each image's
# grad_alpha adds the partial sums of 2, 4 and 3 blocks (the last block's ticket), odd and even sizes, float32 and
# float64, the last at the headline USRNet shape's LR grid (96 x 96 HR, s = 4)
USRNET_LANE_CASES = [(3, 2, 24, 24, 2), (2, 1, 40, 41, 2), (5, 3, 24, 24, 4), (1, 1, 17, 60, 3)]


def _usrnet_solve_inputs(n, c, h, w, s, dtype):
    """z, FB (not Hermitian), FBFy, F2B_mean, alpha, grad_x in float64 (values of `dtype`)."""
    g = torch.Generator().manual_seed(11)
    z, grad_x = (torch.randn(n, c, s * h, s * w, generator=g) for _ in range(2))
    fb, fbfy = torch.randn(n, s * h, s * w, 2, generator=g), torch.randn(n, c, s * h, s * w, 2, generator=g)
    f2b_mean, alpha = torch.rand(n, h, w, generator=g) + 0.5, torch.rand(n, generator=g) + 0.1
    return [t.to(dtype).double() for t in (z, fb, fbfy, f2b_mean, alpha, grad_x)]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", USRNET_LANE_CASES, ids=lambda case: "x".join(map(str, case)))
def test_usrnet_solve_past_one_lane_block(case, backend, dtype):
    """usrnet_solve and every output of its backward against the native CPU kernels in float64, twice: bitwise
    equal (grad_alpha's per-image sums in a fixed order, no float atomics)."""
    *inputs, grad_x = _usrnet_solve_inputs(*case, dtype)
    s, mask = case[4], [True] * 5
    expected = (torch.ops.bsrops.usrnet_solve(*inputs, s),
                *torch.ops.bsrops._usrnet_solve_backward(grad_x, *inputs, s, mask))
    z, fb, fbfy, f2b_mean, alpha, grad_x = (t.to(CUDA, dtype) for t in (*inputs, grad_x))
    with bsrops.use_backend(backend):
        (first, second), delta = ud.calls_delta(lambda: [
            (torch.ops.bsrops.usrnet_solve(z, fb, fbfy, f2b_mean, alpha, s),
             *torch.ops.bsrops._usrnet_solve_backward(grad_x, z, fb, fbfy, f2b_mean, alpha, s, mask))
            for _ in range(2)])
    ran_on(delta, backend)
    assert_close_cpu(first, expected)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("value", [(0.0, 0.0), (0.3, -0.7)], ids=["zero", "complex"])
def test_usrnet_fbfy_broadcast_over_every_bin(value, backend):
    """FBFy = one complex value broadcast over every bin: the CUDA kernels and the Triton forward read that value;
    the results are those of the FBFy stored in full, on the CPU in float64."""
    inputs = ud.broadcast_fbfy_inputs(2, 3, 5, 6)
    value = torch.tensor(value, dtype=torch.float64)
    _, expected = ud.solve_with_broadcast_fbfy(*inputs[:4], value, inputs[4])
    with bsrops.use_backend(backend):
        (broadcast, full), delta = ud.calls_delta(lambda: ud.solve_with_broadcast_fbfy(*on_cuda([*inputs[:4], value,
                                                                                                  inputs[4]])))
    ran_on(delta, backend)
    assert_close_cpu(broadcast, expected)
    assert_close_cpu(full, expected)


@pytest.mark.parametrize("backend", BACKENDS)
def test_usrnet_term_reads_a_broadcast_zero_fbfy(backend):
    """On a GPU USRNetDataTerm's zero FBFy is one complex zero broadcast over every bin; its chain (y and kernel
    fixed: the backward solves read that FBFy) matches the official one in float64."""
    z, y, kernel, _ = ud.make_inputs(2, 3, 5, 6, 3, 7, 7, "per_image")
    zero = bsrops.USRNetDataTerm(y.to(CUDA), kernel.to(CUDA), 3)._zero_fbfy
    assert zero is not None and zero.is_cuda and zero.stride() == (0, 0, 0, 0, 1) and not zero.any()
    alphas = torch.rand(2, 3, dtype=torch.float64) + 0.05
    grad_out = torch.randn_like(z)
    results = []
    for chain, device, name in ((ud.data_term_chain, CUDA, backend), (ud.official_chain, "cpu", "reference")):
        inputs = [t.to(device).requires_grad_() for t in (z, alphas)]
        with bsrops.use_backend(name):
            out = chain(inputs[0], y.to(device), kernel.to(device), inputs[1], 3)
            results.append((out, *torch.autograd.grad(out, inputs, grad_out.to(device))))
    assert_close_cpu(*results)


@pytest.mark.parametrize("x_format", ["nchw", "cl"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("use", sorted(dp.USES))
def test_dpcb(use, backend, dtype, x_format):
    ours, reference, x_img, x_cond = dp.make_pair(use, n=3)
    x_img = dp._formatted(x_img, x_format)
    grads = [torch.randn_like(x_img), torch.randn_like(x_cond)]
    expected = dp.outputs_and_grads(dp.reference_run(reference), reference, x_img, x_cond, grads)
    ours = ours.to(CUDA, dtype)
    with bsrops.use_backend(backend):
        actual, delta = dp.calls_delta(lambda: dp.outputs_and_grads(
            ours, ours, *[t.to(CUDA, dtype) for t in (x_img, x_cond)], [g.to(CUDA, dtype) for g in grads]))
    ran_on(delta, backend)
    assert delta.get(f"_relayout.{backend}", 0) >= 1, delta  # the channels_last convolutions
    if dtype == torch.float64:
        assert_close_cpu(actual, expected)
    else:  # cuDNN's float32 conv algorithms (Winograd, FFT) err ~1e-5-1e-4 relative; the fused kernels'
        # float32 maths is held to 1e-5 by test_dpcb_kernels_mix_layouts
        for a, e in zip(actual, expected):
            assert relative_error(a.cpu(), e) <= 1e-4, relative_error(a.cpu(), e)
    dp._assert_format(actual[2], x_format)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("use", sorted(dp.USES))
def test_dpcb_inference(use, backend, dtype):
    """Without autograd: _dpcb_inference (the backend's LeakyReLU kernel, outputs in place of f1 and f2)."""
    ours, reference, x_img, x_cond = dp.make_pair(use, n=3)
    expected = dp.reference_run(reference)(x_img, x_cond)
    ours = ours.to(CUDA, dtype)
    with bsrops.use_backend(backend), torch.inference_mode():
        actual, delta = dp.calls_delta(lambda: ours(x_img.to(CUDA, dtype), x_cond.to(CUDA, dtype)))
    assert delta == {f"_leaky_relu_.{backend}": 2}, delta
    for a, e in zip(actual, expected):
        assert a.is_cuda and a.dtype == dtype
        if dtype == torch.float64:
            assert_close_to_float64(a.cpu(), e)
        else:  # cuDNN's float32 algorithms, as in test_dpcb
            assert relative_error(a.cpu(), e) <= 1e-4, relative_error(a.cpu(), e)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mix", dp.MIXES)
@pytest.mark.parametrize("cond", ["1x1", "image"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_dpcb_kernels_mix_layouts(mix, cond, backend, dtype):
    with bsrops.use_backend(backend), torch.device(CUDA):
        _, delta = dp.calls_delta(lambda: dp.check_fused_kernels_mix_layouts(16, cond, mix.split(","), dtype))
    ran_on(delta, backend)


def _assert_rounded_once(actual, truth, dtype, reduced=False):
    """A float16 / bfloat16 result of float32 arithmetic rounded once: within the dtype's epsilon of the float64
    truth, relative to each value (to the largest one for a reduction), with a 1e-3 floor on unit-scale data."""
    assert actual.dtype == dtype and actual.shape == truth.shape, (actual.dtype, actual.shape, truth.shape)
    error = (actual.cpu().double() - truth.cpu()).abs()
    scale = truth.abs().max() if reduced else truth.abs()
    bar = torch.finfo(dtype).eps * (scale.cpu() + 1e-3)
    assert (error <= bar).all(), f"{dtype} error {(error - bar).max():.3e} above its bar"


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["f16", "bf16"])
@pytest.mark.parametrize("cond", ["1x1", "image"])
@pytest.mark.parametrize("mix", dp.MIXES)
def test_dpcb_cuda_kernels_in_half_precision(mix, cond, dtype):
    """The CUDA elementwise kernels take float16 / bfloat16 tensors themselves (run_fused makes no float32 copies
    for them), compute in float32 and round each output once; operands in mixed layouts as in float32."""
    x_format, f_format, grad_format, conv_format = mix.split(",")
    image = (2, 16, 13, 23)
    cond_shape = image if cond == "image" else (2, 16, 1, 1)
    g = torch.Generator().manual_seed(3)
    make = lambda shape, fmt: dp._formatted(torch.randn(shape, generator=g).to(CUDA, dtype), fmt)  # noqa: E731
    x, f1, grad_img, h = (make(image, fmt) for fmt in (x_format, f_format, grad_format, conv_format))
    x_cond, f2, grad_cond = (make(cond_shape, fmt) for fmt in (x_format, f_format, grad_format))
    grad_h, activated = make(image, grad_format), h.clone()
    grad_h_out = grad_h.clone()
    ops, d, channels_last = torch.ops.bsrops, (lambda t: t.double()), conv_format == "cl"
    with bsrops.use_backend("cuda"):
        (out, out_cond), delta = dp.calls_delta(lambda: ops._dpcb_epilogue(x, f1, x_cond, f2))
        grad_f1, grad_f2 = ops._dpcb_epilogue_backward(grad_img, grad_cond, f1, f2, channels_last)
        moved = ops._relayout(x, grad_img, channels_last)
        ops._leaky_relu_(activated, 0.3)
        ops._leaky_relu_backward_(grad_h_out, activated, 0.3)
    ran_on(delta, "cuda")
    product = d(grad_img) * d(f1)
    _assert_rounded_once(out, d(x) + d(f1) * d(f2), dtype)
    _assert_rounded_once(out_cond, d(x_cond) + d(f2), dtype)
    _assert_rounded_once(grad_f1, d(grad_img) * d(f2), dtype)
    _assert_rounded_once(grad_f2, d(grad_cond) + (product if cond == "image" else product.sum((2, 3), keepdim=True)),
                         dtype, reduced=cond == "1x1")
    _assert_rounded_once(moved, d(x) + d(grad_img), dtype)
    _assert_rounded_once(activated, torch.where(d(h) > 0, d(h), 0.3 * d(h)), dtype)
    _assert_rounded_once(grad_h_out, torch.where(d(h) > 0, d(grad_h), 0.3 * d(grad_h)), dtype)
    for t, fmt in ((out, x_format), (grad_f1, conv_format), (moved, conv_format)):
        dp._assert_format(t, fmt)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16],
                         ids=["f64", "f32", "f16", "bf16"])
@pytest.mark.parametrize("layout", ["nchw", "cl"])
@pytest.mark.parametrize("shape,offset", [((2, 16, 13, 23), 0), ((2, 16, 13, 23), 1), ((2, 3, 5, 7), 0)],
                         ids=["packs", "misaligned", "odd-count"])
def test_dpcb_flat_cuda_kernels_in_packs_and_value_by_value(shape, offset, layout, dtype):
    """The flat kernels (every operand in one memory order, an image-sized condition): in 16-byte packs, and value
    by value where the inputs start one element past a pack boundary or the count is not whole packs."""
    g = torch.Generator().manual_seed(5)

    def make():
        flat = torch.randn(shape[0] * shape[1] * shape[2] * shape[3] + offset, generator=g, dtype=torch.float64)
        flat = flat.to(CUDA, dtype)[offset:]
        n, c, h, w = shape
        return flat.view(shape) if layout == "nchw" else flat.view(n, h, w, c).permute(0, 3, 1, 2)

    def check(actual, truth):
        assert actual.shape == truth.shape and actual.stride() == x.stride()
        if dtype in (torch.float16, torch.bfloat16):
            _assert_rounded_once(actual, truth, dtype)
        else:
            assert_close_to_float64(actual.cpu(), truth.cpu())

    x, f1, xc, f2, gi, gc, h, gh = (make() for _ in range(8))
    d, ops = (lambda t: t.double()), torch.ops.bsrops
    h_before, gh_before = d(h).clone(), d(gh).clone()  # h and gh change in place
    with bsrops.use_backend("cuda"):
        out, out_cond = ops._dpcb_epilogue(x, f1, xc, f2)
        grads = [ops._dpcb_epilogue_backward(gi, gc, a, b, layout == "cl") for a, b in ((f1, f2), (f1, None),
                                                                                        (None, f2))]
        ops._leaky_relu_(h, 0.3)  # in place on the (possibly misaligned) view itself
        ops._leaky_relu_backward_(gh, h, 0.3)
    check(out, d(x) + d(f1) * d(f2))
    check(out_cond, d(xc) + d(f2))
    check(grads[0][0], d(gi) * d(f2))
    check(grads[0][1], d(gc) + d(gi) * d(f1))
    check(grads[1][1], d(gc) + d(gi) * d(f1))
    check(grads[2][0], d(gi) * d(f2))
    assert grads[1][0].numel() == 0 and grads[2][1].numel() == 0
    check(h, torch.where(h_before > 0, h_before, 0.3 * h_before))
    check(gh, torch.where(h_before > 0, gh_before, 0.3 * gh_before))


HALF_DTYPES = {"f16": torch.float16, "bf16": torch.bfloat16}
ALL_DTYPES = {"f64": torch.float64, "f32": torch.float32, **HALF_DTYPES}


def _exact_in(dtype, t):
    """t's values rounded to `dtype`, in float64: the inputs a `dtype` kernel and its float64 reference share."""
    return t.to(dtype).double()


@pytest.mark.parametrize("dtype", list(ALL_DTYPES.values()), ids=list(ALL_DTYPES))
@pytest.mark.parametrize("norm", ["none", "instance", "batch"])
@pytest.mark.parametrize("shape,offset", [((2, 3, 8, 6), 0), ((2, 3, 8, 6), 1), ((2, 3, 5, 7), 0)],
                         ids=["packs", "misaligned", "odd-plane"])
def test_patchgan_norm_act_cuda_in_packs_and_value_by_value(shape, offset, norm, dtype):
    """The norm + activation kernels' writing passes in 16-byte packs (8 float16 / bfloat16 values), and value by
    value where y and grad_out start one element past a pack boundary or H * W is not whole packs: against the CPU
    kernels in float64 on the same values. float16 / bfloat16: out and grad_y rounded once from float32 arithmetic
    (to the largest value: the statistics are reductions), mean, rstd and the parameter gradients float32."""
    g = torch.Generator().manual_seed(8)
    flats = [_exact_in(dtype, torch.randn(shape[0] * shape[1] * shape[2] * shape[3] + offset, generator=g,
                                          dtype=torch.float64)) for _ in range(2)]
    weight = _exact_in(dtype, torch.rand(shape[1], generator=g, dtype=torch.float64) + 0.5)
    bias = _exact_in(dtype, torch.randn(shape[1], generator=g, dtype=torch.float64))
    params = (weight, bias) if norm != "none" else (None, None)
    ops, mask = torch.ops.bsrops, [True, norm != "none", norm != "none"]

    def run(y, grad, weight, bias):
        out, mean, rstd = ops._patchgan_norm_act(y, weight, bias, None, None, norm, True, 0.1, 1e-5, 0.2, True)
        return (out, mean, rstd,
                *ops._patchgan_norm_act_backward(grad, y, out, mean, rstd, weight, norm, True, 0.2, True, mask))

    expected = run(*(f[offset:].view(shape) for f in flats), *params)
    with bsrops.use_backend("cuda"):
        actual = run(*(f.to(CUDA, dtype)[offset:].view(shape) for f in flats),
                     *(p.to(CUDA, dtype) if p is not None else None for p in params))
    for index, (a, e) in enumerate(zip(actual, expected)):  # out, mean, rstd, grad_y, grad_weight, grad_bias
        assert a.shape == e.shape, (index, a.shape, e.shape)
        if e.numel() == 0:  # the statistics and parameter gradients without a norm
            continue
        if dtype == torch.float64:
            assert_close_to_float64(a.cpu(), e)
        elif dtype in HALF_DTYPES.values() and index in (0, 3):
            _assert_rounded_once(a, e, dtype, reduced=norm != "none")
        else:
            assert a.dtype == torch.float32, (index, a.dtype)
            assert relative_error(a.cpu(), e) <= 1e-5, (index, relative_error(a.cpu(), e))


@pytest.mark.parametrize("dtype", list(HALF_DTYPES.values()), ids=list(HALF_DTYPES))
def test_patchgan_norm_act_cuda_half_batch_norm_running_statistics(dtype):
    """Batch norm on a float16 / bfloat16 y: in training the kernel updates float32 running statistics in place from
    its float32 batch statistics, in eval it normalises with them; against the CPU kernels in float64 on the same
    values (out rounded once, to the largest value)."""
    g = torch.Generator().manual_seed(9)
    y = _exact_in(dtype, torch.randn(4, 3, 5, 7, generator=g, dtype=torch.float64) * 2 + 1)
    weight = _exact_in(dtype, torch.rand(3, generator=g, dtype=torch.float64) + 0.5)
    bias = _exact_in(dtype, torch.randn(3, generator=g, dtype=torch.float64))
    running = [torch.randn(3, generator=g), torch.rand(3, generator=g) + 0.5]  # float32, like nn.BatchNorm2d's
    ops = torch.ops.bsrops

    def run(y, weight, bias, running_mean, running_var):
        trained = ops._patchgan_norm_act(y, weight, bias, running_mean, running_var, "batch", True, 0.1, 1e-5, 0.2,
                                         True)
        updated = [running_mean.clone(), running_var.clone()]
        evaluated = ops._patchgan_norm_act(y, weight, bias, running_mean, running_var, "batch", False, 0.1, 1e-5, 0.2,
                                           True)
        return [*trained, *updated, *evaluated]

    expected = run(y, weight, bias, *(r.double() for r in running))
    with bsrops.use_backend("cuda"):
        actual = run(*(t.to(CUDA, dtype) for t in (y, weight, bias)), *(r.to(CUDA) for r in running))
    for index, (a, e) in enumerate(zip(actual, expected)):  # out, mean, rstd, running mean, var; eval out, mean, rstd
        if index in (0, 5):
            _assert_rounded_once(a, e, dtype, reduced=True)
        else:
            assert a.dtype == torch.float32 and relative_error(a.cpu(), e) <= 1e-5, (index, a.dtype)


@pytest.mark.parametrize("dtype", list(HALF_DTYPES.values()), ids=list(HALF_DTYPES))
@pytest.mark.parametrize("norm", ["none", "instance", "batch"])
def test_patchgan_conv_in_half_precision_under_cuda_autocast(norm, dtype):
    """CUDA autocast: the convolution in `dtype` and the norm's fused kernel on its output in that dtype too (float32
    statistics; the float32 norm parameters rounded to it, their gradients and the running statistics float32):
    outputs, gradients in their leaves' dtypes and the running statistics within twice the error of the eager block
    run in `dtype` (tp.assert_half_close), against float64 on the values autocast gives the op."""
    leaves = [t.to(CUDA) for t in tp.patchgan_leaves(norm)]
    grad = torch.randn(2, 5, 4, 4).to(CUDA, dtype)
    running = {d: (torch.zeros(5, dtype=d, device=CUDA), torch.ones(5, dtype=d, device=CUDA)) if norm == "batch"
               else (None, None) for d in (torch.float32, torch.float64, dtype)}
    ours = tp.patchgan_ours(norm, running[torch.float32])
    with bsrops.use_backend("cuda"), torch.autocast(CUDA.type, dtype=dtype):
        (outs, grads), delta = dp.calls_delta(lambda: tp.outputs_and_grads(ours, leaves, [grad]))
    ran_on(delta, "cuda")
    assert outs[0].dtype == dtype
    assert [g.dtype for g in grads if g is not None] == [t.dtype for t, g in zip(leaves, grads) if g is not None]
    cast = (0, 1, 4)  # x, weight and bias; the norm parameters keep float32 under autocast
    values = [_exact_in(dtype, t) if i in cast else t.double() for i, t in enumerate(leaves)]
    exact = tp.outputs_and_grads(tp.patchgan_eager(norm, running[torch.float64]), values, [grad.double()])
    same = tp.outputs_and_grads(tp.patchgan_eager(norm, running[dtype]), [t.to(dtype) for t in leaves], [grad])
    for results, truth, bar in zip((outs, grads), exact, same):
        tp.assert_half_close(results, truth, bar, dtype)
    for result, truth, bar in zip(running[torch.float32], running[torch.float64], running[dtype]):
        if result is not None:  # updated once by each of the three runs
            assert result.dtype == torch.float32
            assert_close_to_float64(result.cpu(), truth.cpu(), dtype, bar.cpu())


@pytest.mark.parametrize("backend", BACKENDS)
def test_patchgan_conv_bfloat16_blocks(backend):
    """test_precision's bfloat16 patchgan_conv checks on the GPU (bfloat16 inputs and running statistics, float32
    statistics, a bfloat16 image into float32 parameters): the CUDA backend's half kernel, Triton's float32 kernel
    on float32 copies."""
    with torch.device(CUDA), bsrops.use_backend(backend):
        tp.test_patchgan_conv_bfloat16_inputs_statistics_and_mixed_dtypes()


@pytest.mark.parametrize("dtype", list(HALF_DTYPES.values()), ids=list(HALF_DTYPES))
@pytest.mark.parametrize("norm,training", [("none", True), ("instance", True), ("batch", True), ("batch", False)])
def test_patchgan_norm_ops_opcheck_in_half_precision(norm, training, dtype):
    """opcheck of the norm ops on float16 / bfloat16 CUDA tensors with float32 norm parameters and running
    statistics: the fake kernels give the CUDA kernels' dtypes (float32 mean, rstd and parameter gradients)."""
    y = torch.randn(2, 4, 5, 3, device=CUDA).to(dtype)
    affine = [torch.rand(4, device=CUDA) + 0.5, torch.randn(4, device=CUDA)]
    running = [torch.randn(4, device=CUDA), torch.rand(4, device=CUDA) + 0.5] if norm == "batch" else [None, None]
    options = (norm, training, 0.1, 1e-5, 0.2, True)
    with bsrops.use_backend("cuda"):
        torch.library.opcheck(torch.ops.bsrops.patchgan_norm_act.default,  # the composite: the half kernel
                              (y.clone().requires_grad_(), *[a.clone().requires_grad_() for a in affine], *running,
                               *options))
        torch.library.opcheck(torch.ops.bsrops._patchgan_norm_act.default,
                              (y, *[a.to(dtype) for a in affine], *[None if r is None else r.clone() for r in running],
                               *options))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("use", sorted(tp.DPCB_USES))
def test_dpcb_bfloat16_blocks(use, backend):
    """test_precision's bfloat16 DPCB checks on the GPU (bfloat16 inputs with gradients, the inference path, a
    bfloat16 image into a float32 block): the CUDA backend's half kernels, Triton's float32 kernels on float32
    copies; within twice the error of the reference run in bfloat16."""
    with torch.device(CUDA), bsrops.use_backend(backend):
        tp.test_dpcb_bfloat16_inputs_inference_and_mixed_dtypes(use)


def test_run_fused_gives_half_tensors_to_the_cuda_kernels():
    """On the native CUDA backend run_fused calls each fused kernel on the bfloat16 tensors themselves: no float32
    copy (aten._to_copy) around it."""
    g = torch.Generator().manual_seed(4)
    x, f1, grad, h = (torch.randn(2, 4, 5, 6, generator=g).to(CUDA, torch.bfloat16) for _ in range(4))
    x_cond, f2 = (torch.randn(2, 4, 1, 1, generator=g).to(CUDA, torch.bfloat16) for _ in range(2))
    grad_h, grad_cond = grad.clone(), torch.randn_like(x_cond)
    with bsrops.use_backend("cuda"), LoggedOps() as calls:
        run_fused("_dpcb_epilogue", x, f1, x_cond, f2)
        run_fused("_dpcb_epilogue_backward", grad, grad_cond, f1, f2, False)
        run_fused("_relayout", x, None, True)
        run_fused("_leaky_relu_", h, 0.2)
        run_fused("_leaky_relu_backward_", grad_h, h, 0.2)
    assert calls == [(f"bsrops::{name}", {torch.bfloat16}) for name in (
        "_dpcb_epilogue", "_dpcb_epilogue_backward", "_relayout", "_leaky_relu_", "_leaky_relu_backward_")], calls


def test_dpcb_cuda_kernels_index_in_64_bits_beyond_int32():
    """Tensors past fits_int32 (2^31 - 2^24 elements) run the int64_t kernels: every element in its place."""
    x = torch.full((1, 2, 32768, 33000), -1.0, device=CUDA, dtype=torch.bfloat16)  # 2.16e9 elements
    assert x.numel() > 2 ** 31
    x[..., -1, -2:] = torch.tensor([-2.0, 3.0], device=CUDA)
    with bsrops.use_backend("cuda"):
        torch.ops.bsrops._leaky_relu_(x, 0.5)
        moved = torch.ops.bsrops._relayout(x, None, True)
    assert moved.is_contiguous(memory_format=torch.channels_last) and torch.equal(moved, x)
    assert torch.equal(x[0, :, -1, -3:].float().cpu(), torch.tensor([[-0.5, -1.0, 3.0]] * 2))
    assert int((x == -0.5).sum()) == x.numel() - 4
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("block", pg.BLOCKS, ids=[f"{b[0]}-act{int(b[1])}-k{b[4]}s{b[5]}p{b[6]}" for b in pg.BLOCKS])
def test_patchgan_conv(block, backend):
    norm, activation, affine, bias, k, stride, padding = block
    ours = pg.randomise(PatchGANConv(3, 16, k, stride, padding, norm, 0.2, activation, bias, affine=affine).double())
    reference = pg.reference_block(ours)
    x = torch.randn(2, 3, 21, 18, dtype=torch.float64)
    grad = torch.randn(reference[0](x).shape, dtype=torch.float64)
    expected = pg.outputs_and_grads(reference, x, grad)
    ours = ours.to(CUDA)
    with bsrops.use_backend(backend):
        actual, delta = dp.calls_delta(lambda: pg.outputs_and_grads(ours, x.to(CUDA), grad.to(CUDA)))
    if norm != "none" or activation:
        ran_on(delta, backend)
    assert_close_cpu(actual, expected)


# ---- CUDA-graph capture: no host synchronisation, nothing allocated and kept inside a call ----

def _random(seed, *shapes):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g).to(CUDA) for shape in shapes]


def _step(run, params, grad):
    """A step over inputs (..., grad_outputs): run(*tensors) -> outputs; with grad, the outputs and the gradients
    of <outputs, grad_outputs> w.r.t. the tensors and `params` (torch.autograd.grad: nothing accumulates in .grad)."""
    def step(*inputs):
        tensors, grad_outputs = inputs[:-1], inputs[-1]
        outputs = run(*tensors)
        outputs = outputs if isinstance(outputs, tuple) else (outputs,)
        if not grad:
            return outputs
        wrt = [t for t in (*tensors, *params) if t.requires_grad]
        loss = sum((o * g).sum() for o, g in zip(outputs, grad_outputs))
        return (*(o.detach() for o in outputs), *torch.autograd.grad(loss, wrt))
    return step


def _assert_replay_matches_eager(make_inputs, step):
    """step(*inputs) captured in a torch.cuda.CUDAGraph on one set of inputs, fresh values copied into them,
    replayed: its results equal an eager step on the fresh values (a host sync fails the capture; a value kept from
    the capture, or a buffer allocated inside it and reused, breaks the equality)."""
    static = make_inputs(0)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up: cuFFT plans, cuDNN algorithms, Triton compiles
        for _ in range(2):
            step(*static)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = step(*static)
    fresh = make_inputs(1)
    with torch.no_grad():
        for s, f in zip(static, fresh):
            for a, b in zip(s if isinstance(s, tuple) else (s,), f if isinstance(f, tuple) else (f,)):
                a.copy_(b)
    graph.replay()
    eager = step(*fresh)
    torch.cuda.synchronize()
    assert len(captured) == len(eager)
    for a, e in zip(captured, eager):
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-5)


KERNEL_SHAPES = {"per_image": (2, 5, 5), "per_pixel": (2, 25, 6, 7)}  # k = 5, x (2, 3, 11, 14), stride 2


def _blur_case(layout):
    def inputs(seed, grad):
        x, kernel = (t.requires_grad_(grad) for t in _random(seed, (2, 3, 11, 14), KERNEL_SHAPES[layout]))
        return x, kernel, tuple(_random(seed + 10, (2, 3, 6, 7)))
    return inputs, lambda x, kernel: bsrops.blur_downsample(x, kernel, 2, "reflect", True), ()


def _usrnet_inputs(seed, grad, with_lr=True):
    z, y, kernel, alpha = ud.make_inputs(2, 3, 4, 5, 2, 3, 3, "per_image", torch.float32)
    z, grad_out = _random(seed, z.shape, z.shape)
    alpha = (alpha + seed).to(CUDA).requires_grad_(grad)
    lr = [t.to(CUDA).requires_grad_(grad) for t in (y + seed, kernel)] if with_lr else []
    return z.requires_grad_(grad), *lr, alpha, (grad_out,)


def _usrnet_term_case():
    """The solves of a term built before the capture (y and kernel fixed, as in USRNet's loop)."""
    _, y, kernel, _ = ud.make_inputs(2, 3, 4, 5, 2, 3, 3, "per_image", torch.float32)
    term = bsrops.USRNetDataTerm(y.to(CUDA), kernel.to(CUDA), 2)
    return (lambda seed, grad: _usrnet_inputs(seed, grad, with_lr=False),
            lambda z, alpha: term.solve(term.solve(z, alpha), 2 * alpha), ())


def _usrnet_chain(z, y, kernel, alpha):
    """A term built inside the step (the constructor's zero FBFy too), two solves."""
    term = bsrops.USRNetDataTerm(y, kernel, 2)
    return term.solve(term.solve(z, alpha), 2 * alpha)


def _module_case(module, shapes, out_shapes):
    module = module.to(CUDA, torch.float32)

    def inputs(seed, grad):
        tensors = [t.requires_grad_(grad) for t in _random(seed, *shapes)]
        return (*tensors, tuple(_random(seed + 10, *out_shapes)))
    return inputs, module, list(module.parameters())


def _dpcb_case(use):
    ours, _, x_img, x_cond = dp.make_pair(use, n=2, dtype=torch.float32)
    return _module_case(ours, (x_img.shape, x_cond.shape), (x_img.shape, x_cond.shape))


def _patchgan_case(norm):
    block = pg.randomise(PatchGANConv(3, 8, 4, 2, 1, norm, 0.2, True, True, affine=True))
    return _module_case(block, ((2, 3, 12, 10),), ((2, 8, 6, 5),))


CAPTURE_CASES = {
    "blur_per_image": lambda: _blur_case("per_image"),
    "blur_per_pixel": lambda: _blur_case("per_pixel"),
    "usrnet_data_step": lambda: (_usrnet_inputs, lambda z, y, k, a: bsrops.usrnet_data_step(z, y, k, a, 2), ()),
    "usrnet_term_built_inside": lambda: (_usrnet_inputs, _usrnet_chain, ()),
    "usrnet_term_solves": _usrnet_term_case,
    "dpcb_restorer": lambda: _dpcb_case("restorer"),
    "dpcb_estimator": lambda: _dpcb_case("estimator"),
    "patchgan_instance": lambda: _patchgan_case("instance"),
    "patchgan_batch": lambda: _patchgan_case("batch"),
}


@pytest.mark.parametrize("grad", [False, True], ids=["fwd", "fwd+bwd"])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", sorted(CAPTURE_CASES))
def test_cuda_graph_capture_and_replay(case, backend, grad):
    """Every op captured in a CUDA graph (forward, and forward + backward) and replayed on new input values gives
    the eager results."""
    with bsrops.use_backend(backend):
        inputs, run, params = CAPTURE_CASES[case]()
        step = _step(run, params if grad else [], grad)
        with torch.set_grad_enabled(grad):
            _assert_replay_matches_eager(lambda seed: inputs(seed, grad), step)


# ---- views, extreme strides, the alpha check on the device ----

def _to_cuda(args):
    return {k: v.to(CUDA) if isinstance(v, torch.Tensor) else v for k, v in args.items()}


@pytest.mark.parametrize("backend", BACKENDS)
def test_views_patchgan_conv(backend, view_kind, assert_views_match):
    """norm_weight, norm_bias, the running statistics and the output gradient as views: the CUDA kernel read the
    first three through raw pointers, as the CPU one did."""
    import test_patchgan_conv_views as views

    for norm, training in (("instance", True), ("batch", True), ("batch", False)):
        args = _to_cuda(views.make_args(norm))
        fused = [name for name in args if name.startswith(("norm", "running"))] + ["grad_out0"]
        errors = {}
        if norm == "batch" and training and view_kind == "expanded":
            errors = {name: (ValueError, f"{name} is updated in place") for name in ("running_mean", "running_var")}
        assert_views_match(views.block(norm, training), args, views.GRAD, view_kind, [backend], errors,
                           only={backend: fused})


@pytest.mark.parametrize("backend", BACKENDS)
def test_views_dpcb(backend, view_kind, assert_views_match):
    import test_dpcb_views as views

    for cond in ("1x1", "image"):
        args = _to_cuda(views.make_args(cond, torch.float64))
        assert_views_match(views.run, args, list(args), view_kind, [backend])


@pytest.mark.parametrize("backend", BACKENDS)
def test_views_blur_downsample(backend, view_kind, assert_views_match):
    import test_blur_downsample_views as views

    for shape in views.KERNELS.values():
        g = torch.Generator().manual_seed(6)
        args = _to_cuda(dict(x=torch.randn(2, 2, 5, 4, generator=g, dtype=torch.float64),
                             kernel=torch.rand(shape, generator=g, dtype=torch.float64)))
        assert_views_match(lambda x, kernel: bsrops.blur_downsample(x, kernel, 2, "reflect", flip=True), args,
                           ["x", "kernel"], view_kind, [backend])


@pytest.mark.parametrize("backend", BACKENDS)
def test_views_usrnet(backend, view_kind, assert_views_match):
    import test_usrnet_data_step_views as views

    (y, kernel), (z, alpha) = views.lr_inputs(), views.hr_inputs(2)
    assert_views_match(lambda z, y, kernel, alpha: bsrops.usrnet_data_step(z, y, kernel, alpha, 2),
                       _to_cuda(dict(z=z, y=y, kernel=kernel, alpha=alpha)), ["z", "y", "kernel", "alpha"], view_kind,
                       [backend])
    fb, fbfy, f2b_mean = torch.ops.bsrops._usrnet_precompute(y, kernel, 2)
    args = _to_cuda(dict(z=z, FB=fb, FBFy=fbfy, F2B_mean=f2b_mean, alpha=alpha))
    assert_views_match(lambda z, FB, FBFy, F2B_mean, alpha: torch.ops.bsrops.usrnet_solve(z, FB, FBFy, F2B_mean,
                                                                                         alpha, 2),
                       args, list(args), view_kind, [backend])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("stride", [2 ** 63 - 1, 2 ** 40, 2 ** 31 - 1])
def test_blur_downsample_huge_stride(stride, backend):
    import test_blur_downsample_sizes as sizes

    g = torch.Generator().manual_seed(9)
    x, kernel = torch.randn(2, 3, 5, 7, generator=g, dtype=torch.float64), torch.rand(3, 3, generator=g,
                                                                                      dtype=torch.float64)
    with bsrops.use_backend(backend):
        ours, grad = sizes.outputs_and_grads(bsrops.blur_downsample, x.to(CUDA), kernel.to(CUDA), stride, "reflect")
    truth, _ = sizes.outputs_and_grads(blur_downsample_loop, x, kernel, stride, "reflect", grad.cpu())
    assert ours[0].shape == (2, 3, 1, 1)
    assert_close_cpu(ours, truth)


ALPHA_SCRIPT = """
import sys, torch, bsrops
backend, alpha = sys.argv[1], float(sys.argv[2])
z, y = torch.randn(2, 1, 4, 4, device="cuda"), torch.randn(2, 1, 2, 2, device="cuda")
kernel = torch.rand(3, 3, device="cuda")
with bsrops.use_backend(backend):
    x = bsrops.usrnet_data_step(z, y, kernel, torch.tensor([0.5, alpha], device="cuda"), 2)
    print("LAUNCHED", flush=True)  # no host synchronisation before this line: the check runs on the device
    torch.cuda.synchronize()
print("NO ERROR", flush=True)
"""


@pytest.mark.parametrize("backend", ["cuda", "triton", "reference"])
@pytest.mark.parametrize("alpha", [0.0, float("nan")])
def test_usrnet_alpha_is_checked_on_the_device(alpha, backend):
    """alpha <= 0 or non-finite: a device-side assertion inside the solve kernel (CUDA_KERNEL_ASSERT, Triton's
    device_assert; torch._assert_async on the reference), reported at the next synchronisation. It leaves the CUDA
    context unusable, hence a subprocess."""
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-c", ALPHA_SCRIPT, backend, str(alpha)], capture_output=True, text=True,
                            env={**os.environ, "TRITON_INTERPRET": "0"}, timeout=300)
    assert "LAUNCHED" in result.stdout and "NO ERROR" not in result.stdout, result.stdout + result.stderr
    assert result.returncode != 0
    assert "device-side assert" in result.stderr or "alpha must be finite" in result.stderr, result.stderr[-3000:]
