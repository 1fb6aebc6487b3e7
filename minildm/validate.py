"""Checking a config file before anything is built from it.

A weights folder's config.json decides how big the model is: a file saying
`"num_res_blocks": 100000` would make Python build modules for a minute and
gigabytes before a single weight is read, and `"base_channels": "32"` would
fail deep inside torch's layers. So a config file is checked in three steps,
cheapest first, and the real model is built only when all three pass:

    1. fields   every key is a field of the config class, and every value has
                the field's type (read from the dataclass annotation: int, float,
                bool, str, `X | None`, tuple of the default's element type)
    2. ranges   every number (and every entry of a tuple of numbers) lies in the
                class's LIMITS, e.g. 1 <= num_res_blocks <= 8; fields a class does
                not list get DEFAULT_INT_RANGE / DEFAULT_FLOAT_RANGE
    3. size     the model built on PyTorch's "meta" device (shapes only, no memory)
                has at most MAX_PARAMETERS parameters, and its tensor names and
                shapes match the header of the weights file (weights_io.py)

Missing keys take the dataclass default (older folders lack newer fields);
unknown keys are refused. Every failure raises WeightsError naming the file,
the field and what is allowed.

Used by weights_io.load_config and weights_io.from_pretrained (every model folder)
and pipeline_config.load_pipeline_config (pipeline.json in its older layout too).
"""
from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn


class WeightsError(ValueError):
    """A weights or config file that cannot be used; the message says why and what was expected.
    (Defined here, the lowest layer; everything else imports it from weights_io.)"""


MAX_PARAMETERS = 200_000_000          # 800 MB in fp32: far above the gpu presets, below a laptop's memory
MAX_TUPLE_LENGTH = 8                  # entries of a tuple field (levels of a UNet, stages of a ResNet)
DEFAULT_INT_RANGE = (1, 10_000)       # an int field the class's LIMITS do not name
DEFAULT_FLOAT_RANGE = (0.0, 1e6)      # a float field the class's LIMITS do not name
DEFAULT_RANGES = {"int": DEFAULT_INT_RANGE, "float": DEFAULT_FLOAT_RANGE}
TYPE_NAMES = {"int": "a whole number", "float": "a number", "bool": "true or false",
              "str": "a string", "None": "null"}


def _allowed_types(config_class, field: dataclasses.Field) -> list[str]:
    """The annotation as type names: 'int | None' -> ['int', 'None'] (annotations are strings here)."""
    annotation = field.type if isinstance(field.type, str) else getattr(field.type, "__name__", str(field.type))
    return [name.strip() for name in annotation.split("|")]


def _check_scalar(value, kind: str):
    """value if it is a JSON value of type `kind` ('int', 'float', 'bool', 'str'), else None.

    JSON has one number type, so 2 is accepted where a float is expected (as 2.0), but
    2.5 is not a whole number and true is not 1. NaN and infinities are never accepted.
    """
    if kind == "bool":
        return value if isinstance(value, bool) else None
    if kind == "int":
        return value if isinstance(value, int) and not isinstance(value, bool) else None
    if kind == "float":
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
        return None
    if kind == "str":
        return value if isinstance(value, str) else None
    return None


def _element_kind(default) -> str:
    """The element type of a tuple field, from its default: (1, 2, 2) -> 'int'."""
    if isinstance(default, tuple) and default:
        return type(default[0]).__name__
    return "int"


def _in_range(value, low, high) -> bool:
    return low <= value <= high


def check_fields(config_class, fields, path) -> dict:
    """Steps 1 and 2: a dict read from JSON -> the keyword arguments of config_class.

    Raises WeightsError naming `path`, the field, the value and what is allowed.
    """
    if not isinstance(fields, dict):
        raise WeightsError(f"config file {path} must hold a JSON object of {config_class.__name__} "
                           f"fields, got {type(fields).__name__}")
    known = {f.name: f for f in dataclasses.fields(config_class)}
    unknown = sorted(set(fields) - set(known))
    if unknown:
        raise WeightsError(f"config file {path} does not describe a {config_class.__name__}: "
                           f"unknown fields {unknown}; expected fields {sorted(known)}")
    limits = getattr(config_class, "LIMITS", {})
    out = {}
    for name, value in fields.items():
        field = known[name]
        kinds = _allowed_types(config_class, field)
        where = f"config file {path}: {name} = {value!r:.60}"
        if value is None:
            if "None" not in kinds:
                raise WeightsError(f"{where} is not allowed; expected {TYPE_NAMES.get(kinds[0], kinds[0])}")
            out[name] = None
            continue
        if kinds[0].startswith("tuple"):
            kind = _element_kind(field.default)
            if not isinstance(value, list) or not 1 <= len(value) <= MAX_TUPLE_LENGTH:
                raise WeightsError(f"{where}; expected a list of 1 to {MAX_TUPLE_LENGTH} entries, "
                                   f"each {TYPE_NAMES[kind]}")
            items = [_check_scalar(v, kind) for v in value]
            if any(v is None for v in items):
                raise WeightsError(f"{where}; every entry must be {TYPE_NAMES[kind]}")
            low, high = limits.get(name, DEFAULT_RANGES.get(kind, (None, None)))
            if low is not None and not all(_in_range(v, low, high) for v in items):
                raise WeightsError(f"{where}; every entry must be in [{low}, {high}]")
            out[name] = tuple(items)
            continue
        checked = None
        for kind in kinds:
            checked = _check_scalar(value, kind)
            if checked is not None:
                break
        if checked is None:
            allowed = " or ".join(TYPE_NAMES.get(k, k) for k in kinds)
            raise WeightsError(f"{where} has the wrong type; expected {allowed}")
        if kind in ("int", "float"):
            low, high = limits.get(name, DEFAULT_RANGES[kind])
            if not _in_range(checked, low, high):
                raise WeightsError(f"{where} is out of range; allowed: {low} to {high}")
        out[name] = checked
    return out


def build_config(config_class, fields, path):
    """check_fields, then the class's own checks (its __post_init__), as one WeightsError."""
    kwargs = check_fields(config_class, fields, path)
    try:
        return config_class(**kwargs)
    except (ValueError, TypeError) as err:
        raise WeightsError(f"config file {path} is not a valid {config_class.__name__}: {err}") from err


def meta_model(model_class, config, path) -> nn.Module:
    """Step 3: build the model on the "meta" device (no memory) and count its parameters."""
    try:
        with torch.device("meta"):
            model = model_class(config)
    except Exception as err:  # noqa: BLE001 - any layer may refuse a size; report it as the file's fault
        raise WeightsError(f"config file {path}: cannot build a {model_class.__name__} from it "
                           f"({type(err).__name__}: {err})") from err
    n = sum(p.numel() for p in model.parameters())
    if n > MAX_PARAMETERS:
        raise WeightsError(f"config file {path} describes a {model_class.__name__} with {n:,} "
                           f"parameters; at most {MAX_PARAMETERS:,} are allowed (validate.MAX_PARAMETERS)")
    return model
