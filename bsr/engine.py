"""One training loop for every method (contract: bsr/methods/base.py).

    engine = Engine(cfg, out_dir, resume=False)   # builds the method, data, logs; resumes last.pt
    engine.train()                                 # -> "done" | "interrupted"; raises NonFiniteLoss

What it owns: the seeded data stream (bsr/data), DDP when started by torchrun (gloo on
CPU, NCCL on GPU; train.batch_size is per process), optional AMP (train.amp: bfloat16 on
CPU, float16 + loss scaling on CUDA), scheduler steps, validation every train.val_every
iterations (bsr/validation.py; metrics to log.jsonl and TensorBoard, LR | SR | HR grids to
samples/), atomic checkpoints (checkpoints/last.pt every train.save_every iterations and at
the end, checkpoints/iter_<n>.pt every train.ckpt_every), exact resume, SIGINT/SIGTERM (save
and stop after the current iteration), and the non-finite loss guard (stop without saving:
the last good checkpoint stays).

Exact resume: a checkpoint holds the networks, optimisers, schedulers, the loss scaler,
the step and the RNG states; the data stream is a function of (seed, step) only, and the
DataLoader draws its worker seeds from its own generator, not from the global RNG.
"""
import importlib
import json
import math
import os
import random
import re
import signal
import sys
import time

import numpy as np
import torch
import torch.distributed as dist

from . import config as config_lib
from . import data, methods
from .io import UntrustedFileError, load_untrusted
from .validation import run_validation


class NonFiniteLoss(RuntimeError):
    """A loss became NaN or infinite; training stopped and nothing was saved."""


# ----------------------------------------------------------------------------- distributed
def distributed_setup(device):
    """(rank, world_size, device) — initialises the process group under torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1, torch.device(device)
    device = torch.device(device)
    if device.type == "cuda":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    if not dist.is_initialized():
        # Before the group exists: torch.distributed.nn.functional (imported by DDP's first
        # construction, through torch._dynamo) binds `group=group.WORLD` as default arguments.
        # Imported after init_process_group, they pin the group: destroy_process_group() at exit
        # (bsr/train.py) cannot free it, gloo's worker threads outlive it, and one still dropping
        # its last all_reduce's tensor (which takes the GIL) while Python finalizes aborts the
        # process: "terminate called without an active exception".
        importlib.import_module("torch.distributed.nn")

        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), world, device


def _any_rank(flag, world, device):
    """True on every rank if `flag` is true on one (keeps DDP ranks stepping in lockstep)."""
    if world == 1:
        return flag
    value = torch.tensor([float(flag)], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


# ----------------------------------------------------------------------------- checkpoints
CHECKPOINT_KEYS = ("step", "method", "config", "nets", "optimizers", "schedulers", "rng")


def rng_state():
    """Every RNG's state as tensors and plain data (a checkpoint loads with weights_only=True)."""
    numpy_state = np.random.get_state(legacy=False)
    numpy_state["state"]["key"] = torch.from_numpy(numpy_state["state"]["key"].astype(np.int64))
    state = {"torch": torch.get_rng_state(), "numpy": numpy_state, "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state):
    """Restore rng_state(); also the numpy tuple that checkpoints of earlier versions hold."""
    torch.set_rng_state(state["torch"])
    numpy_state = state["numpy"]
    if isinstance(numpy_state, dict):
        key = numpy_state["state"]["key"]
        key = key.numpy() if torch.is_tensor(key) else np.asarray(key)
        numpy_state = {**numpy_state, "state": {**numpy_state["state"], "key": key.astype(np.uint32)}}
    np.random.set_state(numpy_state)
    random.setstate(tuple(tuple(v) if isinstance(v, list) else v for v in state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def remove_stale_temporaries(folder):
    """Delete the `<name>.tmp<pid>` files that a save killed half-way left in `folder`."""
    if os.path.isdir(folder):
        for name in os.listdir(folder):
            if re.search(r"\.tmp\d+$", name):
                os.remove(os.path.join(folder, name))


def atomic_save(obj, path, save=torch.save):
    """save(obj, temporary file), then os.replace: a reader never sees half a file (a failed save
    leaves no temporary behind)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def method_state(method, step):
    return {
        "step": step,
        "method": method.name,
        "config": method.cfg.to_dict(),
        "nets": {k: method.module(k).state_dict() for k in method.nets},
        "optimizers": {k: v.state_dict() for k, v in method.optimizers.items()},
        "schedulers": {k: v.state_dict() for k, v in method.schedulers.items()},
        "grad_scaler": method.grad_scaler.state_dict() if method.grad_scaler else None,
        "extra": method.extra_state(),
        "rng": rng_state(),
    }


def read_checkpoint(path, what="checkpoint"):
    """The dict of a bsr checkpoint (bsr.io.load_untrusted), with the keys every checkpoint holds;
    a plain state dict gets an error pointing to --weights."""
    state = load_untrusted(path, what)
    if isinstance(state, dict) and all(key in state for key in CHECKPOINT_KEYS):
        return state
    if isinstance(state, dict) and state and all(torch.is_tensor(v) for v in state.values()):
        raise UntrustedFileError(f"{what} {path!r} is a plain state dict (weights only), not a bsr training "
                                 f"checkpoint: load it with --weights FILE (and --preset for the architecture)")
    found = sorted(state)[:10] if isinstance(state, dict) else type(state).__name__
    raise UntrustedFileError(f"{what} {path!r} is not a bsr checkpoint: expected a dict with keys "
                             f"{list(CHECKPOINT_KEYS)}, found {found}")


def load_method_state(method, state, training=True, path="checkpoint"):
    """Networks (and with `training`, optimisers, schedulers, scaler) from a checkpoint dict."""
    for name, net_state in state["nets"].items():
        method._load_net(name, net_state, path, "checkpoint")
    method.load_extra_state(state.get("extra", {}))
    if training:
        for name, opt_state in state["optimizers"].items():
            method.optimizers[name].load_state_dict(opt_state)
        for name, sched_state in state["schedulers"].items():
            method.schedulers[name].load_state_dict(sched_state)
        if method.grad_scaler and state.get("grad_scaler"):
            method.grad_scaler.load_state_dict(state["grad_scaler"])


def inference_method(cfg, device):
    """The method of `cfg` built for evaluation / inference (no loss networks, no pretrained starts)."""
    cfg.device = device
    return methods.get(cfg.method)(cfg, device, for_training=False)


def load_checkpoint(path, device="cpu", overrides=()):
    """(method, cfg, step) of a checkpoint, networks loaded, in eval mode (for evaluate/infer)."""
    state = read_checkpoint(path)
    cfg = config_lib.from_saved(state["config"], overrides=overrides)
    method = inference_method(cfg, device)
    load_method_state(method, state, training=False, path=path)
    for net in method.nets.values():
        net.eval()
    return method, cfg, state["step"]


def load_weights(method_name, path, preset="demo", device="cpu", overrides=()):
    """(method, cfg) with the inference networks of `method_name` loaded from a plain weights file
    (bsr.export's output or an official release); the preset (and overrides) give the architecture."""
    cfg = config_lib.load(method_name, preset, overrides=overrides)
    method = inference_method(cfg, device)
    method.load_weights(path)
    for net in method.nets.values():
        net.eval()
    return method, cfg


# ----------------------------------------------------------------------------- logging
class RunLog:
    """log.jsonl (one JSON record per line) + TensorBoard events, on rank 0 only. A run resumed at
    `step` first drops what was logged after it (the checkpoint's future): both logs then read as
    one uninterrupted run."""

    def __init__(self, out_dir, step=0):
        self.path = os.path.join(out_dir, "log.jsonl")
        if step and os.path.exists(self.path):
            self._truncate(step)
        from torch.utils.tensorboard import SummaryWriter

        self.tb = SummaryWriter(os.path.join(out_dir, "tensorboard"), purge_step=step + 1 if step else None)

    def _truncate(self, step):
        with open(self.path) as f:
            kept = [line for line in f if line.strip() and json.loads(line)["step"] <= step]
        tmp = f"{self.path}.tmp{os.getpid()}"
        with open(tmp, "w") as f:
            f.writelines(kept)
        os.replace(tmp, self.path)

    def write(self, kind, step, values):
        with open(self.path, "a") as f:
            f.write(json.dumps({"kind": kind, "step": step, "time": time.time(), **values}) + "\n")
        for key, value in values.items():
            if isinstance(value, (int, float)):
                self.tb.add_scalar(f"{kind}/{key}", value, step)
        self.tb.flush()

    def close(self):
        self.tb.close()


class Progress:
    """Training progress on rank 0: a tqdm bar when stderr is a terminal; otherwise (a log file, a
    pipe, a batch job) one plain line on stdout every `every` iterations and at the last one."""

    def __init__(self, total, initial, every, enabled=True):
        from tqdm import tqdm

        interactive = enabled and sys.stderr.isatty()
        self.bar = tqdm(total=total, initial=initial, dynamic_ncols=True) if interactive else None
        self.plain = enabled and not interactive
        self.total, self.every = total, every
        self.start_step, self.start_time = initial, time.perf_counter()

    def rate(self, step):
        """Iterations per second since this run (or resume) started."""
        elapsed = time.perf_counter() - self.start_time
        return (step - self.start_step) / elapsed if elapsed > 0 else 0.0

    def update(self, step, losses):
        values = {k: f"{v:.4g}" for k, v in losses.items()}
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(values)
        elif self.plain and (step % self.every == 0 or step == self.total):
            text = "  ".join(f"{k} {v}" for k, v in values.items())
            print(f"iteration {step}/{self.total}  {text}  {self.rate(step):.3g} it/s", flush=True)

    def close(self):
        if self.bar is not None:
            self.bar.close()


# ----------------------------------------------------------------------------- engine
class Engine:
    """`resume`: False (a new run), True (continue out_dir/checkpoints/last.pt) or that checkpoint's
    dict already read (engine.read_checkpoint). A resumed run keeps the checkpoint's configuration:
    `cfg` may differ from it in config.RESUMABLE keys only (applied and logged)."""

    def __init__(self, cfg, out_dir, resume=False):
        self.cfg, self.out_dir = cfg, out_dir
        self.rank, self.world, device = distributed_setup(cfg.device)
        self.is_main = self.rank == 0
        t = cfg.train
        self.iters, self.val_every = int(t.iters), int(t.get("val_every") or 0)
        self.save_every, self.ckpt_every = int(t.get("save_every") or 0), int(t.get("ckpt_every") or 0)
        self.log_every = int(t.get("log_every") or 10)

        torch.manual_seed(cfg.seed)  # identical initial weights on every rank
        np.random.seed(cfg.seed)
        random.seed(cfg.seed)
        self.method = methods.get(cfg.method)(cfg, device)
        self.method.rank, self.method.world_size = self.rank, self.world
        self._setup_amp(device)
        self.step = 0
        self.ckpt_dir = os.path.join(out_dir, "checkpoints")
        changes = self._resume(resume) if resume else {}
        self._wrap_ddp(device)
        self.dataset = data.train_dataset(cfg, self.method.data_kind, self.method.augment_crops)
        self.val_items = []
        if self.is_main and self.val_every:
            print(f"validation set: {data.validation_source(cfg)}", flush=True)
            self.val_items = data.validation_items(cfg, self.method)
        self.log = None
        if self.is_main:
            os.makedirs(out_dir, exist_ok=True)
            remove_stale_temporaries(self.ckpt_dir)
            config_lib.save(cfg, os.path.join(out_dir, "config.yaml"))
            self.log = RunLog(out_dir, self.step)
            if changes:
                self.log.write("resume", self.step, {k: f"{a!r} -> {b!r}" for k, (a, b) in changes.items()})
        self._stop_signal = None

    def _setup_amp(self, device):
        self.amp_dtype = None
        if self.cfg.train.get("amp"):
            self.amp_dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
            if device.type == "cuda":
                self.method.grad_scaler = torch.amp.GradScaler("cuda")

    def _wrap_ddp(self, device):
        if self.world == 1:
            return
        for name, net in self.method.nets.items():
            if any(p.requires_grad for p in net.parameters()):
                ids = [device.index] if device.type == "cuda" else None
                self.method.nets[name] = torch.nn.parallel.DistributedDataParallel(net, device_ids=ids)

    def _resume(self, resume):
        """Load the checkpoint (`resume`: True or its dict); returns the RESUMABLE changes, applied."""
        path = os.path.join(self.ckpt_dir, "last.pt")
        if resume is True:
            if not os.path.exists(path):
                raise FileNotFoundError(f"--resume: no checkpoint at {path}")
            resume = read_checkpoint(path, "--resume checkpoint")
        if resume["method"] != self.method.name:
            raise config_lib.ConfigError(f"--resume: {path} is a {resume['method']} checkpoint, not {self.method.name}")
        changes = config_lib.resume_changes(resume["config"], self.cfg)
        configured = {name: [g["lr"] for g in opt.param_groups] for name, opt in self.method.optimizers.items()}
        load_method_state(self.method, resume, path=path)
        set_rng_state(resume["rng"])
        self.step = resume["step"]
        self._apply_learning_rates(configured)
        if self.is_main:
            for key, (old, new) in changes.items():
                print(f"resume: {key} {old!r} -> {new!r}", flush=True)
        return changes

    def _apply_learning_rates(self, configured):
        """Optimiser groups whose configured base rate (`configured`: as the method built them from the
        current config) differs from the checkpoint's take it: scheduler base rate, and the current,
        already decayed rate scaled by the same factor."""
        for name, scheduler in self.method.schedulers.items():
            groups = self.method.optimizers[name].param_groups
            for i, (group, base) in enumerate(zip(groups, configured[name])):
                if group["initial_lr"] != base:
                    group["lr"] *= base / group["initial_lr"]
                    group["initial_lr"] = scheduler.base_lrs[i] = base

    def save(self, periodic=False):
        if not self.is_main:
            return
        state = method_state(self.method, self.step)
        atomic_save(state, os.path.join(self.ckpt_dir, "last.pt"))
        if periodic:
            atomic_save(state, os.path.join(self.ckpt_dir, f"iter_{self.step:07d}.pt"))

    def loader(self):
        """A DataLoader continuing the seeded sample stream at the current step."""
        return data.train_loader(self.dataset, int(self.cfg.train.batch_size), int(self.cfg.seed),
                                 self.cfg.data.get("num_workers"), self.step, self.rank, self.world,
                                 pin_memory=self.method.device.type == "cuda")

    def validate(self):
        if not (self.is_main and self.val_items):
            return None
        sample_dir = os.path.join(self.out_dir, "samples")
        _, mean = run_validation(self.method, self.val_items, sample_dir, prefix=f"{self.step:07d}_")
        self.log.write("val", self.step, mean)
        return mean

    def _on_signal(self, signum, frame):
        if self._stop_signal is not None:  # a second signal: stop now
            raise KeyboardInterrupt
        self._stop_signal = signum

    def train_step(self, batch):
        batch = {k: v.to(self.method.device, non_blocking=True) for k, v in batch.items()}
        for net in self.method.nets.values():
            net.train()
        device_type = self.method.device.type
        with torch.autocast(device_type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
            losses = self.method.train_step(batch, self.step)
        bad = {k: v for k, v in losses.items() if not math.isfinite(v)}
        if _any_rank(bool(bad), self.world, self.method.device):
            last = os.path.join(self.ckpt_dir, "last.pt")
            kept = f"the last good checkpoint is {last}" if os.path.exists(last) else "no checkpoint was saved yet"
            raise NonFiniteLoss(f"non-finite loss at iteration {self.step + 1} ({bad or 'on another rank'}); "
                                f"training stopped without saving; {kept}. Lower train.lr or set train.grad_clip.")
        for scheduler in self.method.schedulers.values():
            scheduler.step()
        return losses

    def train(self):
        """Train to train.iters; returns "done", or "interrupted" after SIGINT/SIGTERM."""
        handlers = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        progress = Progress(self.iters, self.step, self.log_every, enabled=self.is_main)
        status = "done"
        try:
            batches = iter(self.loader())
            while self.step < self.iters:
                losses = self.train_step(next(batches))
                self.step += 1
                progress.update(self.step, losses)
                if self.is_main and (self.step % self.log_every == 0 or self.step == 1):
                    lrs = {f"lr_{k}": o.param_groups[0]["lr"] for k, o in self.method.optimizers.items()}
                    self.log.write("train", self.step, {**losses, **lrs, "it_per_s": progress.rate(self.step)})
                if self.val_every and self.step % self.val_every == 0:
                    self.validate()
                if _any_rank(self._stop_signal is not None, self.world, self.method.device):
                    status = "interrupted"
                    break
                periodic = bool(self.ckpt_every) and self.step % self.ckpt_every == 0
                if periodic or (self.save_every and self.step % self.save_every == 0):
                    self.save(periodic)
            self.save()
        finally:
            progress.close()
            for s, h in handlers.items():
                signal.signal(s, h)
            if self.log:
                self.log.close()
        if status == "interrupted" and self.is_main:
            print(f"stopped by signal {self._stop_signal} at iteration {self.step}; "
                  f"saved {os.path.join(self.ckpt_dir, 'last.pt')}", flush=True)
        return status
