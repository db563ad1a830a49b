"""torch.ops.bsrops.dpcb: DANv2's dual-path conditional block (DPCB).

Semantics (shared/DESIGN.md §3, structure shared/spec/methods.md §5.1):

    f1 = conv_k1(lrelu(conv_k1(x_img)))         f2 = conv_k2(lrelu(conv_k2(x_cond)))
    out_img = x_img + f1 * f2                    out_cond = x_cond + f2

with f2 broadcast over H x W when the condition is (N, C, 1, 1) (the Restorer) or
image-sized (the Estimator). The op returns (out_img, out_cond, h1, f1, h2, f2); h1, h2 (the
LeakyReLU outputs, which the second convs read anyway) and f1, f2 are what the backward
needs, and nothing else is kept: the pre-activations are overwritten in place (the mask of
the LeakyReLU backward comes from the sign of its output), the modulation and both
residual adds are one pass (`_dpcb_epilogue`), and so is their backward
(`_dpcb_epilogue_backward`: grad_f1 and the reduced grad_f2 together).

Where the time goes (details and the arithmetic: benchmarks/bench_dpcb.py). At the Restorer
shape (N=8, 64 ch, 64x64) forward+backward is 6 conv-sized passes (7.2 GMAC) against ~17
passes over 8 MiB tensors for the eager elementwise part; the fused kernels need 9 (the
forward LeakyReLU is a oneDNN post-op of the conv on CPU float32) and 2 instead of 5
tensor-sized allocations. On a 2-core CPU the convs are ~85-90% of the block, so the ~2x
faster fused part gains the block a few percent; on a GPU (cuDNN convs at tens of us,
elementwise passes bound by HBM bandwidth and launches) the elementwise part is ~35-40% of
the block and the fusion saves ~15-20% of it.

The convolutions run on oneDNN / cuDNN through F.conv2d and aten.convolution_backward in
the composite kernel below, whatever the backend; the backend (cpu, cuda, triton,
reference) decides who runs the fused elementwise kernels.
"""
import torch
import torch.nn.functional as F

from .. import _backend
from ..reference import dpcb as ref
from ._common import check_slope, check_tensor, conv_backward, onednn_conv_leaky_relu

SCHEMAS = {
    "dpcb": "dpcb(Tensor x_img, Tensor x_cond, Tensor w1, Tensor? b1, Tensor w2, Tensor? b2, Tensor w3, Tensor? b3, Tensor w4, Tensor? b4, float negative_slope=0.2) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)",
    "_dpcb_backward": "_dpcb_backward(Tensor? grad_img, Tensor? grad_cond, Tensor x_img, Tensor x_cond, Tensor w1, Tensor w2, Tensor w3, Tensor w4, Tensor h1, Tensor f1, Tensor h2, Tensor f2, float negative_slope, bool[10] output_mask) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)",
    "_leaky_relu_": "_leaky_relu_(Tensor(a!) x, float negative_slope) -> ()",
    "_leaky_relu_backward_": "_leaky_relu_backward_(Tensor(a!) grad, Tensor out, float negative_slope) -> ()",
    "_dpcb_epilogue": "_dpcb_epilogue(Tensor x_img, Tensor f1, Tensor x_cond, Tensor f2) -> (Tensor, Tensor)",
    "_dpcb_epilogue_backward": "_dpcb_epilogue_backward(Tensor? grad_img, Tensor? grad_cond, Tensor f1, Tensor f2) -> (Tensor, Tensor)",
}
PARAMETERS = ("w1", "b1", "w2", "b2", "w3", "b3", "w4", "b4")


def dpcb(x_img, x_cond, w1, b1, w2, b2, w3, b3, w4, b4, negative_slope=0.2):
    """DPCB forward -> (out_img, out_cond). x_img (N, C, H, W); x_cond (N, C, 1, 1) or (N, C, H, W).

    w1, w2: (C, C, k1, k1) (image path), w3: (C, C, k2, k2), w4: (C, C, k2, k2) (condition path),
    odd k, 'same' padding; biases (C,) or None. nf1 must equal nf2 (out_cond = x_cond + f2).
    """
    check_inputs(x_img, x_cond, (w1, b1, w2, b2, w3, b3, w4, b4), negative_slope)
    out_img, out_cond, *_ = torch.ops.bsrops.dpcb(x_img, x_cond, w1, b1, w2, b2, w3, b3, w4, b4,
                                                  float(negative_slope))
    return out_img, out_cond


def check_inputs(x_img, x_cond, params, negative_slope):
    """Raise TypeError / ValueError naming the argument and what it must be."""
    check_tensor("dpcb", "x_img", x_img, dims=4)
    check_tensor("dpcb", "x_cond", x_cond, dims=4, dtype=x_img.dtype)
    n, nf1, height, width = x_img.shape
    if x_cond.shape[0] != n:
        raise ValueError(f"dpcb: x_cond must have x_img's batch {n}, got shape {tuple(x_cond.shape)}")
    if x_cond.shape[1] != nf1:
        raise ValueError(f"dpcb: nf1 must equal nf2 (the condition residual x_cond + f2 needs it): x_img has "
                         f"{nf1} channels, x_cond {x_cond.shape[1]}")
    if tuple(x_cond.shape[2:]) not in ((1, 1), (height, width)):
        raise ValueError(f"dpcb: the condition map must be 1x1 or image-sized {height}x{width} (neither "
                         f"1x1 nor image-sized), got x_cond of shape {tuple(x_cond.shape)}")
    for index, (name, value) in enumerate(zip(PARAMETERS, params)):
        if name.startswith("b"):
            if value is not None:
                check_tensor("dpcb", name, value, dims=1, dtype=x_img.dtype)
                if value.shape[0] != nf1:
                    raise ValueError(f"dpcb: {name} must be ({nf1},), got {tuple(value.shape)}")
            continue
        check_tensor("dpcb", name, value, dims=4, dtype=x_img.dtype)
        k = value.shape[-1]
        if value.shape[:2] != (nf1, nf1) or value.shape[2] != k or k % 2 == 0:
            raise ValueError(f"dpcb: {name} must be ({nf1}, {nf1}, k, k) with odd k, got {tuple(value.shape)}")
        if name == "w2" and value.shape != params[0].shape or name == "w4" and value.shape != params[4].shape:
            raise ValueError(f"dpcb: {name} must have the shape of the path's first weight, got {tuple(value.shape)}")
    for value in (x_cond, *params):
        if value is not None and value.device != x_img.device:
            raise ValueError(f"dpcb: every tensor must be on x_img's device {x_img.device}, got {value.device}")
    check_slope("dpcb", negative_slope)


# ---- the composite kernels: convolutions around the fused kernels ----

def _path_forward(x, wa, ba, wb, bb, negative_slope):
    """(h, f): h = lrelu(conv(x)) (oneDNN's fused post-op, else in place of the conv output), f = conv(h)."""
    h = onednn_conv_leaky_relu(x, wa, ba, 1, wa.shape[-1] // 2, negative_slope)
    if h is None:
        h = F.conv2d(x, wa, ba, padding=wa.shape[-1] // 2).contiguous()
        torch.ops.bsrops._leaky_relu_(h, negative_slope)
    return h.contiguous(), F.conv2d(h, wb, bb, padding=wb.shape[-1] // 2).contiguous()


def _forward_composite(x_img, x_cond, w1, b1, w2, b2, w3, b3, w4, b4, negative_slope=0.2):
    x_img, x_cond = x_img.contiguous(), x_cond.contiguous()
    h1, f1 = _path_forward(x_img, w1, b1, w2, b2, negative_slope)
    h2, f2 = _path_forward(x_cond, w3, b3, w4, b4, negative_slope)
    out_img, out_cond = torch.ops.bsrops._dpcb_epilogue(x_img, f1, x_cond, f2)
    return out_img, out_cond, h1, f1, h2, f2


def _path_backward(grads_f, grad_residual, x, wa, wb, h, negative_slope, mask):
    """Grads of x + path(x) for one path: (grad_x, grad_wa, grad_ba, grad_wb, grad_bb); mask in that order.

    grads_f: a one-element list holding grad_f, emptied once the second conv's backward has used it,
    so that it is freed before the first conv's backward allocates grad_x (peak memory)."""
    need_h = any(mask[:3])
    grad_h, grad_wb, grad_bb = conv_backward(grads_f.pop(), h, wb, 1, wb.shape[-1] // 2, (need_h, mask[3], mask[4]))
    grad_x, grad_wa, grad_ba = x.new_empty(0), x.new_empty(0), x.new_empty(0)
    if need_h:
        torch.ops.bsrops._leaky_relu_backward_(grad_h, h, negative_slope)
        grad_x, grad_wa, grad_ba = conv_backward(grad_h, x, wa, 1, wa.shape[-1] // 2, mask[:3])
        if mask[0] and grad_residual is not None:
            grad_x.add_(grad_residual)  # the residual branch, into the conv's fresh gradient
    return grad_x, grad_wa, grad_ba, grad_wb, grad_bb


def _backward_composite(grad_img, grad_cond, x_img, x_cond, w1, w2, w3, w4, h1, f1, h2, f2, negative_slope,
                        output_mask):
    x_img, x_cond = x_img.contiguous(), x_cond.contiguous()
    grad_img = grad_img.contiguous() if grad_img is not None else None
    grad_cond = grad_cond.contiguous() if grad_cond is not None else None
    grad_f1, grad_f2 = (list(g) for g in zip(torch.ops.bsrops._dpcb_epilogue_backward(grad_img, grad_cond, f1, f2)))
    m = list(output_mask)
    img = _path_backward(grad_f1, grad_img, x_img, w1, w2, h1, negative_slope, [m[0], *m[2:6]])
    cond = _path_backward(grad_f2, grad_cond, x_cond, w3, w4, h2, negative_slope, [m[1], *m[6:10]])
    return (img[0], cond[0], *img[1:], *cond[1:])


# ---- registration ----

_schema_library = _backend.define_schemas_if_missing(SCHEMAS)
torch.library.impl("bsrops::dpcb", "CompositeExplicitAutograd")(_forward_composite)
torch.library.impl("bsrops::_dpcb_backward", "CompositeExplicitAutograd")(_backward_composite)


@torch.library.register_fake("bsrops::dpcb")
def _forward_fake(x_img, x_cond, w1, b1, w2, b2, w3, b3, w4, b4, negative_slope=0.2):
    h2 = x_cond.new_empty(x_cond.shape[0], w3.shape[0], *x_cond.shape[2:])
    return (torch.empty_like(x_img), torch.empty_like(x_cond), torch.empty_like(x_img), torch.empty_like(x_img),
            h2, torch.empty_like(h2))


@torch.library.register_fake("bsrops::_dpcb_backward")
def _backward_fake(grad_img, grad_cond, x_img, x_cond, w1, w2, w3, w4, h1, f1, h2, f2, negative_slope,
                   output_mask):
    likes = (x_img, x_cond, w1, w1[:, 0, 0, 0], w2, w2[:, 0, 0, 0], w3, w3[:, 0, 0, 0], w4, w4[:, 0, 0, 0])
    return tuple(like.new_empty(like.shape) if need else like.new_empty(0) for like, need in zip(likes, output_mask))


@torch.library.register_fake("bsrops::_leaky_relu_")
def _leaky_relu_fake(x, negative_slope):
    return None


@torch.library.register_fake("bsrops::_leaky_relu_backward_")
def _leaky_relu_backward_fake(grad, out, negative_slope):
    return None


@torch.library.register_fake("bsrops::_dpcb_epilogue")
def _epilogue_fake(x_img, f1, x_cond, f2):
    return torch.empty_like(x_img), torch.empty_like(x_cond)


@torch.library.register_fake("bsrops::_dpcb_epilogue_backward")
def _epilogue_backward_fake(grad_img, grad_cond, f1, f2):
    return torch.empty_like(f1), torch.empty_like(f2)


def _setup_context(ctx, inputs, output):
    x_img, x_cond, w1, b1, w2, b2, w3, b3, w4, b4, negative_slope = inputs
    _, _, h1, f1, h2, f2 = output
    ctx.mark_non_differentiable(h1, f1, h2, f2)
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(x_img, x_cond, w1, w2, w3, w4, h1, f1, h2, f2)
    ctx.negative_slope = negative_slope


def _backward(ctx, grad_img, grad_cond, *unused):
    needs = ctx.needs_input_grad[:10]
    if not any(needs) or (grad_img is None and grad_cond is None):
        return (None,) * 11
    grads = torch.ops.bsrops._dpcb_backward(grad_img, grad_cond, *ctx.saved_tensors, ctx.negative_slope,
                                            list(needs))
    return (*(g if need else None for g, need in zip(grads, needs)), None)


torch.library.register_autograd("bsrops::dpcb", _backward, setup_context=_setup_context)


# ---- reference kernels ----

def _reference_leaky_relu_(x, negative_slope):
    x.copy_(F.leaky_relu(x, negative_slope))


def _reference_leaky_relu_backward_(grad, out, negative_slope):
    grad.copy_(torch.where(out > 0, grad, grad * negative_slope))


def _reference_epilogue(x_img, f1, x_cond, f2):
    return x_img + f1 * f2, x_cond + f2


def _reference_epilogue_backward(grad_img, grad_cond, f1, f2):
    grad_img = torch.zeros_like(f1) if grad_img is None else grad_img
    grad_f2 = (grad_img * f1).sum((2, 3), keepdim=True) if f2.shape[2:] != f1.shape[2:] else grad_img * f1
    return grad_img * f2, grad_f2 + grad_cond if grad_cond is not None else grad_f2


# The reference backend runs the eager forward; its backward is the composite over the
# reference elementwise kernels (eager PyTorch ops) below.
for _name, _fn in (("dpcb", ref.dpcb_reference),
                   ("_leaky_relu_", _reference_leaky_relu_), ("_leaky_relu_backward_", _reference_leaky_relu_backward_),
                   ("_dpcb_epilogue", _reference_epilogue), ("_dpcb_epilogue_backward", _reference_epilogue_backward)):
    _backend.register_kernel("reference", _name, _fn)


def _triton(name):
    def kernel(*args):
        from ..triton import dpcb as kernels  # imported on first use only

        return getattr(kernels, name)(*args)
    return kernel


for _op, _fn in (("_leaky_relu_", "leaky_relu_"), ("_leaky_relu_backward_", "leaky_relu_backward_"),
                 ("_dpcb_epilogue", "epilogue"), ("_dpcb_epilogue_backward", "epilogue_backward")):
    _backend.register_kernel("triton", _op, _triton(_fn))
