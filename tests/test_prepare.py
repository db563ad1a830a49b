"""bsr.prepare: the prepared form of training folders (cache); RealSR's clean HR set (source photos
bicubic-shrunk by 2, cropped to a multiple of 4)."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from bsr import prepare
from bsr.data import cache
from bsr.data.io import list_images, read_uint8, to_tensor, to_uint8, write_uint8
from bsr.degradations import imresize


def source_folder(tmp_path, sizes=((37, 50), (24, 31))):
    rng = np.random.default_rng(0)
    folder = tmp_path / "source"
    for index, size in enumerate(sizes):
        write_uint8(str(folder / f"photo{index}.png"), rng.integers(0, 256, size + (3,)).astype(np.uint8))
    return folder


def test_realsr_hr_is_matlab_bicubic_by_half_cropped_to_a_multiple_of_4(tmp_path):
    folder = source_folder(tmp_path)
    prepare.main(["realsr-hr", str(folder), "--out", str(tmp_path / "hr")])
    assert sorted(os.listdir(tmp_path / "hr")) == ["photo0.png", "photo1.png"]
    for name, shape in (("photo0", (16, 24, 3)), ("photo1", (12, 16, 3))):  # ceil(37/2) = 19 -> 16, 25 -> 24; 12, 16
        source = to_tensor(read_uint8(str(folder / f"{name}.png")))
        written = read_uint8(str(tmp_path / "hr" / f"{name}.png"))
        expected = to_uint8(imresize(source[None], scale=0.5)[0])[:shape[0], :shape[1]]
        assert written.shape == shape and np.array_equal(written, expected)


def test_clean_hr_shrinks_a_constant_image_to_the_same_constant():
    image = torch.full((3, 41, 30), 0.25)
    torch.testing.assert_close(prepare.clean_hr(image, factor=2, multiple=4), torch.full((3, 20, 12), 0.25))


def test_command_line(tmp_path):
    folder = source_folder(tmp_path, sizes=((16, 16),))
    out = tmp_path / "hr"
    subprocess.run([sys.executable, "-m", "bsr.prepare", "realsr-hr", str(folder), "--out", str(out)], check=True,
                   capture_output=True)
    assert read_uint8(str(out / "photo0.png")).shape == (8, 8, 3)
    with pytest.raises(SystemExit):
        prepare.main(["realsr-hr", str(folder), "--out", str(out), "--factor", "0"])
    with pytest.raises(SystemExit):
        prepare.main([])


def test_cache_command_prepares_each_folder(tmp_path, capsys):
    hr, lr = source_folder(tmp_path), tmp_path / "lr"
    write_uint8(str(lr / "a.png"), np.zeros((8, 8, 3), np.uint8))
    prepare.main(["cache", str(hr), str(lr), "--cache", str(tmp_path / "c"), "--threads", "1"])
    for folder in (hr, lr):
        for path in list_images(str(folder)):
            entry = cache.entry_path(str(tmp_path / "c"), path)
            assert np.array_equal(np.load(entry, allow_pickle=False), read_uint8(path))
    assert "2 images prepared in" in capsys.readouterr().out
    prepare.main(["cache", str(hr), "--cache", str(tmp_path / "c")])
    assert "preparing" not in capsys.readouterr().out  # up to date: nothing decoded
    for bad in (["--cache", "none"], ["--threads", "0"]):
        with pytest.raises(SystemExit):
            prepare.main(["cache", str(hr), *bad])
