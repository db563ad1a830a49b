"""Validation data cannot be silently mismatched: paired hr/ + lr/ folders are matched by name
(data.val_lr_name), an unmatched or wrongly sized file is an error naming it, an image too small for
the method's protocol names its file, and a run says which validation set it uses."""
import pytest
import torch

from bsr import config, data, methods
from bsr.data import ImageError, validation_items
from bsr.engine import Engine

from toy_method import toy_config


def write(path, height, width):
    data.write_image(str(path), torch.rand(3, height, width))


def usrnet(*overrides):
    return methods.get("usrnet")(config.load("usrnet", "smoke", overrides=list(overrides)), "cpu")


def test_pairs_are_matched_by_name_with_the_lr_name_template(tmp_path):
    write(tmp_path / "hr" / "0002.png", 40, 48)
    write(tmp_path / "hr" / "0001.png", 36, 36)
    write(tmp_path / "lr" / "0001x4.jpg", 9, 9)
    write(tmp_path / "lr" / "0002x4.png", 10, 12)
    method = usrnet("data.val_lr_name={}x4")
    items = validation_items(method.cfg, method, str(tmp_path))
    assert [(i["name"], tuple(i["lr"].shape[-2:])) for i in items] == [("0001.png", (9, 9)), ("0002.png", (10, 12))]


MISMATCHES = {
    # the old code paired by sort order: coffee's HR got astronaut's LR
    "an HR without its LR": ({"hr/coffee.png": (36, 36), "lr/astronaut.png": (9, 9)},
                             r"HR image .*coffee.png' has no LR image named 'coffee'"),
    "an LR without its HR": ({"hr/a.png": (36, 36), "lr/a.png": (9, 9), "lr/b.png": (9, 9)},
                             r"LR image .*b.png' has no HR image"),
    "a wrongly sized LR": ({"hr/a.png": (36, 36), "lr/a.png": (9, 8)},
                           r"LR image .*a.png' is 9x8; its HR .*a.png'.* needs 9x9"),
}


@pytest.mark.parametrize("case", list(MISMATCHES))
def test_a_mismatched_pair_is_an_error_naming_the_files(tmp_path, case):
    files, message = MISMATCHES[case]
    for name, (height, width) in files.items():
        write(tmp_path / name, height, width)
    method = usrnet()
    with pytest.raises(ImageError, match=message):
        validation_items(method.cfg, method, str(tmp_path))


def test_a_validation_image_too_small_for_the_protocol_names_its_file(tmp_path):
    write(tmp_path / "tiny.png", 30, 40)  # USRNet x4: border 16 on each side needs 33
    method = usrnet()
    with pytest.raises(ImageError, match=r"tiny.png' is 30x40, smaller than the 33x33 .*validation protocol"):
        validation_items(method.cfg, method, str(tmp_path))


def test_a_run_says_which_validation_set_it_uses(tmp_path, capsys):
    for name in ("a", "b"):
        write(tmp_path / "hr" / f"{name}.png", 32, 32)
    cfg = toy_config(data={"hr": str(tmp_path / "hr")}, train={"iters": 1})
    Engine(cfg, str(tmp_path / "run"))
    assert "validation set: the embedded demo photos chelsea, retina (data.val is not set" in capsys.readouterr().out
