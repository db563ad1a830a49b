"""python -m bsr.export and --weights: a checkpoint's inference networks exported as .safetensors and
.pth give bsr.evaluate / bsr.infer exactly the SR of the checkpoint (usrnet: one network, usrda: two,
keys prefixed by the network); --net picks one network; wrong names, formats and files are clear errors."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from bsr import config, data, engine, evaluate, export, infer, methods
from bsr.io import UntrustedFileError, load_untrusted

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def smoke_checkpoint(method_name, path):
    """A smoke-preset checkpoint whose weights are moved away from any initialisation."""
    method = methods.get(method_name)(config.load(method_name, "smoke"), "cpu")
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for net in method.nets.values():
            for param in net.parameters():
                param.add_(0.01 * torch.randn(param.shape, generator=generator))
    engine.atomic_save(engine.method_state(method, 2), str(path))
    return str(path)


@pytest.fixture(scope="module")
def usrnet_ckpt(tmp_path_factory):
    return smoke_checkpoint("usrnet", tmp_path_factory.mktemp("usrnet") / "last.pt")


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    data.write_image(str(folder / "photo.png"), torch.rand(3, 48, 52, generator=torch.Generator().manual_seed(2)))
    return str(folder)


def infer_png(tmp_path, model_args, photos, name, *extra):
    out = tmp_path / name
    infer.main([*model_args, photos, "--out", str(out), *extra])  # one tile: the tiling is test_infer's
    return data.read_uint8(str(out / "photo.png"))


def test_usrnet_exported_weights_evaluate_and_infer_like_the_checkpoint(usrnet_ckpt, photos, tmp_path, capsys):
    expected = torch.load(usrnet_ckpt, weights_only=True)["nets"]["usrnet"]
    kernel = ["--kernel", "gaussian:1.2", "--noise", "5"]
    by_ckpt = infer_png(tmp_path, ["--ckpt", usrnet_ckpt], photos, "ckpt", *kernel)
    for extension in (".safetensors", ".pth"):
        weights = str(tmp_path / "weights" / f"model{extension}")
        assert export.main([usrnet_ckpt, "--out", weights]) == 0
        state = load_untrusted(weights)
        assert state.keys() == expected.keys() and all(torch.equal(state[k], v) for k, v in expected.items())
        by_weights = infer_png(tmp_path, ["--method", "usrnet", "--weights", weights, "--preset", "smoke"], photos,
                               extension, *kernel)
        assert np.array_equal(by_ckpt, by_weights)
    assert sorted(os.listdir(tmp_path / "weights")) == ["model.pth", "model.safetensors"]  # no temporary left
    metrics = {}
    for name, args in {"ckpt": ["--ckpt", usrnet_ckpt], "weights": ["--weights", weights, "--preset", "smoke"]}.items():
        evaluate.main(["usrnet", *args, "--data", photos, "--set", "eval.kernels=[8]", "--out", str(tmp_path / name)])
        metrics[name] = json.load(open(tmp_path / name / "metrics.json"))["models"]
    assert metrics["ckpt"] == metrics["weights"]
    assert "usrnet: 100%" in capsys.readouterr().err  # evaluate's progress bar per model


def test_usrda_exports_its_two_inference_networks_prefixed(photos, tmp_path):
    ckpt = smoke_checkpoint("usrda", tmp_path / "last.pt")
    weights = str(tmp_path / "usrda.safetensors")
    export.main([ckpt, "--out", weights])
    nets = torch.load(ckpt, weights_only=True)["nets"]
    expected = {f"{net}.{k}": v for net in ("model_Enc", "model_Dec_SR") for k, v in nets[net].items()}
    state = load_untrusted(weights)
    assert state.keys() == expected.keys() and all(torch.equal(state[k], v) for k, v in expected.items())
    by_ckpt = infer_png(tmp_path, ["--ckpt", ckpt], photos, "ckpt")
    by_weights = infer_png(tmp_path, ["--method", "usrda", "--weights", weights, "--preset", "smoke"], photos, "w")
    assert np.array_equal(by_ckpt, by_weights)
    export.main([ckpt, "--out", str(tmp_path / "disc.pth"), "--net", "model_Disc_img_HR"])  # any network, plain
    assert load_untrusted(str(tmp_path / "disc.pth")).keys() == nets["model_Disc_img_HR"].keys()


def test_a_wrong_net_lists_the_checkpoints_networks(usrnet_ckpt, tmp_path):
    result = subprocess.run([sys.executable, "-m", "bsr.export", usrnet_ckpt, "--out", str(tmp_path / "x.pth"),
                             "--net", "netG"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "--net 'netG'" in result.stderr and "['usrnet']" in result.stderr
    assert not os.listdir(tmp_path)


def test_a_wrong_extension_is_a_usage_error(usrnet_ckpt, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        export.main([usrnet_ckpt, "--out", str(tmp_path / "model.bin")])
    assert exit_.value.code == 2 and ".safetensors" in capsys.readouterr().err


def test_shared_and_strided_tensors_are_written_unshared(tmp_path):
    base = torch.arange(12.0).view(3, 4)
    state = {"a": base, "b": base, "t": base.t(), "cl": torch.rand(2, 3, 4, 5).to(memory_format=torch.channels_last)}
    path = export.save_weights(export._unshared(state), str(tmp_path / "w.safetensors"), {"method": "x"})
    loaded = load_untrusted(path)
    assert all(torch.equal(loaded[k], v) for k, v in state.items())


def test_exported_weights_given_as_a_checkpoint_point_to_weights(usrnet_ckpt, tmp_path):
    weights = str(tmp_path / "model.pth")
    export.main([usrnet_ckpt, "--out", weights])
    with pytest.raises(UntrustedFileError, match="--weights"):
        evaluate.main(["usrnet", "--ckpt", weights])


@pytest.mark.parametrize("args, message", [
    (["--ckpt", "a.pt", "--weights", "b.pth"], "not allowed with"),
    ([], "one of the arguments --ckpt --weights is required"),
])
def test_exactly_one_of_ckpt_and_weights(args, message, capsys):
    with pytest.raises(SystemExit):
        evaluate.main(["usrnet", *args])
    assert message in capsys.readouterr().err
