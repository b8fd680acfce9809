"""GPT-2 from HF safetensors, as a Penzai model (Penzai has no GPT-2 variant; this one is built from
the GPT-NeoX parts): learned absolute positions added to the token embeddings, pre-LayerNorm blocks
with two residual sublayers, biased attention without RoPE, a GELU (tanh) MLP, a final LayerNorm
and an unembedding tied to the token embeddings.

HF stores GPT-2's projections as Conv1D weights, [in, out]: the fused `c_attn` is [d, 3d] with the
query, key and value columns in that order, each `heads * head_dim` wide.
"""

from __future__ import annotations

import numpy as np
from penzai import pz
from penzai.models.transformer.variants import gpt_neox as pz_neox

from jaxsae.models import gpt_neox
from jaxsae.models.checkpoint_files import CheckpointFormatError, require
from jaxsae.models.placement import Placer, bind

MODEL_TYPES = ("gpt2",)


@pz.pytree_dataclass
class AddLearnedPositions(pz.nn.Layer):
    """x + position_table[token_positions] (GPT-2's absolute position embedding)."""

    lookup: pz.nn.EmbeddingLookup

    def __call__(self, x, **side_inputs):
        return x + self.lookup(side_inputs["token_positions"])


def penzai_config(cfg: dict, dtype) -> pz_neox.GPTNeoXTransformerConfig:
    for flag in ("scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn"):
        if cfg.get(flag):
            raise CheckpointFormatError(f"gpt2: {flag}=True is not supported")
    if cfg.get("scale_attn_weights") is False:
        raise CheckpointFormatError("gpt2: scale_attn_weights=False is not supported")
    d, n = cfg["n_embd"], cfg["n_head"]
    return pz_neox.GPTNeoXTransformerConfig(
        num_attention_heads=n, embedding_dim=d, projection_dim=d // n, mlp_hidden_dim=cfg.get("n_inner") or 4 * d,
        num_decoder_blocks=cfg["n_layer"], vocab_size=cfg["vocab_size"],
        activation_fn=gpt_neox.activation(cfg, "activation_function"), rope_subset_size=0, rope_wavelength=1.0,
        layernorm_epsilon=cfg.get("layer_norm_epsilon", 1e-5), parameter_dtype=dtype, activation_dtype=dtype)


def _attention(name: str, pc) -> pz.nn.Attention:
    """The NeoX attention without its rotary embeddings."""
    attn = pz_neox.build_gpt_neox_attention(name, None, pc)
    return pz.select(attn).at_instances_of(pz.nn.ApplyRoPEToSubset).apply(lambda _: pz.nn.Identity())


def build(cfg: dict, tensors: dict[str, np.ndarray], put: Placer) -> pz.nn.Layer:
    pc = penzai_config(cfg, put.dtype)
    d, n, h, f = pc.embedding_dim, pc.num_attention_heads, pc.projection_dim, pc.mlp_hidden_dim
    eps, dt = pc.layernorm_epsilon, pc.parameter_dtype
    table = pz.nn.EmbeddingTable.from_config(name="transformer/embedder", init_base_rng=None, vocab_size=pc.vocab_size,
                                             embedding_axes={"embedding": d}, dtype=dt)
    positions = pz.nn.EmbeddingTable.from_config(name="transformer/positions", init_base_rng=None,
                                                 vocab_size=cfg["n_positions"], embedding_axes={"embedding": d},
                                                 dtype=dt)
    blocks = [gpt_neox.block(f"transformer/block_{i}", _attention(f"transformer/block_{i}/attention", pc),
                             pz_neox.build_gpt_neox_feedforward(f"transformer/block_{i}/mlp", None, pc), d, eps, dt,
                             parallel=False) for i in range(pc.num_decoder_blocks)]
    embed = [pz.nn.EmbeddingLookup(table), AddLearnedPositions(pz.nn.EmbeddingLookup(positions))]
    model_def = gpt_neox.lm(blocks, embed, pc, gpt_neox.layer_norm("transformer/final_norm", d, eps, dt), tied=True,
                            heads={"heads": n})

    prefix = "transformer." if "transformer.wte.weight" in tensors else ""  # hub GPT-2 files have no prefix

    def t(name):
        return require(tensors, prefix + name)

    def ln(pz_name, hf_name):
        return {f"{pz_name}/scale.weights": put(t(f"{hf_name}.weight"), "embedding"),
                f"{pz_name}/shift.bias": put(t(f"{hf_name}.bias"), "embedding")}

    params = {"embedder.embeddings": put(t("wte.weight"), "vocabulary", "embedding"),
              "positions.embeddings": put(t("wpe.weight"), "vocabulary", "embedding"), **ln("final_norm", "ln_f")}
    for i in range(pc.num_decoder_blocks):
        p, q = f"h.{i}.", f"block_{i}/"
        qkv_w = t(p + "attn.c_attn.weight").reshape(d, 3, n, h)
        qkv_b = t(p + "attn.c_attn.bias").reshape(3, n, h)
        for j, part in enumerate(("query", "key", "value")):
            params[f"{q}attention/{part}/Linear.weights"] = put(qkv_w[:, j], "embedding", "heads", "projection")
            params[f"{q}attention/{part}/AddBias.bias"] = put(qkv_b[j], "heads", "projection")
        params.update({
            f"{q}attention/output/Linear.weights": put(t(p + "attn.c_proj.weight").reshape(n, h, d),
                                                       "heads", "projection", "embedding"),
            f"{q}attention/output/AddBias.bias": put(t(p + "attn.c_proj.bias"), "embedding"),
            f"{q}mlp/in/Linear.weights": put(t(p + "mlp.c_fc.weight").reshape(d, f), "embedding", "neurons"),
            f"{q}mlp/in/AddBias.bias": put(t(p + "mlp.c_fc.bias"), "neurons"),
            f"{q}mlp/out/Linear.weights": put(t(p + "mlp.c_proj.weight").reshape(f, d), "neurons", "embedding"),
            f"{q}mlp/out/AddBias.bias": put(t(p + "mlp.c_proj.bias"), "embedding"),
            **ln(f"{q}pre_attention_norm", p + "ln_1"), **ln(f"{q}pre_ffw_norm", p + "ln_2"),
        })
    return bind(model_def, params)
