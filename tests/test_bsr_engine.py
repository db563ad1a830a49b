"""The training engine (bsr/engine.py) with the toy method: exact resume, NaN guard (also between
logging iterations), checkpoints and logs, gradient clipping, AMP, the device and the batch split.
DDP, SIGTERM and the CLIs run with the real USRNet in test_bsr_train_cli.py."""
import json
import os
import signal

import pytest
import torch

import bsrops
from bsr import config
from bsr.engine import Engine, NonFiniteLoss, atomic_save, load_checkpoint, per_process_batch, resolve_device

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


def test_device_auto_is_cuda_when_available_else_the_cpu(monkeypatch):
    assert config.DEFAULTS["device"] == "auto" and config.load("usrnet", "paper").device == "auto"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu") and resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(config.ConfigError, match=r"device 'cuda': this machine has 0 CUDA device\(s\)"):
        resolve_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("auto") == torch.device("cuda") and resolve_device("cuda:0") == torch.device("cuda", 0)
    with pytest.raises(config.ConfigError, match=r"device 'cuda:1': this machine has 1 CUDA device"):
        resolve_device("cuda:1")


@pytest.mark.parametrize("name", ["gpu", "cuda:", "CPU", "cuda:x"])
def test_a_bad_device_name_is_a_config_error_naming_the_key(name):
    with pytest.raises(config.ConfigError, match=r"'device' .*must be auto, cpu, cuda or cuda:N"):
        config.load("usrnet", "smoke", overrides=[f"device={name}"])


def test_batch_size_is_the_global_batch_split_over_the_processes(tmp_path, monkeypatch):
    assert per_process_batch(48, 1) == 48 and per_process_batch(48, 4) == 12
    monkeypatch.setenv("WORLD_SIZE", "4")
    with pytest.raises(config.ConfigError, match=r"'train.batch_size' \(6\) is the global batch, split over the 4 "
                                                 r"processes of torchrun: it must be a multiple of 4"):
        Engine(toy_config(train={"batch_size": 6}), str(tmp_path))
    assert not os.path.exists(tmp_path / "checkpoints")


def test_startup_line_names_device_backend_workers_and_batch(tmp_path, capsys):
    Engine(toy_config(device="cpu", data={"num_workers": 1}), str(tmp_path))
    backend = bsrops.backend_info("cpu")["backend"]
    assert f"device cpu, bsrops backend {backend}, data workers 1, batch 2\n" in capsys.readouterr().out


def test_non_finite_loss_between_logs_stops_before_the_next_checkpoint(tmp_path):
    # iteration 3 is NaN; nothing reads the losses until the checkpoint of iteration 4, which is not written
    engine = Engine(toy_config(train={"iters": 8, "val_every": 0, "log_every": 100, "save_every": 2},
                               toy={"nan_at": 3}), str(tmp_path))
    with pytest.raises(NonFiniteLoss, match=r"at iteration 3 \(l1\); training stopped without saving; "
                                            r"the last good checkpoint is .*last.pt"):
        engine.train()
    assert engine.step == 4
    assert torch.load(tmp_path / "checkpoints/last.pt", weights_only=True)["step"] == 2


def test_non_finite_loss_is_never_saved_at_the_end(tmp_path):
    engine = Engine(toy_config(train={"iters": 3, "val_every": 0, "log_every": 100, "save_every": 0},
                               toy={"nan_at": 2}), str(tmp_path))
    with pytest.raises(NonFiniteLoss, match=r"at iteration 2 \(l1\); .*no checkpoint was saved yet"):
        engine.train()
    with pytest.raises(NonFiniteLoss):
        engine.save()
    assert not os.path.exists(tmp_path / "checkpoints/last.pt")


def test_a_signal_between_logs_stops_after_that_iteration_and_saves(tmp_path):
    engine = Engine(toy_config(train={"iters": 10, "val_every": 0, "log_every": 100, "save_every": 0}), str(tmp_path))
    step = engine.train_step

    def signalled_at_2(batch):
        if engine.step == 1:
            engine._on_signal(signal.SIGTERM, None)
        return step(batch)

    engine.train_step = signalled_at_2
    assert engine.train() == "interrupted"
    assert torch.load(tmp_path / "checkpoints/last.pt", weights_only=True)["step"] == 2


def test_losses_are_logged_at_the_first_every_log_every_and_the_last_iteration(tmp_path):
    Engine(toy_config(train={"iters": 7, "val_every": 0, "log_every": 3}), str(tmp_path)).train()
    records = [json.loads(line) for line in open(tmp_path / "log.jsonl")]
    assert [r["step"] for r in records if r["kind"] == "train"] == [1, 3, 6, 7]
    assert all(isinstance(r["l1"], float) for r in records)
