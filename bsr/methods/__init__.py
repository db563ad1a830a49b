"""Method registry: each module in this package registers one method class by name.

    @register("usrnet")
    class USRNet(Method): ...

`get(name)` imports the module `bsr.methods.<name>` on first use, so the CLIs need no list.
"""
import importlib
import importlib.util

from .base import Method

_REGISTRY = {}
KNOWN = ("pdm", "realsr", "usrda", "usrnet", "dan")


def register(name):
    def wrap(cls):
        cls.name = name
        _REGISTRY[name] = cls
        return cls
    return wrap


def get(name):
    if name not in _REGISTRY:
        try:
            importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as error:
            if error.name != f"{__name__}.{name}":
                raise
    if name not in _REGISTRY:
        raise ValueError(f"unknown method {name!r}; available: {available()}")
    return _REGISTRY[name]


def available():
    """The methods whose module exists in this installation."""
    return [name for name in KNOWN if importlib.util.find_spec(f"{__name__}.{name}") is not None]


__all__ = ["Method", "available", "get", "register"]
