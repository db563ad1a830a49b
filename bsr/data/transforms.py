"""Crops aligned to the scale and the 8-way (dihedral) augmentation, on HWC numpy arrays."""
import cv2
import numpy as np

from .io import ImageError


def check_size(image, min_h, min_w, name, need="crop size / scale"):
    """ImageError naming `name` when the (H, W, C) image is smaller than min_h x min_w (`need` says why)."""
    if image.shape[0] < min_h or image.shape[1] < min_w:
        raise ImageError(f"image {name!r} is {image.shape[0]}x{image.shape[1]}, smaller than the "
                         f"{min_h}x{min_w} it must provide ({need})")


def random_crop(image, size, rng, align=1):
    """A size x size crop at a random position whose corner is a multiple of `align`
    (so that an HR crop maps onto whole LR pixels of the upper-left decimation phase)."""
    top = rng.integers(0, (image.shape[0] - size) // align + 1) * align
    left = rng.integers(0, (image.shape[1] - size) // align + 1) * align
    return image[top:top + size, left:left + size]


ROTATIONS = (None, cv2.ROTATE_90_COUNTERCLOCKWISE, cv2.ROTATE_180, cv2.ROTATE_90_CLOCKWISE)


def augment(image, mode):
    """Dihedral transform `mode` in 0..7 of an (H, W, C) array: rotate by 90 * (mode % 4) degrees
    counter-clockwise (as np.rot90), then flip the rows if mode >= 4; a C-contiguous array. OpenCV
    moves whole pixels where numpy's strided copy of a rotated view moves single bytes."""
    rotation = ROTATIONS[mode % 4]
    out = np.ascontiguousarray(image) if rotation is None else cv2.rotate(image, rotation)
    if mode >= 4:
        out = cv2.flip(out, 0)
    return out.reshape(out.shape[:2] + image.shape[2:])  # OpenCV drops a single channel's axis


def modcrop(image, multiple):
    """Crop (H, W, C) bottom/right so that both sides are multiples of `multiple`."""
    h, w = image.shape[:2]
    return image[:h - h % multiple, :w - w % multiple]
