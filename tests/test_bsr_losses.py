"""bsr.losses and bsr.archs.vgg: values on simple inputs, VGG19 layout and weight loading (random weights only)."""
import math

import pytest
import torch
import torch.nn.functional as F

from bsr import losses
from bsr.archs.vgg import VGG19, VGG19_LAYERS


def bce(logit, label):
    """Binary cross-entropy of one logit, written out."""
    p = 1 / (1 + math.exp(-logit))
    return -(label * math.log(p) + (1 - label) * math.log(1 - p))


# ---------------------------------------------------------------------------------------------- VGG19

def test_vgg19_has_torchvisions_layout():
    vgg = VGG19("pool5")
    assert len(VGG19_LAYERS) == 37 and VGG19_LAYERS.index("conv5_4") == 34 and VGG19_LAYERS.index("relu5_4") == 35
    assert sum(p.numel() for p in vgg.parameters()) == 20_024_384  # torchvision vgg19().features
    convs = [key for key in vgg.features.state_dict() if key.endswith("weight")]
    assert convs[0] == "0.weight" and convs[-1] == "34.weight" and len(convs) == 16
    assert len(VGG19("conv5_4").features) == 35  # ESRGAN / PDM features[:35]


def test_vgg19_loads_a_torchvision_layout_state_dict(tmp_path):
    source = VGG19("conv4_1")  # small: the full layout is checked above
    state = {f"features.{key}": value for key, value in source.features.state_dict().items()}
    state["classifier.0.weight"] = torch.zeros(2, 2)  # present in torchvision's file, ignored
    path = tmp_path / "vgg19.pth"
    torch.save(state, path)
    loaded = VGG19("conv3_4", weights=str(path))
    x = torch.rand(1, 3, 16, 18)
    expected = source.features[:VGG19_LAYERS.index("conv3_4") + 1](x)
    features = loaded(x, ["conv3_4", "relu3_2"])
    assert torch.equal(features["conv3_4"], expected)
    assert (features["conv3_4"] < 0).any() and (features["relu3_2"] >= 0).all()  # conv = before the ReLU
    assert not torch.equal(VGG19("conv3_4")(x)["conv3_4"], expected)


def test_vgg19_missing_or_wrong_weights_give_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="VGG19 weights not found at .*nowhere.pth"):
        VGG19(weights=str(tmp_path / "nowhere.pth"))
    torch.save({"features.0.weight": torch.zeros(64, 3, 3, 3)}, tmp_path / "partial.pth")
    with pytest.raises(ValueError, match="partial.pth.* lacks features.0.bias"):
        VGG19(weights=str(tmp_path / "partial.pth"))
    with pytest.raises(ValueError, match="last_layer must be one of"):
        VGG19("conv6_1")
    with pytest.raises(ValueError, match="not among the first"):
        VGG19("relu2_1")(torch.rand(1, 3, 8, 8), ["conv5_4"])


# ---------------------------------------------------------------------------------------------- pixel, perceptual

def test_pixel_losses():
    pred, target = torch.zeros(2, 3), torch.full((2, 3), 3.0)
    assert losses.PixelLoss("l1")(pred, target).item() == 3
    assert losses.PixelLoss("mse", loss_weight=0.5)(pred, target).item() == 4.5
    assert abs(losses.PixelLoss("charbonnier")(pred, target).item() - math.sqrt(9 + 1e-12)) < 1e-6
    assert losses.charbonnier_loss(pred, pred, eps=1e-6).item() == pytest.approx(1e-3)
    with pytest.raises(ValueError, match="kind must be one of"):
        losses.PixelLoss("l3")


def test_perceptual_loss_on_random_weights():
    vgg = VGG19("relu2_2")
    loss = losses.PerceptualLoss({"conv2_2": 1.0, "relu1_1": 0.5}, vgg=vgg, loss_weight=2.0)
    pred = torch.rand(2, 3, 12, 14, requires_grad=True)
    target = torch.rand(2, 3, 12, 14)
    value = loss(pred, target)
    mean, std = torch.tensor(losses.IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(losses.IMAGENET_STD).view(1, 3, 1, 1)
    fp, ft = vgg((pred - mean) / std, ["conv2_2", "relu1_1"]), vgg((target - mean) / std, ["conv2_2", "relu1_1"])
    expected = 2.0 * (F.l1_loss(fp["conv2_2"], ft["conv2_2"]) + 0.5 * F.l1_loss(fp["relu1_1"], ft["relu1_1"]))
    assert torch.allclose(value, expected)
    value.backward()
    assert pred.grad.abs().sum() > 0 and all(p.grad is None and not p.requires_grad for p in vgg.parameters())
    assert loss(target, target).item() == 0
    loss.train()
    assert not loss.vgg.training
    raw = losses.PerceptualLoss({"conv1_2": 1.0}, vgg=VGG19("conv1_2"), use_input_norm=False, criterion="mse")
    assert torch.allclose(raw(pred, target), F.mse_loss(raw.vgg(pred)["conv1_2"], raw.vgg(target)["conv1_2"]))


def test_perceptual_loss_errors(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(FileNotFoundError, match="checkpoints/vgg19-dcbb9e9d.pth"):
        losses.PerceptualLoss()  # default: the torch hub cache, which is empty here
    with pytest.raises(ValueError, match="layer names must be among"):
        losses.PerceptualLoss({"conv9_9": 1.0}, vgg=VGG19("conv1_1"))


# ---------------------------------------------------------------------------------------------- GAN

@pytest.mark.parametrize("gan_type,pred,target,is_disc,expected", [
    ("vanilla", 0.0, True, True, math.log(2)),
    ("vanilla", 2.0, False, True, bce(2.0, 0)),
    ("lsgan", 0.25, True, True, 0.75**2),
    ("lsgan", 0.25, False, True, 0.25**2),
    ("lsgan", 0.25, 0.5, False, 0.25**2),  # a numeric target is the label itself
    ("l1", 0.25, True, True, 0.75),
    ("hinge", 0.5, True, True, 0.5),
    ("hinge", 0.5, False, True, 1.5),
    ("hinge", 0.5, True, False, -0.5),
    ("wgan", 0.5, True, True, -0.5),
    ("wgan", 0.5, False, True, 0.5),
    ("wgan_softplus", 0.0, True, True, math.log(2)),
])
def test_gan_loss_values(gan_type, pred, target, is_disc, expected):
    loss = losses.GANLoss(gan_type)(torch.full((2, 1, 3, 3), pred, dtype=torch.float64), target, is_disc)
    assert loss.item() == pytest.approx(expected, abs=1e-12)


def test_gan_loss_weight_applies_to_the_generator_only():
    pred = torch.full((4, 1), 0.3)
    loss = losses.GANLoss("lsgan", loss_weight=0.05)
    assert loss(pred, True, is_disc=False).item() == pytest.approx(0.05 * 0.49)
    assert loss(pred, True, is_disc=True).item() == pytest.approx(0.49)
    with pytest.raises(ValueError, match="needs target True or False"):
        losses.GANLoss("hinge")(pred, 0.5)
    with pytest.raises(ValueError, match="gan_type must be one of"):
        losses.GANLoss("ragan")


def test_relativistic_gan_loss():
    real = torch.tensor([2.0, 0.0], dtype=torch.float64, requires_grad=True)
    fake = torch.tensor([1.0, -1.0], dtype=torch.float64, requires_grad=True)
    ragan = losses.RelativisticGANLoss(loss_weight=0.005)
    d_loss = ragan(real, fake, is_disc=True)
    expected_d = (bce(2, 1) + bce(0, 1)) / 4 + (bce(0, 0) + bce(-2, 0)) / 4  # real - mean(fake) = real - 0, fake - mean(real) = fake - 1
    assert d_loss.item() == pytest.approx(expected_d, abs=1e-12)
    g_loss = ragan(real, fake)
    expected_g = 0.005 * ((bce(2, 0) + bce(0, 0)) / 4 + (bce(0, 1) + bce(-2, 1)) / 4)
    assert g_loss.item() == pytest.approx(expected_g, abs=1e-12)
    g_loss.backward()
    assert real.grad is None and fake.grad.abs().sum() > 0  # D(real) is detached for G
