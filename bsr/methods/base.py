"""The contract between a method and the engine (bsr/engine.py).

The engine owns everything generic: the loop, data loading, DDP wrapping, AMP,
checkpoints (atomic, with RNG states), resume, SIGINT/SIGTERM, the NaN guard,
logging, validation cadence. A method owns its networks, optimisers, schedulers,
its degradation of training data and one training step.

Data the engine hands to a method (tensors float32 RGB in [0, 1], NCHW):
- `data_kind = "hr"`: training batches are {"hr": (B, 3, P, P)} crops (P = data.hr_patch);
  the method synthesises its own LR inside `train_step` (USRNet, DANv2).
- `data_kind = "unpaired"`: batches are {"hr": (B, 3, P, P), "lr": (B, 3, P/s, P/s)} from
  unrelated images (PDM, RealSR, USR_DA).
- Validation items are {"name": str, "hr": (1, 3, H, W), "lr": (1, 3, H/s, W/s)} plus
  "kernel" (k, k) when the true degradation kernel is known. For data_kind "hr" the LR is
  made by `method.degrade_for_validation(hr, index)` (deterministic); for "unpaired" the
  data module degrades with the documented demo degradation (or reads paired folders).

Conventions a method may use (the engine works with methods that ignore them):
- Training batches also carry "seed": (B,) int64 on the CPU, one seed per sample derived from
  the run seed and the sample's global number (bsr/data/datasets.py). Draw per-sample random
  degradations from it (and per-batch ones from `step`) instead of the global RNG, and
  2 DDP processes with batch B train exactly like 1 process with batch 2B. (Or draw the
  whole global batch's degradations from a generator seeded by `step` and keep the slice
  of `self.rank` (of `self.world_size`), which is what USRNet does to batch its draws.)
- `degrade_for_validation` may return a list of such dicts (several degradations of
  one image; items are named <image>_<j>), and an entry may carry "scale" (default
  data.scale): the metrics crop `border(scale)` pixels.
- The engine calls `scheduler.step()` once after every `train_step` for every entry of
  `self.schedulers` (schedules count iterations); methods do not step them.
- `optimize(loss, *names)` does zero_grad, backward, gradient clipping
  (train.grad_clip) and the optimiser steps, AMP-aware: use it and the engine's clipping
  and AMP options work for the method.
- `module(name)` is the network without its DDP wrapper (for evaluation-only paths).
- `infer(lr, kernel, noise_level)` (python -m bsr.infer) defaults to super_resolve;
  `baselines()` adds rows to the evaluation table (bsr.evaluate).
- `modcrop_multiple()` and `border(scale)` set the validation crop and the metric border.
- `for_training` is False when the engine builds the method for evaluation or inference:
  skip loss networks and weights the checkpoint replaces (see Method.__init__).
- `inference_nets` names the networks super_resolve uses: python -m bsr.export writes them and
  `--weights` loads them (`load_weights`); `official_state` maps an official release's names.
"""
import contextlib
import copy

import torch
import torch.nn.functional as F

from ..config import ConfigError
from ..io import UntrustedFileError, load_untrusted, state_dict_of
from ..losses import PerceptualLoss, RelativisticGANLoss


def checkpoint_or_state_dict(path, what, nets=()):
    """(bsr checkpoint dict or None, plain state dict or None) of a weights file (bsr.io.load_untrusted).
    A dict holding state dicts under names of `nets` next to other entries (anse3832/USR_DA's epoch_N.pth:
    the epoch, "model_Enc", "model_Dec_SR", ..., optimiser states) reads as a checkpoint of those networks."""
    state = load_untrusted(path, what)
    if isinstance(state, dict) and isinstance(state.get("nets"), dict):
        return state, None
    named = {name: state_dict_of(state[name], path, f"{what} entry {name!r}") for name in nets
             if isinstance(state, dict) and isinstance(state.get(name), dict)}
    if named:
        return {"nets": named}, None
    return None, state_dict_of(state, path, what)


def load_net_state(path, name, what=None):
    """Network `name`'s state dict from a bsr checkpoint (nets[name]) or a plain state dict file
    (exported or official: nesting and DataParallel prefixes removed, bsr.io.state_dict_of)."""
    what = what or f"weights file for {name}"
    checkpoint, plain = checkpoint_or_state_dict(path, what)
    if checkpoint is None:
        return plain
    if name not in checkpoint["nets"]:
        raise UntrustedFileError(f"{what} {path!r} is a bsr checkpoint without a network {name!r} "
                                 f"(it has {sorted(checkpoint['nets'])})")
    return checkpoint["nets"][name]


def parameters_of(optimizer):
    """The parameters an optimiser steps, in its groups' order."""
    return [p for group in optimizer.param_groups for p in group["params"]]


class Method:
    name = "base"
    data_kind = "hr"  # "hr" or "unpaired" (see the module docstring)
    augment_crops = True  # False: unpaired HR crops come unflipped; the method flips its pairs after degrading
    inference_nets = ()  # the networks super_resolve uses: what bsr.export writes and --weights loads
    scales = None  # the data.scale values the method trains (None: any)
    needs_kernel = False  # non-blind: super_resolve needs the blur kernel (bsr.infer --kernel)

    def __init__(self, cfg, device, for_training=True):
        if self.scales and cfg.data.scale not in self.scales:
            raise ConfigError(f"config key 'data.scale' must be one of {list(self.scales)} for {self.name}, "
                              f"got {cfg.data.scale!r}")
        self.cfg = cfg
        self.device = torch.device(device)
        # False when a checkpoint is loaded for evaluation/inference (engine.load_checkpoint):
        # skip what only training needs (loss networks, pretrained or frozen-stage weights that
        # the checkpoint replaces anyway), so a checkpoint evaluates without those files.
        self.for_training = for_training
        # Filled by the subclass; the engine saves/loads every entry by name and may
        # replace a network entry by its DDP wrapper (call self.nets[...] in train_step,
        # never a reference kept elsewhere).
        self.nets = {}
        self.optimizers = {}
        self.schedulers = {}
        # train.channels_last: the networks (to_memory_format) and the engine's batches in this layout.
        channels_last = cfg.get("train", {}).get("channels_last")
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        # Set by the engine when train.amp is fp16 (None: no loss scaling).
        self.grad_scaler = None
        # Filled by start_ema when train.ema is set: {inference network: its EMA copy}.
        self.ema, self._ema_of_optimizer = {}, {}
        # Set by the engine under DDP: this process' rank and the number of processes.
        self.rank, self.world_size = 0, 1

    def module(self, name):
        """self.nets[name] without a DDP wrapper."""
        net = self.nets[name]
        return net.module if isinstance(net, torch.nn.parallel.DistributedDataParallel) else net

    def to_memory_format(self):
        """Every network's 4-D parameters and buffers in self.memory_format (the engine calls it once the
        method is built)."""
        for net in self.nets.values():
            net.to(memory_format=self.memory_format)

    def official_state(self, name, state):
        """A plain state dict of network `name` in the official release's names -> ours (identity
        where they agree; RealSR maps old ESRGAN names)."""
        return state

    def load_pretrained(self, name, path, what=None):
        """Network `name` from a bsr checkpoint or a plain (exported or official) state dict file."""
        what = what or f"weights file for {name}"
        self._load_net(name, load_net_state(path, name, what), path, what)

    def load_start_weights(self, name, key, path, required_because=None):
        """Start network `name` from the file that config key `key` names (`path`). "none" (any case)
        is an explicit random start; with `required_because` (why the preset needs the file, naming
        it) an unset key is a ConfigError that says how to set it."""
        if path is None and required_because:
            raise ConfigError(f"{required_because}: set {key}=FILE, or {key}=none to start from random weights")
        if path is not None and path.lower() != "none":
            self.load_pretrained(name, path, key)

    def load_weights(self, path):
        """The inference networks from a weights file (python -m bsr.export's output, an official
        release, or a bsr checkpoint): one network's plain state dict, or with several inference
        networks one dict whose keys are prefixed by "<net>.", or one holding each network's state
        dict under its name (checkpoint_or_state_dict)."""
        what = "--weights file"
        if len(self.inference_nets) == 1:
            return self.load_pretrained(self.inference_nets[0], path, what)
        checkpoint, plain = checkpoint_or_state_dict(path, what, self.inference_nets)
        for name in self.inference_nets:
            if checkpoint is not None:
                state = checkpoint["nets"].get(name)
            else:
                state = {k[len(name) + 1:]: v for k, v in plain.items() if k.startswith(name + ".")}
            if not state:
                raise UntrustedFileError(f"{what} {path!r} has no weights of network {name!r} "
                                         f"(expected keys '{name}.*'; {self.name} infers with {self.inference_nets})")
            self._load_net(name, state, path, what)

    def _load_net(self, name, state, path, what):
        """load_state_dict of network `name` (official names converted); a mismatch names the file."""
        try:
            self.module(name).load_state_dict(self.official_state(name, state))
        except RuntimeError as error:
            raise UntrustedFileError(f"{what} {path!r} does not fit network {name!r} of this configuration "
                                     f"(check --preset / --set): {error}") from None

    def add_net(self, name, net, lr):
        """`net` on the method's device as self.nets[name], trained by its own Adam (add_adam)."""
        self.nets[name] = net.to(self.device)
        self.add_adam(name, net.parameters(), lr)

    def add_srgan(self, make_discriminator, lr_d, weights, vgg_weights=None):
        """What srgan_step uses: "netD" = make_discriminator() with its Adam and the RaGAN loss when
        weights.adversarial, the VGG19 conv5_4 perceptual loss (L1, ImageNet input norm; training only,
        it needs the weights file) when weights.perceptual."""
        if weights.get("adversarial"):
            self.add_net("netD", make_discriminator(), lr_d)
            self.adversarial = RelativisticGANLoss("vanilla")
        if weights.get("perceptual") and self.for_training:
            self.perceptual = PerceptualLoss({"conv5_4": 1.0}, weights=vgg_weights or True).to(self.device)

    def add_adam(self, name, params, lr):
        """Adam over `params` as self.optimizers[name] (betas train.betas, default torch's; train.amsgrad) and its
        MultiStepLR (train.milestones, train.gamma; stepped by the engine every iteration)."""
        t = self.cfg.train
        self.optimizers[name] = torch.optim.Adam(params, lr=lr, betas=tuple(t.get("betas", (0.9, 0.999))),
                                                 amsgrad=bool(t.get("amsgrad", False)))
        self.schedulers[name] = torch.optim.lr_scheduler.MultiStepLR(
            self.optimizers[name], milestones=list(t.get("milestones", [])), gamma=t.get("gamma", 0.5))

    @contextlib.contextmanager
    def frozen(self, name):
        """The unwrapped network `name` with requires_grad off inside the block: a generator's
        adversarial loss then trains the generator only (the official set_requires_grad(D, False));
        the discriminator's own update goes through self.nets[name]."""
        net = self.module(name)
        net.requires_grad_(False)
        try:
            yield net
        finally:
            net.requires_grad_(True)

    def srgan_step(self, generator, sr, hr, weights):
        """ESRGAN's alternation (USRGAN, RealSR): the generator `generator` takes weights.pixel x L1 +
        weights.perceptual x self.perceptual + weights.adversarial x self.adversarial (RaGAN through the
        frozen "netD", D(real) detached), then "netD" takes the discriminator side on (hr, sr.detach()).
        Terms with weight 0 are not computed (and without the adversarial term there is no D update)."""
        logs = {"l1": F.l1_loss(sr, hr)}
        loss = weights["pixel"] * logs["l1"]
        if weights.get("perceptual"):
            logs["perceptual"] = self.perceptual(sr, hr)
            loss = loss + weights["perceptual"] * logs["perceptual"]
        if weights.get("adversarial"):
            with self.frozen("netD") as d:
                logs["adversarial"] = self.adversarial(d(hr), d(sr))
            loss = loss + weights["adversarial"] * logs["adversarial"]
        self.optimize(loss, generator)
        if weights.get("adversarial"):
            d = self.nets["netD"]
            logs["netD"] = self.adversarial(d(hr), d(sr.detach()), is_disc=True)
            self.optimize(logs["netD"], "netD")
        return {name: value.detach() for name, value in logs.items()}

    def optimize(self, loss, *names, zero_grad=True):
        """Backward of `loss` and a step of the optimisers `names` (all if none given), with
        gradient clipping to train.grad_clip (global norm per optimiser; 0/None: off), then the EMA
        update of the inference networks those optimisers train (start_ema).
        zero_grad=False adds to the gradients left by the previous call (USR_DA's inner steps).
        With a loss scaler (train.amp=fp16) every step goes through it: the loss is scaled, the
        gradients unscaled before clipping and the step, the scale updated after each call."""
        names = names or tuple(self.optimizers)
        optimizers = [self.optimizers[n] for n in names]
        scaler = self.grad_scaler
        for optimizer in optimizers:
            if zero_grad:
                optimizer.zero_grad(set_to_none=True)
            elif scaler:  # the previous step left unscaled gradients: bring them to the current scale
                for p in parameters_of(optimizer):
                    if p.grad is not None:
                        p.grad = scaler.scale(p.grad)
        (scaler.scale(loss) if scaler else loss).backward()
        clip = self.cfg.get("train", {}).get("grad_clip")
        for optimizer in optimizers:
            if clip:
                if scaler:
                    scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(parameters_of(optimizer), clip)
            scaler.step(optimizer) if scaler else optimizer.step()
        if scaler:
            scaler.update()
        for name in dict.fromkeys(net for n in names for net in self._ema_of_optimizer.get(n, ())):
            self.update_ema(name)

    # ------------------------------------------------------------------ EMA of the inference networks
    def start_ema(self, decay):
        """Keep an exponential moving average of every inference network: self.ema[name] (a frozen copy)
        follows `decay * ema + (1 - decay) * weights` after every optimiser step that trains the network
        (BasicSR's ema_decay); buffers are copied. Called by the engine when train.ema is set."""
        self.ema_decay = decay
        self.ema = {name: copy.deepcopy(self.module(name)).requires_grad_(False) for name in self.inference_nets}
        self._ema_of_optimizer = {}
        for opt_name, optimizer in self.optimizers.items():
            trained = {id(p) for p in parameters_of(optimizer)}
            self._ema_of_optimizer[opt_name] = [name for name in self.ema
                                                if any(id(p) in trained for p in self.module(name).parameters())]

    @torch.no_grad()
    def update_ema(self, name):
        """One EMA step of network `name` on its device (no host sync)."""
        net, ema = self.module(name), self.ema[name]
        torch._foreach_lerp_(list(ema.parameters()), list(net.parameters()), 1 - self.ema_decay)
        for target, source in zip(ema.buffers(), net.buffers()):
            target.copy_(source)

    @contextlib.contextmanager
    def ema_weights(self):
        """Inside the block self.nets holds the EMA networks in place of the inference networks (none
        without an EMA): validation, evaluation and inference use the averaged weights."""
        trained = {name: self.nets[name] for name in self.ema}
        self.nets.update(self.ema)
        try:
            yield
        finally:
            self.nets.update(trained)

    def modcrop_multiple(self):
        """Validation HR images are cropped to multiples of this (at least data.scale)."""
        return self.cfg.data.scale

    def border(self, scale):
        """Pixels cropped at each side before PSNR/SSIM (the method's paper protocol)."""
        return scale

    def min_validation_size(self):
        """The smallest side a validation HR image may have: its modcrop multiple, and more than the
        metric border on both sides."""
        return max(self.modcrop_multiple(), 2 * self.border(self.cfg.data.scale) + 1)

    @contextlib.contextmanager
    def eval_mode(self):
        """Networks in eval mode inside the block, their previous modes restored after."""
        modes = {name: net.training for name, net in self.nets.items()}
        for net in self.nets.values():
            net.eval()
        try:
            yield
        finally:
            for name, net in self.nets.items():
                net.train(modes[name])

    @torch.no_grad()
    def infer(self, lr, kernel=None, noise_level=None):
        """Super-resolve a real image (python -m bsr.infer): super_resolve, plus whatever
        boundary handling the method needs for images it did not synthesise itself."""
        return self.super_resolve(lr, kernel, noise_level)

    def extra_metrics(self, sr, hr, border):
        """Method-specific metrics of one validation SR (CPU, [0, 1]) against its HR, also
        for the baselines' SR: {name: float} (e.g. PDM's LPIPS when its weights are set)."""
        return {}

    def baselines(self):
        """Extra rows of the evaluation table: {name: fn(item) -> SR tensor}, e.g. an ablation.
        Bicubic upsampling is always added by the evaluator."""
        return {}

    def train_step(self, batch, step):
        """One iteration: forward, losses, backward, optimiser steps (the method zeroes
        grads and steps its own optimisers, since GAN methods alternate). Returns
        {loss_name: 0-d tensor on the device, detached}: no host sync (no .item(), float() or `if` on a
        device tensor), the engine reads them at logging iterations; it stops on a non-finite value
        before saving."""
        raise NotImplementedError

    @torch.no_grad()
    def super_resolve(self, lr, kernel=None, noise_level=None):
        """(N, 3, h, w) LR -> (N, 3, s*h, s*w) SR. Blind methods ignore kernel/noise_level;
        non-blind ones (USRNet) need them. Networks are in eval mode when this is called."""
        raise NotImplementedError

    @torch.no_grad()
    def validate(self, item):
        """One validation item -> {"sr": tensor, optionally "kernel_est": (k, k) tensor,
        and images to log under other keys}. Metrics are computed by the engine."""
        return {"sr": self.super_resolve(item["lr"], item.get("kernel"), item.get("noise_level"))}

    def degrade_for_validation(self, hr, index):
        """For data_kind "hr": deterministic LR of validation image `index` ->
        {"lr": tensor, "kernel": (k, k) tensor or absent, "noise_level": float or absent}."""
        raise NotImplementedError

    def extra_state(self):
        """Anything beyond nets/optimisers/schedulers to checkpoint (e.g. a PCA matrix)."""
        return {}

    def load_extra_state(self, state):
        pass
