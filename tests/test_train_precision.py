"""Training options of the engine: train.amp (bf16 / fp16 with loss scaling), train.ema (EMA of the
inference networks), train.channels_last and train.compile."""
import os

import pytest
import torch

from bsr import config, methods
from bsr.config import ConfigError
from bsr.data import write_image
from bsr.engine import Engine, load_checkpoint
from bsr.export import export_state

from resume_check import assert_same_state, run_split_and_once
from toy_method import toy_config


def smoke_engine(method, out_dir, *overrides, iters=2):
    cfg = config.load(method, "smoke", overrides=[f"train.iters={iters}", "train.val_every=0", "train.save_every=0",
                                                  "train.log_every=1", "device=cpu", *overrides])
    engine = Engine(cfg, str(out_dir))
    if method == "realsr":  # a kernel pool instead of KernelGAN at the first step (slow, and not the point here)
        engine.method.kernels = torch.full((2, 13, 13), 1 / 169)
    return engine


def recorded_losses(engine):
    """The losses of every iteration engine.train() runs, appended to the returned list."""
    losses, step = [], engine.train_step

    def train_step(batch):
        out = step(batch)
        losses.append(out)
        return out

    engine.train_step = train_step
    return losses


def weights(net):
    return [p.detach().clone() for p in net.parameters()]


# ----------------------------------------------------------------------------- amp and EMA
@pytest.mark.parametrize("method", methods.available())
def test_every_method_trains_under_bf16_with_an_ema(method, tmp_path):
    engine = smoke_engine(method, tmp_path, "train.amp=bf16", "train.ema=0.5")
    m = engine.method
    assert engine.amp_dtype == torch.bfloat16 and m.grad_scaler is None and set(m.ema) == set(m.inference_nets)
    before = {name: weights(m.module(name)) for name in m.nets}
    losses = recorded_losses(engine)
    assert engine.train() == "done" and len(losses) == 2
    for values in losses:
        assert all(torch.isfinite(v).all() for v in values.values()), values
    for name, old in before.items():
        assert any(not torch.equal(a, b) for a, b in zip(old, m.module(name).parameters())), f"{name} did not train"
    for name, ema in m.ema.items():  # the average moved, and lags behind the weights
        assert ema.parameters().__next__().dtype == torch.float32
        assert any(not torch.equal(a, b) for a, b in zip(before[name], ema.parameters())), name
        assert any(not torch.equal(a, b) for a, b in zip(m.module(name).parameters(), ema.parameters())), name


def test_ema_is_the_exponential_average_of_the_weights_after_each_step(tmp_path):
    decay = 0.75
    engine = Engine(toy_config(train={"iters": 3, "val_every": 0, "ema": decay}), str(tmp_path))
    net = engine.method.nets["net"]
    expected = [w.double() for w in weights(net)]
    step = engine.train_step

    def train_step(batch):
        out = step(batch)
        for e, w in zip(expected, net.parameters()):
            e.mul_(decay).add_(w.detach().double(), alpha=1 - decay)
        return out

    engine.train_step = train_step
    engine.train()
    for e, a in zip(expected, engine.method.ema["net"].parameters()):
        torch.testing.assert_close(a.double(), e, rtol=1e-6, atol=1e-7)
        assert not a.requires_grad


def test_ema_is_saved_and_evaluation_loads_it(tmp_path):
    engine = Engine(toy_config(train={"iters": 2, "val_every": 0, "ema": 0.9}), str(tmp_path))
    engine.train()
    saved = torch.load(tmp_path / "checkpoints/last.pt", weights_only=True)
    assert_same_state(saved["ema"], {"net": engine.method.ema["net"].state_dict()})
    method, _, _ = load_checkpoint(str(tmp_path / "checkpoints/last.pt"))
    assert_same_state({"net": method.nets["net"].state_dict()}, saved["ema"])
    assert_same_state({"net": export_state(saved)[0]}, saved["ema"])
    assert not any(torch.equal(a, b) for a, b in zip(saved["ema"]["net"].values(), saved["nets"]["net"].values()))


def test_validation_runs_on_the_ema_networks(tmp_path, monkeypatch):
    import bsr.engine

    seen = []
    monkeypatch.setattr(bsr.engine, "run_validation", lambda method, *args, **kw: seen.append(dict(method.nets)) or
                        ([], {}))
    write_image(str(tmp_path / "val" / "a.png"), torch.rand(3, 8, 8))
    engine = Engine(toy_config(train={"iters": 1, "val_every": 1, "ema": 0.9}, data={"val": str(tmp_path / "val")}),
                    str(tmp_path / "run"))
    engine.train()
    m = engine.method
    assert [nets["net"] for nets in seen] == [m.ema["net"]] and m.nets["net"] is not m.ema["net"]


def test_resume_under_bf16_with_an_ema_is_exact(tmp_path):
    once, split = run_split_and_once(tmp_path, "dan", ["train.amp=bf16", "train.ema=0.9"])
    assert_same_state(once["ema"], split["ema"])


def fp16_on_the_cpu(monkeypatch):
    """Lets train.amp=fp16 run on the CPU (float16 autocast and a CPU GradScaler) to test the scaler's path."""
    import bsr.engine

    monkeypatch.setattr(bsr.engine, "amp_dtype", lambda amp, device: torch.float16 if amp == "fp16" else None)


def test_fp16_scales_every_step_and_resumes_exactly_with_the_scaler(tmp_path, monkeypatch):
    fp16_on_the_cpu(monkeypatch)
    train = {"amp": "fp16", "ema": 0.9, "val_every": 0, "save_every": 2}
    Engine(toy_config(train={**train, "iters": 4}), str(tmp_path / "once")).train()
    Engine(toy_config(train={**train, "iters": 2}), str(tmp_path / "split")).train()
    Engine(toy_config(train={**train, "iters": 4}), str(tmp_path / "split"), resume=True).train()
    once, split = (torch.load(tmp_path / run / "checkpoints/last.pt", weights_only=True) for run in ("once", "split"))
    assert once["grad_scaler"] == split["grad_scaler"] and split["grad_scaler"]["_growth_tracker"] == 4  # restored
    assert_same_state(once["nets"], split["nets"])
    assert_same_state(once["ema"], split["ema"])


def accumulated_step(scaler):
    """The toy's weights after two optimize calls of which the second adds to the first's gradients
    (USR_DA's inner steps), plain SGD, with `scaler` (None: no loss scaling)."""
    torch.manual_seed(0)
    method = methods.get("toy")(toy_config(), "cpu")
    net = method.nets["net"]
    method.optimizers["net"] = torch.optim.SGD(net.parameters(), lr=0.1)
    method.grad_scaler = scaler
    x = torch.randn(2, 3, 6, 6)
    method.optimize(net(x).square().mean())
    method.optimize(net(x).abs().mean(), zero_grad=False)
    return weights(net)


def test_loss_scaling_keeps_accumulated_gradients_at_one_scale():
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10, growth_interval=1)  # the scale doubles between calls
    for plain, scaled in zip(accumulated_step(None), accumulated_step(scaler)):
        torch.testing.assert_close(scaled, plain, rtol=1e-5, atol=1e-6)
    assert scaler.get_scale() == 2.0 ** 12


def test_fp16_on_the_cpu_is_a_config_error_naming_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"'train.amp'.*fp16.*CUDA.*bf16"):
        Engine(toy_config(train={"amp": "fp16"}), str(tmp_path))


@pytest.mark.parametrize("key, value", [("train.amp", "fp32"), ("train.amp", 1), ("train.ema", 1.0),
                                        ("train.ema", -0.1), ("train.compile", 3)])
def test_bad_training_option_values_are_config_errors(key, value):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        config.load("dan", "smoke", overrides=[f"{key}={value}"])


def test_amp_and_ema_are_refused_on_resume_channels_last_and_compile_allowed():
    saved = config.load("dan", "smoke").to_dict()
    for key, value in (("train.amp", "bf16"), ("train.ema", 0.99)):
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            config.resume_changes(saved, config.load("dan", "smoke", overrides=[f"{key}={value}"]))
    changed = config.load("dan", "smoke", overrides=["train.channels_last=false", "train.compile=true"])
    assert saved["train"]["channels_last"] is True
    assert set(config.resume_changes(saved, changed)) == {"train.channels_last", "train.compile"}


# ----------------------------------------------------------------------------- channels_last
def first_iteration(method, tmp_path, layout):
    """(the 4-D batch entries the method got, the networks after one smoke iteration) with train.channels_last
    `layout`."""
    torch.manual_seed(0)
    engine = smoke_engine(method, tmp_path / str(layout), f"train.channels_last={str(layout).lower()}", iters=1)
    inputs, step = [], engine.method.train_step
    engine.method.train_step = lambda batch, i: inputs.extend(v for v in batch.values() if v.dim() == 4) or \
        step(batch, i)
    engine.train()
    return inputs, engine.method


@pytest.mark.parametrize("method", ["dan", "usrnet"])
def test_channels_last_networks_and_inputs_train_like_the_contiguous_run(method, tmp_path):
    inputs, last = first_iteration(method, tmp_path, True)
    _, contiguous = first_iteration(method, tmp_path, False)
    assert inputs and all(x.is_contiguous(memory_format=torch.channels_last) for x in inputs)
    for name in last.nets:
        fours = [p for p in last.module(name).parameters() if p.dim() == 4]
        assert fours and all(p.is_contiguous(memory_format=torch.channels_last) for p in fours), name
        assert not all(p.is_contiguous() for p in fours), name
        for a, b in zip(last.module(name).parameters(), contiguous.module(name).parameters()):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_a_checkpoint_config_with_dan_channels_last_resumes_as_train_channels_last():
    saved = config.load("dan", "smoke").to_dict()
    saved["train"].pop("channels_last")
    saved["dan"]["channels_last"] = False
    cfg = config.from_saved(saved)
    assert cfg.train.channels_last is False and "channels_last" not in cfg.dan
    assert config.resume_changes(saved, cfg) == {}


# ----------------------------------------------------------------------------- torch.compile
RUN_SLOW = os.environ.get("BSR_RUN_SLOW") == "1"


def compiled_and_eager(method, tmp_path, backend):
    """(method, losses of each iteration) after two smoke iterations with train.compile=`backend` and
    without (same seed), compiled first."""
    runs = {}
    for option in (backend, "false"):
        torch.manual_seed(0)
        engine = smoke_engine(method, tmp_path / option, f"train.compile={option}")
        losses = recorded_losses(engine)
        assert engine.train() == "done"
        assert all(torch.isfinite(v).all() for values in losses for v in values.values())
        runs[option] = engine.method, losses
    return runs[backend], runs["false"]


def check_compiled_step(method, tmp_path, backend):
    """Every network compiled; each iteration's losses as the eager run's. The weights after the steps are
    compared only where the backend generates no code (aot_eager: the eager kernels): Adam moves a weight by
    about the learning rate whatever its gradient's size, so the rounding differences of generated kernels in
    near-zero gradients show up in the weights at the size of the learning rate."""
    (compiled, compiled_losses), (eager, eager_losses) = compiled_and_eager(method, tmp_path, backend)
    for got, expected in zip(compiled_losses, eager_losses, strict=True):
        for name in expected:
            torch.testing.assert_close(got[name], expected[name], rtol=1e-3, atol=1e-5, msg=name)
    for name in compiled.nets:
        assert compiled.module(name)._compiled_call_impl is not None, f"{name} was not compiled"
        if backend == "aot_eager":
            for a, b in zip(compiled.module(name).parameters(), eager.module(name).parameters()):
                torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4)


def test_compiled_step_trains_like_the_eager_step(tmp_path):
    """The cheapest method's step (DANv2's smoke preset) through torch.compile with the aot_eager backend
    (graph capture and autograd tracing; inductor's code generation is left to the slow tests)."""
    check_compiled_step("dan", tmp_path, "aot_eager")


@pytest.mark.slow
@pytest.mark.skipif(not RUN_SLOW, reason="compiles a method's step with inductor (minutes); BSR_RUN_SLOW=1 runs it")
@pytest.mark.parametrize("method", sorted(set(methods.available()) - {"dan"}) + ["dan"])
def test_compiled_step_with_inductor(method, tmp_path):
    check_compiled_step(method, tmp_path, "true")
