"""Configs: bsr/configs/<method>.yaml holds a `base` section and one section per preset
(`demo`, `paper`, ...); a preset is merged over `base`, then a user YAML file, then
`--set key.sub=value` overrides (values parsed as YAML, so `1e-4`, `true`, `[1, 2]` work).

The keys a method understands, and their types, are those of DEFAULTS and of its `base`
section: an int key takes whole numbers, a float key numbers, a bool key true/false, a list key
lists, a section its own keys. A key whose default is null declares its type in NULL_TYPES or in
the `types` table of the method's YAML ("path", "str", "float", "int", "bool", "list"; "bool_or_str":
true, false or a string). Anything else is a ConfigError naming the key: an unknown key (with the
closest valid one), a value of the wrong type, or one out of range (RANGES).

A method's YAML may also hold a `variants` section, {key: {value: {preset: layer}}}: when the
resolved `key` is not null, the layer of its value under the chosen preset goes between the preset
and the user's file and overrides (pdm.track: each official track's values per stage preset).

The resolved config is a `Config`: a nested dict with attribute access (cfg.train.lr),
written to the run directory as config.yaml.
"""
import copy
import difflib
import math
import os
import re

import yaml

CONFIG_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")


def is_device_name(text):
    """True for the device names a run accepts: auto (CUDA when available, else the CPU), cpu, cuda, cuda:N."""
    return re.fullmatch(r"auto|cpu|cuda(:\d+)?", text) is not None


# Keys every method understands; a method's YAML adds its own next to them.
DEFAULTS = {
    "seed": 0,
    "device": "auto",
    "data": {"hr": None, "lr": None, "val": None, "val_lr_name": "{}", "scale": 4, "hr_patch": 96, "num_workers": 0,
             "cache": None},
    "train": {"iters": 100, "batch_size": 4, "grad_clip": 0, "amp": False, "ema": None, "channels_last": False,
              "compile": False, "val_every": 0, "save_every": 0, "ckpt_every": 0, "log_every": 10},
}

# The type of each DEFAULTS key whose default is null, or whose default's type is narrower than the key's.
NULL_TYPES = {"data.hr": "path", "data.lr": "path", "data.val": "path", "data.cache": "path",
              "data.num_workers": "int_or_auto", "train.amp": "bool_or_str", "train.compile": "bool_or_str",
              "train.ema": "float"}

# Allowed values: key -> (test, what it must be). Keys named lr or lr_* must be > 0.
RANGES = {
    "seed": (lambda v: v >= 0, ">= 0"),
    "device": (is_device_name, "auto, cpu, cuda or cuda:N"),
    "data.scale": (lambda v: v >= 1, ">= 1"),
    "data.hr_patch": (lambda v: v >= 1, ">= 1"),
    "data.num_workers": (lambda v: v == "auto" or v >= 0, ">= 0 or auto"),
    "train.iters": (lambda v: v >= 1, "a whole number >= 1"),
    "train.batch_size": (lambda v: v >= 1, "a whole number >= 1"),
    "train.grad_clip": (lambda v: v >= 0, ">= 0 (0: off)"),
    "train.val_every": (lambda v: v >= 0, ">= 0 (0: never)"),
    "train.save_every": (lambda v: v >= 0, ">= 0 (0: only at the end)"),
    "train.ckpt_every": (lambda v: v >= 0, ">= 0 (0: never)"),
    "train.log_every": (lambda v: v >= 1, ">= 1"),
    "train.amp": (lambda v: v in (False, True, "bf16", "fp16"), "false, bf16 or fp16"),
    "train.ema": (lambda v: v is None or 0 <= v < 1, "in [0, 1) (0 or null: off)"),
}
LEARNING_RATE = (lambda v: v > 0 and math.isfinite(v), "a finite number > 0")

# The keys a resumed run may change (bsr.train --resume): applied and logged. Any other difference
# from the checkpoint's configuration is refused. A new learning rate moves the optimiser groups built
# from it (engine.Engine._apply_learning_rates).
# train.channels_last and train.compile change how the step runs, not what it computes (equal up to float
# rounding, like another device); train.amp and train.ema change the run itself and are refused.
RESUMABLE = ("train.iters", "train.lr", "train.lr_d", "train.lr_G", "train.lr_E", "train.grad_clip",
             "train.log_every", "train.val_every", "train.save_every", "train.ckpt_every", "device", "data.num_workers",
             "data.cache", "train.channels_last", "train.compile")

# Keys a checkpoint's configuration may hold under an older name: old name -> current name (from_saved).
RENAMED = {"dan.channels_last": "train.channels_last"}

TYPES = {"path": str, "str": str, "float": float, "int": int, "bool": bool, "list": list}


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


def parse_override(text, text_keys=()):
    """'train.lr=1e-4' -> {'train': {'lr': 0.0001}}: the value parsed as YAML, except for the keys in
    `text_keys` (string and path keys), whose text is taken as it is ('null' or nothing: None)."""
    if "=" not in text:
        raise ConfigError(f"--set expects key=value, got {text!r}")
    key, raw = (part.strip() for part in text.split("=", 1))
    if key in text_keys:
        value = None if raw in ("", "null", "~") else raw
    else:
        value = _parse_yaml(raw, text) if raw else None
    for part in reversed(key.split(".")):
        value = {part: value}
    return value


def _parse_yaml(raw, text):
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        raise ConfigError(f"--set {text}: the value is not valid YAML") from None
    if isinstance(value, str):
        try:  # YAML 1.1 reads "1e-4" (no dot) as a string
            value = float(value)
        except ValueError:
            pass
    return value


def methods_with_presets():
    """{method: [preset, ...]} of every YAML in the config folder."""
    names = sorted(f[:-len(".yaml")] for f in os.listdir(CONFIG_DIR) if f.endswith(".yaml"))
    return {name: presets_of(method_presets(name)) for name in names}


def describe_methods():
    """Lines 'method: preset, preset, ...' for usage messages."""
    return "\n".join(f"  {name}: {', '.join(presets)}" for name, presets in methods_with_presets().items())


def presets_of(sections):
    return [name for name in sections if name not in ("base", "types", "variants")]


def method_presets(method):
    path = os.path.join(CONFIG_DIR, f"{method}.yaml")
    if not os.path.exists(path):
        raise ConfigError(f"unknown method {method!r}; methods and their presets:\n{describe_methods()}")
    with open(path) as f:
        return yaml.safe_load(f) or {}


class Schema:
    """The keys, default values and declared types of one method's configuration."""

    def __init__(self, sections):
        self.defaults = merge(DEFAULTS, sections.get("base") or {})
        self.types = {**NULL_TYPES, **(sections.get("types") or {})}
        self.keys = [key for key, _ in _flatten_values(self.defaults)]
        self.text_keys = {key for key, value in _flatten_values(self.defaults)
                          if self.types.get(key, "str" if isinstance(value, str) else None) in ("str", "path")}

    def check(self, values, where):
        """`values` (a nested dict of overrides) with types converted; ConfigError naming the key otherwise."""
        return self._check(values, self.defaults, "", where)

    def _check(self, values, defaults, prefix, where):
        if not isinstance(values, dict):
            raise ConfigError(f"{prefix.rstrip('.') or 'the config'} ({where}) must be a mapping of keys, "
                              f"got {values!r}")
        out = {}
        for key, value in values.items():
            path = f"{prefix}{key}"
            if key not in defaults:
                raise ConfigError(f"unknown config key {path!r} ({where}){self._suggestion(path)}")
            if isinstance(defaults[key], dict):
                out[key] = self._check(value, defaults[key], f"{path}.", where)
            else:
                out[key] = self._value(path, value, defaults[key], where)
        return out

    def _suggestion(self, path):
        close = difflib.get_close_matches(path, self.keys, n=1, cutoff=0.6)
        return f"; did you mean {close[0]!r}?" if close else "; see the method's YAML for the valid keys"

    def _value(self, path, value, default, where):
        expected = self.types.get(path) or (None if default is None else _type_name(default))
        if expected is None:
            raise ConfigError(f"config key {path!r} has a null default and no declared type (a `types` entry)")
        if value is None and (default is None or expected == "path"):
            return None
        converted = _convert(value, expected)
        if converted is None:
            raise ConfigError(f"config key {path!r} ({where}) must be {_ARTICLE[expected]}, got {value!r}")
        test, must = RANGES.get(path) or (LEARNING_RATE if _is_learning_rate(path, expected) else (None, None))
        if test is not None and not test(converted):
            raise ConfigError(f"config key {path!r} ({where}) must be {must}, got {value!r}")
        return converted


_ARTICLE = {"path": "a path (string)", "str": "a string", "float": "a number", "int": "a whole number",
            "bool": "true or false", "list": "a list", "int_or_auto": "a whole number or auto",
            "bool_or_str": "true, false or a name"}


def _type_name(default):
    for name in ("bool", "int", "float", "str", "list"):
        if isinstance(default, TYPES[name]):
            return name
    raise ConfigError(f"unsupported default value {default!r}")


def _convert(value, expected):
    """`value` as type `expected`, or None when it is not one (1.0 is a whole number, 1 a float)."""
    if expected in ("bool", "bool_or_str") and isinstance(value, bool):
        return value
    if expected == "bool":
        return None
    if isinstance(value, bool):
        return None
    if expected == "bool_or_str":
        return value if isinstance(value, str) else None
    if expected == "int_or_auto":
        return value if value == "auto" else _convert(value, "int")
    if expected == "int":
        if isinstance(value, float) and value.is_integer():
            return int(value)
        return value if isinstance(value, int) else None
    if expected == "float":
        return float(value) if isinstance(value, (int, float)) else None
    return value if isinstance(value, TYPES[expected]) else None


def _is_learning_rate(path, expected):
    leaf = path.rsplit(".", 1)[-1]
    return expected == "float" and (leaf == "lr" or leaf.startswith("lr_"))


def load(method, preset="demo", config_file=None, overrides=()):
    """The resolved Config of `method`: DEFAULTS < base < preset < config_file < overrides, each
    layer checked against the method's keys and types (ConfigError)."""
    sections = method_presets(method)
    if preset not in presets_of(sections):
        raise ConfigError(f"unknown preset {preset!r} for {method}; choose one of {presets_of(sections)}")
    schema = Schema(sections)
    layers = [(sections[preset] or {}, f"preset {preset}")]
    if config_file:
        with open(config_file) as f:
            layers.append((yaml.safe_load(f) or {}, config_file))
    cfg = _stack(schema, layers, overrides)
    variants = list(_variant_layers(sections.get("variants") or {}, preset, cfg))
    if variants:
        cfg = _stack(schema, [layers[0], *variants, *layers[1:]], overrides)
    cfg["method"], cfg["preset"] = method, preset
    return Config(cfg)


def _stack(schema, layers, overrides):
    """schema.defaults < each (layer, where) checked < the --set overrides."""
    cfg = schema.defaults
    for layer, where in layers:
        cfg = merge(cfg, schema.check(layer, where))
    return apply_overrides(cfg, overrides, schema)


def _variant_layers(variants, preset, cfg):
    """The (layer, where) pairs that the `variants` section gives `cfg` under `preset`."""
    for key, table in variants.items():
        value = cfg
        for part in key.split("."):
            value = value[part]
        if value is None:
            continue
        if value not in table:
            raise ConfigError(f"config key {key!r} must be one of {sorted(table)} (or null), got {value!r}")
        if preset not in table[value]:
            raise ConfigError(f"{key}={value} has no {preset!r} preset; it has {sorted(table[value])}")
        yield table[value][preset] or {}, f"{key}={value} under preset {preset}"


def apply_overrides(cfg, overrides, schema=None):
    """`cfg` (a dict) with the `--set key=value` texts applied, checked against `schema` (default:
    the schema of cfg's method)."""
    schema = schema or Schema(method_presets(cfg["method"]))
    for text in overrides:
        cfg = merge(cfg, schema.check(parse_override(text, schema.text_keys), f"--set {text}"))
    return cfg


def from_saved(saved, preset=None, config_file=None, overrides=()):
    """The Config of a checkpoint's configuration `saved` (keys added since it was written take their
    defaults) with `config_file` and `overrides` applied and checked; `preset`, when given, must be
    the checkpoint's (a resumed run's differences are checked by resume_changes)."""
    saved = renamed(saved)
    method = saved["method"]
    # a method registered without a YAML (a plug-in, the tests' toy) is checked against its saved keys
    has_yaml = os.path.exists(os.path.join(CONFIG_DIR, f"{method}.yaml"))
    sections = method_presets(method) if has_yaml else {"base": saved}
    if preset is not None and preset != saved.get("preset"):
        raise ConfigError(f"--resume continues a {method} run of preset {saved.get('preset')!r}; "
                          f"--preset {preset!r} would change it (leave --preset out when resuming)")
    schema = Schema(sections)
    cfg = merge(schema.defaults, saved)
    if config_file:
        with open(config_file) as f:
            cfg = merge(cfg, schema.check(yaml.safe_load(f) or {}, config_file))
    return Config(apply_overrides(cfg, overrides, schema))


def renamed(saved):
    """A copy of the configuration dict `saved` with the RENAMED keys it holds under their current names."""
    saved = copy.deepcopy(saved)
    for old, new in RENAMED.items():
        *old_sections, old_leaf = old.split(".")
        section = saved
        for part in old_sections:
            section = section.get(part) if isinstance(section, dict) else None
        if not isinstance(section, dict) or old_leaf not in section:
            continue
        value = section.pop(old_leaf)
        *new_sections, new_leaf = new.split(".")
        target = saved
        for part in new_sections:
            target = target.setdefault(part, {})
        target[new_leaf] = value
    return saved


def resume_changes(saved, cfg):
    """{key: (checkpoint value, new value)} of the RESUMABLE keys `cfg` changes; ConfigError listing
    every other difference between `cfg` and the checkpoint's configuration `saved` (old names renamed)."""
    saved = renamed(saved)
    old, new = dict(_flatten_values(saved)), dict(_flatten_values(cfg))
    changed = {key: (old.get(key), new.get(key)) for key in sorted(set(old) | set(new))
               if key in new and old.get(key, new[key]) != new[key]}
    refused = {key: values for key, values in changed.items() if key not in RESUMABLE}
    if refused:
        lines = "\n".join(f"  {key}: {a!r} -> {b!r}" for key, (a, b) in refused.items())
        raise ConfigError(f"--resume continues the run stored in the checkpoint; these settings would change it:\n"
                          f"{lines}\nonly {', '.join(RESUMABLE)} may change on resume (start a new run with --out "
                          f"for the others)")
    return changed


def _flatten_values(tree, prefix=""):
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            yield from _flatten_values(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def save(cfg, path):
    with open(path, "w") as f:
        yaml.safe_dump(cfg.to_dict() if isinstance(cfg, Config) else cfg, f, sort_keys=False)
