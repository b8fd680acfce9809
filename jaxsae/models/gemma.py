"""Gemma 1, 2 and 3 (text) from HF safetensors, on Penzai's llamalike transformer.

Differences from Llama that matter for exactness: norm scales are stored as (scale - 1); embeddings
are tied and multiplied by sqrt(d_model) on input; the MLP is GeGLU (tanh GELU). Gemma 2 adds
post-attention/post-MLP norms, alternating sliding-window/global attention, a query scale of
query_pre_attn_scalar^-1/2, and tanh soft-capping of attention and final logits. Gemma 3 drops the
soft caps, normalises queries and keys per head (QK-norm, before RoPE), and gives local and global
layers their own RoPE base (global RoPE optionally position-scaled); both are added by surgery.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np
from penzai import pz
from penzai.models.transformer import model_parts
from penzai.models.transformer.variants import llamalike_common as ll

from jaxsae.models import llama
from jaxsae.models.checkpoint_files import CheckpointFormatError

MODEL_TYPES = ("gemma", "gemma2", "gemma3_text")
NORMS = {
    "gemma": {"pre_attention_norm": "input_layernorm", "pre_ffw_norm": "post_attention_layernorm"},
    "gemma2": {"pre_attention_norm": "input_layernorm", "post_attention_norm": "post_attention_layernorm",
               "pre_ffw_norm": "pre_feedforward_layernorm", "post_ffw_norm": "post_feedforward_layernorm"},
}
NORMS["gemma3_text"] = NORMS["gemma2"]


def _layer_types(cfg: dict) -> list[str]:
    """Per-layer attention kind; configs written by transformers list them, older ones imply them
    (Gemma 2 alternates local/global; Gemma 3 has one global layer in every `sliding_window_pattern`)."""
    if cfg.get("layer_types"):
        return list(cfg["layer_types"])
    n = cfg["num_hidden_layers"]
    if cfg["model_type"] == "gemma2":
        return ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(n)]
    pattern = cfg.get("sliding_window_pattern", 6)
    return ["full_attention" if (i + 1) % pattern == 0 else "sliding_attention" for i in range(n)]


def penzai_config(cfg: dict, dtype) -> ll.LlamalikeTransformerConfig:
    kind = cfg["model_type"]
    act = cfg.get("hidden_activation") or cfg.get("hidden_act")
    if act not in ("gelu_pytorch_tanh", "gelu"):
        raise CheckpointFormatError(f"{kind}: hidden_activation={act!r}; Gemma uses gelu_pytorch_tanh")
    n_heads, n_kv = cfg["num_attention_heads"], cfg.get("num_key_value_heads", cfg["num_attention_heads"])
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // n_heads
    extra = {}
    if kind in ("gemma2", "gemma3_text"):
        layer_types = _layer_types(cfg)
        window = cfg.get("sliding_window") or 4096
        extra = dict(
            attention_type=[ll.AttentionTypeSlidingWindowCausal(window) if lt == "sliding_attention"
                            else ll.AttentionTypeGlobalCausal() for lt in layer_types],
            use_post_attn_norm=True, use_post_ffw_norm=True,
            final_logit_softcap=cfg.get("final_logit_softcapping"),
            attn_logits_soft_cap=cfg.get("attn_logit_softcapping"),
            query_scaling_factor=float(cfg.get("query_pre_attn_scalar", head_dim)) ** -0.5,
        )
    return ll.LlamalikeTransformerConfig(
        num_kv_heads=n_kv, query_head_multiplier=n_heads // n_kv, embedding_dim=cfg["hidden_size"],
        projection_dim=head_dim, mlp_hidden_dim=cfg["intermediate_size"],
        num_decoder_blocks=cfg["num_hidden_layers"], vocab_size=cfg["vocab_size"], mlp_variant="geglu_approx",
        tie_embedder_and_logits=True, rope_wavelength=10_000.0 if kind == "gemma3_text" else llama._rope_theta(cfg),
        rms_norm_eps=cfg.get("rms_norm_eps", 1e-6), parameter_dtype=dtype, activation_dtype=dtype, **extra,
    )


def build(cfg: dict, tensors, put):
    model = llama.build(cfg, tensors, put, pc=penzai_config(cfg, put.dtype), norms=NORMS[cfg["model_type"]],
                        norm_offset=1.0)
    if cfg["model_type"] == "gemma3_text":
        model = _gemma3_attention(model, cfg, tensors, put)
    return model


@pz.pytree_dataclass
class ScalePositions(pz.nn.Layer):
    """Runs `inner` with the token positions divided by `factor` (RoPE "linear" scaling)."""

    inner: pz.nn.Layer
    factor: float = dataclasses.field(metadata={"pytree_node": False})

    def __call__(self, x, **side_inputs):
        positions = side_inputs["token_positions"]
        return self.inner(x, **{**side_inputs, "token_positions": positions.astype(jnp.float32) / self.factor})


def _rope(cfg: dict, layer_type: str):
    params = (cfg.get("rope_parameters") or {}).get(layer_type) or {}
    default = 1e6 if layer_type == "full_attention" else cfg.get("rope_local_base_freq", 10_000.0)
    theta = float(params.get("rope_theta", cfg.get("rope_theta", default) if layer_type == "full_attention" else default))
    rope = pz.nn.ApplyRoPE(positions_input_name="token_positions", embedding_axis="projection", max_wavelength=theta)
    kind = params.get("rope_type", "default")
    if kind == "linear":
        return ScalePositions(inner=rope, factor=float(params["factor"]))
    if kind != "default":
        raise CheckpointFormatError(f"gemma3: RoPE type {kind!r} for {layer_type} layers is not supported "
                                    "(default and linear are)")
    return rope


def _gemma3_attention(model, cfg: dict, tensors, put):
    """QK-norm and per-layer RoPE: in each block's query/key path, [Linear, RoPE, ...] becomes
    [Linear, RMSNorm over the head dimension (scale stored - 1), RoPE of this layer type, ...]."""
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    eps = cfg.get("rms_norm_eps", 1e-6)
    layer_types = _layer_types(cfg)

    def qk(path: pz.nn.Sequential, i: int, which: str):
        name = f"transformer/block_{i}/attention/{which}_norm"
        weight = tensors.get(f"model.layers.{i}.self_attn.{which}_norm.weight")
        if weight is None:
            raise CheckpointFormatError(f"gemma3: missing tensor 'model.layers.{i}.self_attn.{which}_norm.weight'")
        norm = pz.nn.RMSLayerNorm.from_config(name=name, init_base_rng=None, across_axes={"projection": head_dim},
                                              epsilon=eps, dtype=put.dtype)
        norm = pz.bind_variables(norm, [pz.Parameter(value=put(np.asarray(weight, np.float32) + 1.0, "projection"),
                                                     label=f"{name}/scale.weights")])
        linear, _rope_layer, *rest = path.sublayers
        return pz.nn.Sequential([linear, norm, _rope(cfg, layer_types[i]), *rest])

    blocks = pz.select(model).at_instances_of(model_parts.TransformerBlock).get_sequence()
    index = {id(b): i for i, b in enumerate(blocks)}

    def fix(block):
        i = index[id(block)]
        return (pz.select(block).at_instances_of(pz.nn.Attention)
                .apply(lambda a: dataclasses.replace(a, input_to_query=qk(a.input_to_query, i, "q"),
                                                     input_to_key=qk(a.input_to_key, i, "k"))))

    return pz.select(model).at_instances_of(model_parts.TransformerBlock).apply(fix)
