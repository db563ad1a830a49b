"""Nothing a user loads runs code: a pickle that would create a file when unpickled is fed to every
entry point that reads a user-supplied file; each refuses it naming the file, and the file is never
created. Also: checkpoints load with torch's default (weights_only=True), checkpoints of the previous
format (numpy RNG state as a pickled array) still load, and broken files give errors naming them."""
import builtins
import os
import pickle
import random
import subprocess
import sys

import numpy as np
import pytest
import torch

from bsr import config, data, engine, evaluate, export, infer, methods, train
from bsr.io import UntrustedFileError, load_array, load_untrusted

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class CreatesFile:
    """Unpickling this object creates `marker` (what a malicious checkpoint would do)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return builtins.exec, (f"open({self.marker!r}, 'w').close()",)


@pytest.fixture
def marker(tmp_path):
    return tmp_path / "PWNED"


@pytest.fixture
def evil(tmp_path, marker):
    """A torch checkpoint whose pickle runs code; sanity check that it really would."""
    path = tmp_path / "evil.pt"
    torch.save({"step": 1, "nets": CreatesFile(marker)}, path)
    torch.load(path, weights_only=False)
    assert marker.exists()
    marker.unlink()
    return str(path)


def smoke(method, *overrides):
    return config.load(method, "smoke", overrides=list(overrides))


def build(method, *overrides):
    return methods.get(method)(smoke(method, *overrides), "cpu")


def image(tmp_path):
    path = tmp_path / "in" / "photo.png"
    data.write_image(str(path), torch.rand(3, 20, 24))
    return str(path)


def resume(tmp_path, evil):
    run = tmp_path / "run"
    os.makedirs(run / "checkpoints")
    os.replace(evil, run / "checkpoints" / "last.pt")
    train.main(["usrnet", "--preset", "smoke", "--out", str(run), "--resume"])


def dan_pca_cache(tmp_path, evil):
    from bsr.methods import dan

    setting = dan.kernel_setting(smoke("dan"))
    path = dan.pca_cache_path(setting, str(tmp_path / "cache"))
    os.makedirs(os.path.dirname(path))
    os.replace(evil, path)
    dan.pca_matrix(setting, str(tmp_path / "cache"))


def dan_official(tmp_path, evil):
    from bsr.methods import dan

    dan.load_official(evil)


def vgg19(tmp_path, evil):
    from bsr.archs.vgg import VGG19

    VGG19("conv5_4", weights=evil)


def lpips(tmp_path, evil):
    from bsr.archs.lpips import load_lpips

    load_lpips(evil)


def realsr_kernels(tmp_path, evil):
    folder = tmp_path / "kernels"
    os.makedirs(folder)
    os.replace(evil, folder / "a_kernel_x4.mat")
    build("realsr", f"realsr.kernels={folder}").pools()


ENTRY_POINTS = {
    "evaluate --ckpt": lambda tmp_path, evil: evaluate.main(["usrnet", "--ckpt", evil]),
    "infer --ckpt": lambda tmp_path, evil: infer.main(["--ckpt", evil, image(tmp_path), "--out", str(tmp_path / "o")]),
    "export": lambda tmp_path, evil: export.main([evil, "--out", str(tmp_path / "w.safetensors")]),
    "evaluate --weights": lambda tmp_path, evil: evaluate.main(["usrnet", "--weights", evil, "--preset", "smoke"]),
    "infer --weights": lambda tmp_path, evil: infer.main(["--method", "usrnet", "--weights", evil, "--preset", "smoke",
                                                          image(tmp_path), "--out", str(tmp_path / "o")]),
    "train --resume": resume,
    "usrnet.pretrained": lambda tmp_path, evil: build("usrnet", f"usrnet.pretrained={evil}"),
    "pdm.sr.pretrained": lambda tmp_path, evil: build("pdm", f"pdm.sr.pretrained={evil}"),
    "pdm.deg_checkpoint": lambda tmp_path, evil: build("pdm", "pdm.workflow=sr", f"pdm.deg_checkpoint={evil}"),
    "realsr.pretrained": lambda tmp_path, evil: build("realsr", f"realsr.pretrained={evil}"),
    "realsr.kernels (.mat)": realsr_kernels,
    "dan PCA cache": dan_pca_cache,
    "dan.load_official": dan_official,
    "dan.pca_matrix": lambda tmp_path, evil: build("dan", f"dan.pca_matrix={evil}"),
    "VGG19 weights": vgg19,
    "LPIPS weights": lpips,
}


@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
def test_a_pickle_that_runs_code_is_refused_by_every_entry_point(entry, tmp_path, evil, marker):
    with pytest.raises(UntrustedFileError) as error:
        ENTRY_POINTS[entry](tmp_path, evil)
    assert str(tmp_path) in str(error.value)  # names the file (the entry point may have moved it)
    assert not marker.exists()


def test_a_pickled_object_array_in_a_kernel_file_is_refused(tmp_path, marker):
    path = tmp_path / "kernel.npy"
    np.save(path, np.array([CreatesFile(marker)], dtype=object), allow_pickle=True)
    with pytest.raises(UntrustedFileError, match="kernel.npy"):
        infer.parse_kernel(str(path), 4)  # bsr.infer --kernel
    with pytest.raises(UntrustedFileError, match="kernel.npy"):
        load_array(str(path))
    assert not marker.exists()


def test_the_cli_prints_one_error_line_naming_the_file(tmp_path, evil, marker):
    result = subprocess.run([sys.executable, "-m", "bsr.evaluate", "usrnet", "--ckpt", evil], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and evil in result.stderr and "run code" in result.stderr
    assert not marker.exists()


@pytest.mark.parametrize("content, expected", [(b"", "is empty"), (b"not a checkpoint at all", "not a torch"),
                                               (b"PK\x03\x04truncated", "corrupted or truncated")])
def test_empty_and_garbage_checkpoints_name_the_file(tmp_path, content, expected):
    path = tmp_path / "broken.pt"
    path.write_bytes(content)
    with pytest.raises(UntrustedFileError, match=expected) as error:
        engine.load_checkpoint(str(path))
    assert str(path) in str(error.value)


def test_a_checkpoint_without_its_keys_names_the_file_and_the_keys(tmp_path):
    path = tmp_path / "keyless.pt"
    torch.save({"step": 3, "method": "usrnet"}, path)
    with pytest.raises(UntrustedFileError, match="not a bsr checkpoint.*'config'") as error:
        engine.load_checkpoint(str(path))
    assert str(path) in str(error.value)


def test_a_state_dict_given_as_a_checkpoint_points_to_weights(tmp_path):
    path = tmp_path / "model.pth"
    torch.save(build("usrnet").nets["usrnet"].state_dict(), path)
    with pytest.raises(UntrustedFileError, match="--weights") as error:
        engine.load_checkpoint(str(path))
    assert str(path) in str(error.value)


def test_a_missing_mat_variable_names_the_file_and_what_it_has(tmp_path):
    import scipy.io

    path = tmp_path / "k_kernel_x4.mat"
    scipy.io.savemat(path, {"Other": np.ones((3, 3))})
    with pytest.raises(UntrustedFileError, match=r"k_kernel_x4.mat.*'Kernel'.*\['Other'\]"):
        load_array(str(path), "kernel file", "Kernel")


def test_a_new_checkpoint_loads_with_torch_defaults_and_restores_every_rng(tmp_path):
    cfg = smoke("usrnet")
    method = methods.get("usrnet")(cfg, "cpu")
    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    np.random.standard_normal()  # a cached Gaussian in the legacy numpy state
    path = tmp_path / "last.pt"
    torch.save(engine.method_state(method, 5), path)
    expected = torch.rand(3), np.random.standard_normal(3), random.random()
    state = torch.load(path)  # torch's default: weights_only=True
    engine.set_rng_state(state["rng"])
    again = torch.rand(3), np.random.standard_normal(3), random.random()
    assert torch.equal(expected[0], again[0]) and np.array_equal(expected[1], again[1]) and expected[2] == again[2]


def test_a_checkpoint_of_the_previous_format_still_loads(tmp_path):
    """Earlier checkpoints hold np.random.get_state()'s tuple (a pickled numpy array)."""
    cfg = smoke("usrnet")
    method = methods.get("usrnet")(cfg, "cpu")
    state = engine.method_state(method, 4)
    np.random.seed(7)
    state["rng"]["numpy"] = np.random.get_state()
    expected = np.random.standard_normal(2)
    path = tmp_path / "old.pt"
    torch.save(state, path)
    with pytest.raises(Exception):
        torch.load(path, weights_only=True)  # numpy arrays are not plain data for torch's default
    loaded, _, step = engine.load_checkpoint(str(path))
    assert step == 4
    engine.set_rng_state(load_untrusted(str(path))["rng"])
    assert np.array_equal(np.random.standard_normal(2), expected)
