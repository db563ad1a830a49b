"""The precision policy of the ops (docs/ops.md, "Precision").

- Outside autocast the Python entry points promote mixed floating inputs to one dtype, torch.result_type's
  (`result_dtype`, `promote`).
- Under torch.autocast each op's autocast kernel, registered for the dispatcher's AutocastCPU and AutocastCUDA keys
  (`register_autocast`), casts its floating inputs: "lower" ops to the autocast dtype, "float32" ops from
  float16 / bfloat16 to float32; with a float64 among them all run in float64 (autocast leaves float64 alone). The
  op then runs with that device's autocast off.
- The fused elementwise kernels of dpcb and patchgan_conv (`run_fused`) take float16 / bfloat16 tensors on the
  native CUDA backend (float32 arithmetic inside); the other backends' are float32 / float64 kernels, which
  `run_fused` runs on float32 copies of float16 / bfloat16 tensors. patchgan_conv's norm kernel follows the same
  rule through its `norm_dtype` (its statistics float32 either way).

Imports no op module.
"""
import functools

import torch

from .. import _backend

HALF_DTYPES = (torch.float16, torch.bfloat16)
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
POLICIES = ("lower", "float32")
AUTOCAST_DEVICES = ("cpu", "cuda")
HALF_KERNEL_BACKENDS = ("cuda",)  # the backends whose fused elementwise kernels take float16 / bfloat16

_autocast_library = torch.library.Library("bsrops", "IMPL")  # the autocast kernels, for the life of the process


def promote_dtypes(*dtypes):
    return functools.reduce(torch.promote_types, dtypes)


def result_dtype(*tensors):
    """The dtype torch.result_type gives the tensors (None entries skipped): torch.promote_types of their dtypes."""
    return promote_dtypes(*(t.dtype for t in tensors if t is not None))


def promote(*tensors):
    """The tensors (None entries kept) in their result_dtype; a tensor already in it is returned as it is."""
    dtypes = {t.dtype for t in tensors if t is not None}
    if len(dtypes) == 1:
        return tensors
    dtype = promote_dtypes(*dtypes)
    return tuple(None if t is None else t.to(dtype) for t in tensors)


def compute_dtype(dtype):
    """The dtype a kernel that has no half-precision version computes `dtype` in, and the one the half-precision
    kernels accumulate float16 / bfloat16 in (at::opmath_type): float64 for float64, else float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def autocast_arguments(args, positions, policy, device_type):
    """args with the floating tensors at `positions` (on `device_type`) in one dtype: float64 where one of them is
    (as outside autocast), else the autocast dtype (policy "lower") or float32 (policy "float32")."""
    args = list(args)
    cast = [i for i in positions
            if isinstance(args[i], torch.Tensor) and args[i].is_floating_point() and args[i].device.type == device_type]
    if not cast:
        return args
    if result_dtype(*(args[i] for i in cast)) == torch.float64:
        dtype = torch.float64
    else:
        dtype = torch.get_autocast_dtype(device_type) if policy == "lower" else torch.float32
    for i in cast:
        args[i] = args[i].to(dtype)
    return args


def register_autocast(op_name, policy, positions):
    """Register the autocast kernel of torch.ops.bsrops.<op_name> for CPU and CUDA: under torch.autocast the
    floating tensor arguments at `positions` are cast by `policy` (autocast_arguments), the others (norm
    parameters and running statistics) pass as they are."""
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
    op = getattr(torch.ops.bsrops, op_name).default
    for device_type in AUTOCAST_DEVICES:
        key_name = "Autocast" + torch._C._dispatch_key_for_device(device_type)
        key = getattr(torch._C.DispatchKey, key_name)

        def run(*args, key=key, device_type=device_type):
            with torch._C._ExcludeDispatchKeyGuard(torch._C.DispatchKeySet(key)):
                return op(*autocast_arguments(args, positions, policy, device_type))

        op.py_impl(key)(run)  # what tracing under the Python dispatcher (torch.compile) calls
        _autocast_library.impl(op_name, lambda keyset, *args, run=run: run(*args), key_name, with_keyset=True)


def has_half_kernels(device_type):
    """Whether the fused elementwise kernels that serve `device_type` now take float16 / bfloat16 tensors."""
    return _backend.active_backend(device_type) in HALF_KERNEL_BACKENDS


def run_fused(op_name, *args):
    """torch.ops.bsrops.<op_name>(*args) for any float dtype: with a float16 / bfloat16 tensor among args and a
    backend without half kernels (has_half_kernels), the kernel runs on float32 copies of them, and its tensor
    results and the arguments it writes in place come back in that dtype (rounded once). The fused kernels'
    arithmetic is float32 either way."""
    op = getattr(torch.ops.bsrops, op_name).default
    first_half = next((a for a in args if isinstance(a, torch.Tensor) and a.dtype in HALF_DTYPES), None)
    if first_half is None or has_half_kernels(first_half.device.type):
        return op(*args)
    half = first_half.dtype
    wide = [a.float() if isinstance(a, torch.Tensor) and a.dtype in HALF_DTYPES else a for a in args]
    result = op(*wide)
    for i, argument in enumerate(op._schema.arguments):
        if argument.alias_info is not None and argument.alias_info.is_write:
            args[i].copy_(wide[i])
    if isinstance(result, torch.Tensor):
        return result.to(half)
    return None if result is None else tuple(r.to(half) for r in result)
