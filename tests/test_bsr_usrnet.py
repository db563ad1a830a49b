"""USRNet: official parameter names and sizes, training-data synthesis, evaluation protocol,
smooth periodic padding, and a short "learns" run on tiny data."""
import copy
import math

import pytest
import torch
import torch.nn.functional as F

import bsrops
from bsr import config, degradations
from bsr.archs.usrnet import USRNet as USRNetArch
from bsr.archs.usrnet import parameter_count
from bsr.archs.vgg import VGG19
from bsr.kernels import isotropic_gaussian_kernels
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
    for shift in (0.5, 1.5):
        shifted = usrnet_method.protocol_kernels(shift=shift)
        for k, s in ((kernels, 0.0), (shifted, shift)):
            centroid_row = (k[1] * grid.view(25, 1)).sum()
            assert abs(centroid_row - (12 - s)) < 1e-4  # an isotropic Gaussian: centroid moves by -shift


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
