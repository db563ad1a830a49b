"""One training loop for every method (contract: bsr/methods/base.py).

    engine = Engine(cfg, out_dir, resume=False)   # builds the method, data, logs; resumes last.pt
    engine.train()                                 # -> "done" | "interrupted"; raises NonFiniteLoss

What it owns: the device (config `device`: auto = CUDA when available, else the CPU), the
seeded data stream (bsr/data), DDP when started by torchrun (gloo on CPU, NCCL on GPU, one
GPU per process; train.batch_size is the global batch, split over the processes), optional
AMP (train.amp: bf16 on the CPU and CUDA, fp16 + loss scaling on CUDA), train.ema (Method.start_ema; validation
runs on the averaged networks), train.channels_last, train.compile, scheduler steps, validation
every train.val_every iterations (bsr/validation.py; metrics to log.jsonl and TensorBoard,
LR | SR | HR grids to samples/), atomic checkpoints (checkpoints/last.pt every
train.save_every iterations and at the end, checkpoints/iter_<n>.pt every train.ckpt_every),
exact resume, SIGINT/SIGTERM (save and stop after the current iteration; under DDP at the
next logging, validation or checkpoint iteration), and the non-finite loss guard (stop
without saving: the last good checkpoint stays).

Host syncs: a method's step returns its losses as device tensors; the engine reads them, the
non-finite record and the stop flags only at logging (train.log_every, the first and the last
iteration), validation and checkpoint iterations, so the iterations between them queue work
on the device without waiting for it. With train.amp=fp16 the GradScaler's step reads its overflow flag on
the host once per optimiser step (CUDA only).

Exact resume: a checkpoint holds the networks, optimisers, schedulers, the loss scaler, the EMA networks,
the step and the RNG states; the data stream is a function of (seed, step) only, and the
DataLoader draws its worker seeds from its own generator, not from the global RNG.
"""
import importlib
import json
import os
import random
import re
import signal
import sys
import time

import numpy as np
import torch
import torch.distributed as dist

import bsrops

from . import config as config_lib
from . import data, methods
from .io import UntrustedFileError, load_untrusted
from .validation import run_validation


HOST_KEYS = ("seed",)  # batch entries the methods read on the host (the per-sample generator seeds)


class NonFiniteLoss(RuntimeError):
    """A loss became NaN or infinite; training stopped and nothing was saved."""


# ----------------------------------------------------------------------------- distributed
def resolve_device(name):
    """The torch.device of a device name (config.is_device_name): "auto" is CUDA when available, else the
    CPU; ConfigError for a CUDA device this machine does not have."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count <= (device.index or 0):
            raise config_lib.ConfigError(f"device {name!r}: this machine has {count} CUDA device(s) (torch "
                                         f"{torch.__version__}); use device auto or cpu")
    return device


def world_size():
    """The number of training processes: torchrun's WORLD_SIZE, 1 without torchrun."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def distributed_setup(device):
    """(rank, world_size, device) for the device name `device` (resolve_device); under torchrun it
    initialises the process group (NCCL on CUDA, gloo on the CPU), one GPU per local process."""
    device = resolve_device(device)
    world = world_size()
    if world == 1:
        return 0, 1, device
    if device.type == "cuda":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if local >= torch.cuda.device_count():
            raise config_lib.ConfigError(f"torchrun started local process {local} but this machine has "
                                         f"{torch.cuda.device_count()} CUDA device(s): use --nproc_per_node <= "
                                         f"{torch.cuda.device_count()} (one process per GPU), or --device cpu")
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


def per_process_batch(batch_size, world):
    """train.batch_size (the global batch) split over `world` processes; ConfigError when it does not divide."""
    if batch_size % world:
        raise config_lib.ConfigError(f"config key 'train.batch_size' ({batch_size}) is the global batch, split over "
                                     f"the {world} processes of torchrun: it must be a multiple of {world}")
    return batch_size // world


def any_rank(flags, world):
    """The bool (1-d) device tensor `flags` as a list of bools, each true if true on any rank: one host sync
    (and under DDP one all_reduce), which keeps the ranks deciding alike."""
    flags = flags.to(torch.int32)
    if world > 1:
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
    return [bool(v) for v in flags.tolist()]


class NonFiniteWatch:
    """Which losses were NaN or infinite, and since which iteration: update() keeps the record on the
    losses' device (no host sync); first_bad() reads it (a host sync)."""

    def __init__(self):
        self.first = {}  # loss name -> 0-d int64 tensor: the first iteration it was non-finite, 0: never

    def update(self, losses, iteration):
        for name, value in losses.items():
            now = (~torch.isfinite(value.detach()).all()) * iteration
            first = self.first.get(name)
            self.first[name] = now if first is None else torch.where(first == 0, now, first)

    def any(self, device):
        """0-d bool tensor on `device`: some loss was non-finite."""
        if not self.first:
            return torch.zeros((), dtype=torch.bool, device=device)
        return torch.stack(list(self.first.values())).ne(0).any().to(device)

    def first_bad(self):
        """{loss name: first non-finite iteration} of the losses that were."""
        firsts = dict(zip(self.first, torch.stack(list(self.first.values())).tolist())) if self.first else {}
        return {name: iteration for name, iteration in firsts.items() if iteration}


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
        "ema": {k: v.state_dict() for k, v in method.ema.items()} or None,
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
    """Networks (and with `training`, optimisers, schedulers, scaler, EMA networks) from a checkpoint dict.
    Without `training` (evaluation, inference) the inference networks take the EMA weights when the
    checkpoint has them."""
    ema = state.get("ema") or {}
    for name, net_state in {**state["nets"], **({} if training else ema)}.items():
        method._load_net(name, net_state, path, "checkpoint")
    method.load_extra_state(state.get("extra", {}))
    if training:
        for name, net_state in ema.items():
            method.ema[name].load_state_dict(net_state)
        for name, opt_state in state["optimizers"].items():
            method.optimizers[name].load_state_dict(opt_state)
        for name, sched_state in state["schedulers"].items():
            method.schedulers[name].load_state_dict(sched_state)
        if method.grad_scaler and state.get("grad_scaler"):
            method.grad_scaler.load_state_dict(state["grad_scaler"])


def inference_method(cfg, device):
    """The method of `cfg` built for evaluation / inference (no loss networks, no pretrained starts) on the
    device named `device` (resolve_device)."""
    cfg.device = str(device)
    method = methods.get(cfg.method)(cfg, resolve_device(str(device)), for_training=False)
    method.to_memory_format()
    return method


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

    def update(self, step, losses=None):
        """One iteration done; `losses` ({name: number}, at logging iterations) are shown."""
        values = {k: f"{v:.4g}" for k, v in (losses or {}).items()}
        if self.bar is not None:
            self.bar.update(1)
            if losses is not None:
                self.bar.set_postfix(values)
        elif self.plain and losses is not None and (step % self.every == 0 or step == self.total):
            text = "  ".join(f"{k} {v}" for k, v in values.items())
            print(f"iteration {step}/{self.total}  {text}  {self.rate(step):.3g} it/s", flush=True)

    def close(self):
        if self.bar is not None:
            self.bar.close()


# ----------------------------------------------------------------------------- engine
def amp_dtype(amp, device):
    """The autocast dtype of train.amp `amp` on `device` (None: off); fp16 (loss scaling) needs CUDA."""
    if not amp:
        return None
    if amp is True:
        amp = "fp16" if device.type == "cuda" else "bf16"
    if amp == "fp16" and device.type != "cuda":
        raise config_lib.ConfigError(f"config key 'train.amp': fp16 (with loss scaling) needs a CUDA device, "
                                     f"this run uses {device}; use train.amp=bf16 there")
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[amp]


class Engine:
    """`resume`: False (a new run), True (continue out_dir/checkpoints/last.pt) or that checkpoint's
    dict already read (engine.read_checkpoint). A resumed run keeps the checkpoint's configuration:
    `cfg` may differ from it in config.RESUMABLE keys only (applied and logged)."""

    def __init__(self, cfg, out_dir, resume=False):
        self.cfg, self.out_dir = cfg, out_dir
        t = cfg.train
        self.batch_size = per_process_batch(int(t.batch_size), world_size())
        self.rank, self.world, device = distributed_setup(cfg.device)
        self.is_main = self.rank == 0
        self.iters, self.val_every = int(t.iters), int(t.get("val_every") or 0)
        self.save_every, self.ckpt_every = int(t.get("save_every") or 0), int(t.get("ckpt_every") or 0)
        self.log_every = int(t.get("log_every") or 10)

        torch.manual_seed(cfg.seed)  # identical initial weights on every rank
        np.random.seed(cfg.seed)
        random.seed(cfg.seed)
        self.method = methods.get(cfg.method)(cfg, device)
        self.method.rank, self.method.world_size = self.rank, self.world
        self._setup_amp(device)
        self.method.to_memory_format()
        if t.get("ema"):
            self.method.start_ema(float(t.ema))
        self.step = 0
        self.ckpt_dir = os.path.join(out_dir, "checkpoints")
        changes = self._resume(resume) if resume else {}
        self._compile()
        self._wrap_ddp(device)
        self.dataset = data.train_dataset(cfg, self.method.data_kind, self.method.augment_crops)
        if self.is_main:
            print(self.describe(), flush=True)
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
        self.watch = NonFiniteWatch()

    def describe(self):
        """The startup line: device, bsrops backend, data workers, batch (and its split over the processes)."""
        device = self.method.device
        name = f"{device} ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else str(device)
        batch = f"batch {self.cfg.train.batch_size}"
        if self.world > 1:
            batch += f" = {self.world} processes x {self.batch_size}"
        return (f"device {name}, bsrops backend {bsrops.backend_info(device)['backend']}, "
                f"data workers {data.resolve_workers(self.cfg.data.get('num_workers'))}, {batch}")

    def _setup_amp(self, device):
        """self.amp_dtype of train.amp (bf16, fp16; true: fp16 on CUDA, bf16 elsewhere; false: None) and, for
        fp16, the method's loss scaler. ConfigError for fp16 off CUDA."""
        self.amp_dtype = amp_dtype(self.cfg.train.get("amp"), device)
        if self.amp_dtype == torch.float16:
            self.method.grad_scaler = torch.amp.GradScaler(device.type)

    def _compile(self):
        """train.compile: every network compiled in place by torch.compile (true: the default backend; a name:
        that backend, e.g. aot_eager); names and checkpoints are unchanged."""
        option = self.cfg.train.get("compile")
        if option:
            for net in self.method.nets.values():
                net.compile(**({} if option is True else {"backend": option}))

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
        """Write checkpoints/last.pt (and with `periodic` iter_<step>.pt) on rank 0; every rank calls it.
        NonFiniteLoss instead when a loss was NaN or infinite since the start (the last good checkpoint stays)."""
        self.synchronise()
        if not self.is_main:
            return
        state = method_state(self.method, self.step)
        atomic_save(state, os.path.join(self.ckpt_dir, "last.pt"))
        if periodic:
            atomic_save(state, os.path.join(self.ckpt_dir, f"iter_{self.step:07d}.pt"))

    def loader(self):
        """A DataLoader continuing the seeded sample stream at the current step."""
        return data.train_loader(self.dataset, self.batch_size, int(self.cfg.seed),
                                 self.cfg.data.get("num_workers"), self.step, self.rank, self.world,
                                 pin_memory=self.method.device.type == "cuda")

    def validate(self):
        if not (self.is_main and self.val_items):
            return None
        sample_dir = os.path.join(self.out_dir, "samples")
        with self.method.ema_weights():
            _, mean = run_validation(self.method, self.val_items, sample_dir, prefix=f"{self.step:07d}_")
        self.log.write("val", self.step, mean)
        return mean

    def _on_signal(self, signum, frame):
        if self._stop_signal is not None:  # a second signal: stop now
            raise KeyboardInterrupt
        self._stop_signal = signum

    def train_step(self, batch):
        """One iteration on the device: the method's step, the non-finite watch and the schedulers, without a
        host sync. Returns the method's losses ({name: 0-d tensor})."""
        batch = {k: v if k in HOST_KEYS else self._to_device(v) for k, v in batch.items()}
        for net in self.method.nets.values():
            net.train()
        device_type = self.method.device.type
        with torch.autocast(device_type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
            losses = self.method.train_step(batch, self.step)
        self.watch.update(losses, self.step + 1)
        for scheduler in self.method.schedulers.values():
            scheduler.step()
        return losses

    def _to_device(self, tensor):
        """A batch entry on the training device, images (4-D) in the networks' memory format."""
        layout = self.method.memory_format if tensor.dim() == 4 else torch.preserve_format
        return tensor.to(self.method.device, non_blocking=True, memory_format=layout)

    def synchronise(self):
        """The one host sync of a logging, validation or checkpoint iteration (under DDP one all_reduce):
        NonFiniteLoss if a loss was NaN or infinite on any rank; True if any rank got SIGINT/SIGTERM."""
        device = self.method.device
        stop = torch.full((), self._stop_signal is not None, device=device)
        bad, stop = any_rank(torch.stack([self.watch.any(device), stop]), self.world)
        if bad:
            raise self._non_finite_error()
        return stop

    def _non_finite_error(self):
        bad = self.watch.first_bad()  # {loss: first bad iteration} on this rank
        where = f"at iteration {min(bad.values())} ({', '.join(sorted(bad, key=bad.get))})" if bad else \
            "on another rank"
        last = os.path.join(self.ckpt_dir, "last.pt")
        kept = f"the last good checkpoint is {last}" if os.path.exists(last) else "no checkpoint was saved yet"
        return NonFiniteLoss(f"non-finite loss {where}; training stopped without saving; {kept}. "
                             f"Lower train.lr or set train.grad_clip.")

    def _every(self, period):
        return bool(period) and self.step % period == 0

    def _log(self, losses, progress):
        """On rank 0: the iteration's losses as numbers (one host sync), written to the run log."""
        if not self.is_main:
            return None
        values = torch.stack([v.detach().float() for v in losses.values()]).tolist() if losses else []
        values = dict(zip(losses, values))
        lrs = {f"lr_{k}": o.param_groups[0]["lr"] for k, o in self.method.optimizers.items()}
        self.log.write("train", self.step, {**values, **lrs, "it_per_s": progress.rate(self.step)})
        return values

    def after_step(self, losses, progress):
        """Logging (every train.log_every iterations, the first and the last), validation, checkpoints and the
        stop signal after iteration self.step; True to stop. Other iterations leave everything on the device
        (under DDP a signal is acted on at the next logging, validation or checkpoint iteration)."""
        periodic = self._every(self.ckpt_every)
        save, validate = periodic or self._every(self.save_every), self._every(self.val_every)
        log = self._every(self.log_every) or self.step in (1, self.iters)
        if not (save or validate or log or (self.world == 1 and self._stop_signal is not None)):
            progress.update(self.step)
            return False
        stop = self.synchronise()
        progress.update(self.step, self._log(losses, progress) if log else None)
        if validate:
            self.validate()
        if save and not stop:
            self.save(periodic)
        return stop

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
                if self.after_step(losses, progress):
                    status = "interrupted"
                    break
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
