"""USRNet: official parameter names and sizes, training-data synthesis, evaluation protocols
(kernel files, modcrop, 8-bit LR), presets, smooth periodic padding, and a short "learns" run on
tiny data."""
import copy
import math
import re

import numpy as np
import pytest
import scipy.io
import scipy.ndimage
import torch
import torch.nn.functional as F

import bsrops
from bsr import config, data, degradations
from bsr.archs.usrnet import USRNet as USRNetArch
from bsr.archs.usrnet import parameter_count
from bsr.archs.vgg import VGG19
from bsr.io import UntrustedFileError
from bsr.kernels import isotropic_gaussian_kernels, read_kernel_set
from bsr.methods import usrnet as usrnet_method

TINY = ["usrnet.n_iter=2", "usrnet.h_nc=8", "usrnet.nc=[8,8,8,8]", "usrnet.nb=1", "data.hr_patch=32",
        "train.batch_size=2", "eval.kernels=[0,8]", "eval.scales=[2,4]"]


def tiny_method(*overrides):
    cfg = config.load("usrnet", "demo", overrides=TINY + list(overrides))
    return usrnet_method.USRNet(cfg, "cpu")


def test_paper_and_tiny_sizes_and_official_names():
    paper = USRNetArch()  # K=8, h_nc=64, nc [64,128,256,512]: 17.02 M (USRNet README)
    assert round(parameter_count(paper) / 1e6, 2) == 17.02
    assert round(parameter_count(USRNetArch(6, 32, nc=(16, 32, 64, 64))) / 1e6, 2) == 0.59
    keys = set(paper.state_dict())
    for key in ("h.mlp.0.weight", "h.mlp.4.bias", "p.m_head.weight", "p.m_down1.0.res.0.weight",
                "p.m_down1.1.res.2.weight", "p.m_down1.2.weight", "p.m_body.1.res.2.weight",
                "p.m_up3.0.weight", "p.m_up1.2.res.0.weight", "p.m_tail.weight"):
        assert key in keys, key
    assert not any(k.startswith("p.") and k.endswith("bias") for k in keys)  # the prior is bias-free


def test_resunet_keeps_odd_sizes():
    net = USRNetArch(2, 8, nc=(4, 4, 4, 4), nb=1).p
    assert net(torch.rand(1, 4, 13, 18)).shape == (1, 3, 13, 18)


def test_identity_prior_without_noise_reproduces_the_data():
    """With prior=False and small α the unrolled steps approach the least-squares solution:
    re-degrading the output gives back the LR."""
    net = USRNetArch(4, 8, nc=(4, 4, 4, 4), nb=1)
    torch.nn.init.constant_(net.h.mlp[4].bias, -12.0)  # softplus(-12) ~ 6e-6: tiny α
    hr = torch.rand(1, 3, 32, 40, dtype=torch.float64)
    kernel = isotropic_gaussian_kernels([1.2], 25)
    lr = degradations.blur_downsample(hr, kernel, 2, padding="circular", flip=True)
    x = net.double()(lr, kernel, 2, torch.zeros(1, dtype=torch.float64), prior=False)
    relred = degradations.blur_downsample(x, kernel, 2, padding="circular", flip=True)
    assert torch.allclose(relred, lr, atol=1e-3)


def test_synthesis_shapes_determinism_and_rank_slices():
    method = tiny_method("usrnet.scales=[3]")
    hr = torch.rand(4, 3, 48, 48)
    lr, kernels, sigma, scale = method.synthesize(hr, step=5)
    assert scale == 3 and lr.shape == (4, 3, 16, 16) and kernels.shape == (4, 25, 25) and sigma.shape == (4,)
    assert torch.allclose(kernels.sum((1, 2)), torch.ones(4)) and ((sigma >= 0) & (sigma < 25 / 255)).all()
    again = method.synthesize(hr, step=5)
    assert torch.equal(lr, again[0]) and not torch.equal(lr, method.synthesize(hr, step=6)[0])
    assert torch.isfinite(method.synthesize(torch.rand(8, 3, 48, 48), step=124)[1]).all()  # was a NaN motion kernel
    method.world_size = 2
    halves = []
    for rank in range(2):
        method.rank = rank
        halves.append(method.synthesize(hr[2 * rank:2 * rank + 2], step=5))
    assert torch.equal(torch.cat([h[0] for h in halves]), lr)
    assert torch.equal(torch.cat([h[1] for h in halves]), kernels)


def test_protocol_kernels_and_centre_shift():
    kernels = usrnet_method.protocol_kernels()
    assert kernels.shape == (12, 25, 25) and torch.allclose(kernels.sum((1, 2)), torch.ones(12))
    grid = torch.arange(25.0)
    for scale in (1, 2, 4):
        shifted = tiny_method("eval.shift_kernels=true").protocol_kernels(scale)
        centroid_row = (shifted[1] * grid.view(25, 1)).sum()
        assert abs(centroid_row - (12 - (scale - 1) / 2)) < 1e-4  # an isotropic Gaussian: centroid moves by -shift


def test_validation_degradations_follow_the_protocol():
    method = tiny_method("eval.noise=0.03")
    assert method.modcrop_multiple() == 8 and method.border(4) == 16
    hr = torch.rand(1, 3, 32, 40)
    items = method.degrade_for_validation(hr, 0)
    assert [i["tag"] for i in items] == ["x2_k0", "x2_k8", "x4_k0", "x4_k8"]
    item = items[2]
    clean = bsrops.blur_downsample(hr, item["kernel"], stride=4, padding="circular", flip=True)
    assert item["lr"].shape == (1, 3, 8, 10) and item["noise_level"] == 0.03
    assert 0.02 < (item["lr"] - clean).std() < 0.04
    assert torch.equal(item["lr"], method.degrade_for_validation(hr, 0)[2]["lr"])
    with pytest.raises(ValueError, match="non-blind"):
        method.super_resolve(item["lr"])


def test_infer_pads_to_a_smooth_periodic_image_and_crops_back():
    x = torch.rand(1, 3, 5, 7, dtype=torch.float64)
    padded = usrnet_method.smooth_periodic_pad(x, 24, 19)
    assert padded.shape == (1, 3, 24, 19) and torch.equal(padded[..., :5, :7], x)

    def seam_steps(t, n, dim):
        """|steps| from the last original sample through the added ones and the wrap back to the first."""
        path = torch.cat((t.narrow(dim, n - 1, t.shape[dim] - n + 1), t.narrow(dim, 0, 1)), dim)
        return path.diff(dim=dim).abs()

    # a raised cosine over extra + 1 intervals never steps by more than π/2 / (extra + 1) of the gap
    for t, n, dim, extra in ((padded[..., :5, :], 7, -1, 12), (padded, 5, -2, 19)):
        gap = (t.narrow(dim, n - 1, 1) - t.narrow(dim, 0, 1)).abs()
        assert (seam_steps(t, n, dim) <= math.pi / 2 / (extra + 1) * gap + 1e-12).all()
    method = tiny_method()
    kernel = isotropic_gaussian_kernels([1.0], 25)[0].float()
    assert method.infer(torch.rand(1, 3, 11, 9), kernel, 0.01).shape == (1, 3, 44, 36)


def test_usrnet_learns_on_tiny_data():
    torch.manual_seed(0)
    method = tiny_method("train.lr=2e-3", "usrnet.init_identity_skip=false")  # KAIR init: output ~0 at first
    hr = F.avg_pool2d(torch.rand(2, 3, 64, 64), 2)  # smooth-ish 32x32 crops
    lr, kernels, sigma, scale = method.synthesize(hr, step=0)

    def loss():
        with torch.no_grad():
            return F.l1_loss(method.nets["usrnet"](lr, kernels, scale, sigma), hr).item()

    before = loss()
    for _ in range(25):  # the optimisation of train_step, on one fixed synthesised batch
        method.optimize(F.l1_loss(method.nets["usrnet"](lr, kernels, scale, sigma), hr))
    assert loss() < 0.5 * before


def usrgan_method(tmp_path, *overrides):
    weights = tmp_path / "vgg19.pth"
    torch.save(VGG19("conv5_4").state_dict(), weights)  # random weights: tests only check the wiring
    return tiny_method("usrnet.gan.enabled=true", f"usrnet.gan.vgg_weights={weights}",
                       "usrnet.gan.discriminator.ndf=8", "usrnet.gan.discriminator.n_layers=2", *overrides)


def test_usrgan_step_updates_generator_and_discriminator(tmp_path):
    torch.manual_seed(0)
    method = usrgan_method(tmp_path)
    before = {name: copy.deepcopy(net.state_dict()) for name, net in method.nets.items()}
    logs = method.train_step({"hr": torch.rand(2, 3, 32, 32)}, step=0)
    assert set(logs) == {"l1", "perceptual", "adversarial", "netD"} and all(math.isfinite(v) for v in logs.values())
    for name in ("usrnet", "netD"):
        after = method.nets[name].state_dict()
        assert any(not torch.equal(before[name][k], after[k]) for k in after), name
    assert all(p.requires_grad for p in method.nets["netD"].parameters())  # unfrozen after the G step


@pytest.mark.parametrize("adversarial, same", [(0.0, True), (0.5, False)])
def test_usrgan_generator_update_is_l1_plus_the_weighted_gan_terms(tmp_path, adversarial, same):
    """With the perceptual and adversarial weights 0 the generator takes exactly the plain USRNet
    step (the discriminator never leaks into it); with an adversarial weight it does not."""
    hr = torch.rand(2, 3, 32, 32)
    updated = []
    for method in (tiny_method(), usrgan_method(tmp_path, "usrnet.gan.perceptual=0", f"usrnet.gan.adversarial={adversarial}")):
        torch.manual_seed(0)
        method.nets["usrnet"].load_state_dict(tiny_method().nets["usrnet"].state_dict())
        method.train_step({"hr": hr}, step=3)
        updated.append(method.nets["usrnet"].state_dict())
    assert all(torch.equal(updated[0][k], updated[1][k]) for k in updated[0]) == same


def test_usrgan_starts_from_a_pretrained_usrnet(tmp_path):
    source = tiny_method()
    torch.save({"nets": {"usrnet": source.nets["usrnet"].state_dict()}}, tmp_path / "last.pt")
    method = usrgan_method(tmp_path, f"usrnet.pretrained={tmp_path / 'last.pt'}")
    for key, value in source.nets["usrnet"].state_dict().items():
        assert torch.equal(method.nets["usrnet"].state_dict()[key], value), key


def test_infer_at_scale_1_pads_a_small_tile_to_hold_the_kernel():
    """A 5x7 tile at x1 pads to 32x32 (8-pixel multiples covering the 25x25 kernel), not 24: before, the
    FFT data term failed on a kernel larger than the image."""
    method = tiny_method("data.scale=1", "usrnet.scales=[1]", "eval.scales=[1]")
    kernel = isotropic_gaussian_kernels([1.0], 25)[0].float()
    sr = method.infer(torch.rand(1, 3, 5, 7), kernel, 0.0)
    assert sr.shape == (1, 3, 5, 7) and torch.isfinite(sr).all()


def official_kernel_cells(kernels):
    """A MATLAB 1 x N cell array of float32 kernels, the layout of KAIR's kernels_12.mat."""
    cells = np.empty((1, len(kernels)), dtype=object)
    for i, k in enumerate(kernels):
        cells[0, i] = np.asarray(k, dtype=np.float32)
    return cells


def gaussian_set(sigmas):
    return isotropic_gaussian_kernels(sigmas, 25).float().numpy()


def test_kernel_set_files_in_the_official_layout_and_others(tmp_path):
    kernels = gaussian_set([0.7, 1.2, 2.0])
    scipy.io.savemat(tmp_path / "kernels_12.mat", {"kernels": official_kernel_cells(kernels)})
    np.save(tmp_path / "set.npy", kernels)
    np.savez(tmp_path / "set.npz", anything=kernels)
    for name in ("kernels_12.mat", "set.npy", "set.npz"):
        loaded = read_kernel_set(str(tmp_path / name))
        assert loaded.dtype == torch.float64 and torch.equal(loaded, torch.from_numpy(kernels).double()), name


@pytest.mark.parametrize("variables, found", [
    ({"K": np.zeros((1, 25, 25))}, "found ['K']"),
    ({"kernels": official_kernel_cells([np.eye(25), np.eye(21)])}, "found cells of float32 (21, 21), float32 (25, 25)"),
    ({"kernels": np.zeros((2, 3, 25, 25))}, "found a float64 array of shape (2, 3, 25, 25)"),
    ({"kernels": np.zeros((2, 25, 24))}, "found shape (25, 24)"),
])
def test_kernel_set_file_in_another_layout_says_what_it_holds(tmp_path, variables, found):
    scipy.io.savemat(tmp_path / "k.mat", variables)
    with pytest.raises(UntrustedFileError, match=re.escape(found)):
        read_kernel_set(str(tmp_path / "k.mat"), "eval.kernel_file")


def test_evaluation_uses_the_kernel_file_and_warns_without_one(tmp_path, capsys):
    kernels = gaussian_set([0.7, 1.2, 2.0])
    path = tmp_path / "kernels_12.mat"
    scipy.io.savemat(path, {"kernels": official_kernel_cells(kernels)})
    method = tiny_method(f"eval.kernel_file={path}", "eval.kernels=[2,0]", "eval.scales=[4]", "eval.noise=0",
                         "eval.shift_kernels=false")
    hr = torch.rand(1, 3, 32, 40)
    items = method.degrade_for_validation(hr, 0)
    assert [i["tag"] for i in items] == ["x4_k2", "x4_k0"] and "warning" not in capsys.readouterr().err
    for item, j in zip(items, (2, 0)):
        assert torch.equal(item["kernel"], torch.from_numpy(kernels[j]))
        assert torch.equal(item["lr"], degradations.blur_downsample(hr, item["kernel"], 4, padding="circular", flip=True))
    with pytest.raises(ValueError, match="index 5 is outside the 3"):
        tiny_method(f"eval.kernel_file={path}", "eval.kernels=[5]").degrade_for_validation(hr, 0)
    tiny_method().degrade_for_validation(hr, 0)
    assert "approximate Table 1 kernels" in capsys.readouterr().err


def test_table1_modcrops_each_scale_to_lcm_of_scale_and_8(tmp_path):
    data.write_image(str(tmp_path / "val" / "a.png"), torch.rand(3, 60, 60))
    method = tiny_method("eval.scales=[2,3,4]", "eval.kernels=[0]")
    items = data.validation_items(method.cfg, method, str(tmp_path / "val"))
    sizes = {i["scale"]: (tuple(i["hr"].shape[-2:]), tuple(i["lr"].shape[-2:])) for i in items}
    assert sizes == {2: ((56, 56), (28, 28)), 3: ((48, 48), (16, 16)), 4: ((56, 56), (14, 14))}
    assert [method.border(s) for s in (2, 3, 4)] == [4, 9, 16]


def test_quantize_lr_truncates_as_kair_uint8_convolution():
    """KAIR blurs the uint8 HR into a uint8 image (scipy.ndimage.convolve, wrap): the 8-bit value truncated."""
    for preset, quantized in (("paper", True), ("tiny", True), ("demo", False)):
        assert config.load("usrnet", preset).usrnet.quantize_lr == quantized
    method = tiny_method("usrnet.quantize_lr=true")
    kernel = isotropic_gaussian_kernels([1.6], 25)[0]
    hr8 = np.random.default_rng(0).integers(0, 256, (40, 48, 3), dtype=np.uint8)
    official = scipy.ndimage.convolve(hr8, kernel.numpy()[..., None], mode="wrap")[0::2, 0::2]
    hr = torch.from_numpy(hr8).permute(2, 0, 1)[None].float() / 255
    lr = method.blur_downsample(hr, kernel.float(), 2)
    ours = (lr[0].permute(1, 2, 0) * 255).round().numpy().astype(np.uint8)
    assert np.abs(ours.astype(int) - official).max() <= 1 and (ours != official).mean() < 0.01
    assert torch.equal(lr * 255, (lr * 255).round())
    assert not torch.equal(lr, tiny_method().blur_downsample(hr, kernel.float(), 2))
    flat = method.blur_downsample(torch.full((1, 3, 32, 32), 100 / 255), kernel.float(), 2)
    assert torch.equal((flat * 255).round(), torch.full_like(flat, 100.0))  # not 99 by float rounding


def official_usrnet_shapes(n_iter, h_nc, nc, nb):
    """Parameter names and shapes of cszn/USRNet's network_usrnet(_v1).USRNet, written out from its
    definition (KAIR's B.sequential flattening, 'CRC' residual blocks, bias-free ResUNet)."""
    shapes = {"h.mlp.0.weight": (h_nc, 2, 1, 1), "h.mlp.0.bias": (h_nc,), "h.mlp.2.weight": (h_nc, h_nc, 1, 1),
              "h.mlp.2.bias": (h_nc,), "h.mlp.4.weight": (2 * n_iter, h_nc, 1, 1), "h.mlp.4.bias": (2 * n_iter,),
              "p.m_head.weight": (nc[0], 4, 3, 3), "p.m_tail.weight": (3, nc[0], 3, 3)}

    def blocks(prefix, first, channels):
        for b in range(first, first + nb):
            for conv in (0, 2):
                shapes[f"{prefix}.{b}.res.{conv}.weight"] = (channels, channels, 3, 3)

    for level in range(3):
        blocks(f"p.m_down{level + 1}", 0, nc[level])
        shapes[f"p.m_down{level + 1}.{nb}.weight"] = (nc[level + 1], nc[level], 2, 2)
        shapes[f"p.m_up{level + 1}.0.weight"] = (nc[level + 1], nc[level], 2, 2)  # ConvTranspose2d: (in, out, 2, 2)
        blocks(f"p.m_up{level + 1}", 1, nc[level])
    blocks("p.m_body", 0, nc[3])
    return shapes


@pytest.mark.parametrize("preset", ["tiny", "tiny-usrgan"])
def test_tiny_presets_load_the_official_usrnet_tiny_layout(tmp_path, preset):
    cfg = config.load("usrnet", preset)
    assert (cfg.usrnet.gan.enabled, list(cfg.eval.scales)) == ((True, [4]) if preset == "tiny-usrgan" else (False, [2, 3, 4]))
    method = usrnet_method.USRNet(cfg, "cpu", for_training=False)
    assert round(parameter_count(method.nets["usrnet"]) / 1e6, 2) == 0.59  # USRNet README: USRNet-tiny 0.59 M
    torch.manual_seed(0)
    official = {k: torch.randn(shape) for k, shape in official_usrnet_shapes(6, 32, (16, 32, 64, 64), 2).items()}
    torch.save(official, tmp_path / "usrnet_tiny.pth")
    method.load_weights(str(tmp_path / "usrnet_tiny.pth"))
    assert all(torch.equal(method.nets["usrnet"].state_dict()[k], v) for k, v in official.items())


def test_bicubic_protocol_follows_main_test_bicubic(tmp_path):
    kernels = gaussian_set([0.9, 1.3, 1.7])  # stand-ins for the x2, x3, x4 kernels of kernels_bicubicx234.mat
    path = tmp_path / "kernels_bicubicx234.mat"
    scipy.io.savemat(path, {"kernels": official_kernel_cells(kernels)})
    with pytest.raises(ValueError, match="kernels_bicubicx234.mat"):
        tiny_method("eval.protocol=bicubic").degrade_for_validation(torch.rand(1, 3, 30, 30), 0)
    method = tiny_method("eval.protocol=bicubic", f"eval.kernel_file={path}", "eval.scales=[2,3,4]", "eval.noise=0")
    assert method.modcrop_multiple() == 1 and [method.border(s) for s in (2, 3, 4)] == [2, 3, 4]
    hr = torch.rand(1, 3, 31, 34)
    items = method.degrade_for_validation(hr, 0)
    for item, scale in zip(items, (2, 3, 4)):
        hr_s = usrnet_method.modcrop(hr, scale)
        assert torch.equal(item["hr"], hr_s) and torch.equal(item["lr"], degradations.imresize(hr_s, 1 / scale))
        assert torch.equal(item["kernel"], torch.from_numpy(kernels[scale - 2])) and item["tag"] == f"x{scale}_bicubic"
        assert method.validate(item)["sr"].shape == hr_s.shape
    with pytest.raises(ValueError, match="scales"):
        tiny_method("eval.protocol=bicubic", "eval.scales=[1]")


def test_a_kernel_file_holding_pickles_is_refused(tmp_path):
    path = tmp_path / "kernels.npy"
    np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(UntrustedFileError, match="kernels.npy"):
        tiny_method(f"eval.kernel_file={path}").degrade_for_validation(torch.rand(1, 3, 32, 32), 0)
