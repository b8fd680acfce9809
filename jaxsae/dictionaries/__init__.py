"""Sparse dictionaries, one architecture per file (see base.py for the shared contract)."""

from jaxsae.dictionaries.base import Dictionary, LossContext, LossOutput, Params
from jaxsae.dictionaries.batchtopk import BatchTopK
from jaxsae.dictionaries.bound import SAE
from jaxsae.dictionaries.gated import Gated
from jaxsae.dictionaries.jumprelu import JumpReLU
from jaxsae.dictionaries.matryoshka import MatryoshkaBatchTopK
from jaxsae.dictionaries.registry import ARCHITECTURES, NAMES, build
from jaxsae.dictionaries.relu import ReLU
from jaxsae.dictionaries.topk import TopK

__all__ = [
    "ARCHITECTURES", "NAMES", "SAE", "BatchTopK", "Dictionary", "Gated", "JumpReLU", "LossContext",
    "LossOutput", "MatryoshkaBatchTopK", "Params", "ReLU", "TopK", "build",
]
