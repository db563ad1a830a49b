"""References for bsrops.blur_downsample (semantics: docs/ops.md).

- `blur_downsample_unfold`: per-pixel kernels the way PDM-SR does it (pad, F.unfold, multiply, sum).
- `blur_downsample_conv`: per-image / shared kernels the way DAN's BatchBlur does it (grouped conv2d).
- `blur_downsample_reference`: picks one of the two by the kernel layout (the "reference" backend);
  `blur_downsample_backward_reference`: its backward op, by autograd.
- `blur_downsample_loop`: the formula written out tap by tap, padding from numpy.pad; ground truth.
"""
import math

import numpy as np
import torch
import torch.nn.functional as F

PADDINGS = ("reflect", "symmetric", "replicate", "zeros", "circular")
_NUMPY_MODES = {"reflect": "reflect", "symmetric": "symmetric", "replicate": "edge", "circular": "wrap"}


def tap_offsets(k, flip):
    """(lowest, highest) coordinate offset a tap reads along one axis."""
    c = k // 2
    return (c - (k - 1), c) if flip else (-c, k - 1 - c)


def geometry(height, width, k, stride, flip):
    """Output size and padding: (Ho, Wo, before, after_h, after_w)."""
    low, high = tap_offsets(k, flip)
    out_h, out_w = math.ceil(height / stride), math.ceil(width / stride)
    after_h = max(0, stride * (out_h - 1) + high - (height - 1))
    after_w = max(0, stride * (out_w - 1) + high - (width - 1))
    return out_h, out_w, -low, after_h, after_w


def effective_stride(height, width, stride):
    """The stride the kernels run: a stride >= max(H, W) leaves one output pixel per axis (i = j = 0), whose
    taps do not depend on it, so it runs as max(H, W) (the same result; no s * i can overflow)."""
    return min(stride, max(height, width))


def kernel_size(kernel):
    """k of a (k, k), (N, k, k) or (N, k*k, Ho, Wo) kernel."""
    return kernel.shape[-1] if kernel.dim() < 4 else math.isqrt(kernel.shape[1])


def _symmetric_pad(x, pads):
    left, right, top, bottom = pads
    rows = torch.from_numpy(np.pad(np.arange(x.shape[2]), (top, bottom), mode="symmetric")).to(x.device)
    cols = torch.from_numpy(np.pad(np.arange(x.shape[3]), (left, right), mode="symmetric")).to(x.device)
    return x[:, :, rows][:, :, :, cols]


def pad_image(x, k, stride, padding, flip):
    """x padded so that a 'valid' stride-s correlation with the (flipped if `flip`) kernel gives the output."""
    _, _, before, after_h, after_w = geometry(x.shape[2], x.shape[3], k, stride, flip)
    pads = (before, after_w, before, after_h)
    if padding == "symmetric":
        return _symmetric_pad(x, pads)
    if padding == "zeros":
        return F.pad(x, pads)
    return F.pad(x, pads, mode=padding)


def blur_downsample_unfold(x, kernel, stride=1, padding="reflect", flip=False):
    """Per-pixel kernel (N, k*k, Ho, Wo): unfold the padded image, weight the patches, sum."""
    k = kernel_size(kernel)
    n, c, height, width = x.shape
    out_h, out_w = math.ceil(height / stride), math.ceil(width / stride)
    weights = kernel.flip(1) if flip else kernel  # channel p*k+q -> (k-1-p)*k + (k-1-q)
    patches = F.unfold(pad_image(x, k, stride, padding, flip), k, stride=stride)
    patches = patches.view(n, c, k * k, out_h, out_w)
    return (patches * weights.unsqueeze(1)).sum(2)


def blur_downsample_conv(x, kernel, stride=1, padding="reflect", flip=False):
    """Shared (k, k) or per-image (N, k, k) kernel: grouped conv2d over the padded image."""
    k = kernel.shape[-1]
    n, c = x.shape[:2]
    weights = kernel.flip(-1, -2) if flip else kernel
    padded = pad_image(x, k, stride, padding, flip)
    if kernel.dim() == 2:
        out = F.conv2d(padded.reshape(n * c, 1, *padded.shape[2:]), weights.view(1, 1, k, k), stride=stride)
    else:
        groups = weights.unsqueeze(1).expand(n, c, k, k).reshape(n * c, 1, k, k)
        out = F.conv2d(padded.reshape(1, n * c, *padded.shape[2:]), groups, stride=stride, groups=n * c)
    return out.view(n, c, *out.shape[2:])


def blur_downsample_reference(x, kernel, stride=1, padding="reflect", flip=False):
    """The reference backend: unfold for per-pixel kernels, grouped conv otherwise."""
    if kernel.dim() == 4:
        return blur_downsample_unfold(x, kernel, stride, padding, flip)
    return blur_downsample_conv(x, kernel, stride, padding, flip)


def blur_downsample_backward_reference(grad_out, x, kernel, stride, padding, flip, output_mask):
    """(grad_x, grad_kernel) by autograd of blur_downsample_reference, re-entered below the op's own autograd
    kernel; empty where output_mask is False."""
    inputs = [x.detach().requires_grad_(output_mask[0]), kernel.detach().requires_grad_(output_mask[1])]
    with torch.enable_grad():
        out = blur_downsample_reference(*inputs, stride, padding, flip)
        wanted = [t for t in inputs if t.requires_grad]
        grads = iter(torch.autograd.grad(out, wanted, grad_out))
    return tuple(next(grads) if need else t.new_empty(0) for t, need in zip(inputs, output_mask))


def _source_indices(size, before, after, padding):
    """Image index read at each padded coordinate; `size` (a zero row/column) for zeros padding."""
    if padding == "zeros":
        return np.pad(np.arange(size), (before, after), mode="constant", constant_values=size)
    return np.pad(np.arange(size), (before, after), mode=_NUMPY_MODES[padding])


def blur_downsample_loop(x, kernel, stride=1, padding="reflect", flip=False):
    """out(i, j) = sum_{a,b} K[a, b] x(s*i ± (a - c), s*j ± (b - c)), one tap at a time, in float64."""
    x, kernel = x.double(), kernel.double()
    k = kernel_size(kernel)
    n, c, height, width = x.shape
    out_h, out_w, before, after_h, after_w = geometry(height, width, k, stride, flip)
    if kernel.dim() == 2:
        kernel = kernel.expand(n, k, k)
    if kernel.dim() == 3:
        kernel = kernel.reshape(n, k * k, 1, 1).expand(n, k * k, out_h, out_w)
    x = F.pad(x, (0, 1, 0, 1))  # a zero row and column, read by zeros padding
    rows = _source_indices(height, before, after_h, padding)
    cols = _source_indices(width, before, after_w, padding)
    half = k // 2
    out = x.new_zeros(n, c, out_h, out_w)
    for a in range(k):
        for b in range(k):
            da, db = (half - a, half - b) if flip else (a - half, b - half)
            r = torch.from_numpy(rows[stride * np.arange(out_h) + da + before])
            q = torch.from_numpy(cols[stride * np.arange(out_w) + db + before])
            out = out + kernel[:, a * k + b].unsqueeze(1) * x[:, :, r][:, :, :, q]
    return out
