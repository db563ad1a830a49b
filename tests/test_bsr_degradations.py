"""bsr.degradations: MATLAB bicubic checked by properties independent of its code, kernels, blur, noise, JPEG."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import bsrops
from bsr import degradations as deg

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


# ---------------------------------------------------------------------------------------------- kernels

def moments(kernels):
    """Mean (row, column) and covariance [[xx, xy], [xy, yy]] (x = column) of (N, k, k) kernels."""
    grid = torch.arange(kernels.shape[-1], dtype=torch.float64)
    row = (kernels.sum(2) * grid).sum(1)
    col = (kernels.sum(1) * grid).sum(1)
    y, x = grid.view(1, -1, 1) - row.view(-1, 1, 1), grid.view(1, 1, -1) - col.view(-1, 1, 1)
    cov = [[(kernels * a * b).sum((1, 2)) for b in (x, y)] for a in (x, y)]
    return row, col, torch.stack([torch.stack(r, -1) for r in cov], -2)


def assert_normalised(kernels, n, size):
    assert kernels.shape == (n, size, size) and kernels.dtype == torch.float64
    assert (kernels >= 0).all()
    assert (kernels.sum((1, 2)) - 1).abs().max() < 1e-12


def test_gaussian_kernels_have_the_requested_mean_and_covariance():
    cov = deg.covariance(torch.tensor([1.2, 2.0]), torch.tensor([2.0, 1.1]), torch.tensor([0.4, -1.0]))
    kernels = deg.gaussian_kernels(cov, 25, centre=torch.tensor([12.0, 10.5]))
    assert_normalised(kernels, 2, 25)
    row, col, measured = moments(kernels)
    assert torch.allclose(row, torch.tensor([12.0, 10.5], dtype=torch.float64), atol=1e-6)
    assert torch.allclose(col, row, atol=1e-6)
    assert (measured - cov).abs().max() < 1e-5


@pytest.mark.parametrize("size,sigma", [(21, 1.5), (20, 1.5), (11, 1.0)])
def test_isotropic_kernels_follow_dans_grid(size, sigma):
    kernels = deg.isotropic_gaussian_kernels([sigma, 0.5], size)
    assert_normalised(kernels, 2, size)
    centre = (size - 1) // 2  # DAN arange(-l//2 + 1, l//2 + 1): 10 for 21, 9 for 20
    assert kernels[0].argmax().item() == centre * size + centre
    _, _, cov = moments(kernels)
    assert abs(cov[0, 0, 0].item() / sigma**2 - 1) < 1e-3 and abs(cov[0, 0, 1].item()) < 1e-12  # 5 sigma truncation at 11


def test_dan_random_kernels_settings():
    iso = deg.dan_random_kernels(6, 21, (1.0, 1.5), rate_iso=1.0, generator=generator())
    assert_normalised(iso, 6, 21)
    _, _, cov = moments(iso)
    sigma2 = cov[:, 0, 0]
    assert ((sigma2 > 1.0 - 1e-6) & (sigma2 < 1.5**2 + 1e-6)).all() and sigma2.std() > 0.01
    assert torch.allclose(iso, iso.transpose(1, 2))
    aniso = deg.dan_random_kernels(6, 21, (1.0, 1.5), rate_iso=0.0, generator=generator())
    assert not torch.allclose(aniso, aniso.transpose(1, 2))
    disturbed = deg.dan_random_kernels(6, 21, (1.0, 1.5), rate_iso=0.0, disturb=True, generator=generator())
    assert_normalised(disturbed, 6, 21)
    ratio = disturbed / aniso  # 1 + U(0, 0.25) per tap, renormalised
    assert (ratio.amax((1, 2)) / ratio.amin((1, 2)) < 1.25 + 1e-9).all() and (ratio.std((1, 2)) > 0.01).all()
    assert deg.dan_random_kernels(0, generator=generator()).shape == (0, 21, 21)


def test_dan_sigma_ranges():
    assert deg.dan_sigma_range(3) == (0.2, 4.0)
    assert deg.dan_sigma_range(2, paper=True) == (0.2, 2.0)
    assert deg.dan_sigma_range(4, setting=2) == (0.6, 5.0)
    with pytest.raises(ValueError, match="setting"):
        deg.dan_sigma_range(4, setting=3)


def test_usrnet_gaussian_kernels_are_shifted_by_the_inner_scale():
    kernels = deg.usrnet_gaussian_kernels(40, variance_range=(0.6, 1.0), generator=generator())
    assert_normalised(kernels, 40, 25)
    row, col, cov = moments(kernels)
    shifts = 12 - row  # (sf - 1) / 2 for sf in {1, 2, 3, 4}
    assert torch.allclose(row, col, atol=1e-6)
    assert torch.allclose(shifts * 2, (shifts * 2).round(), atol=1e-6) and set((shifts * 2).round().tolist()) == {0, 1, 2, 3}
    eigenvalues = torch.linalg.eigvalsh(cov)
    assert (eigenvalues > 0.6 - 1e-6).all() and (eigenvalues < 1.0 + 1e-6).all()


@pytest.mark.parametrize("make", [deg.motion_kernels, deg.usrnet_random_kernels,
                                  lambda n, generator: deg.dan_random_kernels(n, 15, rate_iso=0.0, disturb=True, generator=generator),
                                  lambda n, generator: deg.usrnet_gaussian_kernels(n, 25, generator=generator)])
def test_random_kernels_are_seeded_and_normalised(make):
    first, again, other = make(5, generator=generator(3)), make(5, generator=generator(3)), make(5, generator=generator(4))
    assert_normalised(first, 5, first.shape[-1])
    assert torch.equal(first, again)
    assert not torch.allclose(first, other)
    assert not torch.allclose(first[0], first[1])


def test_motion_kernels_are_sparse_trajectories():
    kernels = deg.motion_kernels(6, generator=generator(1))
    assert_normalised(kernels, 6, 25)
    support = (kernels > 1e-3).sum((1, 2))
    assert (support < 25 * 25 / 2).all(), support
    _, _, cov = moments(kernels)
    eigenvalues = torch.linalg.eigvalsh(cov)
    assert (eigenvalues[:, 1] / eigenvalues[:, 0]).max() > 2  # some are elongated, unlike a Gaussian disc


def test_augment_kernels_are_dihedral_transforms():
    kernels = deg.usrnet_gaussian_kernels(8, generator=generator())
    augmented = deg.augment_kernels(kernels, generator())
    for k, a in zip(kernels, augmented):
        assert any(torch.equal(a, torch.rot90(k, r, (0, 1)).flip(1) if flip else torch.rot90(k, r, (0, 1)))
                   for r in range(4) for flip in (False, True))


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
    kernels = deg.dan_random_kernels(2, k, rate_iso=0.0, generator=generator())
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
    kernels = deg.usrnet_random_kernels(2, generator=generator())
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
