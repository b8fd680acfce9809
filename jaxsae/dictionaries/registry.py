"""Architecture name -> spec class; `build` validates names and fields with clear errors."""

from __future__ import annotations

import dataclasses

from jaxsae.dictionaries.base import Dictionary
from jaxsae.dictionaries.batchtopk import BatchTopK
from jaxsae.dictionaries.gated import Gated
from jaxsae.dictionaries.jumprelu import JumpReLU
from jaxsae.dictionaries.matryoshka import MatryoshkaBatchTopK
from jaxsae.dictionaries.relu import ReLU
from jaxsae.dictionaries.topk import TopK

ARCHITECTURES: dict[str, type[Dictionary]] = {
    cls.name: cls for cls in (ReLU, TopK, BatchTopK, JumpReLU, Gated, MatryoshkaBatchTopK)
}
NAMES = tuple(ARCHITECTURES) + ("transcoder",)


def build(architecture: str, **kw) -> Dictionary:
    """Build a spec by name. Unknown names or fields fail with the valid choices listed."""
    if architecture == "transcoder":
        from jaxsae.dictionaries.transcoder import make_transcoder

        activation = kw.pop("activation", "topk")
        if activation in ARCHITECTURES:
            _check_fields(ARCHITECTURES[activation], kw, f"transcoder({activation})")
        return make_transcoder(activation, **kw)
    if architecture not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {architecture!r}; valid choices: {', '.join(NAMES)}")
    cls = ARCHITECTURES[architecture]
    _check_fields(cls, kw, architecture)
    return cls.create(**kw)


def _check_fields(cls: type[Dictionary], kw: dict, label: str) -> None:
    valid = {f.name for f in dataclasses.fields(cls)}
    bad = sorted(set(kw) - valid)
    if bad:
        raise ValueError(f"{label}: unknown field(s) {bad}; valid fields: {sorted(valid)}")
