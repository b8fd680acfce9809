"""The base config: every key of jaxsae.config.Config with its default, as a ConfigDict.

Presets import `get_base()` and change only what differs (presets are deltas). Keys whose
default is None are typed placeholders, so `--config.train.lr=1e-3` still parses.
"""

import dataclasses
import types
import typing

import ml_collections
from ml_collections import config_dict

from jaxsae import config as C


def _placeholder_type(tp):
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    base = typing.get_origin(args[0]) or args[0] if args else str
    return base


def _to_configdict(obj) -> ml_collections.ConfigDict:
    hints = typing.get_type_hints(type(obj))
    out = ml_collections.ConfigDict()
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        if dataclasses.is_dataclass(v):
            out[f.name] = _to_configdict(v)
        elif v is None:
            out[f.name] = config_dict.placeholder(_placeholder_type(hints[f.name]))
        elif typing.get_origin(hints[f.name]) in (typing.Union, types.UnionType) and float in typing.get_args(hints[f.name]):
            out[f.name] = float(v)
        else:
            out[f.name] = v
    return out


def get_base() -> ml_collections.ConfigDict:
    return _to_configdict(C.Config())


def get_config():
    return get_base()
