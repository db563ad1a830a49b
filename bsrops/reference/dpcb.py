"""References for bsrops.dpcb (semantics: docs/ops.md).

- `DPCBReference`: an nn.Module written from the documented official structure (DANv2
  `dan_arch.py`), list interface included: it mutates the list it is given and returns it.
- `dpcb_reference`, `dpcb_inference_reference`: the op in eager PyTorch, with the op's six
  outputs (two without autograd) in the op's layouts (the "reference" backend).
- the reference backend's elementwise kernels, which its backward composite runs:
  `leaky_relu_reference_`, `leaky_relu_backward_reference_`, `epilogue_reference`,
  `epilogue_backward_reference`, `relayout_reference`.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..ops._common import conv_layouts, memory_format, memory_format_of


class DPCBReference(nn.Module):
    def __init__(self, nf1, nf2, ksize1=3, ksize2=1, negative_slope=0.2):
        super().__init__()
        self.body1 = nn.Sequential(nn.Conv2d(nf1, nf1, ksize1, 1, ksize1 // 2), nn.LeakyReLU(negative_slope, True),
                                   nn.Conv2d(nf1, nf1, ksize1, 1, ksize1 // 2))
        self.body2 = nn.Sequential(nn.Conv2d(nf2, nf1, ksize2, 1, ksize2 // 2), nn.LeakyReLU(negative_slope, True),
                                   nn.Conv2d(nf1, nf1, ksize2, 1, ksize2 // 2))

    def forward(self, x):
        f1 = self.body1(x[0])
        f2 = self.body2(x[1])
        x[0] = x[0] + torch.mul(f1, f2)
        x[1] = x[1] + f2
        return x


def dpcb_reference(x_img, x_cond, w1, b1, w2, b2, w3, b3, w4, b4, negative_slope=0.2):
    """(out_img, out_cond, h1, f1, h2, f2) in eager PyTorch, in the op's layouts: out_img and out_cond in x_img's
    and x_cond's, h and f of each path where the op's convolutions run (conv_layouts)."""
    h1 = F.leaky_relu(F.conv2d(x_img, w1, b1, padding=w1.shape[-1] // 2), negative_slope)
    f1 = F.conv2d(h1, w2, b2, padding=w2.shape[-1] // 2)
    h2 = F.leaky_relu(F.conv2d(x_cond, w3, b3, padding=w3.shape[-1] // 2), negative_slope)
    f2 = F.conv2d(h2, w4, b4, padding=w4.shape[-1] // 2)
    image_layout, cond_layout = conv_layouts(x_img, x_cond)
    out_img, out_cond = epilogue_reference(x_img, f1, x_cond, f2)
    return (out_img, out_cond, h1.contiguous(memory_format=image_layout), f1.contiguous(memory_format=image_layout),
            h2.contiguous(memory_format=cond_layout), f2.contiguous(memory_format=cond_layout))


def dpcb_inference_reference(*args):
    """(out_img, out_cond) of dpcb_reference."""
    return dpcb_reference(*args)[:2]


def leaky_relu_reference_(x, negative_slope):
    """x = lrelu(x), in place."""
    x.copy_(F.leaky_relu(x, negative_slope))


def leaky_relu_backward_reference_(grad, out, negative_slope):
    """grad *= lrelu'(v), in place, the mask read from the sign of out = lrelu(v)."""
    grad.copy_(torch.where(out > 0, grad, grad * negative_slope))


def epilogue_reference(x_img, f1, x_cond, f2):
    """(x_img + f1 * f2, x_cond + f2) in x_img's and x_cond's layouts."""
    return ((x_img + f1 * f2).contiguous(memory_format=memory_format_of(x_img)),
            (x_cond + f2).contiguous(memory_format=memory_format_of(x_cond)))


def epilogue_backward_reference(grad_img, grad_cond, f1, f2, channels_last):
    """(grad_f1, grad_f2) = (grad_img * f2, grad_cond + grad_img * f1, summed over H x W for a 1x1 condition);
    grad_f1 empty without f2, grad_f2 empty without f1; in channels_last or NCHW."""
    layout = memory_format(channels_last)
    grad_f1 = grad_img.new_empty(0) if f2 is None else (grad_img * f2).contiguous(memory_format=layout)
    if f1 is None:
        return grad_f1, grad_img.new_empty(0)
    product = grad_img * f1
    if product.shape != grad_cond.shape:
        product = product.sum((2, 3), keepdim=True)
    return grad_f1, (grad_cond + product).contiguous(memory_format=layout)


def relayout_reference(x, other, channels_last):
    """x (+ other) in channels_last or NCHW."""
    layout = memory_format(channels_last)
    return x.clone(memory_format=layout) if other is None else (x + other).contiguous(memory_format=layout)
