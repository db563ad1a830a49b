"""bsr.kernelgan: KernelGAN's networks, constraints, schedule, crops, post-processing and CLI,
checked against properties written independently of the code (docs/methods.md)."""
import numpy as np
import pytest
import scipy.io
import scipy.ndimage
import scipy.signal
import torch
import torch.nn.functional as F

from bsr import kernelgan as kg
from bsr.kernelgan import KernelDiscriminator, KernelGenerator, init_weights
from bsr.data.io import ImageError, write_image
from bsr.degradations import imresize
from bsr.kernels import covariance, gaussian_kernels


def textured(h, w, seed=0):
    """A smooth random (H, W, 3) image in [0, 1] (blurred noise: gradients everywhere)."""
    rng = np.random.default_rng(seed)
    noise = scipy.ndimage.gaussian_filter(rng.random((h, w, 3)), (1.5, 1.5, 0))
    return (noise - noise.min()) / (noise.max() - noise.min())


# ---- networks ----

@pytest.mark.parametrize("channels", [4, 16])
def test_generator_is_one_correlation_then_a_2x_decimation(channels):
    torch.manual_seed(0)
    g = KernelGenerator(channels)
    init_weights(g)
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    g = g.double()
    k = g.kernel()
    assert k.shape == (13, 13) and g.kernel_size == 13 and g.output_size(64) == 26
    expected = F.conv2d(x.reshape(6, 1, 64, 64), k[None, None], stride=2).reshape(2, 3, 26, 26)
    torch.testing.assert_close(g(x), expected, rtol=1e-10, atol=1e-12)
    # the kernel is differentiable in G's weights (the constraints train through it)
    k.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in g.parameters())


def test_discriminator_maps_a_26_crop_to_a_20x20_probability_map_with_spectral_norm():
    torch.manual_seed(0)
    d = KernelDiscriminator(8)
    init_weights(d)
    out = d(torch.randn(2, 3, 26, 26))
    assert out.shape == (2, 1, 20, 20) and ((out > 0) & (out < 1)).all()
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in d.modules()) == 5
    assert sum(hasattr(m, "weight_orig") for m in d.modules()) == 7  # every conv spectral-normalised


# ---- constraints ----

def test_bicubic_kernel_is_matlabs_half_size_bicubic():
    kernel = kg.bicubic_x2_kernel()
    assert kernel.shape == (8, 8) and abs(kernel.sum().item() - 1) < 1e-12
    assert abs(kernel[0, 0].item() - 0.01171875**2) < 1e-15 and abs(kernel[3, 3].item() - 0.43359375**2) < 1e-15
    # its stride-2, padding-3 convolution is MATLAB's imresize(x, 0.5) away from the mirrored borders
    x = torch.rand(1, 1, 40, 36, dtype=torch.float64)
    conv = F.conv2d(x, kernel[None, None], stride=2, padding=3)
    torch.testing.assert_close(conv[..., 2:-2, 2:-2], imresize(x, scale=0.5)[..., 2:-2, 2:-2], rtol=0, atol=1e-12)


def test_bicubic_loss_target_is_the_rgb_sum_by_default_and_per_channel_when_grouped():
    torch.manual_seed(0)
    g_input = torch.rand(1, 3, 64, 64, dtype=torch.float64)
    kernel = kg.bicubic_x2_kernel()[None, None]

    def down(x):
        return kg.shave_to(F.conv2d(x, kernel, stride=2, padding=3), (26, 26))

    summed = down(g_input.sum(1, keepdim=True)).expand(1, 3, 26, 26)
    per_channel = torch.cat([down(g_input[:, c:c + 1]) for c in range(3)], 1)
    assert kg.bicubic_loss(g_input, summed).item() < 1e-20
    assert kg.bicubic_loss(g_input, per_channel, grouped=True).item() < 1e-20
    assert kg.bicubic_loss(g_input, per_channel).item() > 1e-2  # the quirk changes the target


def test_shave_to_takes_the_centre_and_drops_the_odd_pixel_at_the_end():
    x = torch.arange(7.0)[None, :].expand(7, 7)
    assert kg.shave_to(x, (4, 4))[0].tolist() == [1.0, 2.0, 3.0, 4.0]


def test_boundary_mask_penalises_only_the_outer_two_pixel_ring():
    mask = kg.boundary_mask(13)
    assert mask.shape == (13, 13)
    assert (mask[2:11, 2:11] == 0).all()
    ring = torch.ones(13, 13, dtype=torch.bool)
    ring[2:11, 2:11] = False
    assert (mask[ring] > 0).all()
    corner = 30 * (1 - np.exp(-(6**2 + 6**2) / (2 * 13**2)))
    assert abs(mask[0, 0].item() - corner) < 1e-12 and abs(mask[12, 12].item() - corner) < 1e-12


def test_constraints_vanish_for_a_centred_box_kernel_and_measure_offsets():
    box = torch.zeros(13, 13, dtype=torch.float64)
    box[6:8, 6:8] = 0.25  # centre of mass 6.5, 6.5: where a x2 decimation wants it
    losses = kg.constraint_losses(box, kg.boundary_mask(13))
    assert losses["sum2one"].item() == 0 and losses["boundaries"].item() == 0 and losses["centralized"].item() == 0
    assert abs(losses["sparse"].item() - 4 * 0.25**0.2 / 169) < 1e-12
    shifted = torch.roll(box, (2, -1), (0, 1)) * 2
    losses = kg.constraint_losses(shifted, kg.boundary_mask(13))
    assert abs(losses["sum2one"].item() - 1) < 1e-12
    assert abs(losses["centralized"].item() - (2**2 + 1**2) / 2) < 1e-12


# ---- schedule ----

def test_schedule_decays_learning_rates_and_the_bicubic_weight_then_adds_the_constraints():
    params = [torch.nn.Parameter(torch.zeros(1))]
    opts = [torch.optim.Adam(params, lr=2e-4), torch.optim.Adam(params, lr=2e-4)]
    lambdas = dict(kg.LAMBDAS)
    schedule = kg.Schedule()
    history = {}
    for it in range(1601):
        loss = 1.0 if it < 10 else 0.3  # below 0.4 from iteration 10 on
        schedule.update(it, loss, lambdas, opts)
        history[it] = (dict(lambdas), opts[0].param_groups[0]["lr"], schedule.similar_to_bicubic)
    assert not history[11][2] and history[12][2]  # three iterations in a row below 0.4
    assert history[749][1] == 2e-4 and abs(history[750][1] - 2e-5) < 1e-18 and abs(history[1500][1] - 2e-6) < 1e-18
    assert opts[1].param_groups[0]["lr"] == opts[0].param_groups[0]["lr"]
    assert history[199][0]["bicubic"] == 5 and history[200][0]["bicubic"] == 0.05
    assert history[400][0]["bicubic"] == pytest.approx(5e-4) and history[399][0]["sparse"] == 0
    assert history[400][0]["centralized"] == 1 and history[400][0]["sparse"] == 5
    assert history[600][0]["bicubic"] == 5e-6 and history[1600][0]["bicubic"] == 5e-6  # the floor


# ---- crops ----

def test_crop_probabilities_avoid_the_border_and_follow_the_texture():
    image = np.full((128, 128, 3), 0.5)
    image[64:, 64:] = textured(64, 64)  # texture in the bottom-right quadrant only
    probs = kg.crop_probabilities(kg.gradient_map(image), 64).reshape(128, 128)
    assert abs(probs.sum() - 1) < 1e-12 and (probs >= 0).all()
    assert (probs[:32] == 0).all() and (probs[:, :32] == 0).all() and (probs[-32:] == 0).all()
    assert probs[64:, 64:].sum() > 0.5  # most of the mass where the gradients are
    flat = kg.crop_probabilities(kg.gradient_map(np.full((80, 80, 3), 0.3)), 26)
    assert abs(flat.sum() - 1) < 1e-12 and np.isfinite(flat).all()


@pytest.mark.parametrize("size", [64, 26])
def test_crop_corners_are_even_and_inside_the_image(size):
    shape = (101, 90)
    for centre in [0, 45, 89, 90 * 50 + 7, 101 * 90 - 1]:
        top, left = kg.crop_corner(centre, size, shape)
        assert top % 2 == 0 and left % 2 == 0
        assert 0 <= top <= shape[0] - size and 0 <= left <= shape[1] - size


# ---- the final kernel ----

def test_final_kernel_is_centred_for_x2_and_the_x4_kernel_composes_two_x2_steps():
    raw = gaussian_kernels(covariance(1.6, 0.9, 0.4), 13, centre=5.8)[0]
    k2, k4 = kg.final_kernels(raw)
    assert k2.shape == (17, 17) and k4.shape == (33, 33)
    # the cubic-spline shift is not renormalised (as in KernelGAN): the sum stays 1 to ~1e-6
    assert abs(k2.sum() - 1) < 1e-5 and abs(k4.sum() - 1) < 1e-12
    np.testing.assert_allclose(scipy.ndimage.center_of_mass(k2), [8.5, 8.5], atol=0.02)
    dilated = np.zeros((33, 33))
    dilated[::2, ::2] = k2
    full = scipy.signal.convolve2d(dilated, k2)[8:-8, 8:-8]  # (3*17-2) - 2*8 = 33
    np.testing.assert_allclose(k4, full / full.sum(), rtol=0, atol=1e-14)


def test_cut_negligible_subtracts_three_quarters_of_the_41st_largest_value():
    rng = np.random.default_rng(0)
    kernel = rng.random((13, 13))
    floor = 0.75 * np.sort(kernel.ravel())[-41]
    cut = kg.cut_negligible(kernel)
    assert abs(cut.sum() - 1) < 1e-12 and (cut[kernel <= floor] == 0).all()
    expected = np.clip(kernel - floor, 0, None)
    np.testing.assert_allclose(cut, expected / expected.sum(), rtol=1e-12)


# ---- estimation end to end ----

def test_estimate_kernel_runs_deterministically_and_returns_normalised_kernels():
    image = textured(100, 100)
    first = kg.estimate_kernel(image, iterations=3, channels=8, seed=3)
    second = kg.estimate_kernel(image, iterations=3, channels=8, seed=3)
    for k, again in zip(first, second):
        np.testing.assert_array_equal(k, again)
        assert np.isfinite(k).all() and abs(k.sum() - 1) < 1e-3 and k.shape[0] == k.shape[1] and k.shape[0] % 2
    assert first[1].shape[0] == 2 * first[0].shape[0] - 1


def test_a_training_step_moves_both_networks_and_reports_every_loss():
    torch.manual_seed(0)
    gan = kg.KernelGAN(channels=8)
    before_g = [p.detach().clone() for p in gan.G.parameters()]
    before_d = [p.detach().clone() for p in gan.D.parameters()]
    losses = gan.train_step(torch.rand(1, 3, 64, 64) * 2 - 1, torch.rand(1, 3, 26, 26) * 2 - 1)
    assert set(losses) == {"gan", "bicubic", "sum2one", "boundaries", "centralized", "sparse", "d"}
    assert all(np.isfinite(v) for v in losses.values())
    assert all(not torch.equal(a, b) for a, b in zip(before_g, gan.G.parameters()))
    assert all(not torch.equal(a, b) for a, b in zip(before_d, gan.D.parameters()))


def test_cli_writes_matlab_kernel_files(tmp_path):
    path = tmp_path / "photo.png"
    write_image(str(path), torch.from_numpy(textured(90, 96)).permute(2, 0, 1).float())
    kg.main([str(path), "--out", str(tmp_path / "k"), "--x4", "--iterations", "2"])
    k2 = scipy.io.loadmat(tmp_path / "k" / "photo_kernel_x2.mat")["Kernel"]
    k4 = scipy.io.loadmat(tmp_path / "k" / "photo_kernel_x4.mat")["Kernel"]
    assert abs(k2.sum() - 1) < 1e-3 and k4.shape[0] == 2 * k2.shape[0] - 1


def test_bad_inputs_raise_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="at least 64x64"):
        kg.estimate_kernel(textured(80, 70), iterations=1)  # 60x50 after shaving 10 pixels
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        kg.estimate_kernel(np.zeros((100, 100)), iterations=1)
    with pytest.raises(ValueError, match="iterations must be >= 1"):
        kg.estimate_kernel(textured(100, 100), iterations=0)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    with pytest.raises(ImageError, match="broken.png"):
        kg.main([str(broken), "--out", str(tmp_path / "k"), "--iterations", "1"])
