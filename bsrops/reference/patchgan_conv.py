"""References for bsrops.patchgan_conv (semantics: docs/ops.md).

- `norm_act_reference`: the fused kernel's part in eager PyTorch (F.instance_norm / F.batch_norm,
  F.leaky_relu), the reference backend's `_patchgan_norm_act`; F.batch_norm updates the
  running statistics it is given.
- `norm_act_backward_reference`: the backward op, by autograd of the eager normalisation (the
  reference backend's `_patchgan_norm_act_backward`).
"""
import torch
import torch.nn.functional as F


def norm_act_reference(y, norm_weight, norm_bias, running_mean, running_var, norm, training, momentum, eps,
                       negative_slope, activation):
    """(out, mean, rstd) of the norm + LeakyReLU part on the conv output y."""
    if norm == "none":
        return (F.leaky_relu(y, negative_slope) if activation else y.clone()), y.new_empty(0), y.new_empty(0)
    if norm == "instance":
        mean = y.mean((2, 3))
        rstd = (y.var((2, 3), unbiased=False) + eps).rsqrt()
        z = F.instance_norm(y, weight=norm_weight, bias=norm_bias, eps=eps)
    else:
        use_batch = training or running_mean is None
        if use_batch:
            mean = y.mean((0, 2, 3))
            rstd = (y.var((0, 2, 3), unbiased=False) + eps).rsqrt()
        else:
            mean, rstd = running_mean.clone(), (running_var + eps).rsqrt()
        z = F.batch_norm(y, running_mean, running_var, norm_weight, norm_bias, use_batch, momentum, eps)
    out = F.leaky_relu(z, negative_slope) if activation else z
    return out, mean.detach(), rstd.detach()


def norm_act_backward_reference(grad_out, y, out, mean, rstd, weight, norm, training, negative_slope, activation,
                                output_mask):
    """Autograd of the eager normalisation. With batch statistics, eps is recovered from the saved rstd
    (1 / rstd^2 - var) so that the recomputed normalisation equals the forward's."""
    y = out if norm == "none" else y
    inputs = [y.detach().requires_grad_(), None if weight is None else weight.detach().requires_grad_()]
    with torch.enable_grad():
        z = y_in = inputs[0]
        if norm != "none":
            shape = (1, -1, 1, 1) if norm == "batch" else (*mean.shape, 1, 1)
            batch_stats = norm == "instance" or training
            dims = (0, 2, 3) if norm == "batch" else (2, 3)
            if batch_stats:
                var = y_in.var(dims, unbiased=False, keepdim=True)
                eps = (rstd.view(shape) ** -2 - var).detach()
                z = (y_in - y_in.mean(dims, keepdim=True)) * (var + eps).rsqrt()
            else:
                z = (y_in - mean.view(shape)) * rstd.view(shape)
            if weight is not None:
                z = z * inputs[1].view(1, -1, 1, 1)
        mask = torch.where(out > 0, torch.ones_like(out), torch.full_like(out, negative_slope)) if activation else 1.0
        wanted = [t for t, need in zip(inputs, output_mask[:2]) if t is not None and need]
        grads = iter(torch.autograd.grad(z, wanted, grad_out * mask, allow_unused=True)) if wanted else iter(())
    grad_y = next(grads) if output_mask[0] else out.new_empty(0)
    grad_weight = next(grads) if output_mask[1] and weight is not None else out.new_empty(0)
    grad_bias = (grad_out * mask).sum((0, 2, 3)) if output_mask[2] and norm != "none" else out.new_empty(0)
    return grad_y, grad_weight, grad_bias
