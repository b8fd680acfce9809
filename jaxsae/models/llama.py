"""Llama-family models (Llama 2/3, SmolLM2, Mistral, Qwen2) from HF safetensors, as Penzai models.

Built with Penzai's `llamalike_common` transformer; the weights are mapped from HF names onto its
parameters here, from plain arrays (no torch). HF stores q/k/v/o projections as
[heads * head_dim, d_model]; Penzai names the head axes, grouped for grouped-query attention.
Qwen2's q/k/v biases are added by surgery: an `AddBias` after each projection.
"""

from __future__ import annotations

import numpy as np
from penzai import pz
from penzai.models.transformer.variants import llamalike_common as ll

from jaxsae.models.checkpoint_files import CheckpointFormatError, require
from jaxsae.models.placement import Placer, bind

MODEL_TYPES = ("llama", "mistral", "qwen2")
_QKV = {"q": "query", "k": "key", "v": "value"}


def _rope_theta(cfg: dict) -> float:
    rope = cfg.get("rope_parameters") or {}
    scaling = cfg.get("rope_scaling") or {}
    kind = rope.get("rope_type", scaling.get("rope_type", scaling.get("type", "default")))
    if kind not in (None, "default"):
        raise CheckpointFormatError(f"RoPE scaling {kind!r} is not supported yet (only the default RoPE)")
    return float(rope.get("rope_theta", cfg.get("rope_theta", 10_000.0)))


def penzai_config(cfg: dict, dtype) -> ll.LlamalikeTransformerConfig:
    n_heads, n_kv = cfg["num_attention_heads"], cfg.get("num_key_value_heads", cfg["num_attention_heads"])
    if n_heads % n_kv:
        raise CheckpointFormatError(f"num_attention_heads={n_heads} is not a multiple of num_key_value_heads={n_kv}")
    if cfg.get("mlp_bias"):
        raise CheckpointFormatError("MLP biases are not supported for the Llama family loader")
    if cfg.get("hidden_act", "silu") != "silu":
        raise CheckpointFormatError(f"hidden_act={cfg.get('hidden_act')!r}: the Llama family uses silu (SwiGLU)")
    window = cfg.get("sliding_window") if cfg.get("use_sliding_window", True) else None
    if cfg.get("model_type") == "qwen2" and window and cfg.get("use_sliding_window"):
        raise CheckpointFormatError("Qwen2 with use_sliding_window=True (per-layer windows) is not supported yet")
    attn = ll.AttentionTypeSlidingWindowCausal(window) if window else ll.AttentionTypeGlobalCausal()
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // n_heads
    return ll.LlamalikeTransformerConfig(
        num_kv_heads=n_kv, query_head_multiplier=n_heads // n_kv, embedding_dim=cfg["hidden_size"],
        projection_dim=head_dim, mlp_hidden_dim=cfg["intermediate_size"],
        num_decoder_blocks=cfg["num_hidden_layers"], vocab_size=cfg["vocab_size"], mlp_variant="swiglu",
        tie_embedder_and_logits=False, rope_wavelength=_rope_theta(cfg), rms_norm_eps=cfg.get("rms_norm_eps", 1e-6),
        attention_type=attn, parameter_dtype=dtype, activation_dtype=dtype,
    )


def _heads(pc: ll.LlamalikeTransformerConfig, arr: np.ndarray, kind: str) -> tuple[np.ndarray, tuple[str, ...]]:
    """An HF projection matrix (or, with a 1-D array, its bias) reshaped to Penzai's named heads:
    (array, axis names)."""
    g, m, h, d = pc.num_kv_heads, pc.query_head_multiplier, pc.projection_dim, pc.embedding_dim
    if kind == "o":
        arr = arr.reshape(d, -1)
    if m == 1:  # plain multi-head attention
        heads = (("heads", g),)
    elif g == 1:  # multi-query
        heads = (("query_heads", m),) if kind in ("q", "o") else ()
    else:  # grouped-query
        heads = (("head_groups", g), ("query_heads", m)) if kind in ("q", "o") else (("head_groups", g),)
    names = tuple(n for n, _ in heads)
    sizes = [s for _, s in heads]
    if kind == "o":
        return arr.reshape(d, *sizes, h), ("embedding", *names, "projection")
    if arr.ndim == 1:
        return arr.reshape(*sizes, h), (*names, "projection")
    return arr.reshape(*sizes, h, d), (*names, "projection", "embedding")


# Penzai norm name -> HF norm name, per family ("post_attention_layernorm" means different things)
LLAMA_NORMS = {"pre_attention_norm": "input_layernorm", "pre_ffw_norm": "post_attention_layernorm"}


def build(cfg: dict, tensors: dict[str, np.ndarray], put: Placer, pc: ll.LlamalikeTransformerConfig | None = None,
          norms: dict[str, str] = LLAMA_NORMS, norm_offset: float = 0.0) -> pz.nn.Layer:
    """Bind HF tensors to a Penzai llamalike transformer, each placed by `put` (see placement.py).
    `norms` maps Penzai's per-block norm names to HF's; `norm_offset` is added to every norm
    scale (Gemma stores scale - 1)."""
    pc = pc or penzai_config(cfg, put.dtype)
    model_def = ll.build_llamalike_transformer(pc, init_base_rng=None, name="transformer")

    def t(name: str) -> np.ndarray:
        return require(tensors, name)

    def wrap(name: str, *axes: str) -> pz.nx.NamedArray:
        return put(t(name), *axes)

    def heads(name: str, kind: str) -> pz.nx.NamedArray:
        arr, names = _heads(pc, t(name), kind)
        return put(arr, *names)

    def norm(name: str) -> pz.nx.NamedArray:
        return put(np.asarray(t(name), np.float32) + np.float32(norm_offset), "embedding")

    embed = wrap("model.embed_tokens.weight", "vocabulary", "embedding")
    params = {"embedder.embeddings": embed, "final_norm/scale.weights": norm("model.norm.weight")}
    if not pc.tie_embedder_and_logits:  # Penzai's tied mode (Gemma) reuses the embedding table itself
        tied = cfg.get("tie_word_embeddings", False)  # untied without lm_head.weight: a missing-tensor error
        params["lm_head.weights"] = embed if tied else wrap("lm_head.weight", "vocabulary", "embedding")
    for i in range(pc.num_decoder_blocks):
        p = f"model.layers.{i}."
        block = {f"{pz_name}/scale.weights": norm(f"{p}{hf_name}.weight") for pz_name, hf_name in norms.items()}
        block.update({
            "mlp/gating_linear.weights": wrap(p + "mlp.gate_proj.weight", "neurons", "embedding"),
            "mlp/value_linear.weights": wrap(p + "mlp.up_proj.weight", "neurons", "embedding"),
            "mlp/out_linear.weights": wrap(p + "mlp.down_proj.weight", "embedding", "neurons"),
            "attention/query.weights": heads(p + "self_attn.q_proj.weight", "q"),
            "attention/key.weights": heads(p + "self_attn.k_proj.weight", "k"),
            "attention/value.weights": heads(p + "self_attn.v_proj.weight", "v"),
            "attention/output.weights": heads(p + "self_attn.o_proj.weight", "o"),
        })
        params.update({f"block_{i}/{k}": v for k, v in block.items()})
    model = bind(model_def, params)
    if any(k.endswith("self_attn.q_proj.bias") for k in tensors):
        model = _add_qkv_biases(model, heads)
    return model


def _add_qkv_biases(model, heads):
    """Insert AddBias after every q/k/v projection (Qwen2), reading HF's *_proj.bias tensors."""
    suffix = {f"attention/{name}.weights": kind for kind, name in _QKV.items()}

    def with_bias(linear):
        label = linear.weights.label  # transformer/block_{i}/attention/{query,key,value}.weights
        block, rest = label.split("/", 2)[1], label.split("/", 2)[2]
        i = int(block.removeprefix("block_"))
        kind = suffix[rest]
        bias = heads(f"model.layers.{i}.self_attn.{kind}_proj.bias", kind)
        add = pz.nn.AddBias(bias=pz.Parameter(value=bias, label=label[:-8] + ".bias"), new_axis_names=())
        return pz.nn.Sequential([linear, add])

    return (pz.select(model).at_instances_of(pz.nn.Linear)
            .where(lambda lin: lin.weights.label.split("/", 2)[-1] in suffix).apply(with_bias))
