"""Configs reject mistakes (unknown keys with the closest valid one, wrong types and ranges, scales a
method cannot train), the train CLI lists methods and presets, and --resume continues the stored run:
only the resumable keys change (a new learning rate reaches the optimisers and schedulers), stale
temporary files go, and the logs drop what came after the checkpoint."""
import json
import os
import subprocess
import sys

import pytest
import torch
import yaml

from bsr import config, methods, train
from bsr.config import ConfigError
from bsr.engine import Engine

from toy_method import toy_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("method, preset", [(m, p) for m, ps in config.methods_with_presets().items() for p in ps])
def test_every_preset_of_every_method_passes_its_own_checks(method, preset):
    cfg = config.load(method, preset)
    assert cfg.method == method and cfg.preset == preset


@pytest.mark.parametrize("override, message", [
    ("train.iterz=3", r"unknown config key 'train.iterz'.*did you mean 'train.iters'"),
    ("usrnet.n_itr=3", r"did you mean 'usrnet.n_iter'"),
    ("dan.nf=8", r"unknown config key 'dan'"),
    ("train.iters=2.5", r"'train.iters'.*must be a whole number, got 2.5"),
    ("train.iters=-1", r"'train.iters'.*must be a whole number >= 1, got -1"),
    ("train.batch_size=0", r"'train.batch_size'.*must be a whole number >= 1, got 0"),
    ("train.lr=0", r"'train.lr'.*must be a finite number > 0"),
    ("train.lr=abc", r"'train.lr'.*must be a number, got 'abc'"),
    ("usrnet.gan.enabled=3", r"'usrnet.gan.enabled'.*must be true or false"),
    ("usrnet.nc=64", r"'usrnet.nc'.*must be a list"),
    ("seed=abc", r"'seed'.*must be a whole number"),
    ("data.val_lr_name=", r"'data.val_lr_name'.*must be a string, got None"),
    ("usrnet.gan.lr_d=-1", r"'usrnet.gan.lr_d'.*must be a finite number > 0"),
    ("data.num_workers=-2", r"'data.num_workers'.*must be >= 0"),
    ("train=3", r"train.*must be a mapping"),
    ("noequals", r"--set expects key=value"),
])
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        config.load("usrnet", "demo", overrides=[override])


def test_good_overrides_are_converted_to_the_key_type():
    cfg = config.load("usrnet", "demo", overrides=["train.iters=1e3", "train.lr=1", "usrnet.pretrained=w.pth",
                                                   "usrnet.gan.lr_d=2e-4", "data.val=null"])
    assert cfg.train.iters == 1000 and isinstance(cfg.train.iters, int)
    assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)
    assert cfg.usrnet.pretrained == "w.pth" and cfg.usrnet.gan.lr_d == 2e-4 and cfg.data.val is None


def test_a_config_file_is_checked_like_overrides(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump({"train": {"batch_sise": 4}}))
    with pytest.raises(ConfigError, match=r"'train.batch_sise' \(.*mine.yaml\).*did you mean 'train.batch_size'"):
        config.load("usrnet", "demo", config_file=str(path))


def test_unknown_method_and_preset_list_the_choices():
    with pytest.raises(ConfigError, match=r"unknown method 'usrnt'.*\n  dan: paper, paper-x3, paper-x2, setting2, setting2-x2, demo, smoke"):
        config.load("usrnt")
    with pytest.raises(ConfigError, match=r"unknown preset 'papr' for usrnet; choose one of \['paper'"):
        config.load("usrnet", "papr")
    with pytest.raises(ConfigError, match="unknown preset 'types'"):
        config.load("usrnet", "types")


@pytest.mark.parametrize("method, scale", [("realsr", 3), ("usrda", 3), ("dan", 5), ("pdm", 8), ("usrnet", 6)])
def test_each_method_lists_the_scales_it_trains(method, scale):
    cfg = config.load(method, "smoke", overrides=[f"data.scale={scale}"])
    with pytest.raises(ConfigError, match=rf"'data.scale' must be one of .* for {method}, got {scale}"):
        methods.get(method)(cfg, "cpu")


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "bsr.train", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)


def test_train_without_arguments_or_with_help_lists_methods_and_presets():
    bare = run_cli()
    assert bare.returncode == 2 and "usrnet: paper, paper-usrgan, demo, smoke" in bare.stderr
    helped = run_cli("--help")
    assert helped.returncode == 0 and "pdm: paper, paper-srgan" in helped.stdout
    unknown = run_cli("usrnt")
    assert unknown.returncode == 2 and "unknown method 'usrnt'" in unknown.stderr and "Traceback" not in unknown.stderr
    typo = run_cli("usrnet", "--set", "train.iterz=2")
    assert typo.returncode == 2 and "did you mean 'train.iters'" in typo.stderr


# ---------------------------------------------------------------------------------------------- resume

def trained(tmp_path, iters=2, **train):
    cfg = toy_config(train={"iters": iters, "val_every": 0, **train})
    Engine(cfg, str(tmp_path)).train()
    return cfg


def test_resume_refuses_a_change_of_the_run_and_prints_the_difference(tmp_path):
    trained(tmp_path)
    changed = toy_config(train={"iters": 4, "val_every": 0, "batch_size": 3}, data={"hr_patch": 8})
    with pytest.raises(ConfigError) as error:
        Engine(changed, str(tmp_path), resume=True)
    assert "train.batch_size: 2 -> 3" in str(error.value) and "data.hr_patch: 16 -> 8" in str(error.value)
    assert "train.iters" not in str(error.value).split("only")[0]  # resumable: not listed as refused


def test_resume_applies_a_new_learning_rate_to_optimisers_and_schedulers(tmp_path, capsys):
    cfg = trained(tmp_path, iters=3)  # StepLR(step 2, x0.5): the rate is already decayed once
    faster = toy_config(train={"iters": 5, "val_every": 0, "lr": cfg.train.lr * 10})
    engine = Engine(faster, str(tmp_path), resume=True)
    group = engine.method.optimizers["net"].param_groups[0]
    assert group["initial_lr"] == pytest.approx(0.1) and group["lr"] == pytest.approx(0.05)
    assert engine.method.schedulers["net"].base_lrs == [pytest.approx(0.1)]
    assert "resume: train.lr 0.01 -> 0.1" in capsys.readouterr().out
    engine.train()
    assert engine.method.optimizers["net"].param_groups[0]["lr"] == pytest.approx(0.025)  # decayed at step 4
    records = [json.loads(line) for line in open(tmp_path / "log.jsonl")]
    assert any(r["kind"] == "resume" and r["train.lr"] == "0.01 -> 0.1" for r in records)


def test_train_cli_resume_takes_the_stored_configuration(tmp_path, monkeypatch):
    out = tmp_path / "run"
    args = ["usrnet", "--preset", "smoke", "--set", "train.iters=1", "--no-eval", "--out", str(out)]
    assert train.main(args) == 0
    assert train.main(["usrnet", "--resume", "--set", "train.iters=2", "--no-eval", "--out", str(out)]) == 0
    assert torch.load(out / "checkpoints" / "last.pt")["step"] == 2
    assert yaml.safe_load(open(out / "config.yaml"))["preset"] == "smoke"
    with pytest.raises(ConfigError, match="--preset 'demo' would change it"):
        train.main(["usrnet", "--resume", "--preset", "demo", "--out", str(out)])
    with pytest.raises(ConfigError, match="holds a usrnet run, not dan"):
        train.main(["dan", "--resume", "--out", str(out)])
    with pytest.raises(ConfigError, match=r"usrnet.nb: 1 -> 2"):
        train.main(["usrnet", "--resume", "--set", "usrnet.nb=2", "--out", str(out)])


def test_a_resumed_run_cleans_stale_temporaries_and_truncates_its_logs(tmp_path):
    trained(tmp_path, iters=2, save_every=1)
    stale = tmp_path / "checkpoints" / "last.pt.tmp99999"
    stale.write_bytes(b"half a checkpoint")
    with open(tmp_path / "log.jsonl", "a") as f:  # what a run killed after its last save had logged
        f.write(json.dumps({"kind": "train", "step": 3, "l1": 9.0}) + "\n")
    Engine(toy_config(train={"iters": 4, "val_every": 0, "save_every": 1}), str(tmp_path), resume=True).train()
    assert not stale.exists()
    steps = [json.loads(line)["step"] for line in open(tmp_path / "log.jsonl") if '"train"' in line]
    assert steps == [1, 2, 3, 4] and 9.0 not in [json.loads(line).get("l1") for line in open(tmp_path / "log.jsonl")]
