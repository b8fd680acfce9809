"""GPT-NeoX / Pythia from HF safetensors, as Penzai models.

Attention and MLP come from Penzai's `gpt_neox` variant (fused QKV split per head, RoPE on the
first `partial_rotary_factor` of each head, biased projections, LayerNorm). The block is built here
so both of HF's residual layouts are covered:

  parallel (Pythia, `use_parallel_residual=True`):  y = x + attn(ln1(x)) + mlp(ln2(x))
  sequential:                                        h = x + attn(ln1(x));  y = h + mlp(ln2(h))

A parallel block is one `BranchAndAddTogether([Identity, attn path, mlp path])`; a sequential one is
two `Residual`s like every other family (jaxsae.sites knows both).
"""

from __future__ import annotations

import numpy as np
from penzai import pz
from penzai.models.transformer import model_parts
from penzai.models.transformer.variants import gpt_neox as pz_neox

from jaxsae.models.checkpoint_files import CheckpointFormatError, require
from jaxsae.models.placement import Placer, bind

MODEL_TYPES = ("gpt_neox",)
ACTIVATIONS = {"gelu": "gelu_exact", "gelu_new": "gelu_approx", "gelu_pytorch_tanh": "gelu_approx", "relu": "relu",
               "silu": "silu"}


def activation(cfg: dict, key: str) -> str:
    act = cfg.get(key, "gelu")
    if act not in ACTIVATIONS:
        raise CheckpointFormatError(f"{cfg.get('model_type')}: {key}={act!r} is not supported; "
                                    f"supported: {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[act]


def penzai_config(cfg: dict, dtype) -> pz_neox.GPTNeoXTransformerConfig:
    rope = cfg.get("rope_parameters") or {}
    if rope.get("rope_type", "default") != "default" or cfg.get("rope_scaling"):
        raise CheckpointFormatError("gpt_neox: only the default RoPE is supported (no rope scaling)")
    head_dim = cfg["hidden_size"] // cfg["num_attention_heads"]
    pct = rope.get("partial_rotary_factor", cfg.get("rotary_pct", 0.25))
    return pz_neox.GPTNeoXTransformerConfig(
        num_attention_heads=cfg["num_attention_heads"], embedding_dim=cfg["hidden_size"], projection_dim=head_dim,
        mlp_hidden_dim=cfg["intermediate_size"], num_decoder_blocks=cfg["num_hidden_layers"],
        vocab_size=cfg["vocab_size"], activation_fn=activation(cfg, "hidden_act"),
        rope_subset_size=int(head_dim * pct), rope_wavelength=float(rope.get("rope_theta", cfg.get("rotary_emb_base", 10_000))),
        layernorm_epsilon=cfg.get("layer_norm_eps", 1e-5), parameter_dtype=dtype, activation_dtype=dtype,
    )


def layer_norm(name: str, d: int, eps: float, dtype) -> pz.nn.LayerNorm:
    return pz.nn.LayerNorm.from_config(name=name, init_base_rng=None, across_axes={"embedding": d}, epsilon=eps,
                                       dtype=dtype)


def block(name: str, attention: pz.nn.Layer, ffw: pz.nn.Layer, d: int, eps: float, dtype,
          parallel: bool) -> model_parts.TransformerBlock:
    """A pre-LayerNorm block: `parallel` adds attention and MLP of the same input (NeoX/GPT-J),
    otherwise two residual sublayers (GPT-2)."""
    attn_path = pz.nn.Sequential([layer_norm(f"{name}/pre_attention_norm", d, eps, dtype), attention])
    ffw_path = pz.nn.Sequential([layer_norm(f"{name}/pre_ffw_norm", d, eps, dtype), ffw])
    if parallel:
        return model_parts.TransformerBlock(sublayers=[pz.nn.BranchAndAddTogether([pz.nn.Identity(), attn_path,
                                                                                  ffw_path])])
    return model_parts.TransformerBlock(sublayers=[pz.nn.Residual(attn_path), pz.nn.Residual(ffw_path)])


def lm(blocks: list, embedder_sublayers: list, pc, final_norm: pz.nn.Layer, tied: bool,
       heads: dict[str, int]) -> model_parts.TransformerLM:
    """Embedding -> blocks -> final norm -> unembedding, as a Penzai TransformerLM."""
    unembed = (pz.nn.EmbeddingDecode(embedder_sublayers[0].table) if tied else
               pz.nn.Linear.from_config(name="transformer/lm_head", init_base_rng=None,
                                        input_axes={"embedding": pc.embedding_dim},
                                        output_axes={"vocabulary": pc.vocab_size}, dtype=pc.parameter_dtype))
    return model_parts.TransformerLM(
        metadata=model_parts.TransformerMetadata(
            common_head_axes=heads, query_only_head_axes={}, embedding_dim=pc.embedding_dim,
            projection_dim=pc.projection_dim, mlp_hidden_dim=pc.mlp_hidden_dim, vocab_size=pc.vocab_size,
            activation_dtype=pc.activation_dtype),
        body=pz.nn.Sequential([*embedder_sublayers, *blocks, final_norm, unembed]),
    )


def build(cfg: dict, tensors: dict[str, np.ndarray], put: Placer) -> pz.nn.Layer:
    pc = penzai_config(cfg, put.dtype)
    d, n, h = pc.embedding_dim, pc.num_attention_heads, pc.projection_dim
    parallel = cfg.get("use_parallel_residual", True)
    tied = cfg.get("tie_word_embeddings", False)
    table = pz.nn.EmbeddingTable.from_config(name="transformer/embedder", init_base_rng=None, vocab_size=pc.vocab_size,
                                             embedding_axes={"embedding": d}, dtype=pc.parameter_dtype)
    blocks = [block(f"transformer/block_{i}", pz_neox.build_gpt_neox_attention(f"transformer/block_{i}/attention", None, pc),
                    pz_neox.build_gpt_neox_feedforward(f"transformer/block_{i}/mlp", None, pc), d,
                    pc.layernorm_epsilon, pc.parameter_dtype, parallel) for i in range(pc.num_decoder_blocks)]
    model_def = lm(blocks, [pz.nn.EmbeddingLookup(table)], pc,
                   layer_norm("transformer/final_norm", d, pc.layernorm_epsilon, pc.parameter_dtype), tied, {"heads": n})

    def t(name):
        return require(tensors, name)

    def bias(name, size):  # attention_bias=False checkpoints have none: a zero bias is exact
        return t(name) if (name in tensors or cfg.get("attention_bias", True)) else np.zeros(size, np.float32)

    params = {"embedder.embeddings": put(t("gpt_neox.embed_in.weight"), "vocabulary", "embedding"),
              "final_norm/scale.weights": put(t("gpt_neox.final_layer_norm.weight"), "embedding"),
              "final_norm/shift.bias": put(t("gpt_neox.final_layer_norm.bias"), "embedding")}
    if not tied:
        params["lm_head.weights"] = put(t("embed_out.weight"), "vocabulary", "embedding")
    for i in range(pc.num_decoder_blocks):
        p, q = f"gpt_neox.layers.{i}.", f"block_{i}/"
        qkv_w = t(p + "attention.query_key_value.weight").reshape(n, 3, h, d)  # per head: q, k, v rows
        qkv_b = np.asarray(bias(p + "attention.query_key_value.bias", 3 * d)).reshape(n, 3, h)
        for j, part in enumerate(("query", "key", "value")):
            params[f"{q}attention/{part}/Linear.weights"] = put(qkv_w[:, j], "heads", "projection", "embedding")
            params[f"{q}attention/{part}/AddBias.bias"] = put(qkv_b[:, j], "heads", "projection")
        params.update({
            f"{q}attention/output/Linear.weights": put(t(p + "attention.dense.weight").reshape(d, n, h),
                                                       "embedding", "heads", "projection"),
            f"{q}attention/output/AddBias.bias": put(bias(p + "attention.dense.bias", d), "embedding"),
            f"{q}mlp/in/Linear.weights": put(t(p + "mlp.dense_h_to_4h.weight"), "neurons", "embedding"),
            f"{q}mlp/in/AddBias.bias": put(t(p + "mlp.dense_h_to_4h.bias"), "neurons"),
            f"{q}mlp/out/Linear.weights": put(t(p + "mlp.dense_4h_to_h.weight"), "embedding", "neurons"),
            f"{q}mlp/out/AddBias.bias": put(t(p + "mlp.dense_4h_to_h.bias"), "embedding"),
        })
        for pz_name, hf_name in (("pre_attention_norm", "input_layernorm"), ("pre_ffw_norm", "post_attention_layernorm")):
            params[f"{q}{pz_name}/scale.weights"] = put(t(f"{p}{hf_name}.weight"), "embedding")
            params[f"{q}{pz_name}/shift.bias"] = put(t(f"{p}{hf_name}.bias"), "embedding")
    return bind(model_def, params)


