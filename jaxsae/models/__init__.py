"""Language models as Penzai models, loaded from the formats users have.

`load(path)` takes an HF-format directory (config.json + safetensors), a .gguf file or a Gemma
Kaggle/Flax orbax checkpoint, and returns
a `LanguageModel` whose `__call__(tokens [batch, seq]) -> logits [batch, seq, vocab]`.
`load_tokenizer(path)` reads a .gguf file's tokenizer, a tokenizer.json or GPT-2 BPE files;
`packaged.smollm2_path()` finds the packaged SmolLM2-135M GGUF (see docs/design.md).
"""

from __future__ import annotations

import dataclasses
import os

import jax
import jax.numpy as jnp
from penzai import pz

from jaxsae.models import gemma, gpt2, gpt_neox, llama
from jaxsae.models.checkpoint_files import (
    CheckpointFormatError,
    read_config,
    read_tensors,
)
from jaxsae.models.placement import Placer, sharding_for
from jaxsae.models.tokenizer import Tokenizer, load_tokenizer

FAMILIES = (llama, gemma, gpt_neox, gpt2)
SUPPORTED = tuple(t for f in FAMILIES for t in f.MODEL_TYPES)
__all__ = ["SUPPORTED", "CheckpointFormatError", "LanguageModel", "Tokenizer", "load", "load_tokenizer"]


@dataclasses.dataclass(frozen=True)
class LanguageModel:
    """A Penzai transformer plus what it was loaded from."""

    model: pz.nn.Layer
    config: dict

    def __call__(self, tokens: jax.Array) -> jax.Array:
        tokens = jnp.asarray(tokens, jnp.int32)
        if tokens.ndim != 2:
            raise ValueError(f"tokens must be [batch, seq] integers, got shape {tokens.shape}")
        return _logits(self.model, tokens)


@pz.variable_jit  # jit that passes Penzai's (mutable) Parameter variables through as inputs
def _logits(model: pz.nn.Layer, tokens: jax.Array) -> jax.Array:
    named = pz.nx.wrap(tokens).tag("batch", "seq")
    logits = model(named, token_positions=pz.nx.arange("seq", tokens.shape[1]))
    return logits.untag("batch", "seq", "vocabulary").unwrap()


def place(model: LanguageModel, mesh) -> LanguageModel:
    """The model with every parameter sharded over `mesh` by its axis names (vocabulary, MLP
    neurons and heads over the `model` axis via jaxsae.sharding.RULES; a mesh axis that does not
    divide a dimension is dropped for it). `load(path, mesh=mesh)` does this while reading."""

    def put(param):
        value = param.value
        sh = sharding_for(mesh, value.named_axes, value.data_array.shape, value.dtype)
        return pz.Parameter(value=dataclasses.replace(value, data_array=jax.device_put(value.data_array, sh)),
                            label=param.label)

    placed = pz.select(model.model).at_instances_of(pz.Parameter).apply(put)
    return dataclasses.replace(model, model=placed)


def load(path: str, dtype=jnp.float32, mesh=None) -> LanguageModel:
    """Load an HF-format model directory (config.json + safetensors shards), a .gguf file, or a
    Gemma Kaggle/Flax orbax checkpoint directory, without torch. Weights are cast to `dtype`; with a
    `mesh`, each tensor goes from the file straight to its shards (see placement.py), never whole onto one device."""
    put = Placer(dtype, mesh)
    path = os.fspath(path)
    if not os.path.exists(path):
        raise CheckpointFormatError(f"{path!r}: no such file or directory; models.load takes a .gguf file, an HF "
                                    "model directory (config.json + *.safetensors) or a Gemma Kaggle checkpoint")
    if os.path.isfile(path):
        with open(path, "rb") as f:
            magic = f.read(4)
        if magic != b"GGUF":
            raise CheckpointFormatError(
                f"{path!r} is a file but not a GGUF file (it starts with {magic!r}, a GGUF file with b'GGUF'); "
                "models.load takes a .gguf file, or the directory of an HF model (config.json + *.safetensors) "
                "or of a Gemma Kaggle checkpoint")
        from jaxsae.models import gguf_file

        cfg, tensors = gguf_file.read(path)
        return LanguageModel(llama.build(cfg, tensors, put), cfg)
    from jaxsae.models import kaggle_gemma

    if kaggle_gemma.is_checkpoint(str(path)):  # Gemma in the Kaggle/Flax orbax format
        cfg, tensors = kaggle_gemma.to_hf(kaggle_gemma.read_params(str(path)))
        return LanguageModel(gemma.build(cfg, tensors, put), cfg)
    cfg = read_config(path)
    kind = cfg.get("model_type")
    if kind not in SUPPORTED:
        raise CheckpointFormatError(f"{path}: model_type {kind!r} is not supported; supported: {', '.join(SUPPORTED)}")
    family = next(f for f in FAMILIES if kind in f.MODEL_TYPES)
    return LanguageModel(family.build(cfg, read_tensors(path), put), cfg)
