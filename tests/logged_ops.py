"""LoggedOps: a dispatch mode that records the ops a block calls."""
import torch
from torch.utils._python_dispatch import TorchDispatchMode


class LoggedOps(TorchDispatchMode):
    """`with LoggedOps() as calls:` -> calls, the (op name, set of its tensor arguments' dtypes) of every op the
    block calls, in order (not the ops those run inside them)."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __enter__(self):
        super().__enter__()
        return self.calls

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.calls.append((func.name(), {a.dtype for a in args if isinstance(a, torch.Tensor)}))
        return func(*args, **(kwargs or {}))
