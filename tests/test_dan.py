"""DANv2 (bsr/archs/dan.py, bsr/methods/dan.py): official state-dict layout, the alternating loop,
kernel PCA, the degradation, the Gaussian8 protocol, an estimator that learns on tiny data, the
presets against the official option files, official PCA files and setting-2 weights."""
import pytest
import torch
import torch.nn.functional as F

import bsrops
from bsr import config, data, degradations, engine, evaluate
from bsr.io import UntrustedFileError
from bsr.kernels import dan_random_kernels, isotropic_gaussian_kernels
from bsr.archs.dan import DAN, kernel_pca
from bsr.methods import dan as dan_method


def official_layout(nf, nb, ng, scale, ksize, code_length):
    """{key: shape} of an official DANv2 state dict, written from docs/methods.md
    (dan_arch.py: Restorer(nf, nb, ng), Estimator(nf=64, 5 blocks)), not from our modules."""
    shapes = {"encoder": (1, ksize ** 2, code_length), "init_kernel": (1, ksize, ksize), "init_ker_map": (1, code_length)}

    def conv(name, cin, cout, k):
        shapes[f"{name}.weight"], shapes[f"{name}.bias"] = (cout, cin, k, k), (cout,)

    def dpcb(prefix, nf1, k1, k2):
        conv(f"{prefix}.body1.0", nf1, nf1, k1), conv(f"{prefix}.body1.2", nf1, nf1, k1)
        conv(f"{prefix}.body2.0", nf1, nf1, k2), conv(f"{prefix}.body2.2", nf1, nf1, k2)

    conv("Restorer.head1", 3, nf, 3)
    conv("Restorer.head2", code_length, nf, 1)
    for g in range(ng):
        for b in range(nb):
            dpcb(f"Restorer.body.{g}.body.{b}", nf, 3, 1)
    conv("Restorer.fusion", nf, nf, 3)
    if scale == 4:
        conv("Restorer.upscale.0", nf, 4 * nf, 3), conv("Restorer.upscale.2", nf, 4 * nf, 3), conv("Restorer.upscale.4", nf, 3, 3)
    else:
        conv("Restorer.upscale.0", nf, scale ** 2 * nf, 3), conv("Restorer.upscale.2", nf, 3, 3)
    conv("Estimator.head_LR.0", 3, 32, 5)
    conv("Estimator.head_HR.0", 3, 32, 4 * scale + 1)
    for b in range(5):
        dpcb(f"Estimator.body.body.{b}", 32, 3, 3)
    conv("Estimator.tail.0", 32, 64, 3)
    conv("Estimator.tail.2", 64, ksize ** 2, 1)
    return shapes


def tiny_pca(ksize=7, code_length=4):
    kernels = dan_random_kernels(200, ksize, (0.3, 2.0), generator=torch.Generator().manual_seed(1))
    return kernel_pca(kernels, code_length)


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_state_dict_has_the_official_layout(scale):
    net = DAN(tiny_pca(), nf=8, nb=2, ng=3, scale=scale)
    expected = official_layout(8, 2, 3, scale, 7, 4)
    assert {k: tuple(v.shape) for k, v in net.state_dict().items()} == expected


def test_load_official_checkpoint_file(tmp_path):
    """An official-layout file (DataParallel prefix, random tensors) loads into a ready model of that size."""
    layout = official_layout(8, 2, 3, 4, 7, 4)
    state = {f"module.{k}": torch.randn(shape) for k, shape in layout.items()}
    pca = tiny_pca()
    state["module.encoder"] = pca[None]
    state["module.init_kernel"] = torch.zeros(1, 7, 7)
    state["module.init_kernel"][0, 3, 3] = 1
    state["module.init_ker_map"] = pca[24][None]
    path = tmp_path / "DANv2_G.pth"
    torch.save(state, path)
    net = dan_method.load_official(str(path), loop=2)
    assert not net.training and net.loop == 2
    assert (net.Restorer.body[0].body[0].body1[0].weight.shape, len(net.Restorer.body), len(net.Restorer.body[0].body)) == \
        ((8, 8, 3, 3), 3, 2)
    loaded = net.state_dict()
    assert all(torch.equal(loaded[k[len("module."):]], v) for k, v in state.items())
    bad = tmp_path / "other.pth"
    torch.save({"conv.weight": torch.zeros(1)}, bad)
    with pytest.raises(ValueError, match="not a DANv2 state dict"):
        dan_method.load_official(str(bad))


def official_loop(net, lr):
    """The official DAN.forward: every iteration with autograd, cross inputs detached."""
    code = net.init_ker_map.repeat(lr.shape[0], 1)
    for _ in range(net.loop):
        sr = net.Restorer(lr, code.detach())
        kernel = net.Estimator(sr.detach(), lr)
        code = kernel.view(lr.shape[0], 1, -1).matmul(net.encoder)[:, 0]
    return sr, kernel


def test_loop_equals_the_official_loop_in_values_and_gradients():
    """Running the first loop-1 iterations without autograd changes neither outputs nor gradients."""
    torch.manual_seed(0)
    net = DAN(tiny_pca(), nf=8, nb=1, ng=2, scale=2, loop=3).double()
    lr, hr = torch.rand(2, 3, 7, 6, dtype=torch.float64), torch.rand(2, 3, 14, 12, dtype=torch.float64)
    target = torch.softmax(torch.randn(2, 49, dtype=torch.float64), 1)
    grads = []
    for forward in (net, lambda x: official_loop(net, x)):
        net.zero_grad()
        sr, kernel = forward(lr)
        (F.l1_loss(sr, hr) + F.l1_loss(kernel, target)).backward()
        grads.append(([p.grad.clone() for p in net.parameters()], sr.detach(), kernel.detach()))
    (g1, sr1, k1), (g2, sr2, k2) = grads
    assert torch.allclose(sr1, sr2, atol=1e-12) and torch.allclose(k1, k2, atol=1e-12)
    assert all(torch.allclose(a, b, atol=1e-10) for a, b in zip(g1, g2))
    assert sr1.shape == (2, 3, 14, 12) and k1.shape == (2, 49)
    assert torch.allclose(k1.sum(1), torch.ones(2, dtype=torch.float64)) and (k1 >= 0).all()


def test_restorer_runs_on_the_bsrops_dpcb():
    net = DAN(tiny_pca(), nf=8, nb=1, ng=1, scale=4, loop=1)
    before = bsrops.kernel_calls()
    net(torch.rand(1, 3, 5, 5))
    assert sum(bsrops.kernel_calls().values()) > sum(before.values())


def test_kernel_pca_is_the_centred_svd():
    kernels = dan_random_kernels(500, 7, (0.3, 2.0), generator=torch.Generator().manual_seed(2))
    pca = kernel_pca(kernels, 4)
    assert pca.shape == (49, 4) and pca.dtype == torch.float32
    assert torch.allclose(pca.t() @ pca, torch.eye(4), atol=1e-5)
    data = kernels.reshape(500, -1)
    centred = data - data.mean(0)
    _, vectors = torch.linalg.eigh(centred.t() @ centred)  # ascending eigenvalues
    top = vectors[:, -4:].float()
    assert torch.allclose((top.t() @ pca).abs().sum(0), torch.ones(4), atol=1e-4)  # same directions, up to sign


def test_pca_matrix_is_cached(tmp_path):
    setting = {"ksize": 5, "code_length": 3, "sig_min": 0.2, "sig_max": 2.0, "rate_iso": 1.0,
               "random_disturb": False, "pca_kernels": 300}
    first = dan_method.pca_matrix(setting, str(tmp_path))
    assert len(list(tmp_path.iterdir())) == 1
    assert torch.equal(first, dan_method.pca_matrix(setting, str(tmp_path)))
    assert first.shape == (25, 3)


def test_degradation_is_blur_bicubic_and_8bit():
    hr = torch.rand(2, 3, 16, 12)
    kernels = isotropic_gaussian_kernels([1.0, 2.0], 7).float()
    lr = dan_method.degrade(hr, kernels, 4)
    blurred = torch.stack([F.conv2d(F.pad(hr[i:i + 1], (3, 3, 3, 3), mode="reflect"), kernels[i].expand(3, 1, 7, 7),
                                    groups=3)[0] for i in range(2)])  # DAN BatchBlur
    expected = degradations.imresize(blurred, scale=1 / 4)
    assert lr.shape == (2, 3, 4, 3)
    assert torch.allclose(lr * 255, (lr * 255).round()) and (lr - expected).abs().max() <= 0.5 / 255 + 1e-6


@pytest.fixture(scope="module")
def pca_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("dan_pca"))  # shared: the PCA matrix is built once


def demo_method(pca_dir, *overrides, **dan):
    overrides = [f"dan.{k}={v}" for k, v in dict(nf=8, nb=1, ng=1, **dan).items()] + list(overrides)
    cfg = config.load("dan", "demo", overrides=overrides + ["dan.pca_kernels=2000", f"dan.pca_cache={pca_dir}"])
    return dan_method.DANv2(cfg, "cpu")


def test_config_and_optimiser(pca_dir):
    cfg = config.load("dan", "paper")
    assert (cfg.dan.nb, cfg.dan.ng, cfg.dan.loop, cfg.train.batch_size, cfg.data.hr_patch) == (10, 5, 4, 64, 256)
    method = demo_method(pca_dir)
    groups = method.optimizers["G"].param_groups
    assert groups[0]["lr"] == groups[1]["lr"] == method.cfg.train.lr_G  # lr_E: null -> lr_G
    net = method.module("G")
    assert {id(p) for p in groups[0]["params"]} == {id(p) for p in net.Restorer.parameters()}
    assert {id(p) for p in groups[1]["params"]} == {id(p) for p in net.Estimator.parameters()}


def test_validation_is_gaussian8(pca_dir):
    method = demo_method(pca_dir)
    items = method.degrade_for_validation(torch.rand(1, 3, 32, 24), 0)
    assert [i["tag"] for i in items] == [f"sigma{s:.1f}" for s in (1.8, 2.0, 2.2, 2.4, 2.6, 2.8, 3.0, 3.2)]
    assert all(i["lr"].shape == (1, 3, 8, 6) and i["kernel"].shape == (21, 21) for i in items)
    out = method.validate(items[0])
    assert out["sr"].shape == (1, 3, 32, 24) and out["kernel_est"].shape == (21, 21)
    assert method.baselines()["delta kernel, no estimation"](items[0])["kernel_est"][10, 10] == 1


def test_channels_last_on_the_cpu_gives_the_nchw_values(pca_dir):
    """train.channels_last (DANv2's default true): networks and inputs in channels_last; validation output, loss
    and gradients match train.channels_last=false (NCHW) up to float32 rounding."""
    hr = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    results = {}
    for channels_last in (True, False):
        torch.manual_seed(0)
        method = demo_method(pca_dir, f"train.channels_last={channels_last}")
        net = method.module("G")
        assert net.Restorer.head1.weight.is_contiguous(memory_format=torch.channels_last) == channels_last
        item = method.degrade_for_validation(hr[:1], 0)[0]
        sr = method.validate(item)["sr"]
        assert sr.is_contiguous(memory_format=torch.channels_last) == channels_last
        lr, kernels = method.synthesize(hr, torch.arange(2))
        out, kernel_est = net(method.network_input(lr))
        loss = F.l1_loss(out, hr) + F.l1_loss(kernel_est, kernels.flatten(1))
        loss.backward()
        results[channels_last] = [sr, loss.detach()] + [p.grad for p in net.parameters()]
        method.train_step({"hr": hr, "seed": torch.arange(2)}, 0)  # runs in that layout
    for a, b in zip(results[True], results[False]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5 * max(1.0, b.abs().max().item()))


def test_training_kernels_follow_the_sample_seeds(pca_dir):
    method = demo_method(pca_dir)
    hr = torch.rand(3, 3, 16, 16)
    seeds = torch.tensor([5, 6, 5])
    lr, kernels = method.synthesize(hr, seeds)
    assert torch.equal(kernels[0], kernels[2]) and not torch.equal(kernels[0], kernels[1])
    assert torch.equal(method.synthesize(hr, seeds)[1], kernels) and lr.shape == (3, 3, 4, 4)


def test_estimator_learns_on_tiny_data(pca_dir):
    """Kernel error of a held-out batch falls over a few dozen training steps."""
    torch.manual_seed(0)
    method = demo_method(pca_dir, loop=1, kernel_size=11, code_length=6)
    images = torch.rand(4, 3, 8, 8)
    images = F.interpolate(images, size=(32, 32), mode="bicubic", align_corners=False).clamp(0, 1)  # smooth, textured
    held_out = {"hr": images.flip(-1), "seed": torch.arange(100, 104)}

    def kernel_error():
        with torch.no_grad():
            lr, kernels = method.synthesize(held_out["hr"], held_out["seed"])
            return (method.nets["G"](lr)[1] - kernels.flatten(1)).abs().sum(1).mean().item()

    before = kernel_error()
    for step in range(30):
        method.train_step({"hr": images, "seed": torch.arange(4) + 4 * step}, step)
    after = kernel_error()
    assert after < 0.6 * before, (before, after)


# The official DANv2 training option files (codes/config/DANv2/options/setting{1,2}/train/*.yml):
# preset -> (scale, GT_size, niter, lr_steps, nb, ng, ksize, sig_min, sig_max, rate_iso, random_disturb)
OFFICIAL_TRAIN_YMLS = {
    "paper": (4, 256, 800000, [200000, 400000, 600000], 10, 5, 21, 0.2, 4.0, 1.0, False),
    "paper-x3": (3, 192, 800000, [200000, 400000, 600000], 10, 5, 21, 0.2, 4.0, 1.0, False),
    "paper-x2": (2, 128, 800000, [200000, 400000, 600000], 10, 5, 21, 0.2, 4.0, 1.0, False),
    "setting2": (4, 256, 400000, [200000], 40, 5, 21, 0.6, 5.0, 0.0, True),
    "setting2-x2": (2, 128, 400000, [200000], 40, 5, 11, 0.6, 5.0, 0.0, True),
}


@pytest.mark.parametrize("preset", list(OFFICIAL_TRAIN_YMLS))
def test_presets_are_the_official_training_ymls(preset):
    cfg = config.load("dan", preset)
    d, t = cfg.dan, cfg.train
    assert (cfg.data.scale, cfg.data.hr_patch, t.iters, t.lr_steps, d.nb, d.ng, d.kernel_size, d.sig_min, d.sig_max,
            d.rate_iso, d.random_disturb) == OFFICIAL_TRAIN_YMLS[preset]
    assert cfg.data.hr_patch == 64 * cfg.data.scale  # LR_size 64 in every yml
    assert (t.batch_size, t.lr_G, t.beta1, t.beta2, t.lr_gamma, d.nf, d.loop, d.code_length) == \
        (64, 4e-4, 0.9, 0.99, 0.5, 64, 4, 10)


@pytest.mark.parametrize("preset, sigmas", [
    ("paper-x2", [0.8 + 0.8 * i / 7 for i in range(8)]),
    ("paper-x3", [1.35 + 1.05 * i / 7 for i in range(8)]),
    ("setting2-x2", [0.8 + 0.8 * i / 7 for i in range(8)]),
])
def test_gaussian8_follows_the_scale_with_21x21_kernels(pca_dir, preset, sigmas):
    """IKC's Gaussian8 widths per scale, 21 x 21 kernels whatever the training kernel size (setting2-x2: 11)."""
    overrides = ["dan.nf=8", "dan.nb=1", "dan.ng=1", "dan.pca_kernels=500", f"dan.pca_cache={pca_dir}"]
    method = dan_method.DANv2(config.load("dan", preset, overrides=overrides), "cpu")
    scale = method.scale
    items = method.degrade_for_validation(torch.rand(1, 3, 12 * scale, 12 * scale), 0)
    assert [i["tag"] for i in items] == [f"sigma{round(s, 2)}" for s in sigmas]
    expected = isotropic_gaussian_kernels(sigmas, 21)
    for item, kernel in zip(items, expected):
        assert item["kernel"].shape == (21, 21) and item["lr"].shape == (1, 3, 12, 12)
        torch.testing.assert_close(item["kernel"].double(), kernel, rtol=0, atol=1e-7)


def overshooting_image():
    """A white square on black: the bicubic filter's negative lobes take the LR below 0 and above 1."""
    hr = torch.zeros(1, 3, 64, 64)
    hr[..., 24:40, 24:40] = 1
    return hr


def test_validation_lr_is_clamped_before_rounding(pca_dir):
    """The official test LR went through tensor2img (clamp to [0, 1], then round); training LR is only rounded."""
    method = demo_method(pca_dir)
    hr = overshooting_image()
    kernel = dan_method.gaussian8_kernels(4)[0][None].float()
    unclamped = dan_method.degrade(hr, kernel, 4)
    assert unclamped.min() < 0 and unclamped.max() > 1  # the case that matters
    item = method.degrade_for_validation(hr, 0)[0]
    assert item["lr"].min() >= 0 and item["lr"].max() <= 1
    torch.testing.assert_close(item["lr"], unclamped.clamp(0, 1), rtol=0, atol=0)


def official_pca_file(path, matrix, legacy, transposed):
    """A PCA matrix written as greatlog/DAN's pca_matrix/*.pth: one float32 tensor (k², L), saved by torch.save
    in the legacy format (pca_matrix.pth, pca_aniso_matrix_x2.pth) or the zip one (pca_aniso_matrix_x4.pth),
    some as the transpose of an (L, k²) tensor."""
    value = matrix.t().contiguous().t() if transposed else matrix.contiguous()
    torch.save(value, path, _use_new_zipfile_serialization=not legacy)
    return str(path)


@pytest.mark.parametrize("legacy, transposed", [(True, False), (True, True), (False, True)])
def test_pca_matrix_loads_from_the_official_file(tmp_path, legacy, transposed):
    matrix = tiny_pca(ksize=21, code_length=10)
    path = official_pca_file(tmp_path / "pca_matrix.pth", matrix, legacy, transposed)
    cfg = config.load("dan", "smoke", overrides=[f"dan.pca_matrix={path}", f"dan.pca_cache={tmp_path / 'cache'}"])
    net = dan_method.DANv2(cfg, "cpu").module("G")
    assert torch.equal(net.encoder[0], matrix)
    assert not (tmp_path / "cache").exists()  # nothing computed
    torch.testing.assert_close(net.init_ker_map[0], matrix[220])  # the delta kernel's code: the centre row


def test_a_pca_file_of_another_shape_is_refused(tmp_path):
    path = official_pca_file(tmp_path / "pca_aniso_matrix_x4.pth", tiny_pca(ksize=7, code_length=4), False, True)
    cfg = config.load("dan", "smoke", overrides=[f"dan.pca_matrix={path}"])
    with pytest.raises(UntrustedFileError, match=r"pca_aniso_matrix_x4.pth.*shape \(49, 4\).*expected.*\(441, 10\)"):
        dan_method.DANv2(cfg, "cpu")
    torch.save({"pca": torch.zeros(441, 10)}, tmp_path / "dict.pth")
    with pytest.raises(UntrustedFileError, match="holds a dict"):
        dan_method.load_pca_file(str(tmp_path / "dict.pth"), 21, 10)


def official_state(nf, nb, ng, scale, ksize, code_length, seed=0):
    """A random state dict of the official layout, with a consistent PCA matrix, delta kernel and its code."""
    gen = torch.Generator().manual_seed(seed)
    state = {k: 0.01 * torch.randn(shape, generator=gen) for k, shape in
             official_layout(nf, nb, ng, scale, ksize, code_length).items()}
    pca = tiny_pca(ksize, code_length)
    centre = ksize ** 2 // 2
    state["encoder"], state["init_kernel"] = pca[None], torch.zeros(1, ksize, ksize)
    state["init_kernel"][0, ksize // 2, ksize // 2] = 1
    state["init_ker_map"] = pca[centre][None]
    return state


# The official setting-2 test ymls (options/setting2/test/test_setting2_x{2,4}.yml): nf 64, 5 groups x 10 DPCBs,
# kernel 11 / code 10 at x2 and kernel 31 / code 15 at x4 (the shapes of pca_aniso_matrix_x2/x4.pth).
SETTING2_TEST_SHAPES = {"setting2-x2": (2, 11, 10), "setting2": (4, 31, 15)}


@pytest.mark.parametrize("preset", list(SETTING2_TEST_SHAPES))
def test_setting2_weights_evaluate_at_the_official_test_shapes(tmp_path, pca_dir, preset):
    """`--weights` of an official setting-2 file (test yml sizes, not the training yml's 5 x 40 blocks and
    21 x 21 kernels) evaluates on a paired folder (DIV2KRK's protocol)."""
    scale, ksize, code_length = SETTING2_TEST_SHAPES[preset]
    path = tmp_path / f"danv2_x{scale}_setting2.pth"
    torch.save({f"module.{k}": v for k, v in official_state(64, 10, 5, scale, ksize, code_length).items()}, path)
    folder = tmp_path / "DIV2KRK"
    hr = F.interpolate(torch.rand(1, 3, 6, 6, generator=torch.Generator().manual_seed(3)), size=(12 * scale, 12 * scale),
                       mode="bicubic", align_corners=False).clamp(0, 1)[0]
    data.write_image(str(folder / "hr" / "im_1.png"), hr)
    data.write_image(str(folder / "lr" / "im_1.png"), degradations.imresize(hr[None], scale=1 / scale)[0].clamp(0, 1))
    overrides = ["dan.pca_kernels=500", f"dan.pca_cache={pca_dir}", "dan.nb=1"]  # the preset's size does not matter
    method, _ = engine.load_weights("dan", str(path), preset, overrides=overrides)
    net = method.module("G")
    assert (net.ksize, net.encoder.shape[-1], len(net.Restorer.body), len(net.Restorer.body[0].body)) == \
        (ksize, code_length, 5, 10)
    results = evaluate.evaluate_method(method, out_dir=str(tmp_path / "eval"), data_dir=str(folder))
    row = results["dan"]["items"][0]
    assert row["name"] == "im_1.png" and all(k in row for k in ("psnr_rgb", "psnr_y", "ssim_rgb"))
    item = data.validation_items(method.cfg, method, str(folder))[0]
    assert not method.baselines()["delta kernel, no estimation"](item)["sr"].requires_grad  # evaluated without autograd


def test_weights_of_another_scale_are_refused(tmp_path, pca_dir):
    path = tmp_path / "danv2_x2_setting2.pth"
    torch.save(official_state(8, 1, 1, 2, 11, 4), path)
    with pytest.raises(UntrustedFileError, match=r"holds a x2 DANv2.*x4"):
        engine.load_weights("dan", str(path), "setting2", overrides=["dan.pca_kernels=500", f"dan.pca_cache={pca_dir}",
                                                                     "dan.nb=1"])
