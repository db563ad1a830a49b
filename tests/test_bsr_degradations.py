"""bsr.degradations: MATLAB bicubic checked by properties independent of its code, blur, noise, JPEG."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import bsrops
from bsr import degradations as deg
from bsr import kernels as kern

DOWN = (2, 3, 4)


def keys_cubic(t):
    """Keys' cubic (a = -0.5) written as in the paper, piece by piece, for one float."""
    t = abs(t)
    if t <= 1:
        return 1.5 * t**3 - 2.5 * t**2 + 1
    if t <= 2:
        return -0.5 * t**3 + 2.5 * t**2 - 4 * t + 2
    return 0.0


def generator(seed=0):
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------------------------------------- imresize

@pytest.mark.parametrize("scale", [1 / 4, 1 / 3, 1 / 2, 2, 3, 4, 0.7])
def test_imresize_keeps_a_constant_image_constant(scale):
    x = torch.full((2, 3, 13, 22), 0.37, dtype=torch.float64)
    y = deg.imresize(x, scale)
    assert y.shape == (2, 3, math.ceil(13 * scale), math.ceil(22 * scale))
    assert (y - 0.37).abs().max() < 1e-12


def output_centres(out_size, s, down):
    """Input coordinate of each output pixel centre: (i + 0.5) s - 0.5 downscaling by s, (i + 0.5) / s - 0.5 up."""
    i = np.arange(out_size)
    return (i + 0.5) * s - 0.5 if down else (i + 0.5) / s - 0.5


@pytest.mark.parametrize("s,down", [(s, True) for s in DOWN] + [(s, False) for s in (2, 3, 4)])
def test_imresize_reproduces_a_linear_ramp_at_output_centres(s, down):
    h, w = (48, 60) if down else (16, 20)
    rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    x = torch.from_numpy(0.01 * rows - 0.02 * cols + 0.5)[None, None]
    y = deg.imresize(x, 1 / s if down else s)[0, 0].numpy()
    u, v = output_centres(y.shape[0], s, down), output_centres(y.shape[1], s, down)
    expected = 0.01 * u[:, None] - 0.02 * v[None, :] + 0.5
    reach = 2 * s + 1 if down else 3  # input pixels the kernel touches on each side of a centre
    keep_u = (u - reach >= 0) & (u + reach <= h - 1)
    keep_v = (v - reach >= 0) & (v + reach <= w - 1)
    assert keep_u.sum() >= 3 and keep_v.sum() >= 3
    assert np.abs(y[np.ix_(keep_u, keep_v)] - expected[np.ix_(keep_u, keep_v)]).max() < 1e-12


@pytest.mark.parametrize("s", DOWN)
def test_imresize_downscaling_impulse_response_is_the_stretched_cubic(s):
    n, p = 12 * s, 6 * s  # one impulse at input row p, far from the borders; a single column stays constant
    x = torch.zeros(1, 1, n, 1, dtype=torch.float64)
    x[0, 0, p, 0] = 1
    column = deg.imresize(x, 1 / s)[0, 0, :, 0].numpy()
    assert (column != 0).sum() >= 4
    for i, u in enumerate(output_centres(len(column), s, True)):
        if u - 2 * s - 2 < 0 or u + 2 * s + 2 > n - 1:
            continue
        taps = np.arange(math.floor(u - 2 * s) - 1, math.ceil(u + 2 * s) + 2)
        total = sum(keys_cubic((u - j) / s) / s for j in taps)
        assert abs(column[i] - keys_cubic((u - p) / s) / s / total) < 1e-12, (i, u)


@pytest.mark.parametrize("s", DOWN)
def test_imresize_interior_matches_torch_antialiased_bicubic(s):
    """PyTorch's antialias=True bicubic (PIL convention, a = -0.5) differs only at the borders."""
    x = torch.rand(2, 3, 12 * s, 7 * s, dtype=torch.float64)
    y = deg.imresize(x, 1 / s)
    z = F.interpolate(x, size=y.shape[-2:], mode="bicubic", antialias=True, align_corners=False)
    assert (y - z)[..., 3:-3, 3:-3].abs().max() < 1e-12
    assert (y - z).abs().max() > 1e-4  # the symmetric border really differs from PIL's truncation


def test_imresize_dtypes_gradients_and_errors():
    x = torch.rand(1, 2, 9, 7, dtype=torch.float64, requires_grad=True)  # imresize is linear: fast mode suffices
    assert torch.autograd.gradcheck(lambda t: deg.imresize(t, 1 / 2), (x,), fast_mode=True)
    assert torch.autograd.gradcheck(lambda t: deg.imresize(t, size=(13, 4)), (x,), fast_mode=True)
    y32 = deg.imresize(x.detach().float(), 1 / 3)
    assert y32.dtype == torch.float32
    assert (y32.double() - deg.imresize(x.detach(), 1 / 3)).abs().max() < 1e-6
    assert deg.imresize(torch.zeros(0, 3, 8, 8), 1 / 2).shape == (0, 3, 4, 4)
    with pytest.raises(ValueError, match="exactly one of scale and size"):
        deg.imresize(x, 0.5, size=(4, 4))
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        deg.imresize(x[0], 0.5)
    with pytest.raises(ValueError, match="scale must be > 0"):
        deg.imresize(x, 0)


# ---------------------------------------------------------------------------------------------- blur

def calls_delta(run):
    before = bsrops.kernel_calls()
    out = run()
    after = bsrops.kernel_calls()
    return out, {name: after[name] - before.get(name, 0) for name in after if after[name] != before.get(name, 0)}


@pytest.mark.parametrize("k", [21, 20])
def test_blur_matches_dans_batch_blur(k):
    """DAN BatchBlur: reflect pad (k//2 before, k-1-k//2 after) + grouped F.conv2d (correlation) per image."""
    x = torch.rand(2, 3, 26, 23)
    kernels = kern.dan_random_kernels(2, k, rate_iso=0.0, generator=generator())
    out, delta = calls_delta(lambda: deg.blur(x, kernels))
    padded = F.pad(x, (k // 2, k - 1 - k // 2) * 2, mode="reflect").view(1, 6, 26 + k - 1, 23 + k - 1)
    weight = kernels.float().repeat_interleave(3, 0)[:, None]
    expected = F.conv2d(padded, weight, groups=6).view(2, 3, 26, 23)
    assert (out - expected).abs().max() < 1e-5
    assert delta == {"blur_downsample.cpu": 1}


@pytest.mark.parametrize("s", [1, 2, 3, 4])
def test_blur_downsample_is_usrnets_wrap_convolution_and_upper_left_decimation(s):
    """KAIR: ndimage.convolve(mode='wrap') then [0::s, 0::s]; checked through the FFT (circular convolution)."""
    x = torch.rand(2, 3, 30, 36, dtype=torch.float64)
    kernels = kern.usrnet_random_kernels(2, generator=generator())
    out, delta = calls_delta(lambda: deg.blur_downsample(x, kernels, s, padding="circular", flip=True))
    psf = torch.zeros(2, 1, 30, 36, dtype=torch.float64)  # USRNet p2o: kernel top-left, centre rolled to (0, 0)
    psf[:, 0, :25, :25] = kernels
    otf = torch.fft.fft2(torch.roll(psf, (-12, -12), (2, 3)))
    expected = torch.fft.ifft2(torch.fft.fft2(x) * otf).real[..., ::s, ::s]
    assert (out - expected).abs().max() < 1e-10
    assert delta == {"blur_downsample.cpu": 1}


# ---------------------------------------------------------------------------------------------- noise, JPEG

def test_add_noise_is_seeded_and_per_image():
    x = torch.full((3, 3, 40, 40), 0.5)
    noisy = deg.add_noise(x, torch.tensor([0.0, 0.1, 0.2]), generator(5))
    assert torch.equal(noisy, deg.add_noise(x, torch.tensor([0.0, 0.1, 0.2]), generator(5)))
    std = (noisy - x).std((1, 2, 3))
    assert std[0] == 0 and abs(std[1] - 0.1) < 0.01 and abs(std[2] - 0.2) < 0.02
    with pytest.raises(ValueError, match=r"\(N,\) with N = 3"):
        deg.add_noise(x, torch.ones(2))


def test_usrnet_noise_levels():
    levels = deg.usrnet_noise_levels(900, generator(0))
    assert torch.allclose(levels * 255, (levels * 255).round()) and levels.max() <= 24 / 255
    assert 50 < (levels == 0).sum() < 160  # 1/9 forced clean + 1/25 of the rest drawn as 0


def test_jpeg_quality_controls_the_error():
    rows, cols = torch.meshgrid(torch.linspace(0, 1, 48), torch.linspace(0, 1, 40), indexing="ij")
    x = torch.stack([rows, cols, (rows + cols) / 2])[None].repeat(2, 1, 1, 1)
    x[1] = torch.rand(3, 48, 40)
    high, low = deg.jpeg(x, 95), deg.jpeg(x, [10, 10])
    assert high.shape == x.shape and high.dtype == x.dtype
    assert torch.allclose(high * 255, (high * 255).round(), atol=1e-4)
    assert (high - x).abs().mean() < (low - x).abs().mean()
    assert (high[0] - x[0]).abs().mean() < 0.01
    with pytest.raises(ValueError, match="quality"):
        deg.jpeg(x, 101)
