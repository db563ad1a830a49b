"""The checkpoints the official projects release load into the presets of README's "Released checkpoints"
table.

No weights can be downloaded here, so each row writes random tensors under the official parameter names
and shapes, nested as the official file is, and loads that file the way a user does: `--weights`
(bsr.engine.load_weights, what bsr.evaluate and bsr.infer call) or the preset's start-weights key. Every
tensor of the file must land in its network (after the documented renaming) and a forward pass must run.
The layouts are written out from the official model definitions named with each spec, not from bsr's
modules, so a renamed or reshaped bsr parameter fails here."""
import collections
from typing import Callable, NamedTuple

import pytest
import torch

from bsr import config, engine, methods
from bsr.io import UntrustedFileError
from test_bsr_usrnet import official_usrnet_shapes
from test_dan import official_layout as danv2_layout


# ----------------------------------------------------------------------------- official layouts
def conv(shapes, name, cin, cout, k=3):
    shapes[f"{name}.weight"], shapes[f"{name}.bias"] = (cout, cin, k, k), (cout,)


def batch_norm(shapes, name, n):
    for key in ("weight", "bias", "running_mean", "running_var"):
        shapes[f"{name}.{key}"] = (n,)
    shapes[f"{name}.num_batches_tracked"] = ()


def rrdb_layout(nb, in_nc=3, nf=64, gc=32, old_names=False, upsample=True):
    """ESRGAN's RRDBNet. Old names: xinntao/ESRGAN RRDBNet_arch.py, Tencent/Real-SR
    codes/models/modules/RRDBNet_arch.py (RRDB_trunk.{i}.RDB{r}, trunk_conv, upconv1/2, HRconv); BasicSR
    names: greatlog/UnpairedSR archs/rrdb.py, BasicSR's converted ESRGAN files, anse3832/USR_DA
    model/decoder.py (body.{i}.rdb{r}, conv_body, conv_up1/2, conv_hr). No upsampling: USR_DA's Dec_Id."""
    trunk, rdb, body, up, hr = (("RRDB_trunk", "RDB", "trunk_conv", "upconv", "HRconv") if old_names
                                else ("body", "rdb", "conv_body", "conv_up", "conv_hr"))
    shapes = {}
    conv(shapes, "conv_first", in_nc, nf)
    for i in range(nb):
        for r in (1, 2, 3):
            for c in range(5):
                conv(shapes, f"{trunk}.{i}.{rdb}{r}.conv{c + 1}", nf + c * gc, nf if c == 4 else gc)
    conv(shapes, body, nf, nf)
    for j in (1, 2) if upsample else ():
        conv(shapes, f"{up}{j}", nf, nf)
    conv(shapes, hr, nf, nf)
    conv(shapes, "conv_last", nf, 3)
    return shapes


def basicsr_name(name):
    """Old ESRGAN name -> BasicSR name (the renaming docs/fidelity.md documents)."""
    for old, new in (("RRDB_trunk.", "body."), (".RDB", ".rdb"), ("trunk_conv", "conv_body"),
                     ("upconv", "conv_up"), ("HRconv", "conv_hr")):
        name = name.replace(old, new)
    return name


def edsr_layout(nf=64, nb=16, scale=4):
    """EDSR-PyTorch src/model/edsr.py + common.py (UnpairedSR archs/edsr.py is the same): MeanShift 1x1
    convs sub_mean / add_mean, head.0, body.{i}.body.{0,2}, body.{nb}, tail.0 = (conv nf -> 4 nf,
    PixelShuffle) per factor 2, tail.1 conv nf -> 3."""
    shapes = {}
    conv(shapes, "sub_mean", 3, 3, 1)
    conv(shapes, "add_mean", 3, 3, 1)
    conv(shapes, "head.0", 3, nf)
    for i in range(nb):
        conv(shapes, f"body.{i}.body.0", nf, nf)
        conv(shapes, f"body.{i}.body.2", nf, nf)
    conv(shapes, f"body.{nb}", nf, nf)
    for j in range(scale.bit_length() - 1):
        conv(shapes, f"tail.0.{2 * j}", nf, 4 * nf)
    conv(shapes, "tail.1", nf, 3)
    return shapes


def deg_branch(shapes, prefix, in_nc, nf, nb, out, k):
    """UnpairedSR archs/deg_arch.py KernelModel.deg_kernel / NoiseModel.deg_noise: conv in_nc -> nf (k x k),
    BatchNorm, ReLU, nb ResBlocks (conv, BatchNorm, ReLU, conv), conv nf -> out (1 x 1) [, Softmax];
    k = head_k = body_k with `spatial`, else 1; in_nc = nc, or 3 + nc with `mix`."""
    conv(shapes, f"{prefix}.0", in_nc, nf, k)
    batch_norm(shapes, f"{prefix}.1", nf)
    for i in range(3, 3 + nb):
        conv(shapes, f"{prefix}.{i}.body.0", nf, nf, k)
        batch_norm(shapes, f"{prefix}.{i}.body.1", nf)
        conv(shapes, f"{prefix}.{i}.body.3", nf, nf, k)
    conv(shapes, f"{prefix}.{3 + nb}", nf, out, 1)


def deg_layout(kernel, noise=None):
    """DegModel of an UnpairedSR test yml (options/test/<track>.yml netDeg): kernel = (nc, nf, nb, ksize),
    noise = (in_nc, nf, nb, dim) or None (no noise model: its Quantization has no parameters)."""
    shapes = {}
    nc, nf, nb, ksize = kernel
    deg_branch(shapes, "deg_kernel.deg_kernel", nc, nf, nb, ksize ** 2, 1)
    if noise:
        in_nc, nf, nb, dim = noise
        deg_branch(shapes, "deg_noise.deg_noise", in_nc, nf, nb, dim, 1)
    return shapes


def usrda_encoder(nf=64):
    """anse3832/USR_DA model/encoder.py Encoder_RRDB(nf): conv_featmap.{0,2,4,6,8}, 3x3, 3 -> nf -> ... -> nf."""
    shapes = {}
    for i in range(5):
        conv(shapes, f"conv_featmap.{2 * i}", nf if i else 3, nf)
    return shapes


def usrda_layout():
    """anse3832/USR_DA train.py: Encoder_RRDB(64), Decoder_Id_RRDB(64) (10 RRDBs, no upsampling),
    Decoder_SR_RRDB(64) (23 RRDBs, x4) (model/decoder.py)."""
    return {"model_Enc": usrda_encoder(), "model_Dec_Id": rrdb_layout(10, in_nc=64, upsample=False),
            "model_Dec_SR": rrdb_layout(23, in_nc=64)}


def random_state(shapes, seed):
    """Random tensors of `shapes`: small weights, positive running variances, integer batch counters."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for name, shape in shapes.items():
        if name.endswith("num_batches_tracked"):
            state[name] = torch.tensor(1000 + seed)
        elif name.endswith("running_var"):
            state[name] = 0.5 + torch.rand(shape, generator=gen)
        else:
            state[name] = 0.02 * torch.randn(shape, generator=gen)
    return state


# ----------------------------------------------------------------------------- file nestings
def plain(states):
    """torch.save(net.state_dict()): every official release but USR_DA's."""
    (state,) = states.values()
    return state


def basicsr_params(states):
    """BasicSR's converted files: {"params": state dict}."""
    return {"params": plain(states)}


def usrda_epoch_file(states):
    """anse3832/USR_DA train.py's epoch_N.pth: the epoch, each network's state dict under its name, the
    optimisers' and schedulers' states (the discriminators' entries are left out here)."""
    scheduler = {"milestones": collections.Counter({250000: 1, 350000: 1, 450000: 1}), "gamma": 0.5,
                 "last_epoch": 4000}
    optimizer = {"state": {}, "param_groups": [{"lr": 1e-4, "betas": (0.9, 0.99), "amsgrad": True, "params": [0, 1]}]}
    return {"epoch": 19, **states, "optimizer_G": optimizer, "optimizer_D": optimizer,
            "scheduler_G": scheduler, "scheduler_D": scheduler}


# ----------------------------------------------------------------------------- the table
class Release(NamedTuple):
    file: str
    method: str
    preset: str
    layout: Callable[[], dict]  # {network: {official name: shape}}
    load: str = "--weights"  # or the config key that names a start file
    overrides: tuple = ()
    nest: Callable = plain
    rename: Callable = lambda name: name  # official name -> bsr name
    legacy: bool = False  # torch's pre-1.6 serialisation: the releases that predate the zip format
    forward: str = "sr"  # "sr": super-resolve an LR image; "deg": netDeg degrades an HR image


USRNET = ((64, 128, 256, 512), (16, 32, 64, 64))
# training builds need VGG19's weights for a perceptual loss, which cannot be downloaded here
NO_VGG = {"usrnet": "usrnet.gan.perceptual=0", "realsr": "realsr.loss.perceptual=0", "pdm": "pdm.loss.sr_percep=0"}
EDSR_FRESH = "pdm.sr.pretrained=none"  # the SR-stage presets start EDSR from a file; the netDeg rows do not test it

RELEASES = [
    # cszn/USRNet (main_test_table1.py) and cszn/KAIR (the same files): models/network_usrnet.py, strict
    Release("usrnet.pth", "usrnet", "paper", lambda: {"usrnet": official_usrnet_shapes(8, 64, USRNET[0], 2)}, legacy=True),
    Release("usrgan.pth", "usrnet", "paper-usrgan", lambda: {"usrnet": official_usrnet_shapes(8, 64, USRNET[0], 2)},
            legacy=True),
    Release("usrnet_tiny.pth", "usrnet", "tiny", lambda: {"usrnet": official_usrnet_shapes(6, 32, USRNET[1], 2)},
            legacy=True),
    Release("usrgan_tiny.pth", "usrnet", "tiny-usrgan", lambda: {"usrnet": official_usrnet_shapes(6, 32, USRNET[1], 2)},
            legacy=True),
    # the USRGAN start (usrnet.pth takes the same path at the paper's sizes)
    Release("usrnet_tiny.pth", "usrnet", "tiny-usrgan", lambda: {"usrnet": official_usrnet_shapes(6, 32, USRNET[1], 2)},
            load="usrnet.pretrained", overrides=(NO_VGG["usrnet"],), legacy=True),
    # greatlog/DAN DANv2 (options/setting{1,2}/test/*.yml: nf 64, nb 10, ng 5; kernel / code 21 / 10, setting 2
    # 31 / 15 at x4 and 11 / 10 at x2), models/modules/dan_arch.py
    Release("danv2_x4_setting1.pth", "dan", "paper", lambda: {"G": danv2_layout(64, 10, 5, 4, 21, 10)}),
    Release("danv2_x3_setting1.pth", "dan", "paper-x3", lambda: {"G": danv2_layout(64, 10, 5, 3, 21, 10)}),
    Release("danv2_x2_setting1.pth", "dan", "paper-x2", lambda: {"G": danv2_layout(64, 10, 5, 2, 21, 10)}),
    Release("danv2_x4_setting2.pth", "dan", "setting2", lambda: {"G": danv2_layout(64, 10, 5, 4, 31, 15)}),
    Release("danv2_x2_setting2.pth", "dan", "setting2-x2", lambda: {"G": danv2_layout(64, 10, 5, 2, 11, 10)}),
    # greatlog/UnpairedSR PDM-SR: netSR of options/test/{2017Track1,2018Track2,2018Track4}.yml (EDSR 64 x 16),
    # of 2020Track1.yml and PDM_Real_ESRGAN.pth of 2020Track2.yml (RRDBNet 23); EDSR-PyTorch's EDSR-baseline x4
    Release("latest_netSR.pth (EDSR)", "pdm", "paper", lambda: {"netSR": edsr_layout()}),
    Release("latest_netSR.pth (EDSR, NTIRE 2018)", "pdm", "paper", lambda: {"netSR": edsr_layout()},
            overrides=("pdm.track=2018Track2",)),
    Release("PDM_Real_ESRGAN.pth", "pdm", "paper-srgan", lambda: {"netSR": rrdb_layout(23)}),
    Release("edsr_baseline_x4-6b446fab.pt", "pdm", "paper", lambda: {"netSR": edsr_layout()}, load="pdm.sr.pretrained",
            legacy=True),
    Release("edsr_baseline_x4-new.pt", "pdm", "paper", lambda: {"netSR": edsr_layout()}, load="pdm.sr.pretrained"),
    # netDeg of each test yml, loaded by the SR stage of that track
    Release("latest_netDeg.pth (2017Track1)", "pdm", "paper-srgan", lambda: {"netDeg": deg_layout((64, 64, 16, 21))},
            load="pdm.deg_checkpoint", overrides=("pdm.track=2017Track1", EDSR_FRESH, NO_VGG["pdm"]), forward="deg"),
    Release("latest_netDeg.pth (2018Track2)", "pdm", "paper",
            lambda: {"netDeg": deg_layout((64, 64, 16, 21), (6, 64, 16, 3))},
            load="pdm.deg_checkpoint", overrides=("pdm.track=2018Track2", EDSR_FRESH), forward="deg"),
    Release("latest_netDeg.pth (2018Track4)", "pdm", "paper",
            lambda: {"netDeg": deg_layout((3, 64, 16, 21), (6, 64, 16, 3))},
            load="pdm.deg_checkpoint", overrides=("pdm.track=2018Track4", EDSR_FRESH), forward="deg"),
    Release("latest_netDeg.pth (2020Track1)", "pdm", "paper-srgan",
            lambda: {"netDeg": deg_layout((3, 64, 8, 21), (3, 32, 8, 1))},
            load="pdm.deg_checkpoint", overrides=(NO_VGG["pdm"],), forward="deg"),
    # Tencent/Real-SR (options/{df2k,dped}/test_*.yml: RRDBNet nf 64, nb 23) and its start, ESRGAN's PSNR model
    Release("DF2K.pth, DF2K-JPEG.pth", "realsr", "paper-df2k", lambda: {"netG": rrdb_layout(23, old_names=True)},
            rename=basicsr_name, legacy=True),
    Release("DPED.pth", "realsr", "paper", lambda: {"netG": rrdb_layout(23, old_names=True)}, rename=basicsr_name,
            legacy=True),
    Release("RRDB_PSNR_x4.pth", "realsr", "paper", lambda: {"netG": rrdb_layout(23, old_names=True)},
            load="realsr.pretrained", overrides=(NO_VGG["realsr"],), rename=basicsr_name, legacy=True),
    Release("ESRGAN_PSNR_SRx4_DF2K_official-150ff491.pth", "realsr", "paper", lambda: {"netG": rrdb_layout(23)},
            load="realsr.pretrained", overrides=(NO_VGG["realsr"],), nest=basicsr_params),
    # anse3832/USR_DA releases no weights; its train.py writes epoch_N.pth, which inference.py reads
    Release("epoch_N.pth (USR_DA)", "usrda", "repo", usrda_layout, nest=usrda_epoch_file),
]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Full-size networks on tiny images: one thread does the work as fast and does not stall on a busy core."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def dan_overrides(tmp_path_factory):
    """A small preset network whose PCA matrix comes from few kernels, built once: --weights rebuilds the
    network at the file's sizes, with the file's PCA matrix."""
    return ("dan.nb=1", "dan.pca_kernels=500", f"dan.pca_cache={tmp_path_factory.mktemp('dan_pca')}")


def load(release, path, extra):
    """The method as the user gets it: --weights (engine.load_weights) or built for training with the
    start-weights key naming the file."""
    overrides = [*release.overrides, *extra]
    if release.load == "--weights":
        return engine.load_weights(release.method, str(path), release.preset, overrides=overrides)[0]
    cfg = config.load(release.method, release.preset, overrides=[*overrides, f"{release.load}={path}"])
    return methods.get(release.method)(cfg, "cpu")


def run_forward(method, release):
    """The loaded networks on a small image: a finite output of the expected size."""
    scale = method.cfg.data.scale
    with torch.no_grad():
        if release.forward == "deg":
            out = method.module("netDeg").eval()(torch.rand(1, 3, 8 * scale, 8 * scale))[0]
            expected = (1, 3, 8, 8)
        else:
            kernel = torch.zeros(25, 25)  # a delta for the non-blind USRNet
            kernel[12, 12] = 1
            out = method.super_resolve(torch.rand(1, 3, 8, 8), kernel, 0.0)
            expected = (1, 3, 8 * scale, 8 * scale)
    assert out.shape == expected and torch.isfinite(out).all()


@pytest.mark.parametrize("release", RELEASES, ids=[f"{r.file} -> {r.method} {r.preset} {r.load}" for r in RELEASES])
def test_released_checkpoint_loads(release, tmp_path, dan_overrides):
    layouts = release.layout()
    states = {net: random_state(shapes, seed) for seed, (net, shapes) in enumerate(layouts.items())}
    path = tmp_path / "release.pth"
    torch.save(release.nest(states), path, _use_new_zipfile_serialization=not release.legacy)
    method = load(release, path, dan_overrides if release.method == "dan" else ())
    for net in method.inference_nets if release.load == "--weights" else layouts:
        own = method.module(net).state_dict()
        expected = {release.rename(name): value for name, value in states[net].items()}
        assert sorted(own) == sorted(expected), f"{net}: names differ: {sorted(set(own) ^ set(expected))[:6]}"
        for name, value in expected.items():
            assert torch.equal(own[name].cpu(), value), f"{net}.{name} did not land"
    run_forward(method, release)


def danv1_layout():
    """greatlog/DAN DANv1 (codes/config/DANv1/models/modules/dan_arch.py), the keys that tell it apart:
    a Restorer with `head` (no `head1` / `head2`) over CRB layers, an Estimator predicting the code."""
    shapes = {"encoder": (1, 441, 10), "init_kernel": (1, 21, 21), "init_ker_map": (1, 10)}
    conv(shapes, "Restorer.head", 3, 64)
    conv(shapes, "Restorer.body.0.body.0", 74, 74)
    conv(shapes, "Restorer.body.0.body.2", 74, 64)
    conv(shapes, "Estimator.head_LR", 3, 32, 1)
    conv(shapes, "Estimator.out", 32, 10)
    return shapes


def test_danv1_checkpoints_are_refused_naming_the_file(tmp_path, dan_overrides):
    """DANv1's released networks (danv1_x{2,3,4}_setting1.pth, danv1_x{2,4}_setting2.pth) are another
    architecture; bsr implements DANv2 only."""
    path = tmp_path / "danv1_x4_setting1.pth"
    torch.save(random_state(danv1_layout(), 0), path)
    with pytest.raises(UntrustedFileError, match=r"danv1_x4_setting1.pth.*not a DANv2 state dict"):
        engine.load_weights("dan", str(path), "paper", overrides=dan_overrides)


def test_a_usrda_epoch_file_names_the_network_it_lacks(tmp_path):
    path = tmp_path / "epoch_20.pth"
    torch.save(usrda_epoch_file({"model_Enc": random_state(usrda_encoder(nf=8), 0)}), path)  # the smoke preset's width
    with pytest.raises(UntrustedFileError, match=r"epoch_20.pth.*no weights of network 'model_Dec_SR'"):
        engine.load_weights("usrda", str(path), "smoke")
    torch.save(usrda_epoch_file({"model_Enc": {"conv_featmap.0.weight": "a string"}}), path)
    with pytest.raises(UntrustedFileError, match=r"entry 'model_Enc'.*epoch_20.pth.*not a state dict of tensors"):
        engine.load_weights("usrda", str(path), "smoke")
