"""bsr.methods.realsr: RealSR's degradation pools, the kernel + noise degradation, the training step
and its state, checked against the official pipeline's definitions (docs/methods.md)."""
import copy
import re
import math

import numpy as np
import pytest
import scipy.io
import scipy.ndimage
import torch

from bsr import config
from bsr.archs.discriminators import VGGDiscriminator
from bsr.archs.vgg import VGG19
from bsr.data import ImageSet
from bsr.data.transforms import augment
from bsr.degradations import imresize
from bsr.kernels import covariance, dihedral, gaussian_kernels, read_kernel_files
from bsr.methods import realsr
from resume_check import run_split_and_once

TINY = ["realsr.generator.nf=8", "realsr.generator.nb=1", "realsr.generator.gc=4", "realsr.discriminator.ndf=8",
        "realsr.discriminator.n_layers=2", "train.batch_size=2"]


def tiny_method(tmp_path=None, *overrides, preset="smoke"):
    extra = []
    if tmp_path is not None:
        weights = tmp_path / "vgg19.pth"
        torch.save(VGG19("conv5_4").state_dict(), weights)  # random weights: the tests check the wiring
        extra = [f"realsr.vgg_weights={weights}"]
    cfg = config.load("realsr", preset, overrides=TINY + extra + list(overrides))
    return realsr.RealSR(cfg, "cpu")


def flat_and_textured(seed=0):
    """A (64, 96, 3) uint8 image: its top-left 32x32 window flat (grey 120 + tiny noise), the rest textured."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (64, 96, 3)).astype(np.uint8)
    image[:32, :32] = 120 + rng.integers(-2, 3, (32, 32, 3))
    return image


def kernel_pool(n=3, size=33):
    sigmas = [(2.0, 0.8, 0.5), (1.2, 1.2, 0.0), (2.5, 1.0, 1.3)][:n]
    return torch.cat([gaussian_kernels(covariance(*s), size) for s in sigmas]).float()


# ---- pools ----

def test_collect_noise_keeps_the_flat_windows_only():
    images = ImageSet([("a", flat_and_textured(0)), ("b", flat_and_textured(1))])
    patches = realsr.collect_noise(images, 32, max_var=20, min_mean=50)
    assert patches.shape == (2, 3, 32, 32) and patches.dtype == torch.uint8
    assert (patches.float().mean((1, 2, 3)) - 120).abs().max() < 1
    assert realsr.collect_noise(images, 16, 20, 50).shape[0] == 8  # the four 16x16 quarters of each flat window
    with pytest.raises(ValueError, match="no 32x32 window.*mean > 130"):
        realsr.collect_noise(images, 32, max_var=20, min_mean=130)


def test_kernels_are_read_from_kernelgan_files_and_centred_to_one_size(tmp_path):
    small, big = kernel_pool(1, 17)[0], kernel_pool(1, 33)[0]
    scipy.io.savemat(tmp_path / "a_kernel_x4.mat", {"Kernel": small.double().numpy()})
    scipy.io.savemat(tmp_path / "b_kernel_x4.mat", {"Kernel": big.double().numpy()})
    scipy.io.savemat(tmp_path / "b_kernel_x2.mat", {"Kernel": small.double().numpy()})
    kernels = read_kernel_files(str(tmp_path), 4)
    assert kernels.shape == (2, 33, 33)
    torch.testing.assert_close(kernels[0, 8:25, 8:25], small)
    assert kernels[0].sum() == pytest.approx(small.sum().item()) and torch.equal(kernels[1], big)
    with pytest.raises(FileNotFoundError, match="_kernel_x3.mat"):
        read_kernel_files(str(tmp_path), 3)


def test_dihedral_transforms_a_kernel_as_the_data_augmentation_transforms_an_image():
    kernel = torch.rand(5, 5, dtype=torch.float64)
    for mode in range(8):
        expected = torch.from_numpy(augment(kernel.numpy()[..., None], mode)[..., 0].copy())
        torch.testing.assert_close(dihedral(kernel, mode), expected)
    assert len({dihedral(kernel, m).numpy().tobytes() for m in range(8)}) == 8


# ---- degradation ----

def test_degradation_is_scipy_correlate_then_every_fourth_pixel_in_8_bit():
    method = tiny_method()
    method.kernels, method.noise = kernel_pool(1), torch.zeros(1, 3, 16, 16, dtype=torch.uint8)
    hr = torch.rand(2, 3, 64, 64, dtype=torch.float64).float()
    generators = [torch.Generator().manual_seed(s) for s in (0, 1)]
    modes = [torch.Generator().manual_seed(s) for s in (0, 1)]
    lr = method.degrade(hr, generators)
    assert lr.shape == (2, 3, 16, 16) and torch.equal(lr, (lr * 255).round() / 255)
    for b, g in enumerate(modes):
        torch.randint(1, (1,), generator=g)  # the pool pick (one kernel)
        kernel = dihedral(method.kernels[0], int(torch.randint(8, (1,), generator=g))).double().numpy()
        for c in range(3):  # RealSR's imresize with a kernel: scipy correlate (reflect = half-sample) + [::4]
            expected = scipy.ndimage.correlate(hr[b, c].double().numpy(), kernel, mode="reflect")[::4, ::4]
            expected = np.round(np.clip(expected, 0, 1) * 255) / 255
            np.testing.assert_allclose(lr[b, c].numpy(), expected, atol=1 / 255 + 1e-6)
            assert np.mean(np.abs(lr[b, c].numpy() - expected) < 1e-5) > 0.98  # rounding ties aside


def test_bicubic_track_degrades_with_matlab_bicubic():
    method = tiny_method(None, "realsr.track=bicubic")
    method.noise = torch.zeros(1, 3, 16, 16, dtype=torch.uint8)
    hr = torch.rand(1, 3, 64, 64)
    assert method.pools()[0] is None
    expected = (imresize(hr, scale=0.25).clamp(0, 1) * 255).round() / 255
    torch.testing.assert_close(method.degrade(hr, [torch.Generator()]), expected)


def test_noise_injection_adds_a_mean_free_crop_of_the_pool():
    method = tiny_method()
    rng = np.random.default_rng(0)
    method.kernels = kernel_pool()
    method.noise = torch.from_numpy(rng.integers(100, 140, (4, 3, 16, 16)).astype(np.uint8))
    lr = torch.full((3, 3, 8, 8), 0.5)
    noisy = method.inject_noise(lr, [torch.Generator().manual_seed(s) for s in range(3)])
    again = method.inject_noise(lr, [torch.Generator().manual_seed(s) for s in range(3)])
    assert torch.equal(noisy, again) and not torch.equal(noisy[0], noisy[1])
    torch.testing.assert_close(noisy.mean((2, 3)), torch.full((3, 3), 0.5), atol=1e-6, rtol=0)
    assert (noisy - 0.5).abs().max() > 5 / 255
    with pytest.raises(ValueError, match="realsr.noise.patch \\(16\\) must be at least the LR crop"):
        method.inject_noise(torch.zeros(1, 3, 20, 20), [torch.Generator()])


# ---- training ----

def test_training_step_trains_both_networks_on_margin_cut_crops(tmp_path):
    torch.manual_seed(0)
    method = tiny_method(tmp_path, "realsr.loss.perceptual=1.0")
    method.kernels, method.noise = kernel_pool(), torch.full((2, 3, 16, 16), 128, dtype=torch.uint8)
    before = {name: copy.deepcopy(net.state_dict()) for name, net in method.nets.items()}
    seen = {}
    net = method.nets["netG"]
    hook = net.register_forward_hook(lambda m, inputs, out: seen.update(lr=inputs[0].shape, sr=out.shape))
    logs = method.train_step({"hr": torch.rand(2, 3, 64, 64), "lr": torch.rand(2, 3, 16, 16),
                              "seed": torch.tensor([3, 4])}, step=0)
    hook.remove()
    assert seen == {"lr": (2, 3, 8, 8), "sr": (2, 3, 32, 32)}  # 64 - 2 x 16 margin, x4
    assert set(logs) == {"l1", "perceptual", "adversarial", "netD"} and all(math.isfinite(v) for v in logs.values())
    for name, net in method.nets.items():
        assert any(not torch.equal(before[name][k], v) for k, v in net.state_dict().items()), name
    assert all(p.requires_grad for p in method.nets["netD"].parameters())


def test_psnr_stage_has_no_discriminator_and_pools_are_checkpointed(monkeypatch):
    method = tiny_method(None, "realsr.loss.adversarial=0", "realsr.loss.pixel=1")
    assert set(method.nets) == {"netG"}
    kernels, noise = method.pools()  # KernelGAN (2 iterations in smoke) on the demo's LR photos
    assert kernels.shape[0] == 3 and kernels.shape[-1] % 2 == 1 and noise.shape[1:] == (3, 16, 16)
    state = method.extra_state()
    resumed = tiny_method(None, "realsr.loss.adversarial=0", "realsr.loss.pixel=1")
    resumed.load_extra_state(state)
    monkeypatch.setattr(realsr, "estimate_kernels", lambda *a: pytest.fail("KernelGAN must not rerun on resume"))
    assert torch.equal(resumed.pools()[0], kernels)
    out = resumed.validate({"lr": torch.rand(1, 3, 8, 8)})
    assert out["sr"].shape == (1, 3, 32, 32)
    centre = (out["kernel_est"].shape[-1] - 1) / 2  # moved to bsr's phase: the centre of mass on the grid centre
    np.testing.assert_allclose(scipy.ndimage.center_of_mass(out["kernel_est"].double().numpy()), [centre] * 2, atol=0.05)


@pytest.mark.parametrize("override, message", [
    ("realsr.track=motion", "realsr.track must be one of"),
    ("data.scale=3", r"'data.scale' must be one of \[2, 4\]"),
    ("realsr.margin=6", "realsr.margin \\(6\\) must be a multiple of data.scale"),
    ("realsr.margin=32", "more than twice it"),
])
def test_bad_configs_raise_clear_errors(override, message):
    with pytest.raises(ValueError, match=message):
        tiny_method(None, override)


def test_pretrained_generator_loads_from_an_old_esrgan_state_dict(tmp_path):
    source = tiny_method(None, "realsr.loss.adversarial=0").nets["netG"]
    old_names = {}
    for key, value in source.state_dict().items():  # the RRDB_PSNR_x4.pth layout (RealSR's starting point)
        key = re.sub(r"^body\.(\d+)\.rdb(\d)\.", r"RRDB_trunk.\1.RDB\2.", key)
        key = key.replace("conv_body.", "trunk_conv.").replace("conv_hr.", "HRconv.")
        old_names[re.sub(r"^conv_up(\d)\.", r"upconv\1.", key)] = value
    assert "RRDB_trunk.0.RDB1.conv1.weight" in old_names and "HRconv.weight" in old_names
    torch.save(old_names, tmp_path / "rrdb_psnr.pth")
    loaded = tiny_method(None, "realsr.loss.adversarial=0", f"realsr.pretrained={tmp_path / 'rrdb_psnr.pth'}")
    for key, value in source.state_dict().items():
        assert torch.equal(loaded.nets["netG"].state_dict()[key], value), key


def test_resume_is_bit_identical_and_reuses_the_checkpointed_kernel_pool(tmp_path, monkeypatch):
    def forbid_kernelgan():
        monkeypatch.setattr(realsr, "estimate_kernels", lambda *a: pytest.fail("KernelGAN must not rerun on resume"))

    once, split = run_split_and_once(tmp_path, "realsr", TINY, forbid_kernelgan)
    assert torch.equal(once["extra"]["kernels"], split["extra"]["kernels"])


def test_df2k_discriminator_is_esrgans_vgg128_and_trains():
    method = tiny_method(None, "realsr.discriminator.arch=vgg128")
    d = method.nets["netD"]
    assert isinstance(d, VGGDiscriminator) and d.features[1].conv.kernel_size == (4, 4)
    method.kernels, method.noise = kernel_pool(), torch.full((2, 3, 16, 16), 128, dtype=torch.uint8)
    logs = method.train_step({"hr": torch.rand(2, 3, 64, 64), "seed": torch.tensor([0, 1])}, step=0)
    assert {"adversarial", "netD"} <= set(logs)
    with pytest.raises(ValueError, match="realsr.discriminator.arch must be"):
        tiny_method(None, "realsr.discriminator.arch=unet")
