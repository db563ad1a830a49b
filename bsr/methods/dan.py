"""DANv2 — end-to-end alternating kernel estimation and restoration (greatlog/DAN; docs/methods.md).

Training as the official `train.py` + `blind_model.py`: every step draws one random Gaussian
kernel per HR crop (setting 1: isotropic; setting 2: anisotropic, disturbed), blurs by
reflect-padded correlation (`bsrops.blur_downsample`, stride 1), MATLAB-bicubic ↓s with
antialias, rounds to 8 bit; loss = L1(SR, HR) + L1(kernel, true kernel) of the last
alternating iteration only; one Adam with a Restorer group (lr_G) and an Estimator group
(lr_E, which every shipped yml omits: defaults to lr_G here); MultiStepLR. The presets are the
official training option files (bsr/configs/dan.yaml; docs/fidelity.md lists every value).

Kernel codes use a PCA matrix computed from random kernels of the setting (cached), or the
official `pca_matrix/*.pth` file given as `dan.pca_matrix`.

Validation and evaluation: the Gaussian8 protocol of setting 1 — every HR image degraded by
the 8 isotropic 21 × 21 kernels σ = linspace(1.8, 3.2, 8) (×4; 0.8–1.6 ×2, 1.35–2.4 ×3) the
same way, the LR clamped to [0, 1] and rounded to 8 bit as the official test images were
written; PSNR/SSIM on Y and RGB with border = scale, kernel error of the estimate. Setting 2 is
evaluated on DIV2KRK, a paired folder (hr/ + lr/). The baseline "delta kernel, no estimation"
(the Restorer on the initial code) gives the delta kernel's error. `--weights` builds the network
at the sizes the file holds (load_weights).
"""
import hashlib
import json
import os

import torch
import torch.nn.functional as F

from .. import degradations
from ..archs.dan import DAN, kernel_pca
from ..kernels import dan_random_kernels, isotropic_gaussian_kernels
from . import register
from ..io import UntrustedFileError, load_untrusted, state_dict_of
from .base import Method, load_net_state

# Gaussian8 σ range per scale: IKC's protocol (Gu et al., CVPR 2019), which DANv2 evaluates with; DAN's
# `codes/scripts/generate_mod_blur_LR_bic.py` writes the ×4 set, linspace(1.8, 3.2, 8), with 21 × 21 kernels.
GAUSSIAN8_SIGMA = {2: (0.8, 1.6), 3: (1.35, 2.4), 4: (1.8, 3.2)}
GAUSSIAN8_KSIZE = 21
PCA_SEED = 0


def gaussian8_sigmas(scale):
    """The 8 kernel widths of Gaussian8 at `scale` -> (8,) float64, evenly spaced over GAUSSIAN8_SIGMA[scale]."""
    if scale not in GAUSSIAN8_SIGMA:
        raise ValueError(f"Gaussian8 is defined for scale 2, 3, 4, got {scale}")
    return torch.linspace(*GAUSSIAN8_SIGMA[scale], 8, dtype=torch.float64)


def gaussian8_kernels(scale, ksize=GAUSSIAN8_KSIZE):
    """The 8 isotropic test kernels of setting 1 -> (8, ksize, ksize) float64."""
    return isotropic_gaussian_kernels(gaussian8_sigmas(scale), ksize)


def degrade(hr, kernels, scale, clamp=False):
    """The official LR synthesis: reflect-padded correlation with one kernel per image,
    MATLAB bicubic ↓scale with antialias, rounding to 8 bit. Training rounds without clamping
    (train.py); `clamp=True` clamps to [0, 1] first, as `tensor2img` wrote the official test LR."""
    blurred = degradations.blur(hr, kernels, padding="reflect")
    lr = degradations.imresize(blurred, scale=1 / scale)
    if clamp:
        lr = lr.clamp(0, 1)
    return (lr * 255).round() / 255


def kernel_setting(cfg):
    """The degradation setting of the config as plain values (it also names the PCA cache file)."""
    d = cfg.dan
    return {"ksize": int(d.kernel_size), "code_length": int(d.code_length), "sig_min": float(d.sig_min),
            "sig_max": float(d.sig_max), "rate_iso": float(d.rate_iso), "random_disturb": bool(d.random_disturb),
            "pca_kernels": int(d.pca_kernels)}


def random_kernels(setting, batch, generator=None):
    return dan_random_kernels(batch, setting["ksize"], (setting["sig_min"], setting["sig_max"]),
                              setting["rate_iso"], setting["random_disturb"], generator)


def pca_cache_dir():
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(root, "bsr", "dan")


def pca_cache_path(setting, cache_dir=None):
    """The cache file of the setting's PCA matrix: named after the setting, in `cache_dir` (default pca_cache_dir())."""
    name = hashlib.sha1(json.dumps(setting, sort_keys=True).encode()).hexdigest()[:12]
    return os.path.join(cache_dir or pca_cache_dir(), f"pca_k{setting['ksize']}_L{setting['code_length']}_{name}.pt")


def pca_matrix(setting, cache_dir=None):
    """The (k², L) PCA matrix of the setting: `pca_kernels` random kernels (30 000, as creat_PCA.py,
    from a fixed seed), cached as a .pt file (pca_cache_path)."""
    path = pca_cache_path(setting, cache_dir)
    if os.path.exists(path):
        return load_untrusted(path, "cached DAN PCA matrix")
    generator = torch.Generator().manual_seed(PCA_SEED)
    pca = kernel_pca(random_kernels(setting, setting["pca_kernels"], generator), setting["code_length"])
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    torch.save(pca, tmp)
    os.replace(tmp, path)  # atomic: concurrent runs never read a half-written file
    return pca


def load_pca_file(path, ksize, code_length):
    """The (ksize², code_length) float32 PCA matrix of a file in the official layout (greatlog/DAN
    `pca_matrix/*.pth`: one floating tensor of shape (k², L) written by torch.save), read through
    bsr.io.load_untrusted; a file holding anything else is an UntrustedFileError saying what it holds."""
    what = "DAN PCA matrix file (dan.pca_matrix)"
    value = load_untrusted(path, what)
    expected = (ksize * ksize, code_length)
    if torch.is_tensor(value) and value.is_floating_point() and tuple(value.shape) == expected:
        return value.float().contiguous()
    found = f"a {value.dtype} tensor of shape {tuple(value.shape)}" if torch.is_tensor(value) else f"a {type(value).__name__}"
    raise UntrustedFileError(f"{what} {path!r} holds {found}; expected one floating tensor of shape {expected} "
                             f"(dan.kernel_size² x dan.code_length)")


def setting_pca(cfg, setting):
    """The PCA matrix of the config: the file dan.pca_matrix, or the cached matrix of the setting."""
    path = cfg.dan.get("pca_matrix")
    if path:
        return load_pca_file(path, setting["ksize"], setting["code_length"])
    return pca_matrix(setting, cfg.dan.get("pca_cache"))


def build_net(cfg, pca):
    d = cfg.dan
    return DAN(pca, nf=d.nf, nb=d.nb, ng=d.ng, scale=cfg.data.scale, loop=d.loop, legacy_doubling=d.legacy_doubling)


@register("dan")
class DANv2(Method):
    data_kind = "hr"
    inference_nets = ("G",)
    scales = tuple(GAUSSIAN8_SIGMA)

    def __init__(self, cfg, device, for_training=True):
        super().__init__(cfg, device, for_training)
        self.scale = cfg.data.scale
        self.setting = kernel_setting(cfg)
        net = self.place(build_net(cfg, setting_pca(cfg, self.setting)))
        self.nets["G"] = net
        t = cfg.train
        lr_e = t.get("lr_E") or t.lr_G  # the official ymls omit lr_E (Adam then fails): default to lr_G
        self.optimizers["G"] = torch.optim.Adam(
            [{"params": net.Restorer.parameters(), "lr": t.lr_G}, {"params": net.Estimator.parameters(), "lr": lr_e}],
            betas=(t.beta1, t.beta2), weight_decay=t.get("weight_decay", 0) or 0)
        self.schedulers["G"] = torch.optim.lr_scheduler.MultiStepLR(self.optimizers["G"], t.lr_steps, t.lr_gamma)

    def place(self, net):
        """`net` on the device, in the networks' memory format."""
        return net.to(self.device, memory_format=self.memory_format)

    def load_weights(self, path):
        """The network from a weights file (an official `*.pth`, python -m bsr.export's output or a bsr
        checkpoint), built at the sizes the file holds (nf, nb, ng, kernel size, code length): an official
        setting-2 file loads at its test yml's sizes whatever the preset trains; the preset gives the
        protocol, `dan.loop` and `dan.legacy_doubling`. For evaluation and inference: the optimiser keeps
        the preset's network. A file of another scale is an UntrustedFileError."""
        what = "--weights file"
        state = load_net_state(path, "G", what)
        d = self.cfg.dan
        net = net_from_state(state, path, what, d.loop, d.legacy_doubling)
        if net.scale != self.scale:
            raise UntrustedFileError(f"{what} {path!r} holds a x{net.scale} DANv2; this configuration is "
                                     f"x{self.scale} (check --preset / --set data.scale)")
        self.nets["G"] = self.place(net)
        self._load_net("G", state, path, what)

    def synthesize(self, hr, seeds=None):
        """HR batch -> (LR, true kernels (B, k, k)): one random kernel per image, drawn from its
        sample seed (the engine's batch["seed"], so resumed and DDP runs see the same kernels),
        or from the global RNG without seeds."""
        if seeds is None:
            kernels = random_kernels(self.setting, hr.shape[0])
        else:
            kernels = torch.cat([random_kernels(self.setting, 1, torch.Generator().manual_seed(int(seed)))
                                 for seed in seeds])
        kernels = kernels.to(hr, non_blocking=True)  # no stream sync for the host draws
        return degrade(hr, kernels, self.scale), kernels

    def train_step(self, batch, step):
        hr = batch["hr"].to(self.device)
        lr, kernels = self.synthesize(hr, batch.get("seed"))
        sr, kernel_est = self.nets["G"](self.network_input(lr))
        l_pix = F.l1_loss(sr, hr)
        l_ker = F.l1_loss(kernel_est, kernels.flatten(1))
        self.optimize(l_pix + l_ker)
        return {"l_pix": l_pix.detach(), "l_ker": l_ker.detach()}

    def network_input(self, lr):
        """lr on the device, in the networks' memory format."""
        return lr.to(self.device, memory_format=self.memory_format)

    @torch.no_grad()
    def super_resolve(self, lr, kernel=None, noise_level=None):
        return self.nets["G"](self.network_input(lr))[0]

    @torch.no_grad()
    def validate(self, item):
        sr, kernel = self.nets["G"](self.network_input(item["lr"]))
        k = self.module("G").ksize
        return {"sr": sr, "kernel_est": kernel[0].view(k, k)}

    def degrade_for_validation(self, hr, index):
        """The Gaussian8 protocol: the image degraded by each of the 8 test kernels, the LR clamped
        before rounding (eval.kernels picks a subset, e.g. for quick checks)."""
        sigmas = gaussian8_sigmas(self.scale).tolist()
        kernels = gaussian8_kernels(self.scale)
        return [{"lr": degrade(hr, kernels[i][None].to(hr), self.scale, clamp=True), "kernel": kernels[i].to(hr),
                 "tag": f"sigma{round(sigmas[i], 2)}"} for i in self.cfg.get("eval", {}).get("kernels", range(8))]

    def min_validation_size(self):
        """Reflect padding needs more than half the kernel on each side; the border crop too."""
        return max(super().min_validation_size(), GAUSSIAN8_KSIZE)

    def baselines(self):
        """The Restorer on the initial (delta) kernel's code with no estimation: what the alternation adds,
        and the delta kernel's error."""
        @torch.no_grad()
        def delta(item):
            net = self.module("G")
            lr = self.network_input(item["lr"])
            return {"sr": net.Restorer(lr, net.init_ker_map.expand(lr.shape[0], -1)), "kernel_est": net.init_kernel[0]}
        return {"delta kernel, no estimation": delta}


def official_hyperparameters(state):
    """nf, nb, ng, scale of the Restorer in an official DANv2 state dict (read from its keys/shapes)."""
    nf = state["Restorer.head1.weight"].shape[0]
    groups = {k.split(".")[2] for k in state if k.startswith("Restorer.body.")}
    blocks = {k.split(".")[4] for k in state if k.startswith("Restorer.body.0.body.")}
    if "Restorer.upscale.weight" in state:
        scale = 1
    elif "Restorer.upscale.4.weight" in state:
        scale = 4
    else:
        scale = int(round((state["Restorer.upscale.0.weight"].shape[0] / nf) ** 0.5))
    return {"nf": nf, "nb": len(blocks), "ng": len(groups), "scale": scale}


def net_from_state(state, path, what, loop=4, legacy_doubling=True):
    """A DAN of the sizes of the DANv2 state dict `state` (official names; weights not loaded): nf, nb, ng
    and scale from the Restorer's tensors, kernel size and code length from the `encoder` buffer (1, k², L)."""
    if "encoder" not in state or "Restorer.head1.weight" not in state:
        raise UntrustedFileError(f"{what} {path!r} is not a DANv2 state dict (no 'encoder' / 'Restorer.head1.weight' key)")
    return DAN(state["encoder"][0], loop=loop, legacy_doubling=legacy_doubling, **official_hyperparameters(state))


def load_official(path, loop=4, legacy_doubling=True, device="cpu"):
    """A ready DAN (eval mode) from an official DANv2 checkpoint file (`*_G.pth` of greatlog/DAN):
    a state dict, optionally under "state_dict"/"params", keys optionally prefixed by DataParallel's
    "module."; the network size comes from the tensors, the PCA matrix from the `encoder` buffer."""
    what = "DANv2 weights file"
    state = state_dict_of(load_untrusted(path, what), path, what)
    net = net_from_state(state, path, what, loop, legacy_doubling)
    net.load_state_dict(state)
    return net.to(device).eval()
