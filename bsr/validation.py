"""Validation: SR of every validation item, its metrics, and LR | SR | HR | kernels sample grids
(under torch.inference_mode).

    rows, mean = run_validation(method, items, sample_dir)   # items: bsr.data.validation_items

The engine runs it every train.val_every iterations, bsr.evaluate once per checkpoint and baseline.
"""
import os

import cv2
import numpy as np
import torch

from . import metrics
from .data.io import write_image
from .kernels import kernel_image


def image_metrics(sr, hr, border, kernel=None, kernel_est=None):
    """PSNR/SSIM on Y (BasicSR formula) and RGB of the 8-bit quantised SR (as the official
    evaluations save it) with `border` pixels cropped; kernel error where estimated."""
    out = metrics.image_metrics(metrics.quantize_8bit(sr), hr, border)
    if kernel is not None and kernel_est is not None:
        out["kernel_error"] = metrics.kernel_error(kernel_est.cpu(), kernel.cpu())
    return {k: float(v.mean()) for k, v in out.items()}


def labelled(panel, text):
    """The (3, H, W) panel in [0, 1] with `text` written small in its upper-left corner (white on a
    black outline, readable on any content)."""
    image = np.ascontiguousarray((panel.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy())
    scale = max(0.3, panel.shape[-2] / 600)
    origin = (3, 3 + int(round(22 * scale)))
    for colour, thickness in (((0, 0, 0), 3), ((255, 255, 255), 1)):
        cv2.putText(image, text, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, colour, thickness, cv2.LINE_AA)
    return torch.from_numpy(image).permute(2, 0, 1).float() / 255


def sample_grid(item, output):
    """LR (nearest-upscaled) | SR | HR side by side, then the true and estimated kernels, each labelled."""
    hr, sr = item["hr"][0].cpu(), output["sr"][0].detach().float().cpu().clamp(0, 1)
    lr = torch.nn.functional.interpolate(item["lr"].cpu(), size=hr.shape[-2:], mode="nearest")[0]
    panels = [labelled(lr, "LR"), labelled(sr, "SR"), labelled(hr, "HR")]
    for key, label in (("kernel", "true kernel"), ("kernel_est", "learned kernel")):
        source = item if key == "kernel" else output
        if source.get(key) is not None:
            panels.append(labelled(kernel_image(source[key], hr.shape[-2]), label))
    return torch.cat(panels, dim=2)


def run_validation(method, items, sample_dir=None, prefix="", sr_fn=None):
    """Metrics per item and their mean; writes sample grids to `sample_dir` if given. Runs under
    torch.inference_mode, the networks in eval mode. `sr_fn(item) -> output dict` defaults to
    method.validate (e.g. a baseline instead)."""
    rows = []
    sr_fn = sr_fn or method.validate
    with method.eval_mode(), torch.inference_mode():
        for item in items:
            item_dev = {k: v.to(method.device) if torch.is_tensor(v) else v for k, v in item.items()}
            output = sr_fn(item_dev)
            scale = item.get("scale", method.cfg.data.scale)
            sr = output["sr"].float().cpu().clamp(0, 1)
            row = image_metrics(sr, item["hr"], method.border(scale), item.get("kernel"), output.get("kernel_est"))
            row.update(method.extra_metrics(sr, item["hr"], method.border(scale)))
            rows.append({"name": item["name"], **row})
            if sample_dir:
                write_image(os.path.join(sample_dir, f"{prefix}{item['name']}.png"), sample_grid(item, output))
    keys = [k for k in rows[0] if k != "name"] if rows else []
    mean = {k: float(np.mean([r[k] for r in rows if k in r])) for k in keys}
    return rows, mean
