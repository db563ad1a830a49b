"""Image I/O through OpenCV: RGB float tensors in [0, 1], CHW.

Every failure names the file: an unreadable/corrupted image raises ImageError with its path.
"""
import os

import cv2
import numpy as np
import torch

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm")


class ImageError(ValueError):
    """An image file that cannot be used (unreadable, corrupted, too small)."""


def list_images(folder):
    """Sorted image files of `folder` (not recursive); an error if there are none."""
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"image folder {folder!r} does not exist")
    files = sorted(os.path.join(folder, f) for f in os.listdir(folder) if f.lower().endswith(IMAGE_EXTENSIONS))
    if not files:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {folder!r}")
    return files


def read_uint8(path):
    """(H, W, 3) uint8 RGB array of an image file (grey expanded, alpha dropped, 16 bit scaled)."""
    image = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if image is None or image.size == 0:
        raise ImageError(f"cannot read image {path!r} (missing, corrupted or not an image)")
    if image.dtype == np.uint16:
        image = (image.astype(np.float32) / 257.0 + 0.5).astype(np.uint8)
    elif image.dtype != np.uint8:
        raise ImageError(f"image {path!r} has unsupported pixel type {image.dtype}")
    if image.ndim == 2:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    elif image.shape[2] == 4:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
    else:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    return np.ascontiguousarray(image)


def to_tensor(image):
    """(H, W, 3) uint8 -> (3, H, W) float32 in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float().div_(255.0)


def to_uint8(tensor):
    """(3, H, W) float in [0, 1] (clamped, rounded) -> (H, W, 3) uint8."""
    return (tensor.detach().float().cpu().clamp(0, 1) * 255 + 0.5).to(torch.uint8).permute(1, 2, 0).numpy()


def read_image(path):
    return to_tensor(read_uint8(path))


def write_image(path, tensor):
    """Write a (3, H, W) RGB float tensor as PNG/JPEG (by extension); creates the folder."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if not cv2.imwrite(path, cv2.cvtColor(to_uint8(tensor), cv2.COLOR_RGB2BGR)):
        raise OSError(f"could not write image {path!r}")
    return path
