"""References for bsrops.patchgan_conv (semantics: docs/ops.md).

- `norm_act_reference`: the fused kernel's part in eager PyTorch (F.instance_norm / F.batch_norm,
  F.leaky_relu), the reference backend's `_patchgan_norm_act`; F.batch_norm updates the
  running statistics it is given.
"""
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
