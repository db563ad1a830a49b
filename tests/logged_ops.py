"""LoggedOps: a dispatch mode that records the ops a block calls."""
import torch
from torch.utils._python_dispatch import TorchDispatchMode


def tensor_dtypes(args):
    """The set of the tensor arguments' dtypes."""
    return {a.dtype for a in args if isinstance(a, torch.Tensor)}


def argument_dtypes(args):
    """Each argument's dtype, in order: None for a non-tensor or an absent tensor."""
    return [getattr(a, "dtype", None) for a in args]


class LoggedOps(TorchDispatchMode):
    """`with LoggedOps() as calls:` -> calls, the (op name, describe(its arguments)) of every op the block calls, in
    order (not the ops those run inside them); describe defaults to tensor_dtypes."""

    def __init__(self, describe=tensor_dtypes):
        super().__init__()
        self.calls = []
        self.describe = describe

    def __enter__(self):
        super().__enter__()
        return self.calls

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.calls.append((func.name(), self.describe(args)))
        return func(*args, **(kwargs or {}))
