"""The training engine (bsr/engine.py) with the toy method: exact resume, NaN guard,
checkpoints and logs, gradient clipping, AMP. DDP, SIGTERM and the CLIs run with the real
USRNet in test_bsr_train_cli.py."""
import json
import os

import pytest
import torch

from bsr.engine import Engine, NonFiniteLoss, atomic_save, load_checkpoint

from bsr.data import write_image
from resume_check import assert_same_state
from toy_method import toy_config


@pytest.fixture
def val_dir(tmp_path):
    """Two small validation images (the demo ones are slow to evaluate)."""
    for name in ("a", "b"):
        write_image(str(tmp_path / "val" / f"{name}.png"), torch.rand(3, 24, 20))
    return str(tmp_path / "val")


def weights(path):
    return torch.load(path, map_location="cpu", weights_only=True)["nets"]


def test_resume_is_bit_identical(tmp_path, val_dir):
    data = {"val": val_dir}
    Engine(toy_config(train={"iters": 5}, data=data), str(tmp_path / "once")).train()
    Engine(toy_config(train={"iters": 2}, data=data), str(tmp_path / "split")).train()
    status = Engine(toy_config(train={"iters": 5}, data=data), str(tmp_path / "split"), resume=True).train()
    assert status == "done"
    once = torch.load(tmp_path / "once/checkpoints/last.pt", weights_only=True)
    split = torch.load(tmp_path / "split/checkpoints/last.pt", weights_only=True)
    assert once["step"] == split["step"] == 5
    assert_same_state(once["nets"], split["nets"])
    assert once["optimizers"]["net"]["state"][0]["exp_avg"].equal(split["optimizers"]["net"]["state"][0]["exp_avg"])
    assert once["schedulers"] == split["schedulers"]
    assert torch.equal(once["rng"]["torch"], split["rng"]["torch"])


def test_run_directory_holds_config_checkpoints_logs_samples(tmp_path, val_dir):
    tmp_path = tmp_path / "run"
    Engine(toy_config(train={"iters": 4, "ckpt_every": 2}, data={"val": val_dir}), str(tmp_path)).train()
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["iter_0000002.pt", "iter_0000004.pt", "last.pt"]
    assert os.path.exists(tmp_path / "config.yaml") and os.listdir(tmp_path / "tensorboard")
    records = [json.loads(line) for line in open(tmp_path / "log.jsonl")]
    val = [r for r in records if r["kind"] == "val"]
    assert [r["step"] for r in val] == [2, 4] and {"psnr_y", "ssim_y", "psnr_rgb", "ssim_rgb"} <= set(val[0])
    train = [r for r in records if r["kind"] == "train"]
    assert [r["lr_net"] for r in train] == [1e-2, 5e-3, 5e-3, 2.5e-3]  # StepLR(2, 0.5) stepped once per iteration
    assert sorted(os.listdir(tmp_path / "samples")) == sorted(f"000000{s}_{n}.png" for s in (2, 4) for n in ("a", "b"))
    method, cfg, step = load_checkpoint(str(tmp_path / "checkpoints/last.pt"))
    assert step == 4 and cfg.method == "toy" and not method.nets["net"].training


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    engine = Engine(toy_config(train={"iters": 6, "val_every": 0}, toy={"nan_at": 3}), str(tmp_path))
    with pytest.raises(NonFiniteLoss, match=r"iteration 3 .*last good checkpoint"):
        engine.train()
    state = torch.load(tmp_path / "checkpoints/last.pt", weights_only=True)
    assert state["step"] == 2
    assert all(torch.isfinite(v).all() for v in state["nets"]["net"].values())


def test_gradient_clipping_bounds_the_gradient_norm(tmp_path):
    engine = Engine(toy_config(train={"iters": 1, "val_every": 0, "grad_clip": 1e-3}), str(tmp_path))
    engine.train()
    grads = [p.grad for p in engine.method.nets["net"].parameters()]
    assert torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])) <= 1e-3 * (1 + 1e-5)


def test_amp_bfloat16_on_cpu_trains(tmp_path):
    engine = Engine(toy_config(train={"iters": 2, "val_every": 0, "amp": True}), str(tmp_path))
    assert engine.amp_dtype == torch.bfloat16 and engine.train() == "done"


def test_atomic_save_leaves_no_temporary_file(tmp_path):
    atomic_save({"a": torch.ones(2)}, str(tmp_path / "x" / "c.pt"))
    assert os.listdir(tmp_path / "x") == ["c.pt"]


def test_resume_without_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        Engine(toy_config(), str(tmp_path), resume=True)


def test_dataloader_workers_give_the_same_training(tmp_path):
    Engine(toy_config(train={"iters": 3, "val_every": 0}, data={"num_workers": 1}), str(tmp_path / "w")).train()
    Engine(toy_config(train={"iters": 3, "val_every": 0}), str(tmp_path / "i")).train()
    assert_same_state(weights(tmp_path / "w/checkpoints/last.pt"), weights(tmp_path / "i/checkpoints/last.pt"))
