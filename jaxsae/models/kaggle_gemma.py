"""Gemma 1/2 checkpoints in the Kaggle / google-deepmind Flax format (an orbax PyTree checkpoint
directory), the format Penzai's `gemma_from_pretrained_checkpoint` reads.

The parameter layout is Penzai's: a flat dict {"transformer/layer_{i}/attn/q_einsum": {"w": ...},
...}. Penzai's own loader only knows the published sizes (it picks a preset by layer count); here the
sizes are read from the arrays' shapes, so any size loads, and the tensors are renamed to the HF
layout so the one Gemma binding (gemma.py, tested against transformers) serves both formats.
Arrays are restored to host memory as NumPy and placed tensor by tensor like every other format.

Gemma 2 hyper-parameters the checkpoint does not store are the published ones: 4096-token local
windows on even layers, soft caps 30 (final) and 50 (attention), query scale head_dim^-1/2
(d_model/heads for the 27B, whose head_dim is 128).
"""

from __future__ import annotations

import os

import numpy as np

from jaxsae.models.checkpoint_files import CheckpointFormatError

MARKERS = ("_METADATA", "checkpoint", "manifest.ocdbt")


def is_checkpoint(path: str) -> bool:
    return os.path.isdir(path) and not os.path.isfile(os.path.join(path, "config.json")) and any(
        os.path.exists(os.path.join(path, m)) for m in MARKERS)


def read_params(path: str) -> dict[str, dict[str, np.ndarray]]:
    import jax
    import orbax.checkpoint as ocp

    ckpt = ocp.PyTreeCheckpointer()
    try:
        meta = ckpt.metadata(path)
        tree = getattr(getattr(meta, "item_metadata", None), "tree", None) or meta
        args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
        params = ckpt.restore(path, restore_args=args)
    except Exception as e:
        raise CheckpointFormatError(f"{path}: not a readable orbax checkpoint ({type(e).__name__}: {e})") from e
    return {k.removeprefix("transformer/"): v for k, v in params.items()}


def _norms(gemma2: bool) -> dict[str, str]:
    """Kaggle norm name -> HF norm name (HF's `post_attention_layernorm` is Gemma 1's pre-MLP norm)."""
    if not gemma2:
        return {"pre_attention_norm": "input_layernorm", "pre_ffw_norm": "post_attention_layernorm"}
    return {"pre_attention_norm": "input_layernorm", "pre_ffw_norm": "pre_feedforward_layernorm",
            "post_attention_norm": "post_attention_layernorm", "post_ffw_norm": "post_feedforward_layernorm"}


def to_hf(params: dict) -> tuple[dict, dict[str, np.ndarray]]:
    """(HF-style config, HF-named tensors) from Kaggle Gemma parameters."""
    if "layer_0/attn/attn_vec_einsum" not in params or "embedder" not in params:
        raise CheckpointFormatError("not a Gemma Kaggle checkpoint: expected transformer/embedder and "
                                    f"transformer/layer_0/attn/attn_vec_einsum, found {sorted(params)[:6]}")
    n_layers = 0
    while f"layer_{n_layers}/mlp/linear" in params:
        n_layers += 1
    embed = params["embedder"]["input_embedding"]
    vocab, d = embed.shape
    n_heads, head_dim, _ = params["layer_0/attn/attn_vec_einsum"]["w"].shape
    ffw = params["layer_0/mlp/linear"]["w"].shape[0]
    gemma2 = "layer_0/post_attention_norm" in params
    mha = "layer_0/attn/qkv_einsum" in params
    n_kv = n_heads if mha else params["layer_0/attn/kv_einsum"]["w"].shape[1]
    if d == ffw:
        raise CheckpointFormatError("cannot tell the gating weight's layout when d_model equals the MLP width")
    cfg = {"model_type": "gemma2" if gemma2 else "gemma", "vocab_size": vocab, "hidden_size": d,
           "intermediate_size": ffw, "num_hidden_layers": n_layers, "num_attention_heads": n_heads,
           "num_key_value_heads": n_kv, "head_dim": head_dim, "hidden_activation": "gelu_pytorch_tanh",
           "rms_norm_eps": 1e-6, "rope_theta": 10_000.0, "tie_word_embeddings": True}
    if gemma2:
        cfg.update(sliding_window=4096, final_logit_softcapping=30.0, attn_logit_softcapping=50.0,
                   query_pre_attn_scalar=d // n_heads if head_dim == 128 else head_dim,
                   layer_types=["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(n_layers)])

    def heads_to_rows(w):  # [heads, d_model, head_dim] -> HF [heads * head_dim, d_model]
        return w.transpose(0, 2, 1).reshape(-1, d)

    t = {"model.embed_tokens.weight": embed, "model.norm.weight": params["final_norm"]["scale"]}
    norms = _norms(gemma2)
    for i in range(n_layers):
        p, hf = f"layer_{i}/", f"model.layers.{i}."
        for k, v in norms.items():
            t[f"{hf}{v}.weight"] = params[p + k]["scale"]
        gating = params[p + "mlp/gating_einsum"]["w"]  # [2, d, ffw] or [2, ffw, d] (9B/27B)
        gate, up = (gating[0].T, gating[1].T) if gating.shape[1] == d else (gating[0], gating[1])
        t[hf + "mlp.gate_proj.weight"], t[hf + "mlp.up_proj.weight"] = gate, up
        t[hf + "mlp.down_proj.weight"] = params[p + "mlp/linear"]["w"].T
        if mha:
            q, k, v = params[p + "attn/qkv_einsum"]["w"]  # [3, heads, d, head_dim]
        else:
            q = params[p + "attn/q_einsum"]["w"]
            k, v = params[p + "attn/kv_einsum"]["w"]  # [2, kv_heads, d, head_dim]
        t[hf + "self_attn.q_proj.weight"] = heads_to_rows(q)
        t[hf + "self_attn.k_proj.weight"] = heads_to_rows(k)
        t[hf + "self_attn.v_proj.weight"] = heads_to_rows(v)
        t[hf + "self_attn.o_proj.weight"] = params[p + "attn/attn_vec_einsum"]["w"].reshape(-1, d).T
    return cfg, t


def from_hf(cfg: dict, tensors: dict[str, np.ndarray]) -> dict[str, dict[str, np.ndarray]]:
    """The inverse of `to_hf` (Kaggle layout, with the "transformer/" prefix): writes test
    checkpoints and converts HF Gemma weights for tools that expect the Kaggle format."""
    d, n, kv = cfg["hidden_size"], cfg["num_attention_heads"], cfg.get("num_key_value_heads", cfg["num_attention_heads"])
    h = cfg.get("head_dim") or d // n

    def rows_to_heads(w, heads):  # HF [heads * head_dim, d] -> [heads, d, head_dim]
        return w.reshape(heads, h, d).transpose(0, 2, 1)

    gemma2 = cfg["model_type"] == "gemma2"
    out = {"embedder": {"input_embedding": tensors["model.embed_tokens.weight"]},
           "final_norm": {"scale": tensors["model.norm.weight"]}}
    norms = _norms(gemma2)
    for i in range(cfg["num_hidden_layers"]):
        p, hf = f"layer_{i}/", f"model.layers.{i}."
        out.update({p + k: {"scale": tensors[f"{hf}{v}.weight"]} for k, v in norms.items()})
        out[p + "mlp/gating_einsum"] = {"w": np.stack([tensors[hf + "mlp.gate_proj.weight"].T,
                                                       tensors[hf + "mlp.up_proj.weight"].T])}
        out[p + "mlp/linear"] = {"w": tensors[hf + "mlp.down_proj.weight"].T}
        q = rows_to_heads(tensors[hf + "self_attn.q_proj.weight"], n)
        k = rows_to_heads(tensors[hf + "self_attn.k_proj.weight"], kv)
        v = rows_to_heads(tensors[hf + "self_attn.v_proj.weight"], kv)
        if kv == n:
            out[p + "attn/qkv_einsum"] = {"w": np.stack([q, k, v])}
        else:
            out[p + "attn/q_einsum"] = {"w": q}
            out[p + "attn/kv_einsum"] = {"w": np.stack([k, v])}
        out[p + "attn/attn_vec_einsum"] = {"w": tensors[hf + "self_attn.o_proj.weight"].T.reshape(n, h, d)}
    return {f"transformer/{k}": v for k, v in out.items()}
