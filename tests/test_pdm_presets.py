"""PDM's paper presets are the official configs (greatlog/UnpairedSR
codes/config/PDM-SR/options/train/<stage>/<track>.yml): every pdm.track under every stage preset
gives the official values, overrides still win, netSR's pretrained start is required where the
official config has one, PDM-SRGAN is the two-stage recipe on RRDB, and the degradation stage's
netDeg loads a state dict in the official deg/* names and shapes.

The expected values below are written from the official option files, not from bsr's YAML.
"""
import pytest
import torch

from bsr import config
from bsr.archs.edsr import EDSR
from bsr.archs.pdm import DegModel
from bsr.archs.rrdb import RRDBNet
from bsr.config import ConfigError
from bsr.methods import get

STAGES = {"psnr": "paper", "percep": "paper-srgan", "deg": "paper-degradation"}
NO_NOISE = None
NOISE_2018 = dict(nf=64, nb=16, dim=3, spatial=False, mix=True, zero_init=True)
NOISE_DEG = dict(nf=32, nb=8, dim=1, spatial=False, mix=False, zero_init=False)
NOISE_PAPER = dict(nf=64, nb=8, dim=3, spatial=True, mix=True, zero_init=True)
PSNR, PERCEP = (1.0, 0.0, 0.0), (1.0, 0.05, 0.05)
# (stage, track): tgt_size, workflow (optim_deg, optim_sr), kernel (nc, nb, ksize), noise_opt,
# noise_mean weight (deg/joint), netD1 stride (deg/joint), netSR (arch, pretrained EDSR), SR losses,
# best_psnr among the metrics
OFFICIAL = {
    ("deg", "2017Track1"): (192, "degradation", (64, 16, 21), NO_NOISE, None, 2, None, None, False),
    ("percep", "2017Track1"): (128, "sr", (64, 16, 21), NO_NOISE, None, None, ("edsr", True), PERCEP, False),
    ("psnr", "2017Track2"): (128, "joint", (64, 16, 21), NO_NOISE, None, 1, ("edsr", True), PSNR, False),
    ("deg", "2018Track2"): (192, "degradation", (64, 16, 21), NOISE_2018, 10.0, 2, None, None, True),
    ("psnr", "2018Track2"): (192, "sr", (64, 16, 21), NOISE_2018, None, None, ("edsr", True), PSNR, True),
    ("percep", "2018Track2"): (128, "sr", (64, 16, 21), NOISE_2018, None, None, ("edsr", True), PERCEP, True),
    ("deg", "2018Track4"): (128, "degradation", (3, 16, 21), NOISE_2018, 100.0, 2, None, None, True),
    ("psnr", "2018Track4"): (128, "sr", (3, 16, 21), NOISE_2018, None, None, ("edsr", True), PSNR, True),
    ("percep", "2018Track4"): (128, "sr", (3, 16, 21), NOISE_2018, None, None, ("edsr", True), PERCEP, True),
    ("deg", "2020Track1"): (128, "degradation", (3, 8, 21), NOISE_DEG, 100.0, 2, None, None, False),
    ("psnr", "2020Track1"): (128, "joint", (3, 8, 11), NOISE_PAPER, 100.0, 1, ("edsr", True), PSNR, False),
    # the released PDM-SRGAN checkpoint is an RRDBNet (options/test/2020Track1.yml)
    ("percep", "2020Track1"): (128, "sr", (3, 8, 21), NOISE_DEG, None, None, ("rrdb", False), (0.01, 0.05, 0.005),
                               False),
    ("deg", "2020Track2"): (128, "degradation", (3, 8, 21), NOISE_DEG, 1.0, 2, None, None, False),
    ("psnr", "2020Track2"): (192, "sr", (64, 8, 21), dict(NOISE_2018, nb=8), None, None, ("edsr", True), PSNR,
                             False),
    ("percep", "2020Track2"): (128, "joint", (3, 8, 21), NOISE_DEG, 1.0, 1, ("edsr", True), PERCEP, False),
}
TINY = ["pdm.kernel.nf=8", "pdm.kernel.nb=1", "pdm.noise.nf=8", "pdm.noise.nb=1", "pdm.sr.nf=8", "pdm.sr.nb=1",
        "pdm.sr.pretrained=none", "pdm.d_lr={nf: 8, nb: 2}", "pdm.d_hr={nf: 8, nb: 2}", "pdm.loss.sr_percep=0",
        "data.hr_patch=16", "train.batch_size=2"]


@pytest.mark.parametrize("stage, track", list(OFFICIAL))
def test_each_track_and_stage_is_the_official_config(stage, track):
    patch, workflow, kernel, noise, noise_weight, stride, sr, losses, best = OFFICIAL[stage, track]
    cfg = config.load("pdm", STAGES[stage], overrides=[f"pdm.track={track}"])
    p = cfg.pdm
    assert (cfg.data.hr_patch, cfg.data.scale, cfg.train.batch_size, cfg.train.iters) == (patch, 4, 32, 200000)
    assert (cfg.train.lr, cfg.train.lr_d, cfg.train.milestones, cfg.train.gamma) == (2e-4, None, [50000, 100000, 150000], 0.5)
    assert cfg.train.grad_clip == 50 and p.workflow == workflow and p.best_psnr == best
    assert (p.kernel.nc, p.kernel.nf, p.kernel.nb, p.kernel.ksize) == (kernel[0], 64, kernel[1], kernel[2])
    assert not p.kernel.spatial and not p.kernel.mix and p.kernel.zero_init
    assert p.noise.enabled == (noise is not None)
    if noise is not None:
        assert p.noise.nc == 3 and p.noise.official_normal_init
        assert {key: p.noise[key] for key in noise} == noise
    if noise_weight is not None:
        assert p.loss.noise_mean == noise_weight
    if stride is not None:
        assert (p.d_lr.nf, p.d_lr.nb, p.d_lr.stride) == (64, 3, stride)
    assert p.loss.lr_adv == 1.0
    if sr is not None:
        assert (p.sr.arch, p.sr.require_pretrained, p.sr.nf, p.sr.nb, p.sr.pretrained) == (*sr, 64, None, None)
        assert (p.loss.sr_pix, p.loss.sr_percep, p.loss.sr_adv) == losses
        assert (p.d_hr.nf, p.d_hr.nb, p.d_hr.stride) == (64, 3, 1)


def deg_checkpoint(cfg, path):
    """A netDeg state dict of cfg's degradation model (the first stage's output) at `path`."""
    noise = cfg.pdm.noise if cfg.pdm.noise.enabled else None
    torch.save(DegModel(cfg.data.scale, 3, cfg.pdm.kernel, noise).state_dict(), path)
    return str(path)


@pytest.mark.parametrize("stage, track", list(OFFICIAL))
def test_each_track_and_stage_trains_a_step(stage, track, tmp_path):
    """At tiny widths: the networks of the official workflow are built and all of them train."""
    overrides = [f"pdm.track={track}", *TINY]
    cfg = config.load("pdm", STAGES[stage], overrides=overrides)
    if cfg.pdm.workflow == "sr":
        cfg = config.load("pdm", STAGES[stage], overrides=[
            *overrides, f"pdm.deg_checkpoint={deg_checkpoint(cfg, tmp_path / 'netDeg.pth')}"])
    method = get("pdm")(cfg, "cpu")
    expected = {"degradation": {"netDeg", "netD1"}, "sr": {"netSR"}, "joint": {"netDeg", "netD1", "netSR"}}
    trained = expected[cfg.pdm.workflow] | ({"netD2"} if cfg.pdm.loss.sr_adv and cfg.pdm.workflow != "degradation" else set())
    assert set(method.optimizers) == trained
    assert hasattr(method.nets["netDeg"], "deg_noise") == cfg.pdm.noise.enabled
    logs = method.train_step({"hr": torch.rand(2, 3, 16, 16), "lr": torch.rand(2, 3, 4, 4)}, 0)
    assert logs and all(torch.isfinite(torch.as_tensor(v)) for v in logs.values())


def test_track_errors_and_overrides_win(tmp_path):
    with pytest.raises(ConfigError, match=r"'pdm.track' must be one of \['2017Track1'"):
        config.load("pdm", "paper", overrides=["pdm.track=2019Track1"])
    with pytest.raises(ConfigError, match=r"pdm.track=2017Track1 has no 'paper' preset; it has \['paper-degradation', 'paper-srgan'\]"):
        config.load("pdm", "paper", overrides=["pdm.track=2017Track1"])
    cfg = config.load("pdm", "paper", overrides=["pdm.kernel.ksize=7", "data.hr_patch=64"])
    assert cfg.pdm.kernel.ksize == 7 and cfg.data.hr_patch == 64 and cfg.pdm.kernel.nb == 8
    assert config.load("pdm", "paper").pdm.track == "2020Track1"
    (tmp_path / "mine.yaml").write_text("pdm: {track: 2018Track4, kernel: {nb: 2}}\n")
    cfg = config.load("pdm", "paper-srgan", config_file=str(tmp_path / "mine.yaml"))
    assert (cfg.pdm.kernel.nb, cfg.pdm.kernel.nc, cfg.pdm.best_psnr) == (2, 3, True)


def test_the_demo_preset_is_not_a_track():
    cfg = config.load("pdm", "demo")
    assert cfg.pdm.track is None and cfg.pdm.kernel.ksize == 21 and cfg.pdm.noise.spatial and cfg.pdm.noise.enabled
    assert not cfg.pdm.sr.require_pretrained and cfg.pdm.sr.nb == 4


def test_paper_needs_the_edsr_baseline_weights_or_an_explicit_none(tmp_path):
    small = ["pdm.sr.nf=8", "pdm.sr.nb=2", "pdm.kernel.nf=8", "pdm.noise.nf=8"]
    with pytest.raises(ConfigError, match=r"preset paper starts EDSR from pretrained weights.*edsr_baseline_x4.*pdm.sr.pretrained=none"):
        get("pdm")(config.load("pdm", "paper", overrides=small), "cpu")
    random_start = get("pdm")(config.load("pdm", "paper", overrides=[*small, "pdm.sr.pretrained=none"]), "cpu")
    assert isinstance(random_start.nets["netSR"], EDSR)
    weights = EDSR(nf=8, nb=2, upscale=4).state_dict()
    torch.save({f"module.{k}": v + 1 for k, v in weights.items()}, tmp_path / "edsr_baseline_x4.pt")
    started = get("pdm")(config.load("pdm", "paper", overrides=[*small, f"pdm.sr.pretrained={tmp_path / 'edsr_baseline_x4.pt'}"]), "cpu")
    for key, value in started.nets["netSR"].state_dict().items():
        assert torch.equal(value, weights[key] + 1)
    # a checkpoint evaluated later does not need the starting weights
    assert "netSR" in get("pdm")(config.load("pdm", "paper", overrides=small), "cpu", for_training=False).nets


def test_paper_srgan_is_two_stage_on_rrdb_and_edsr_is_an_option(tmp_path):
    cfg = config.load("pdm", "paper-srgan")
    path = deg_checkpoint(cfg, tmp_path / "netDeg.pth")
    with pytest.raises(ValueError, match="needs pdm.deg_checkpoint"):
        get("pdm")(cfg, "cpu", for_training=True)
    sizes = ["pdm.loss.sr_percep=0", "pdm.sr.nf=8", "pdm.sr.gc=4"]
    method = get("pdm")(config.load("pdm", "paper-srgan", overrides=[*sizes, f"pdm.deg_checkpoint={path}"]), "cpu")
    sr = method.nets["netSR"]
    assert isinstance(sr, RRDBNet) and len(sr.body) == 23
    assert set(method.optimizers) == {"netSR", "netD2"} and method.weights["sr_adv"] == 0.005
    edsr = get("pdm")(config.load("pdm", "paper-srgan", overrides=[
        *sizes, "pdm.sr.arch=edsr", f"pdm.deg_checkpoint={path}"]), "cpu").nets["netSR"]
    assert isinstance(edsr, EDSR) and len(edsr.body) == 16 + 1  # 16 residual blocks and the trunk's last conv


def official_generator_shapes(name, in_nc, nf, nb, out_nc):
    """A 1 x 1 netK / netN of the official DegModel: `{name}.{name}.` + 0 conv, 1 BN, 3..2+nb
    ResBlock (body.0 conv, body.1 BN, body.3 conv), 3+nb conv."""
    prefix = f"{name}.{name}"
    bn = {"weight": (nf,), "bias": (nf,), "running_mean": (nf,), "running_var": (nf,), "num_batches_tracked": ()}
    shapes = {f"{prefix}.0.weight": (nf, in_nc, 1, 1), f"{prefix}.0.bias": (nf,)}
    shapes.update({f"{prefix}.1.{k}": s for k, s in bn.items()})
    for i in range(3, 3 + nb):
        for conv in (0, 3):
            shapes[f"{prefix}.{i}.body.{conv}.weight"] = (nf, nf, 1, 1)
            shapes[f"{prefix}.{i}.body.{conv}.bias"] = (nf,)
        shapes.update({f"{prefix}.{i}.body.1.{k}": s for k, s in bn.items()})
    shapes.update({f"{prefix}.{3 + nb}.weight": (out_nc, nf, 1, 1), f"{prefix}.{3 + nb}.bias": (out_nc,)})
    return shapes


def test_a_released_netdeg_loads_into_the_degradation_stage_and_paper_srgan(tmp_path):
    # deg/2020Track1: netK z_k 3, nf 64, nb 8, 21 x 21 taps; netN z_n 3, nf 32, nb 8, 1 channel
    shapes = {**official_generator_shapes("deg_kernel", 3, 64, 8, 21 * 21),
              **official_generator_shapes("deg_noise", 3, 32, 8, 1)}
    state = {k: torch.randint(0, 9, ()) if not s else torch.rand(s) for k, s in shapes.items()}
    torch.save(state, tmp_path / "latest_netDeg.pth")
    stage = get("pdm")(config.load("pdm", "paper-degradation"), "cpu")
    stage.load_pretrained("netDeg", str(tmp_path / "latest_netDeg.pth"))
    for key, value in stage.nets["netDeg"].state_dict().items():
        assert torch.equal(value, state[key])
    srgan = get("pdm")(config.load("pdm", "paper-srgan", overrides=[
        "pdm.loss.sr_percep=0", "pdm.sr.nf=8", "pdm.sr.gc=4", f"pdm.deg_checkpoint={tmp_path / 'latest_netDeg.pth'}"]), "cpu")
    lr, _, noise = srgan.nets["netDeg"].eval()(torch.rand(2, 3, 16, 16))
    assert lr.shape == (2, 3, 4, 4) and noise.shape == (2, 1, 4, 4)
    assert torch.equal(noise, noise[:, :, :1, :1].expand_as(noise))  # one value per image, as the official netN


def test_the_intended_noise_initialisation_is_an_option():
    official = get("pdm")(config.load("pdm", "paper-degradation"), "cpu").nets["netDeg"].deg_noise.deg_noise[-1]
    assert official.weight.std() > 0.5  # normal_(w, 0.001): mean 0.001, std 1 (32 weights)
    fixed = get("pdm")(config.load("pdm", "paper-degradation", overrides=["pdm.noise.official_normal_init=false"]),
                       "cpu").nets["netDeg"].deg_noise.deg_noise[-1]
    assert fixed.weight.std() < 0.002


def official_rrdb_shapes(nf=64, nb=23, gc=32):
    """The released PDM-SRGAN netSR (options/test/2020Track1.yml: RRDBNet nf 64, nb 23, gc 32, x4)."""
    shapes = {}
    for i in range(nb):
        for r in (1, 2, 3):
            for c in range(1, 6):
                out = nf if c == 5 else gc
                shapes[f"body.{i}.rdb{r}.conv{c}.weight"] = (out, nf + (c - 1) * gc, 3, 3)
                shapes[f"body.{i}.rdb{r}.conv{c}.bias"] = (out,)
    for name, (cout, cin) in {"conv_first": (nf, 3), "conv_body": (nf, nf), "conv_up1": (nf, nf),
                              "conv_up2": (nf, nf), "conv_hr": (nf, nf), "conv_last": (3, nf)}.items():
        shapes[f"{name}.weight"], shapes[f"{name}.bias"] = (cout, cin, 3, 3), (cout,)
    return shapes


def test_the_released_pdm_srgan_checkpoint_fits_paper_srgan():
    """bsr.evaluate pdm --weights FILE --preset paper-srgan builds the method for evaluation."""
    method = get("pdm")(config.load("pdm", "paper-srgan"), "cpu", for_training=False)
    assert {k: tuple(v.shape) for k, v in method.nets["netSR"].state_dict().items()} == official_rrdb_shapes()
