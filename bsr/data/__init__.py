"""Image-folder datasets, crops/augmentation, the embedded demo set, validation items.

Config keys: data.hr (HR folder; unset = embedded demo photos), data.lr (target-domain LR
folder for unpaired methods), data.val (validation folder: HR images, or hr/ + lr/
sub-folders for paired LR), data.scale, data.hr_patch, data.num_workers.
"""
import os

from . import demo_set
from .datasets import HRCrops, ImageSet, SeededSampler, UnpairedCrops, collate_seeds
from .io import ImageError, list_images, read_image, read_uint8, to_tensor, write_image
from .transforms import modcrop


def train_dataset(cfg, data_kind):
    """The training Dataset of a method (`data_kind` "hr" or "unpaired", see methods/base.py)."""
    d = cfg.data
    if data_kind == "hr":
        images = ImageSet.from_folder(d.hr) if d.hr else demo_set.image_set(demo_set.TRAIN)
        return HRCrops(images, d.hr_patch, d.scale)
    if d.hr and not d.lr:
        raise ValueError(f"method {cfg.method} trains on unpaired data: set data.lr to a folder of LR images")
    hr = ImageSet.from_folder(d.hr) if d.hr else demo_set.image_set(demo_set.UNPAIRED_HR)
    return UnpairedCrops(hr, lr_images(cfg), d.hr_patch, d.scale)


def lr_images(cfg):
    """The target-domain LR images of an unpaired method: data.lr, or the embedded demo's."""
    return ImageSet.from_folder(cfg.data.lr) if cfg.data.lr else demo_set.unpaired_lr_set(cfg.data.scale)


def validation_items(cfg, method, folder=None):
    """Validation items {"name", "hr", "lr", optionally "kernel", "noise_level", "scale"}
    (tensors (1, 3, H, W)) from `folder` (or data.val, or the embedded demo images).
    HR images are cropped to multiples of `method.modcrop_multiple()`; a method with
    data_kind "hr" degrades each one with `degrade_for_validation` (one or several LRs)."""
    folder = folder or cfg.data.get("val")
    scale, multiple = cfg.data.scale, method.modcrop_multiple()
    if folder and os.path.isdir(os.path.join(folder, "hr")) and os.path.isdir(os.path.join(folder, "lr")):
        return [{"name": os.path.basename(h), "hr": to_tensor(modcrop(read_uint8(h), scale))[None],
                 "lr": read_image(l)[None]}
                for h, l in zip(list_images(os.path.join(folder, "hr")), list_images(os.path.join(folder, "lr")))]
    if folder:
        hrs = [(os.path.basename(p), to_tensor(modcrop(read_uint8(p), multiple))[None]) for p in list_images(folder)]
    elif method.data_kind == "hr":
        hrs = [(n, to_tensor(modcrop(demo_set.load(n), multiple))[None]) for n in demo_set.VALIDATION]
    else:
        return demo_set.unpaired_validation(scale, multiple)
    items = []
    for index, (name, hr) in enumerate(hrs):
        if method.data_kind == "hr":
            degraded = method.degrade_for_validation(hr, index)
        else:
            degraded = {"lr": demo_set.demo_degrade(hr[0], scale, index)[None], "kernel": demo_set.demo_kernel(scale)}
        many = isinstance(degraded, (list, tuple))
        for j, entry in enumerate(degraded if many else [degraded]):
            entry = dict(entry)
            suffix = entry.pop("tag", j if many else None)  # an entry may name itself by "tag"
            stem = os.path.splitext(name)[0]
            items.append({"name": f"{stem}_{suffix}" if suffix is not None else stem, "hr": hr, **entry})
    return items


__all__ = ["HRCrops", "ImageError", "ImageSet", "SeededSampler", "UnpairedCrops", "collate_seeds", "demo_set",
           "list_images", "lr_images", "read_image", "read_uint8", "train_dataset", "validation_items", "write_image"]
