"""Architecture name -> spec class; `build` validates names and fields with clear errors.

The registry imports every architecture; no architecture imports the registry."""

from __future__ import annotations

import dataclasses

from jaxsae.dictionaries.base import Dictionary
from jaxsae.dictionaries.batchtopk import BatchTopK
from jaxsae.dictionaries.clt import CrossLayerTranscoder
from jaxsae.dictionaries.crosscoder import Crosscoder
from jaxsae.dictionaries.gated import Gated
from jaxsae.dictionaries.jumprelu import JumpReLU
from jaxsae.dictionaries.matryoshka import MatryoshkaBatchTopK
from jaxsae.dictionaries.multitoken import MultitokenTranscoder
from jaxsae.dictionaries.relu import ReLU
from jaxsae.dictionaries.topk import TopK
from jaxsae.dictionaries.transcoder import transcoder_fields

ARCHITECTURES: dict[str, type[Dictionary]] = {
    cls.name: cls for cls in (ReLU, TopK, BatchTopK, JumpReLU, Gated, MatryoshkaBatchTopK)
}
# architectures over several layers (inputs [B, L, D]); not a valid transcoder activation
MULTI_LAYER: dict[str, type[Dictionary]] = {cls.name: cls for cls in (CrossLayerTranscoder, Crosscoder)}
# architectures over whole contexts (inputs [B, T, D + H T]: one attention layer's inputs and patterns)
WHOLE_CONTEXT: dict[str, type[Dictionary]] = {cls.name: cls for cls in (MultitokenTranscoder,)}
NAMES = tuple(ARCHITECTURES) + ("transcoder",) + tuple(MULTI_LAYER) + tuple(WHOLE_CONTEXT)


def spec_class(architecture: str, activation: str = "topk") -> type[Dictionary]:
    if architecture == "transcoder":
        return ARCHITECTURES[activation]
    if architecture in MULTI_LAYER:
        return MULTI_LAYER[architecture]
    if architecture in WHOLE_CONTEXT:
        return WHOLE_CONTEXT[architecture]
    if architecture not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {architecture!r}; valid choices: {', '.join(NAMES)}")
    return ARCHITECTURES[architecture]


def build(architecture: str, **kw) -> Dictionary:
    """Build a spec by name. Unknown names or fields fail with the valid choices listed."""
    if architecture == "transcoder":
        activation = kw.pop("activation", "topk")
        kw = transcoder_fields(activation, kw)
        cls = ARCHITECTURES[activation]
        _check_fields(cls, kw, f"transcoder({activation})")
        return cls.create(**kw)
    cls = spec_class(architecture)
    _check_fields(cls, kw, architecture)
    return cls.create(**kw)


def _check_fields(cls: type[Dictionary], kw: dict, label: str) -> None:
    valid = {f.name for f in dataclasses.fields(cls)}
    bad = sorted(set(kw) - valid)
    if bad:
        raise ValueError(f"{label}: unknown field(s) {bad}; valid fields: {sorted(valid)}")
