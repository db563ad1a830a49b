"""Image I/O through OpenCV: RGB float tensors in [0, 1], CHW.

Every failure names the file: an unreadable/corrupted image (a JPEG cut short included) raises ImageError
with its path.
"""
import os
import re

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
    """(H, W, 3) uint8 RGB array of an image file (grey expanded, alpha dropped, 16 bit scaled).
    ImageError naming the file when it is missing, corrupted, or a JPEG cut short (jpeg_is_complete)."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as error:
        raise ImageError(f"cannot read image {path!r} ({error.strerror or error})") from None
    if raw.startswith(JPEG_SOI) and not jpeg_is_complete(raw):
        raise ImageError(f"image {path!r} is a truncated or corrupted JPEG (its data ends before the end-of-image "
                         f"marker; the decoder would fill the missing part with grey)")
    image = cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_UNCHANGED) if raw else None
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


JPEG_SOI = b"\xff\xd8"
# After a start-of-scan header, entropy-coded data runs to the next marker: 0xFF followed by a byte that is
# neither 0x00 (a stuffed 0xFF data byte), a restart marker 0xD0-0xD7 (part of the scan) nor 0xFF (fill).
_END_OF_SCAN = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")


def jpeg_is_complete(raw):
    """True when the JPEG bytes `raw` reach their end-of-image marker (EOI, 0xFFD9) through an intact
    marker structure: each segment is skipped by its length (so an EXIF thumbnail's own EOI does not
    count), each scan's entropy-coded data up to the marker that ends it. libjpeg decodes a truncated
    file "successfully" (it only warns on stderr and fills the missing rows with grey), and OpenCV does
    not report its warnings: this walk is how a cut-off file is caught. Data after the EOI (e.g. a
    motion photo's video) is allowed. A complete file with corrupted scan data is not detected."""
    pos, end = len(JPEG_SOI), len(raw)
    while pos < end and raw[pos] == 0xFF:
        while pos < end and raw[pos] == 0xFF:  # fill bytes before a marker
            pos += 1
        if pos >= end:
            return False
        marker, pos = raw[pos], pos + 1
        if marker == 0xD9:
            return True
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # standalone markers carry no length
            continue
        length = int.from_bytes(raw[pos:pos + 2], "big")
        if length < 2:
            return False
        pos += length
        if marker == 0xDA:
            scan_end = _END_OF_SCAN.search(raw, pos)
            pos = scan_end.start() if scan_end else end
    return False


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
    return write_uint8(path, np.ascontiguousarray(to_uint8(tensor)))


def write_uint8(path, image):
    """Write an (H, W, 3) uint8 RGB array (C-contiguous) as PNG/JPEG (by extension); creates the folder.
    OpenCV wants BGR: the channels are swapped in place for the write and swapped back after, so a large
    image is never copied (bsr.infer's 16000 x 12000 outputs)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    _swap_red_blue(image)
    try:
        written = cv2.imwrite(path, image)
    finally:
        _swap_red_blue(image)
    if not written:
        raise OSError(f"could not write image {path!r}")
    return path


def _swap_red_blue(image, rows=256):
    """RGB <-> BGR of an (H, W, 3) uint8 array in place, `rows` rows at a time (cvtColor works through a
    temporary of its input's size, even with dst = src)."""
    for start in range(0, image.shape[0], rows):
        band = image[start:start + rows]
        cv2.cvtColor(band, cv2.COLOR_RGB2BGR, dst=band)
