"""PDM networks: degradation model (netK, netN, quantisers), EDSR, RRDBNet, LPIPS.

The blur of KernelModel is checked against PDM's own formula (reflect pad + F.unfold with
stride s + weighted tap sum, docs/methods.md) in float64; official state-dict layouts
are written from the documented key patterns (docs/methods.md), not from our modules.
"""
import math

import pytest
import torch
import torch.nn.functional as F

import bsrops
from bsr.archs.edsr import EDSR
from bsr.archs.lpips import LPIPS, load_lpips
from bsr.archs.pdm import DegModel, KernelModel, NoiseModel, SoftQuantization, quantize
from bsr.archs.rrdb import RRDBNet, load_old_esrgan
from tolerances import assert_close_to_float64

KERNEL_OPT = dict(nc=3, nf=8, nb=2, ksize=5, zero_init=True)
NOISE_OPT = dict(nc=3, nf=8, nb=2, dim=3, spatial=True, mix=True, head_k=3, body_k=3, zero_init=True)


def unfold_blur(x, kernel, s):
    """PDM's blur: reflect pad k//2, unfold(k, stride s), weighted sum; kernel (B, k, k) or (B, k*k, h, w)."""
    b, c, h, w = x.shape
    k = int(round(math.sqrt(kernel[0].numel() if kernel.dim() == 3 else kernel.shape[1])))
    patches = F.unfold(F.pad(x.reshape(b * c, 1, h, w), [k // 2] * 4, mode="reflect"), k, stride=s)
    patches = patches.view(b, c, k * k, -(-h // s), -(-w // s))
    weights = kernel.reshape(b, 1, k * k, 1, 1) if kernel.dim() == 3 else kernel.unsqueeze(1)
    return (patches * weights).sum(2)


def calls_during(run):
    before = bsrops.kernel_calls()
    run()
    return {k: v - before.get(k, 0) for k, v in bsrops.kernel_calls().items() if v != before.get(k, 0)}


@pytest.mark.parametrize("spatial,mix", [(False, False), (True, False), (False, True), (True, True)])
@pytest.mark.parametrize("scale", [1, 2, 4])
def test_kernel_model_blur_matches_pdm_unfold(spatial, mix, scale):
    opt = dict(KERNEL_OPT, spatial=spatial, mix=mix, zero_init=False)
    net = KernelModel(opt, scale).double()
    x = torch.rand(2, 3, 4 * scale, 6 * scale, dtype=torch.float64)
    calls = calls_during(lambda: net(x))
    out, kernel = net(x)
    h, w = 4, 6
    expected_kernel_shape = (2, 25, h, w) if spatial or mix else (2, 5, 5)
    assert tuple(kernel.shape) == expected_kernel_shape
    assert torch.allclose(kernel.sum(1 if kernel.dim() == 4 else (1, 2)), torch.ones((), dtype=torch.float64))
    assert_close_to_float64(out, unfold_blur(x, kernel, scale))
    assert calls == {"blur_downsample.cpu": 1}


def test_spatially_variant_kernels_train_at_scale_4():
    """The official code crashes here (kernel map at HR size); ours learns per-LR-pixel kernels."""
    net = KernelModel(dict(KERNEL_OPT, spatial=True, mix=True, head_k=3, body_k=3, init="default"), 4)
    out, kernel = net(torch.rand(2, 3, 16, 12))
    assert out.shape == (2, 3, 4, 3) and kernel.shape == (2, 25, 4, 3)
    calls = calls_during(lambda: out.square().mean().backward())
    assert calls.get("_blur_downsample_backward.cpu") == 1
    head = net.deg_kernel[0].weight.grad
    assert head is not None and head.abs().sum() > 0
    assert net.deg_kernel[0].in_channels == 3 * 16 + 3  # pixel_unshuffle(HR, 4) + z_k


def test_kernel_inits():
    ksize = 21
    box = KernelModel(dict(KERNEL_OPT, ksize=ksize), 4).kernels(torch.rand(3, 3, 8, 8))
    centre = math.e / (math.e + ksize ** 2 - 1)
    assert torch.allclose(box[:, ksize // 2, ksize // 2], torch.full((3,), centre))
    assert torch.allclose(box[0, 0, 0], torch.tensor(1 / (math.e + ksize ** 2 - 1)))
    delta = KernelModel(dict(KERNEL_OPT, ksize=ksize, init="delta"), 4).kernels(torch.rand(3, 3, 8, 8))
    assert torch.allclose(delta[:, ksize // 2, ksize // 2], torch.full((3,), 0.99), atol=1e-4)
    with pytest.raises(ValueError, match="init must be"):
        KernelModel(dict(KERNEL_OPT, init="gauss"), 4)


def test_kernel_model_errors():
    with pytest.raises(ValueError, match="divisible by the scale 4"):
        KernelModel(KERNEL_OPT, 4)(torch.rand(1, 3, 10, 8))
    with pytest.raises(ValueError, match="nc must be > 0"):
        KernelModel(dict(KERNEL_OPT, nc=0), 4)
    with pytest.raises(ValueError, match="nc must be > 0"):
        NoiseModel(dict(NOISE_OPT, nc=0, mix=False), 4)


@pytest.mark.parametrize("spatial,mix,dim", [(False, False, 1), (False, True, 3), (True, False, 3), (True, True, 3), (True, True, 1)])
def test_noise_model_variants(spatial, mix, dim):
    opt = dict(NOISE_OPT, spatial=spatial, mix=mix, dim=dim, zero_init=False, official_normal_init=False)
    net = NoiseModel(opt, 4)
    lr = torch.rand(2, 3, 5, 7)
    noise = net(lr)
    assert noise.shape == (2, dim, 5, 7)
    conv_k = 3 if spatial else 1
    assert net.deg_noise[0].kernel_size == (conv_k, conv_k) and net.deg_noise[0].in_channels == 3 * mix + 3
    if not spatial and not mix:  # the official deg/2020 configs: one constant per image (UnpairedSR issue #15)
        assert torch.allclose(noise, noise[:, :, :1, :1].expand_as(noise))
    else:
        assert noise.flatten(2).std(2).min() > 0


def test_noise_inits():
    assert NoiseModel(NOISE_OPT, 4)(torch.rand(2, 3, 4, 4)).abs().max() == 0  # zero_init
    opt = dict(NOISE_OPT, nf=64, zero_init=False)
    official = NoiseModel(opt, 4).deg_noise[-1].weight  # normal_(w, 0.001): mean 0.001, std 1
    assert 0.8 < official.std() < 1.2
    fixed = NoiseModel(dict(opt, official_normal_init=False), 4).deg_noise[-1].weight
    assert fixed.std() < 0.002


def test_deg_model_noise_sees_detached_lr():
    model = DegModel(4, 3, KERNEL_OPT, dict(NOISE_OPT, zero_init=False, official_normal_init=False))
    hr = torch.rand(2, 3, 16, 16)
    lr, kernel, noise = model(hr)
    assert torch.allclose(lr - noise, unfold_blur(hr, kernel, 4), atol=1e-6)
    noise.square().mean().backward()
    assert all(p.grad is None for p in model.deg_kernel.parameters())
    assert model.deg_noise.deg_noise[0].weight.grad.abs().sum() > 0


def test_deg_model_without_noise_or_kernel():
    model = DegModel(4, 3, None, None)
    hr = torch.rand(1, 3, 16, 16)
    lr, kernel, noise = model(hr)
    assert kernel is None and noise is None
    bicubic = F.interpolate(hr, scale_factor=0.25, mode="bicubic", align_corners=False)
    assert torch.allclose(lr, SoftQuantization()(bicubic))


def test_quantisers():
    x = torch.tensor([-0.2, 0.1, 0.50001, 1.3, 0.2 + 0.4 / 255], requires_grad=True)
    q = quantize(x)
    assert torch.equal(q, (x.detach().clamp(0, 1) * 255).round() / 255)
    q.sum().backward()
    assert torch.equal(x.grad, torch.ones(5))  # straight through, also outside [0, 1]
    grid = torch.linspace(0.1, 0.9, 2001, dtype=torch.float64)
    soft = SoftQuantization()(grid)
    # a 5-term Fourier series of round(): close to the steps away from the jumps, smooth
    away = ((grid * 255 - (grid * 255).round()).abs() < 0.3)
    assert ((soft - (grid * 255).round() / 255)[away].abs() * 255).max() < 0.15


def official_deg_keys(prefix, nb, bn=True):
    """deg_kernel.deg_kernel.{0 conv, 1 BN, 3..2+nb ResBlock body.{0 conv, 1 BN, 3 conv}, 3+nb conv}."""
    bn_keys = ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]
    keys = [f"{prefix}.0.weight", f"{prefix}.0.bias"] + [f"{prefix}.1.{k}" for k in bn_keys]
    for i in range(3, 3 + nb):
        keys += [f"{prefix}.{i}.body.0.weight", f"{prefix}.{i}.body.0.bias"]
        keys += [f"{prefix}.{i}.body.1.{k}" for k in bn_keys]
        keys += [f"{prefix}.{i}.body.3.weight", f"{prefix}.{i}.body.3.bias"]
    return keys + [f"{prefix}.{3 + nb}.weight", f"{prefix}.{3 + nb}.bias"]


def random_like_layout(model, keys):
    """A state dict with exactly `keys` (random values, shapes from the model); fails on a name mismatch."""
    own = model.state_dict()
    assert sorted(keys) == sorted(own), f"layout differs: {sorted(set(keys) ^ set(own))}"
    return {k: torch.randn_like(own[k].float()).to(own[k].dtype) if own[k].is_floating_point() else own[k] + 7
            for k in keys}


def test_official_deg_model_state_dict_loads():
    """The psnr/2020Track1 layout (kernel nb 8, noise nb 8) with official key names."""
    kernel_opt = dict(nc=3, nf=16, nb=8, ksize=11, zero_init=True)
    noise_opt = dict(nc=3, nf=16, nb=8, dim=3, spatial=True, mix=True, head_k=3, body_k=3, zero_init=True)
    model = DegModel(4, 3, kernel_opt, noise_opt)
    keys = official_deg_keys("deg_kernel.deg_kernel", 8) + official_deg_keys("deg_noise.deg_noise", 8)
    state = random_like_layout(model, keys)
    model.load_state_dict(state, strict=True)
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key])


def test_edsr_official_layout_and_forward():
    model = EDSR(nf=8, nb=3, upscale=4)
    keys = ["sub_mean.weight", "sub_mean.bias", "add_mean.weight", "add_mean.bias", "head.0.weight", "head.0.bias"]
    for i in range(3):
        keys += [f"body.{i}.body.{j}.{p}" for j in (0, 2) for p in ("weight", "bias")]
    keys += ["body.3.weight", "body.3.bias", "tail.0.0.weight", "tail.0.0.bias", "tail.0.2.weight",
             "tail.0.2.bias", "tail.1.weight", "tail.1.bias"]
    model.load_state_dict(random_like_layout(model, keys), strict=True)
    assert model(torch.rand(2, 3, 5, 7)).shape == (2, 3, 20, 28)
    assert not any(p.requires_grad for p in model.sub_mean.parameters())
    fresh = EDSR(nf=8, nb=3, upscale=4)  # mean shifts cancel: sub_mean(add_mean(x)) == x
    x = torch.rand(1, 3, 4, 4) * 255
    assert torch.allclose(fresh.sub_mean(fresh.add_mean(x)), x, atol=1e-4)
    assert EDSR(nf=8, nb=1, upscale=3)(torch.rand(1, 3, 4, 4)).shape == (1, 3, 12, 12)
    with pytest.raises(ValueError, match="upscale"):
        EDSR(upscale=5)


def rrdb_keys(nb, old=False):
    convs = [f"conv{c}" for c in range(1, 6)]
    if old:
        keys = [f"RRDB_trunk.{i}.RDB{r}.{c}" for i in range(nb) for r in (1, 2, 3) for c in convs]
        keys += ["conv_first", "trunk_conv", "upconv1", "upconv2", "HRconv", "conv_last"]
    else:
        keys = [f"body.{i}.rdb{r}.{c}" for i in range(nb) for r in (1, 2, 3) for c in convs]
        keys += ["conv_first", "conv_body", "conv_up1", "conv_up2", "conv_hr", "conv_last"]
    return [f"{k}.{p}" for k in keys for p in ("weight", "bias")]


def test_rrdb_layouts():
    model = RRDBNet(nf=8, nb=2, gc=4)
    state = random_like_layout(model, rrdb_keys(2))
    model.load_state_dict(state, strict=True)
    old = dict(zip(rrdb_keys(2, old=True), state.values()))  # same order, old names
    assert load_old_esrgan(old) == state
    assert model(torch.rand(1, 3, 5, 6)).shape == (1, 3, 20, 24)
    assert RRDBNet(nf=8, nb=1, gc=4, upscale=2)(torch.rand(1, 3, 6, 4)).shape == (1, 3, 12, 8)


def test_lpips_loads_package_layout(tmp_path):
    reference = LPIPS()
    for p in reference.parameters():
        p.data.uniform_(0, 0.1)
    own = reference.state_dict()
    lin = {k: v for k, v in own.items() if k.startswith("lin")}
    alexnet = {k: v for k, v in own.items() if k.startswith("features.")}
    alexnet["classifier.1.weight"] = torch.zeros(4, 4)  # torchvision files hold the classifier too
    torch.save(lin, tmp_path / "alex.pth")
    torch.save(alexnet, tmp_path / "alexnet.pth")
    split = load_lpips(str(tmp_path / "alex.pth"), str(tmp_path / "alexnet.pth"))
    slices = {1: (0,), 2: (3,), 3: (6,), 4: (8,), 5: (10,)}  # lpips.LPIPS names: net.slice{n}.{i}
    package = {f"net.slice{n}.{i}.{p}": own[f"features.{i}.{p}"] for n, idx in slices.items() for i in idx
               for p in ("weight", "bias")}
    package.update(lin, **{"scaling_layer.shift": own["shift"], "scaling_layer.scale": own["scale"]})
    torch.save(package, tmp_path / "full.pth")
    full = load_lpips(str(tmp_path / "full.pth"))
    x, y = torch.rand(2, 3, 64, 64), torch.rand(2, 3, 64, 64)
    d = reference(x, y)
    assert d.shape == (2,) and (d > 0).all()
    assert torch.equal(split(x, y), d) and torch.equal(full(x, y), d)
    assert torch.equal(reference(x, x), torch.zeros(2))
    with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
        load_lpips(str(tmp_path / "missing.pth"))
    with pytest.raises(ValueError, match="do not match"):
        load_lpips(str(tmp_path / "alex.pth"))  # lin weights without the AlexNet
