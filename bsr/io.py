"""Loading the files a user hands us, without running anything they contain.

`load_untrusted(path, what)` is the one door for every checkpoint, state dict, PCA matrix and
kernel file bsr reads; each loader of a user-supplied file goes through it:

- `.safetensors`: the tensors (safetensors never holds code);
- `.npy` / `.npz`: numpy arrays, `allow_pickle=False` (object arrays are refused);
- `.mat`: MATLAB variables (scipy.io.loadmat; it executes nothing);
- anything else (`.pt`, `.pth`, `.ckpt`, ...): `torch.load(weights_only=True)`, which unpickles
  tensors and plain containers only. Checkpoints written before the numpy RNG state was stored
  as plain data hold numpy arrays; the numpy reconstructors they need (and nothing else) are
  allowed by name.

Every failure names the file and what was expected: a missing or empty file, a file that is
not in the format its name says, or a pickle that would run code (`UntrustedFileError`).
"""
import os

import numpy as np
import torch

# The globals of a pickled numpy array (numpy >= 2 writes numpy._core, numpy 1.x numpy.core).
_NUMPY_ARRAY_GLOBALS = [
    (np._core.multiarray._reconstruct, "numpy._core.multiarray._reconstruct"),
    (np._core.multiarray._reconstruct, "numpy.core.multiarray._reconstruct"),
    np.ndarray,
    np.dtype,
    type(np.dtype(np.uint32)),
]


class UntrustedFileError(ValueError):
    """A user-supplied file that cannot be loaded safely or is not what was expected."""


def load_untrusted(path, what="file", mmap=False):
    """The contents of `path` (see the module docstring for the formats), loaded without executing
    code; `what` names the file's role in errors ("checkpoint", "--kernel file", ...). `mmap`: the file
    is read as a .npy file, returned as a read-only memory map (its pages read on access)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} {path!r} does not exist")
    if os.path.getsize(path) == 0:
        raise UntrustedFileError(f"{what} {path!r} is empty")
    loader = _map_npy if mmap else _LOADERS.get(os.path.splitext(path)[1].lower(), _load_torch)
    try:
        return loader(path)
    except Exception as error:
        raise UntrustedFileError(f"cannot load {what} {path!r}: {_reason(error)}") from error


def _load_torch(path):
    with torch.serialization.safe_globals(_NUMPY_ARRAY_GLOBALS):
        return torch.load(path, map_location="cpu", weights_only=True)


def _load_safetensors(path):
    from safetensors.torch import load_file

    return load_file(path)


def _load_npy(path):
    return np.load(path, allow_pickle=False)


def _map_npy(path):
    return np.load(path, mmap_mode="r", allow_pickle=False)


def _load_npz(path):
    with np.load(path, allow_pickle=False) as archive:
        return {name: archive[name] for name in archive.files}


def _load_mat(path):
    import scipy.io

    return scipy.io.loadmat(path)


_LOADERS = {".safetensors": _load_safetensors, ".npy": _load_npy, ".npz": _load_npz, ".mat": _load_mat}


def _reason(error):
    """One line saying why a load failed (torch's weights-only message reduced to its cause)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()] or [type(error).__name__]
    blocked = next((line for line in lines if "GLOBAL" in line), None)
    if blocked:
        return (f"it holds pickled objects, not plain tensor data ({blocked}); refusing to unpickle what could "
                f"run code (tensors, numbers, strings and containers of them load)")
    if isinstance(error, KeyError) or any("Unsupported operand" in line or "load key" in line for line in lines):
        return "not a torch checkpoint or state dict (unreadable pickle data: corrupted, truncated or another format)"
    if "zip archive" in lines[0]:
        return "a corrupted or truncated torch checkpoint (its zip archive cannot be read)"
    return f"{type(error).__name__}: {lines[0]}"


def state_dict_of(obj, path, what="weights file"):
    """A plain {name: tensor} state dict from a loaded weights file: nested under "state_dict",
    "params_ema", "params" or "model" as the official releases do, DataParallel's "module." prefix
    stripped. An error naming `path` when it holds no such dict."""
    for key in ("state_dict", "params_ema", "params", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not obj or not all(torch.is_tensor(v) for v in obj.values()):
        kind = f"a dict with keys {sorted(obj)[:8]}" if isinstance(obj, dict) else type(obj).__name__
        raise UntrustedFileError(f"{what} {path!r} is not a state dict of tensors (it holds {kind})")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def load_array(path, what="array file", key=None):
    """A numeric numpy array from a .npy file, or variable `key` of a .npz / .mat file (any key when
    the file holds one variable); an error naming the file and the variables it has otherwise."""
    data = load_untrusted(path, what)
    if isinstance(data, dict):
        variables = {name: value for name, value in data.items() if not name.startswith("__")}
        if key is None and len(variables) == 1:
            key = next(iter(variables))
        if key not in variables:
            wanted = f"a variable {key!r}" if key else "exactly one variable"
            raise UntrustedFileError(f"{what} {path!r}: expected {wanted}, found {sorted(variables)}")
        data = variables[key]
    array = np.asarray(data)
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
        raise UntrustedFileError(f"{what} {path!r}: expected a numeric array, found dtype {array.dtype}")
    return array
