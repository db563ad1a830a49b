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
from bsr.config import ConfigError
from bsr.data import ImageSet, UnpairedCrops
from bsr.data.transforms import augment
from bsr.degradations import imresize
from bsr.kernels import covariance, decimation_centre, dihedral, gaussian_kernels, read_kernel_files
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


def test_kernel_pool_reads_kernelgans_per_image_folders_and_flat_files(tmp_path):
    """KernelGAN writes <out>/<image>/<image>_kernel_x4.mat (a taken folder name gets 'l's appended)."""
    kernels = kernel_pool(3, 33)
    for folder, (name, kernel) in zip(["a", "bl", None], zip("abc", kernels)):
        target = tmp_path / folder if folder else tmp_path
        target.mkdir(exist_ok=True)
        scipy.io.savemat(target / f"{name}_kernel_x4.mat", {"Kernel": kernel.double().numpy()})
    pool = read_kernel_files(str(tmp_path), 4)
    assert pool.shape == (3, 33, 33)
    assert {k.numpy().tobytes() for k in pool} == {k.numpy().tobytes() for k in kernels}
    with pytest.raises(FileNotFoundError, match="or its sub-folders"):
        read_kernel_files(str(tmp_path / "a"), 2)


def test_kernelgan_of_the_pool_runs_on_the_runs_device(monkeypatch):
    devices = []

    def fake_kernelgan(image, *args, device="cpu", **kwargs):
        devices.append(device)
        return np.eye(17) / 17, np.eye(33) / 33

    monkeypatch.setattr(realsr.kernelgan, "estimate_kernel", fake_kernelgan)
    method = tiny_method()
    method.device = torch.device("cuda", 1)  # not used: KernelGAN is faked
    kernels, _ = method.pools()
    assert kernels.shape == (3, 33, 33) and kernels.device.type == "cpu"
    assert devices == [torch.device("cuda", 1)] * 3


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_kernelgan_on_a_gpu_leaves_the_callers_cuda_rng_alone():
    image = np.random.default_rng(0).random((100, 100, 3))
    state = torch.cuda.get_rng_state()
    k2, k4 = realsr.kernelgan.estimate_kernel(image, iterations=3, channels=8, seed=3, device="cuda")
    assert torch.equal(torch.cuda.get_rng_state(), state)
    assert abs(k2.sum() - 1) < 1e-3 and abs(k4.sum() - 1) < 1e-3


def test_dihedral_transforms_a_kernel_as_the_data_augmentation_transforms_an_image():
    kernel = torch.rand(5, 5, dtype=torch.float64)
    for mode in range(8):
        expected = torch.from_numpy(augment(kernel.numpy()[..., None], mode)[..., 0].copy())
        torch.testing.assert_close(dihedral(kernel, mode), expected)
    assert len({dihedral(kernel, m).numpy().tobytes() for m in range(8)}) == 8


# ---- degradation ----

def official_lr(hr, kernel):
    """RealSR's imresize with a kernel (create_kernel_dataset.py): scipy correlate (reflect = half-sample
    symmetric) of each channel, rows/cols 0, 4, 8, ..., in 8 bit -> (3, H/4, W/4) float64."""
    lr = [scipy.ndimage.correlate(channel.double().numpy(), kernel.double().numpy(), mode="reflect")[::4, ::4]
          for channel in hr]
    return torch.from_numpy(np.round(np.clip(np.stack(lr), 0, 1) * 255) / 255)


def assert_8bit_close(actual, expected):
    """Equal up to float32 rounding ties of the 8-bit quantisation (one level at a few pixels)."""
    actual, expected = actual.double(), expected.double()
    torch.testing.assert_close(actual, expected, atol=1 / 255 + 1e-6, rtol=0)
    assert ((actual - expected).abs() < 1e-5).double().mean() > 0.98


def test_degradation_is_scipy_correlate_then_every_fourth_pixel_in_8_bit():
    """The pool kernel as it is (the official LR files are made before any flip/rotation)."""
    method = tiny_method()
    method.kernels, method.noise = kernel_pool(1), torch.zeros(1, 3, 16, 16, dtype=torch.uint8)
    hr = torch.rand(2, 3, 64, 64, dtype=torch.float64).float()
    lr = method.degrade(hr, [torch.Generator().manual_seed(s) for s in (0, 1)])
    assert lr.shape == (2, 3, 16, 16) and torch.equal(lr, (lr * 255).round() / 255)
    for b in range(2):
        assert_8bit_close(lr[b], official_lr(hr[b], method.kernels[0]))


def kernelgan_like_kernel():
    """(1, 33, 33): an anisotropic, rotated Gaussian centred where KernelGAN puts a x4 kernel's centre of
    mass, the middle of the 4 x 4 cell (1.5 pixels right of and below the grid centre)."""
    return gaussian_kernels(covariance(3.0, 1.2, 0.6), 33, centre=decimation_centre(33, 4)).float()


def test_every_flip_rotation_keeps_the_lr_aligned_with_its_hr():
    """For each of the 8 dihedral transforms: the step's LR is the transform of the LR of the crop
    (degrade, then augment the pair, as the official dataset), for a kernel centred off the pixel grid."""
    method = tiny_method()
    method.kernels, method.noise = kernelgan_like_kernel(), torch.zeros(1, 3, 16, 16, dtype=torch.uint8)
    hr = torch.rand(1, 3, 64, 64, dtype=torch.float64).float()
    crop, crop_lr = hr[0, :, 16:-16, 16:-16], official_lr(hr[0], method.kernels[0])[:, 4:-4, 4:-4]
    seen = set()
    for seed in range(64):
        pair_hr, pair_lr = method.training_pair(hr, [torch.Generator().manual_seed(seed)])
        mode = next(m for m in range(8) if torch.equal(pair_hr[0], dihedral(crop, m)))
        assert_8bit_close(pair_lr[0], dihedral(crop_lr, mode))
        seen.add(mode)
    assert seen == set(range(8))


def test_realsr_hr_crops_come_unflipped_from_the_loader():
    """The method flips its pairs itself: the engine's unpaired HR crops are plain crops for RealSR."""
    rng = np.random.default_rng(0)
    image, lr_image = rng.integers(0, 256, (24, 24, 3)).astype(np.uint8), np.zeros((8, 8, 3), np.uint8)
    crops = {flag: UnpairedCrops(ImageSet([("a", image)]), ImageSet([("b", lr_image)]), 16, 4, augment_hr=flag)
             for flag in (True, False)}
    windows = [image[t:t + 16, l:l + 16] for t in range(9) for l in range(9)]

    def is_plain_crop(sample):
        hr = (sample["hr"].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        return any(np.array_equal(hr, w) for w in windows)

    assert realsr.RealSR.augment_crops is False
    assert all(is_plain_crop(crops[False][(0, seed)]) for seed in range(16))
    assert not all(is_plain_crop(crops[True][(0, seed)]) for seed in range(16))


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


@pytest.mark.parametrize("preset", ["paper", "paper-df2k"])
def test_paper_presets_start_from_the_psnr_rrdb_or_say_so(tmp_path, preset):
    def build(*overrides):
        return tiny_method(None, "realsr.loss.perceptual=0", *overrides, preset=preset).nets["netG"]

    with pytest.raises(ConfigError, match="--preset paper-psnr.*realsr.pretrained=FILE.*realsr.pretrained=none"):
        build()
    source = build("realsr.pretrained=none")
    torch.save(source.state_dict(), tmp_path / "rrdb_psnr.pth")
    loaded = build(f"realsr.pretrained={tmp_path / 'rrdb_psnr.pth'}")
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in source.state_dict().items())
    method = realsr.RealSR(config.load("realsr", preset, overrides=TINY), "cpu", for_training=False)
    assert "netG" in method.nets  # evaluation and inference need no starting weights


def test_paper_psnr_is_esrgans_psnr_stage_on_bicubic_lr_without_noise(monkeypatch):
    cfg = config.load("realsr", "paper-psnr")
    t, r = cfg.train, cfg.realsr
    assert (t.lr, t.milestones, t.gamma, t.iters, t.batch_size) == (2e-4, [200000, 400000, 600000, 800000], 0.5,
                                                                     1000000, 16)
    assert cfg.data.hr_patch - 2 * r.margin == 128 and (r.generator.nf, r.generator.nb, r.generator.gc) == (64, 23, 32)
    assert r.track == "bicubic" and not r.noise.inject and r.pretrained is None
    assert dict(r.loss) == {"pixel": 1.0, "perceptual": 0.0, "adversarial": 0.0}
    monkeypatch.setattr(realsr, "collect_noise", lambda *a: pytest.fail("no noise pool without realsr.noise.inject"))
    method = tiny_method(None, preset="paper-psnr")
    assert set(method.nets) == {"netG"}
    hr = torch.rand(2, 3, 64, 64)
    pair_hr, pair_lr = method.training_pair(hr, [torch.Generator().manual_seed(s) for s in (0, 1)])
    expected = (imresize(hr, scale=0.25).clamp(0, 1) * 255).round() / 255
    for b in range(2):
        mode = next(m for m in range(8) if torch.equal(pair_hr[b], dihedral(hr[b, :, 16:-16, 16:-16], m)))
        torch.testing.assert_close(pair_lr[b], dihedral(expected[b, :, 4:-4, 4:-4], mode))
    logs = method.train_step({"hr": hr, "seed": torch.tensor([0, 1])}, step=0)
    assert set(logs) == {"l1"} and math.isfinite(logs["l1"])


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
