"""Gemma 1 and Gemma 2 from HF safetensors, on Penzai's llamalike transformer.

Differences from Llama that matter for exactness: norm scales are stored as (scale - 1); embeddings
are tied and multiplied by sqrt(d_model) on input; the MLP is GeGLU (tanh GELU). Gemma 2 adds
post-attention/post-MLP norms, alternating sliding-window/global attention, a query scale of
query_pre_attn_scalar^-1/2, and tanh soft-capping of attention and final logits.
"""

from __future__ import annotations

from penzai.models.transformer.variants import llamalike_common as ll

from jaxsae.models import llama
from jaxsae.models.checkpoint_files import CheckpointFormatError

MODEL_TYPES = ("gemma", "gemma2")
NORMS = {
    "gemma": {"pre_attention_norm": "input_layernorm", "pre_ffw_norm": "post_attention_layernorm"},
    "gemma2": {"pre_attention_norm": "input_layernorm", "post_attention_norm": "post_attention_layernorm",
               "pre_ffw_norm": "pre_feedforward_layernorm", "post_ffw_norm": "post_feedforward_layernorm"},
}


def penzai_config(cfg: dict, dtype) -> ll.LlamalikeTransformerConfig:
    kind = cfg["model_type"]
    act = cfg.get("hidden_activation") or cfg.get("hidden_act")
    if act not in ("gelu_pytorch_tanh", "gelu"):
        raise CheckpointFormatError(f"{kind}: hidden_activation={act!r}; Gemma uses gelu_pytorch_tanh")
    n_heads, n_kv = cfg["num_attention_heads"], cfg.get("num_key_value_heads", cfg["num_attention_heads"])
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // n_heads
    extra = {}
    if kind == "gemma2":
        layer_types = cfg.get("layer_types") or ["sliding_attention" if i % 2 == 0 else "full_attention"
                                                 for i in range(cfg["num_hidden_layers"])]
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
        tie_embedder_and_logits=True, rope_wavelength=llama._rope_theta(cfg),
        rms_norm_eps=cfg.get("rms_norm_eps", 1e-6), parameter_dtype=dtype, activation_dtype=dtype, **extra,
    )


def build(cfg: dict, tensors, put):
    return llama.build(cfg, tensors, put, pc=penzai_config(cfg, put.dtype), norms=NORMS[cfg["model_type"]],
                       norm_offset=1.0)
