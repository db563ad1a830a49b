"""Configs: bsr/configs/<method>.yaml holds a `base` section and one section per preset
(`demo`, `paper`, ...); a preset is merged over `base`, then a user YAML file, then
`--set key.sub=value` overrides (values parsed as YAML, so `1e-4`, `true`, `[1, 2]` work).

The resolved config is a `Config`: a nested dict with attribute access (cfg.train.lr),
written to the run directory as config.yaml.
"""
import copy
import os

import yaml

CONFIG_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")

# Keys every method understands; a method's YAML adds its own next to them.
DEFAULTS = {
    "seed": 0,
    "device": "cpu",
    "data": {"hr": None, "lr": None, "scale": 4, "num_workers": 0},
    "train": {"iters": 100, "batch_size": 4, "lr": 1e-4},
}


class ConfigError(ValueError):
    """A configuration a method cannot run: unknown key, wrong type or range, unknown method or preset."""


class Config(dict):
    """A dict whose keys also read as attributes; nested dicts become Configs."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for key, value in self.items():
            if isinstance(value, dict) and not isinstance(value, Config):
                self[key] = Config(value)

    def __getattr__(self, key):
        try:
            return self[key]
        except KeyError:
            raise AttributeError(f"config has no key {key!r} (keys: {sorted(self)})") from None

    def __setattr__(self, key, value):
        self[key] = Config(value) if isinstance(value, dict) else value

    def to_dict(self):
        return {k: v.to_dict() if isinstance(v, Config) else v for k, v in self.items()}


def merge(base, override):
    """Recursive dict merge; `override` wins; returns a new dict."""
    out = copy.deepcopy(dict(base))
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def parse_override(text):
    """'train.lr=1e-4' -> {'train': {'lr': 0.0001}}."""
    if "=" not in text:
        raise ValueError(f"--set expects key=value, got {text!r}")
    key, raw = text.split("=", 1)
    value = yaml.safe_load(raw) if raw else None
    if isinstance(value, str):
        try:  # YAML 1.1 reads "1e-4" (no dot) as a string
            value = float(value)
        except ValueError:
            pass
    for part in reversed(key.strip().split(".")):
        value = {part: value}
    return value


def method_presets(method):
    path = os.path.join(CONFIG_DIR, f"{method}.yaml")
    if not os.path.exists(path):
        raise ValueError(f"no config for method {method!r} ({path} does not exist)")
    with open(path) as f:
        return yaml.safe_load(f) or {}


def load(method, preset="demo", config_file=None, overrides=()):
    """The resolved Config of `method`: DEFAULTS < base < preset < config_file < overrides."""
    presets = method_presets(method)
    if preset not in presets or preset == "base":
        choices = sorted(k for k in presets if k != "base")
        raise ValueError(f"unknown preset {preset!r} for {method}; choose one of {choices}")
    cfg = merge(DEFAULTS, presets.get("base") or {})
    cfg = merge(cfg, presets[preset] or {})
    if config_file:
        with open(config_file) as f:
            cfg = merge(cfg, yaml.safe_load(f) or {})
    for text in overrides:
        cfg = merge(cfg, parse_override(text))
    cfg["method"], cfg["preset"] = method, preset
    return Config(cfg)


def save(cfg, path):
    with open(path, "w") as f:
        yaml.safe_dump(cfg.to_dict() if isinstance(cfg, Config) else cfg, f, sort_keys=False)
