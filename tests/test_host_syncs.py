"""No host syncs in the training iterations that neither log, validate nor save: every method's smoke
preset trains 3 iterations with train.log_every past the end, so iterations 1 and 3 log and
iteration 2 must leave every value on the device.

On the CPU the Tensor methods that read a value on the host (item, __float__, __bool__, __int__,
__index__, tolist, cpu, numpy) are counted when called on a tensor of the training device. There every
tensor is a CPU tensor, so "of the training device" is tracked: the networks' parameters and buffers
and the batch entries the engine moves (all but engine.HOST_KEYS) are marked, and a dispatch mode marks
the outputs of every op with a marked input (forward, backward, optimiser). What stays on the host on a
GPU (generator draws of the degradations, the optimisers' step counts) stays unmarked. A factory call
with device= the training device is not marked (the dispatcher sees the CPU either way) until it meets
a marked tensor. On a GPU torch.cuda.set_sync_debug_mode("error") checks the same iterations.

Validation, evaluation and inference run under torch.inference_mode."""
import collections
import traceback

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from bsr import config, evaluate, infer, methods
from bsr.engine import HOST_KEYS, Engine
from bsr.validation import run_validation

from toy_method import toy_config

HOST_READS = ("item", "__float__", "__bool__", "__int__", "__index__", "tolist", "cpu", "numpy")
MARK = "_on_training_device"
ITERS = 3
LOGGING = (1, ITERS)


def on_device(x):
    return isinstance(x, torch.Tensor) and getattr(x, MARK, False)


def mark(values):
    for x in values:
        if isinstance(x, torch.Tensor):
            setattr(x, MARK, True)


class DeviceTracker(TorchDispatchMode):
    """Marks the outputs of every op that has a marked input."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if any(on_device(x) for x in tree_flatten((args, kwargs))[0]):
            mark(tree_flatten(out)[0])
        return out


def smoke_engine(method, out_dir, device):
    cfg = config.load(method, "smoke", overrides=[f"train.iters={ITERS}", "train.log_every=1000", "train.val_every=0",
                                                  "train.save_every=0", "train.ckpt_every=0", f"device={device}"])
    engine = Engine(cfg, str(out_dir))
    if method == "realsr":  # a kernel pool instead of KernelGAN at the first step (slow, and not the point here)
        engine.method.kernels = torch.full((2, 13, 13), 1 / 169)
    return engine


def by_iteration(engine, on_entry):
    """engine.train_step calls on_entry(iteration, batch) first; returns a function giving the iteration
    running now (its step and what follows it up to the next step; 0 before the first)."""
    current = [0]
    original = engine.train_step

    def train_step(batch):
        current[0] = engine.step + 1
        on_entry(current[0], batch)
        return original(batch)

    engine.train_step = train_step
    return lambda: current[0]


@pytest.mark.parametrize("method", methods.available())
def test_no_host_reads_in_non_logging_iterations(method, tmp_path, monkeypatch):
    engine = smoke_engine(method, tmp_path, "cpu")
    mark(t for net in engine.method.nets.values() for t in [*net.parameters(), *net.buffers()])
    reads = []
    iteration = by_iteration(engine, lambda i, batch: mark(v for k, v in batch.items() if k not in HOST_KEYS))

    def counting(name, original):
        def read(self, *args, **kwargs):
            if on_device(self):
                reads.append((iteration(), name, "".join(traceback.format_stack(limit=10)[:-1])))
            return original(self, *args, **kwargs)
        return read

    for name in HOST_READS:
        monkeypatch.setattr(torch.Tensor, name, counting(name, getattr(torch.Tensor, name)))
    with DeviceTracker():
        assert engine.train() == "done"
    counts = collections.Counter(i for i, _, _ in reads)
    inside = [f"iteration {i}: {name}\n{stack}" for i, name, stack in reads if i not in LOGGING]
    assert not inside, "\n".join(inside[:3])
    assert counts[1] and counts[ITERS]  # the logging iterations read the losses: the count works


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("method", methods.available())
def test_no_synchronisation_in_non_logging_iterations_on_cuda(method, tmp_path):
    engine = smoke_engine(method, tmp_path, "cuda")
    by_iteration(engine, lambda i, batch: torch.cuda.set_sync_debug_mode(0 if i in LOGGING else "error"))
    try:
        assert engine.train() == "done"
    finally:
        torch.cuda.set_sync_debug_mode(0)


def toy_method():
    return methods.get("toy")(toy_config(), "cpu")


def recording_inference_mode(fn, seen):
    def recording(*args):
        seen.append(torch.is_inference_mode_enabled())
        return fn(*args)
    return recording


def test_validation_and_evaluation_run_under_inference_mode():
    method, seen = toy_method(), []
    method.validate = recording_inference_mode(method.validate, seen)
    items = [{"name": "a", "hr": torch.rand(1, 3, 16, 16), "lr": torch.rand(1, 3, 8, 8)}]
    run_validation(method, items)
    evaluate.evaluate_method(method, items)
    assert seen == [True, True]


def test_inference_runs_under_inference_mode():
    method, seen = toy_method(), []
    method.infer = recording_inference_mode(method.infer, seen)
    image = (torch.rand(20, 12, 3) * 255).byte().numpy()
    out = infer.super_resolve_tiled(method, image, None, 0.0, 2, tile=8, overlap=2)
    assert out.shape == (40, 24, 3) and len(seen) == 6 and all(seen)
