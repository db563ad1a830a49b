"""bsrops.blur_downsample at extreme sizes, on every backend the CPU reaches: a stride up to 2**63 - 1 gives
ceil(H / s) x ceil(W / s) = 1 x 1 outputs with the right values and gradients (against the float64 loop), a
stride past int64 a ValueError naming stride, and a kernel much larger than the image (padding wider than it)
the right values.

Before: stride 2**63 - 1 gave a (N, C, 0, 0) output on cpu and cpu_shared (ceil(H / s) as (H + s - 1) / s
overflowed), 2**31 - 1 .. 2**40 a std::bad_alloc (MemoryError) on cpu (a stride-sized scratch row), and the Triton
kernels returned grad_x = 0 for strides 2**31 - 1 and 2**63 - 1 (index maths overflow)."""
import os

import pytest
import torch

import bsrops
from bsrops.reference.blur_downsample import blur_downsample_loop, blur_downsample_unfold
from tolerances import assert_close_to_float64
from triton_sm90 import TRITON_ERROR

# the Triton backend serves CPU tensors when interpreted (tests/conftest.py sets TRITON_INTERPRET=1)
TRITON = [] if TRITON_ERROR or os.environ.get("TRITON_INTERPRET") != "1" else ["triton"]

BACKENDS = ["cpu", "cpu_shared", "reference"] + TRITON


def outputs_and_grads(fn, x, kernel, stride, padding, grad=None, flip=True):
    x, kernel = x.detach().clone().requires_grad_(), kernel.detach().clone().requires_grad_()
    out = fn(x, kernel, stride, padding, flip)
    grad = torch.linspace(-1, 2, out.numel(), dtype=out.dtype).view(out.shape) if grad is None else grad
    return (out.detach(), *torch.autograd.grad(out, (x, kernel), grad)), grad


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("stride", [2 ** 63 - 1, 2 ** 40, 2 ** 31, 2 ** 31 - 1, 9])
def test_huge_stride_gives_one_output_pixel(stride, backend):
    g = torch.Generator().manual_seed(9)
    x = torch.randn(2, 3, 5, 7, generator=g, dtype=torch.float64)
    for padding, kernel in (("reflect", torch.rand(3, 3, generator=g, dtype=torch.float64)),
                            ("zeros", torch.rand(2, 9, 1, 1, generator=g, dtype=torch.float64))):
        with bsrops.use_backend(backend):
            ours, grad = outputs_and_grads(bsrops.blur_downsample, x, kernel, stride, padding)
        truth, _ = outputs_and_grads(blur_downsample_loop, x, kernel, stride, padding, grad.double())
        assert ours[0].shape == (2, 3, 1, 1)
        for actual, expected in zip(ours, truth):
            assert actual.shape == expected.shape
            assert_close_to_float64(actual, expected)
        assert ours[1].abs().sum() > 0


def test_stride_past_int64_is_a_clear_error():
    with pytest.raises(ValueError, match=r"stride must be >= 1 and <= 2\*\*63 - 1, got 9223372036854775808"):
        bsrops.blur_downsample(torch.randn(1, 1, 4, 4), torch.rand(3, 3), 2 ** 63)


@pytest.mark.parametrize("backend", BACKENDS)
def test_kernel_much_larger_than_the_image(backend):
    """A k x k kernel (shared: an expanded view, its storage k values) on a 2 x 5 image, k = 21 (7 on the interpreted
    Triton kernels, whose tap loops run in Python): padding of k // 2 > H pixels on each side, zeros and replicate
    (reflect, symmetric and circular refuse it)."""
    k = 7 if backend == "triton" else 21
    g = torch.Generator().manual_seed(10)
    x = torch.randn(1, 2, 2, 5, generator=g, dtype=torch.float64)
    kernels = [torch.rand(k, 1, generator=g, dtype=torch.float64).expand(k, k),
               torch.rand(1, k * k, 1, 3, generator=g, dtype=torch.float64)]
    for padding, kernel in zip(("zeros", "replicate"), kernels):
        with bsrops.use_backend(backend):
            ours, grad = outputs_and_grads(bsrops.blur_downsample, x, kernel, 2, padding)
        truth, _ = outputs_and_grads(blur_downsample_loop, x, kernel, 2, padding, grad)
        for actual, expected in zip(ours, truth):
            assert actual.shape == expected.shape
            assert_close_to_float64(actual, expected)


def vm_flags(address):
    """VmFlags of the mapping of this process that holds `address` (Linux's /proc/self/smaps), or None."""
    holds = False
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            fields = line.split()
            if fields and "-" in fields[0] and not fields[0].endswith(":"):
                low, high = (int(v, 16) for v in fields[0].split("-"))
                holds = low <= address < high
            elif holds and fields[:1] == ["VmFlags:"]:
                return fields[1:]
    return None


@pytest.mark.skipif(not os.path.isdir("/sys/kernel/mm/transparent_hugepage"), reason="needs Linux with THP")
def test_large_outputs_are_advised_huge_pages():
    """An output spanning two or more 2 MiB pages (here a per-pixel grad_K of 6.5 MB) is advised MADV_HUGEPAGE
    (VmFlags "hg" on its pages) before the kernels write it, and holds the right values (float64 unfold)."""
    g = torch.Generator().manual_seed(11)
    x = torch.randn(1, 1, 256, 256, generator=g)
    kernel = torch.softmax(torch.randn(1, 25, 256, 256, generator=g), 1)
    with bsrops.use_backend("cpu"):
        ours, grad = outputs_and_grads(bsrops.blur_downsample, x, kernel, 1, "reflect")
    huge = 2 << 20
    first_page = (ours[2].data_ptr() + huge - 1) // huge * huge
    assert "hg" in vm_flags(first_page)
    truth, _ = outputs_and_grads(blur_downsample_unfold, x.double(), kernel.double(), 1, "reflect", grad.double())
    for actual, expected in zip(ours, truth):
        assert_close_to_float64(actual, expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("k,flip,padding", [(9, False, "reflect"), (15, True, "symmetric"), (12, False, "zeros")])
def test_stride_1_shared_kernels_over_many_planes_and_rows(k, flip, padding, dtype):
    """Stride 1 with per-image and shared kernels (the forward that computes planes side by side): 3 x 3 planes
    (a partial last group of SIMD lanes), 37 rows (several row blocks), 11 columns (a partial last tile), taps
    past one run of weights, values and gradients against the float64 loop."""
    g = torch.Generator().manual_seed(12)
    x = torch.randn(3, 3, 37, 11, generator=g, dtype=dtype)
    for kernel in (torch.rand(3, k, k, generator=g, dtype=dtype), torch.rand(k, k, generator=g, dtype=dtype)):
        with bsrops.use_backend("cpu"):
            ours, grad = outputs_and_grads(bsrops.blur_downsample, x, kernel, 1, padding, flip=flip)
        truth, _ = outputs_and_grads(blur_downsample_loop, x.double(), kernel.double(), 1, padding, grad.double(),
                                     flip=flip)
        for actual, expected in zip(ours, truth):
            assert actual.shape == expected.shape
            assert_close_to_float64(actual, expected, dtype)
