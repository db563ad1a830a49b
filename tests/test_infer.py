"""bsr.infer: the row-strip tiling gives exactly the full-size float average of the overlapping tiles after
8-bit quantisation, with a peak memory below the float output's size; usage errors (--tile, --overlap,
--noise, a non-blind method without --kernel, --weights without --method) exit 2 naming the option;
inputs that would be written to the same file are refused before anything runs; progress per tile."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bsr import config, data, engine, infer, methods

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class NoisyUpsampler:
    """A stand-in method: bicubic x scale plus noise drawn per call, so overlapping tiles disagree
    (and values leave [0, 1]): the average over the overlaps and the clamping are exercised."""

    device = torch.device("cpu")

    def __init__(self, scale):
        self.scale, self.generator = scale, torch.Generator().manual_seed(0)

    def infer(self, lr, kernel=None, noise_level=None):
        sr = F.interpolate(lr, scale_factor=self.scale, mode="bicubic", align_corners=False)
        return sr + 0.3 * torch.randn(sr.shape, generator=self.generator)


def full_float_average(method, lr, scale, tile, overlap):
    """The previous algorithm: one full-size float accumulator and weight map, divided at the end."""
    _, c, h, w = lr.shape
    out, weight = torch.zeros(1, c, h * scale, w * scale), torch.zeros(1, 1, h * scale, w * scale)
    for top in infer.tile_starts(h, tile, overlap):
        for left in infer.tile_starts(w, tile, overlap):
            sr = method.infer(lr[..., top:top + tile, left:left + tile])
            region = (..., slice(top * scale, top * scale + sr.shape[-2]), slice(left * scale, left * scale + sr.shape[-1]))
            out[region] += sr
            weight[region] += 1
    return data.io.to_uint8((out / weight)[0])


@pytest.mark.parametrize("shape, scale, tile, overlap", [((37, 45), 4, 16, 5), ((20, 70), 2, 24, 7), ((9, 11), 3, 16, 4)])
def test_strip_tiling_equals_the_full_float_average(shape, scale, tile, overlap):
    image = np.random.default_rng(0).integers(0, 256, (*shape, 3), dtype=np.uint8)
    expected = full_float_average(NoisyUpsampler(scale), data.to_tensor(image)[None], scale, tile, overlap)
    with torch.no_grad():
        got = infer.super_resolve_tiled(NoisyUpsampler(scale), image, None, 0.0, scale, tile, overlap)
    assert got.dtype == np.uint8 and got.shape == expected.shape
    assert np.array_equal(got, expected)


MEMORY_SCRIPT = """
import resource, numpy as np, torch, torch.nn.functional as F
from bsr import infer
class Nearest:
    device = torch.device("cpu")
    def infer(self, lr, kernel, noise_level):
        return F.interpolate(lr, scale_factor=4, mode="nearest")
image = np.random.default_rng(0).integers(0, 256, (750, 1000, 3), dtype=np.uint8)
infer.super_resolve_tiled(Nearest(), image[:200, :200], None, 0.0, 4, 192, 16)  # warm-up
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
out = infer.super_resolve_tiled(Nearest(), image, None, 0.0, 4, 192, 16)
print(out.shape, (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024)
"""


def test_peak_memory_of_a_large_image_stays_below_its_float_output():
    """750x1000 -> 3000x4000 with the default tiles: the float32 output alone is 137 MiB (the previous code
    held it twice, a weight map and float temporaries: ~600 MiB); the strips need the 34 MiB 8-bit output
    plus one row of tiles (35 MiB)."""
    result = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT], cwd=ROOT, capture_output=True, text=True,
                            timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    shape, growth = result.stdout.rsplit(" ", 1)
    assert shape == "(3000, 4000, 3)"
    assert int(growth) < 3000 * 4000 * 3 * 4, f"peak RSS grew by {int(growth) / 2**20:.0f} MiB"


def smoke_checkpoint(method_name, folder):
    method = methods.get(method_name)(config.load(method_name, "smoke"), "cpu")
    path = str(folder / "last.pt")
    engine.atomic_save(engine.method_state(method, 1), path)
    return path


@pytest.fixture(scope="module")
def pdm_ckpt(tmp_path_factory):
    return smoke_checkpoint("pdm", tmp_path_factory.mktemp("pdm"))


@pytest.fixture
def photo(tmp_path):
    path = str(tmp_path / "in" / "photo.png")
    data.write_image(path, torch.rand(3, 20, 24))
    return path


def usage_error(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        infer.main(argv)
    assert exit_.value.code == 2
    return capsys.readouterr().err


@pytest.mark.parametrize("option, message", [
    (["--tile", "0"], "--tile must be at least 1"), (["--tile", "-4"], "--tile must be at least 1"),
    (["--overlap", "-8"], "--overlap must be >= 0"), (["--tile", "16", "--overlap", "16"], "--overlap (16) must be smaller"),
    (["--noise", "-50"], "--noise must be a number >= 0"), (["--kernel", "gaussian:abc"], "--kernel gaussian:WIDTH"),
])
def test_bad_options_are_usage_errors_naming_the_option(option, message, pdm_ckpt, photo, tmp_path, capsys):
    err = usage_error(["--ckpt", pdm_ckpt, photo, "--out", str(tmp_path / "out"), *option], capsys)
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_a_non_blind_method_without_kernel_is_a_usage_error(photo, tmp_path, capsys):
    ckpt = smoke_checkpoint("usrnet", tmp_path)
    err = usage_error(["--ckpt", ckpt, photo, "--out", str(tmp_path / "out")], capsys)
    assert "usrnet is non-blind: give the blur kernel with --kernel" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_weights_need_the_method_and_preset_goes_with_weights(pdm_ckpt, photo, tmp_path, capsys):
    out = ["--out", str(tmp_path / "out")]
    assert "--weights needs --method" in usage_error(["--weights", pdm_ckpt, photo, *out], capsys)
    assert "--preset goes with --weights" in usage_error(["--ckpt", pdm_ckpt, "--preset", "smoke", photo, *out], capsys)
    assert "is a pdm checkpoint, not usrnet" in usage_error(["--ckpt", pdm_ckpt, "--method", "usrnet", photo, *out], capsys)


@pytest.mark.parametrize("layout", ["extensions", "folders"])
def test_inputs_sharing_an_output_name_are_refused_before_anything_runs(layout, tmp_path, capsys):
    first, second = ((tmp_path / "photo.png", tmp_path / "photo.jpg") if layout == "extensions"
                     else (tmp_path / "a" / "photo.png", tmp_path / "b" / "photo.png"))
    for path in (first, second):
        data.write_image(str(path), torch.rand(3, 8, 8))
    inputs = [str(tmp_path)] if layout == "extensions" else [str(first.parent), str(second.parent)]
    missing = str(tmp_path / "no-such-checkpoint.pt")  # never opened: the collision is found first
    err = usage_error(["--ckpt", missing, *inputs, "--out", str(tmp_path / "out")], capsys)
    assert str(first) in err and str(second) in err and "photo.png" in err
    assert not (tmp_path / "out").exists()


def test_the_same_file_given_twice_is_processed_once_with_progress(pdm_ckpt, photo, tmp_path, capsys):
    infer.main(["--ckpt", pdm_ckpt, photo, os.path.dirname(photo), "--out", str(tmp_path / "out"),
                "--tile", "12", "--overlap", "4"])
    captured = capsys.readouterr()
    assert captured.out.count("photo.png") == 2  # one line: input -> output
    assert "photo.png: 100%" in captured.err and "6/6" in captured.err  # 2 x 3 tiles
    assert data.read_uint8(str(tmp_path / "out" / "photo.png")).shape == (80, 96, 3)
