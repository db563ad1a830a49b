"""The real CLIs in subprocesses: every available method trains 2 iterations, evaluates and
super-resolves; SIGTERM mid-run; 2-process DDP (torchrun, gloo) against one process with the
same global batch (train.batch_size is split over the processes). Each method's YAML should have
a `smoke` preset (tiny nets and crops); without one the `demo` preset runs with train.iters=2.
In-process: --device and the batch split's error."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml

from bsr import cli, config, data, infer, methods, train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def env():
    return {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1"}


def run(*args, timeout=240, **kwargs):
    result = subprocess.run([sys.executable, *args], cwd=ROOT, env=env(), capture_output=True, text=True,
                            timeout=timeout, **kwargs)
    assert result.returncode == 0, f"{args}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout


def smoke_preset(method):
    return "smoke" if "smoke" in config.method_presets(method) else "demo"


@pytest.mark.parametrize("method", methods.available())
def test_train_evaluate_infer_through_the_clis(method, tmp_path):
    out = tmp_path / "run"
    stdout = run("-m", "bsr.train", method, "--preset", smoke_preset(method), "--set", "train.iters=2",
                 "--out", str(out))
    assert "PSNR-RGB" in stdout and "bicubic" in stdout
    ckpt = out / "checkpoints" / "last.pt"
    assert torch.load(ckpt, weights_only=True)["step"] == 2
    assert (out / "config.yaml").exists() and (out / "log.jsonl").exists() and os.listdir(out / "tensorboard")

    stdout = run("-m", "bsr.evaluate", method, "--ckpt", str(ckpt), "--out", str(tmp_path / "eval"))
    metrics = json.load(open(tmp_path / "eval" / "metrics.json"))
    assert method in metrics["models"] and "bicubic" in metrics["models"]
    assert {"psnr_y", "ssim_y", "psnr_rgb", "ssim_rgb"} <= set(metrics["models"][method]["mean"])
    assert os.listdir(tmp_path / "eval" / "images")

    data.write_image(str(tmp_path / "in" / "photo.png"), torch.rand(3, 30, 41))
    run("-m", "bsr.infer", "--ckpt", str(ckpt), str(tmp_path / "in"), "--out", str(tmp_path / "sr"),
        "--kernel", "gaussian:1.2", "--noise", "5", "--tile", "24", "--overlap", "8")
    scale = torch.load(ckpt, weights_only=True)["config"]["data"]["scale"]
    assert data.read_uint8(str(tmp_path / "sr" / "photo.png")).shape == (30 * scale, 41 * scale, 3)


def test_usrgan_option_trains_and_evaluates_through_the_clis(tmp_path):
    from bsr.archs.vgg import VGG19

    torch.save(VGG19("conv5_4").state_dict(), tmp_path / "vgg19.pth")  # random: no download here
    out = tmp_path / "run"
    stdout = run("-m", "bsr.train", "usrnet", "--preset", "smoke", "--set", "usrnet.gan.enabled=true",
                 "--set", f"usrnet.gan.vgg_weights={tmp_path / 'vgg19.pth'}", "--set", "usrnet.gan.discriminator.ndf=8",
                 "--out", str(out))
    assert "PSNR-RGB" in stdout
    state = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    assert state["step"] == 2 and set(state["nets"]) == {"usrnet", "netD"}
    os.remove(tmp_path / "vgg19.pth")  # evaluation needs neither the loss network nor its weights
    run("-m", "bsr.evaluate", "usrnet", "--ckpt", str(out / "checkpoints" / "last.pt"), "--out", str(tmp_path / "eval"))
    assert "usrnet" in json.load(open(tmp_path / "eval" / "metrics.json"))["models"]


def test_sigterm_saves_a_loadable_checkpoint_and_exits_cleanly(tmp_path):
    out = tmp_path / "run"
    process = subprocess.Popen(
        [sys.executable, "-m", "bsr.train", "usrnet", "--preset", "smoke", "--set", "train.iters=100000",
         "--out", str(out)], cwd=ROOT, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    ckpt = out / "checkpoints" / "last.pt"
    deadline = time.time() + 150
    while not ckpt.exists() and time.time() < deadline and process.poll() is None:
        time.sleep(0.2)
    assert ckpt.exists(), "no checkpoint appeared"
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 0, output[-3000:]
    assert "stopped by signal" in output
    state = torch.load(ckpt, weights_only=True)
    assert 1 <= state["step"] < 100000 and not os.path.exists(f"{ckpt}.tmp{process.pid}")


def test_ddp_two_processes_match_one_process_with_the_same_global_batch(tmp_path):
    common = ["usrnet", "--preset", "smoke", "--set", "train.iters=2", "--set", "train.batch_size=2", "--no-eval",
              "--device", "cpu"]
    stdout = run("-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "bsr.train", *common,
                 "--out", str(tmp_path / "ddp"))
    assert "batch 2 = 2 processes x 1" in stdout
    run("-m", "bsr.train", *common, "--out", str(tmp_path / "single"))
    ddp = torch.load(tmp_path / "ddp/checkpoints/last.pt", weights_only=True)
    single = torch.load(tmp_path / "single/checkpoints/last.pt", weights_only=True)
    assert ddp["step"] == single["step"] == 2
    for key, value in single["nets"]["usrnet"].items():
        torch.testing.assert_close(ddp["nets"]["usrnet"][key], value, rtol=1e-4, atol=1e-6, msg=key)
    cfg = config.load("usrnet", "smoke")
    torch.manual_seed(cfg.seed)  # the engine's initialisation
    initial = methods.get("usrnet")(cfg, "cpu").nets["usrnet"].state_dict()
    changed = [k for k, v in single["nets"]["usrnet"].items() if not torch.equal(initial[k], v)]
    assert len(changed) == len(initial)  # every tensor trained (and the comparison above is not vacuous)


def test_device_flag_sets_the_device_and_the_startup_line_names_it(tmp_path, capsys):
    out = tmp_path / "run"
    common = ["usrnet", "--preset", "smoke", "--no-eval", "--out", str(out)]
    assert cli.run(train.main, [*common, "--set", "train.iters=1"]) == 0
    assert yaml.safe_load(open(out / "config.yaml"))["device"] == "auto"
    assert cli.run(train.main, [*common, "--resume", "--set", "train.iters=2", "--device", "cpu"]) == 0
    stdout = capsys.readouterr().out
    assert "resume: device 'auto' -> 'cpu'" in stdout and "\ndevice cpu, bsrops backend " in stdout
    assert yaml.safe_load(open(out / "config.yaml"))["device"] == "cpu"
    assert torch.load(out / "checkpoints" / "last.pt", weights_only=True)["step"] == 2


def test_device_option_defaults_to_auto_and_refuses_other_names(capsys):
    assert infer.build_parser().parse_args(["in.png", "--out", "sr", "--ckpt", "last.pt"]).device == "auto"
    assert train.parse_args(["usrnet"]).device is None  # the config's device (auto unless set)
    with pytest.raises(SystemExit) as exit:
        train.parse_args(["usrnet", "--device", "gpu"])
    assert exit.value.code == 2 and "--device: expected auto, cpu, cuda or cuda:N, got 'gpu'" in capsys.readouterr().err


def test_a_global_batch_the_processes_do_not_divide_is_an_error_naming_the_key(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")  # as torchrun --nproc_per_node=2 sets it
    argv = ["usrnet", "--preset", "smoke", "--set", "train.batch_size=3", "--device", "cpu", "--out", str(tmp_path)]
    assert cli.run(train.main, argv) == 2
    assert ("error: config key 'train.batch_size' (3) is the global batch, split over the 2 processes of torchrun: "
            "it must be a multiple of 2") in capsys.readouterr().err
