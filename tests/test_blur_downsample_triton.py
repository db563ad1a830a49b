"""bsrops.blur_downsample on the Triton backend.

Under TRITON_INTERPRET=1 (tests/conftest.py) the `triton` backend serves CPU tensors, so a
subset of the case matrix runs the Triton kernels through the op itself (forward, autograd,
opcheck) against the float64 loop reference. The kernels are also compiled for sm_90 in a
subprocess with TRITON_INTERPRET=0 (an interpreted kernel cannot be compiled).
"""
import pytest
import torch

import bsrops
from bsrops.reference.blur_downsample import blur_downsample_loop, blur_downsample_reference, geometry
from tolerances import assert_close_to_float64
from triton_sm90 import assert_compiles_for_sm90, jitted_kernels, require_interpreter, require_triton


# n, c, height, width, k, stride, padding, layout, flip, dtype
CASES = [
    (2, 3, 13, 11, 5, 2, "reflect", "per_pixel", False, torch.float64),
    (1, 2, 9, 12, 4, 3, "symmetric", "per_image", True, torch.float64),
    (2, 1, 8, 8, 3, 1, "replicate", "shared", False, torch.float64),
    (1, 3, 7, 10, 4, 2, "zeros", "per_pixel", True, torch.float64),
    (2, 2, 10, 9, 5, 3, "circular", "shared", True, torch.float64),
    (1, 1, 5, 13, 4, 1, "replicate", "per_pixel", False, torch.float64),
    (1, 3, 12, 7, 3, 1, "symmetric", "per_pixel", True, torch.float32),
    (1, 2, 11, 6, 3, 2, "reflect", "per_image", True, torch.float32),
    (2, 2, 6, 7, 3, 3, "circular", "per_image", False, torch.float16),
    (1, 2, 9, 7, 4, 2, "zeros", "shared", True, torch.bfloat16),
    # several pixel, channel and tap blocks of the forward, each with a partial last block
    (1, 5, 19, 21, 5, 2, "reflect", "per_pixel", True, torch.float64),
    (1, 6, 13, 11, 5, 1, "symmetric", "per_image", False, torch.float32),
]


def case_id(case):
    n, c, height, width, k, stride, padding, layout, flip, dtype = case
    return f"{n}x{c}x{height}x{width}-k{k}-s{stride}-{padding}-{layout}-{'flip' if flip else 'corr'}-{str(dtype)[6:]}"


def make_inputs(n, c, height, width, k, stride, layout, dtype):
    out_h, out_w = geometry(height, width, k, stride, False)[:2]
    shape = {"shared": (k, k), "per_image": (n, k, k), "per_pixel": (n, k * k, out_h, out_w)}[layout]
    x = torch.randn(n, c, height, width, dtype=torch.float64).to(dtype)
    kernel = torch.randn(shape, dtype=torch.float64).to(dtype)
    grad_out = torch.randn(n, c, out_h, out_w, dtype=torch.float64).to(dtype)
    return x, kernel, grad_out


def forward_and_grads(fn, x, kernel, grad_out, stride, padding, flip):
    x, kernel = x.detach().requires_grad_(), kernel.detach().requires_grad_()
    out = fn(x, kernel, stride, padding, flip)
    grad_x, grad_kernel = torch.autograd.grad(out, (x, kernel), grad_out)
    return out.detach(), grad_x, grad_kernel


def calls_delta(run):
    before = bsrops.kernel_calls()
    result = run()
    after = bsrops.kernel_calls()
    delta = {name: count - before.get(name, 0) for name, count in after.items() if count != before.get(name, 0)}
    return result, delta


def assert_only_triton_ran(delta, backward=True):
    assert delta.get("blur_downsample.triton", 0) >= 1, f"the Triton forward did not run: {delta}"
    if backward:
        assert delta.get("_blur_downsample_backward.triton", 0) >= 1, f"the Triton backward did not run: {delta}"
    others = [name for name in delta if "blur_downsample" in name and not name.endswith(".triton")]
    assert not others, f"other blur_downsample kernels ran under the triton backend: {delta}"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("case", CASES, ids=[case_id(case) for case in CASES])
def test_triton_matches_float64_loop(case):
    require_interpreter()
    n, c, height, width, k, stride, padding, layout, flip, dtype = case
    x, kernel, grad_out = make_inputs(n, c, height, width, k, stride, layout, dtype)
    with bsrops.use_backend("triton"):
        assert bsrops.backend_info("cpu")["backend"] == "triton"
        results, delta = calls_delta(
            lambda: forward_and_grads(bsrops.blur_downsample, x, kernel, grad_out, stride, padding, flip))
    assert_only_triton_ran(delta)
    expected = forward_and_grads(blur_downsample_loop, x.double(), kernel.double(), grad_out.double(),
                                 stride, padding, flip)
    same_dtype = [None] * 3
    if dtype in (torch.float16, torch.bfloat16):
        same_dtype = forward_and_grads(blur_downsample_reference, x, kernel, grad_out, stride, padding, flip)
    for name, actual, truth, bar, like in zip(("out", "grad_x", "grad_kernel"), results, expected, same_dtype,
                                              (grad_out, x, kernel)):
        assert actual.shape == like.shape and actual.dtype == dtype, f"{name}: {actual.dtype} {tuple(actual.shape)}"
        assert actual.is_contiguous(), name
        assert_close_to_float64(actual, truth, dtype, bar)


def test_forward_tiles_give_256_programs_at_the_headline_shape():
    """16 images of 3 x 128 x 128, k = 21, s = 4 (32 x 32 outputs): >= 256 forward programs, tap tiles and
    pixel blocks powers of two, at most FORWARD_CHANNELS channels per program."""
    require_triton()
    from bsrops.triton import blur_downsample as module

    block_c, block_t, block_p = module._forward_blocks(32 * 32, 3)
    assert -(-32 * 32 // block_p) * -(-3 // block_c) * 16 >= 256, (block_c, block_t, block_p)
    for pixels, channels in ((1, 1), (32 * 32, 3), (128 * 128, 64), (1024 * 1024, 3)):
        sizes = module._forward_blocks(pixels, channels)
        assert all(size & (size - 1) == 0 for size in sizes), (pixels, channels, sizes)
        assert sizes[0] <= module.FORWARD_CHANNELS and sizes[0] < 2 * channels, (pixels, channels, sizes)


@pytest.mark.timeout(60)
def test_triton_bfloat16_rounds_to_nearest_even():
    """The bfloat16 result is the float32 accumulator rounded to nearest even, as torch rounds it."""
    require_interpreter()
    x, kernel, _ = make_inputs(2, 3, 9, 8, 3, 1, "per_image", torch.bfloat16)
    with bsrops.use_backend("triton"):
        low = bsrops.blur_downsample(x, kernel, 1, "replicate", False)
        high = bsrops.blur_downsample(x.float(), kernel.float(), 1, "replicate", False)
    assert low.dtype == torch.bfloat16
    assert torch.equal(low, high.to(torch.bfloat16)), (low.float() - high).abs().max()


@pytest.mark.timeout(60)
def test_triton_output_mask_and_layouts():
    """One gradient at a time, non-contiguous inputs: the other result is an empty tensor."""
    require_interpreter()
    n, c, height, width, k, stride = 1, 2, 7, 9, 3, 2
    x, kernel, grad_out = make_inputs(n, c, height, width, k, stride, "per_pixel", torch.float64)
    x_strided = x.transpose(2, 3).contiguous().transpose(2, 3)  # same values, not contiguous
    kernel_strided = kernel.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)
    args = (stride, "reflect", False)
    expected = forward_and_grads(blur_downsample_loop, x, kernel, grad_out, *args)
    with bsrops.use_backend("triton"):
        (grad_x, grad_kernel), delta = calls_delta(lambda: torch.ops.bsrops._blur_downsample_backward(
            grad_out, x_strided, kernel_strided, *args, [True, False]))
        assert_close_to_float64(grad_x, expected[1])
        assert grad_kernel.numel() == 0 and grad_kernel.dtype == kernel.dtype
        (grad_x, grad_kernel), _ = calls_delta(lambda: torch.ops.bsrops._blur_downsample_backward(
            grad_out, x_strided, kernel_strided, *args, [False, True]))
        assert grad_x.numel() == 0 and grad_x.dtype == x.dtype
        assert_close_to_float64(grad_kernel, expected[2])
    assert delta.get("_blur_downsample_backward.triton", 0) == 1, delta


@pytest.mark.timeout(60)
@pytest.mark.parametrize("layout", ["shared", "per_image", "per_pixel"])
def test_triton_batch_zero(layout):
    require_interpreter()
    x, kernel, grad_out = make_inputs(0, 2, 6, 5, 3, 2, layout, torch.float32)
    if layout == "shared":
        kernel = torch.randn(3, 3)
    with bsrops.use_backend("triton"):
        (out, grad_x, grad_kernel), delta = calls_delta(
            lambda: forward_and_grads(bsrops.blur_downsample, x, kernel, grad_out, 2, "reflect", False))
    assert_only_triton_ran(delta)
    assert out.shape == (0, 2, 3, 3) and grad_x.shape == x.shape
    assert grad_kernel.shape == kernel.shape and not grad_kernel.any()


@pytest.mark.timeout(60)
def test_triton_opcheck():
    require_interpreter()
    x, kernel, _ = make_inputs(1, 2, 6, 5, 3, 2, "per_pixel", torch.float64)
    with bsrops.use_backend("triton"):
        _, delta = calls_delta(lambda: torch.library.opcheck(
            torch.ops.bsrops.blur_downsample.default,
            (x.requires_grad_(), kernel.requires_grad_(), 2, "symmetric", True)))
    assert_only_triton_ran(delta)


# ---- sm_90 compile check ----

# Per kernel: (data dtype, constexprs). Pointers are named *_ptr; gk_ptr of the REDUCE variant and
# part_ptr hold the accumulator dtype. Together they take every padding branch, layout and dtype.
COMPILE_CONFIGS = {
    "_forward_kernel": [
        ("fp32", dict(FLIP=False, PADDING=0, LAYOUT=2, F64=False, BLOCK_C=4, BLOCK_T=16, BLOCK_P=64, STAGES=2)),
        ("bf16", dict(FLIP=True, PADDING=4, LAYOUT=0, F64=False, BLOCK_C=4, BLOCK_T=8, BLOCK_P=256, STAGES=2)),
        ("fp64", dict(FLIP=False, PADDING=3, LAYOUT=1, F64=True, BLOCK_C=2, BLOCK_T=16, BLOCK_P=128, STAGES=3)),
    ],
    "_grad_input_kernel": [
        ("fp32", dict(FLIP=False, PADDING=0, LAYOUT=2, F64=False, BLOCK_C=2, BLOCK_Y=16, BLOCK_X=32)),
        ("fp16", dict(FLIP=True, PADDING=1, LAYOUT=2, F64=False, BLOCK_C=2, BLOCK_Y=16, BLOCK_X=32)),
        ("bf16", dict(FLIP=False, PADDING=2, LAYOUT=0, F64=False, BLOCK_C=4, BLOCK_Y=8, BLOCK_X=32)),
        ("fp64", dict(FLIP=True, PADDING=3, LAYOUT=1, F64=True, BLOCK_C=1, BLOCK_Y=16, BLOCK_X=16)),
        ("fp32", dict(FLIP=True, PADDING=4, LAYOUT=1, F64=False, BLOCK_C=2, BLOCK_Y=16, BLOCK_X=32)),
    ],
    "_grad_kernel_kernel": [
        ("fp32", dict(FLIP=False, PADDING=1, REDUCE=False, F64=False, BLOCK_T=32, BLOCK_P=64)),
        ("bf16", dict(FLIP=True, PADDING=2, REDUCE=True, F64=False, BLOCK_T=16, BLOCK_P=128)),
    ],
    "_sum_partials_kernel": [
        ("fp16", dict(F64=False, BLOCK_T=32, BLOCK_R=32)),
        ("fp64", dict(F64=True, BLOCK_T=32, BLOCK_R=32)),
    ],
}

def _pointer_overrides(constexprs):
    """part_ptr, and gk_ptr of the REDUCE variant, hold the accumulator dtype."""
    accumulator = "fp64" if constexprs["F64"] else "fp32"
    return {"part_ptr": accumulator, **({"gk_ptr": accumulator} if constexprs.get("REDUCE") else {})}


def test_compile_configs_cover_every_kernel():
    require_triton()
    from bsrops.triton import blur_downsample as module

    names = {fn.__name__ for fn in module.KERNELS}
    assert names == jitted_kernels(module) == set(COMPILE_CONFIGS), (names, set(COMPILE_CONFIGS))


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", sorted(COMPILE_CONFIGS))
def test_triton_compiles_for_sm90(name, tmp_path):
    require_triton()
    configs = [(dtype, constexprs, _pointer_overrides(constexprs)) for dtype, constexprs in COMPILE_CONFIGS[name]]
    assert_compiles_for_sm90("bsrops.triton.blur_downsample", name, configs, tmp_path)
