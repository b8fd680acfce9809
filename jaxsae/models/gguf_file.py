"""GGUF files (llama.cpp) as HF-style config + float32 tensors, dequantised with the `gguf` package.

llama.cpp's converter permutes the rows of q_proj/k_proj (it pairs rotary halves differently);
`_unpermute` restores the HF order so the same Llama mapping and RoPE apply. Only the `llama`
GGUF architecture (Llama 2/3, SmolLM2, Mistral-style) is read so far.
"""

from __future__ import annotations

import os

import numpy as np

from jaxsae.models.checkpoint_files import CheckpointFormatError

_LAYER = {
    "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_TOP = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}


def _reader(path: str):
    import gguf

    if not os.path.isfile(path):
        raise FileNotFoundError(f"no such GGUF file {path!r}")
    try:
        return gguf.GGUFReader(path)
    except Exception as e:
        raise CheckpointFormatError(f"{path}: not a readable GGUF file ({type(e).__name__}: {e})") from e


def _field(reader, key: str, default=None):
    f = reader.fields.get(key)
    return default if f is None else f.contents()


def _unpermute(w: np.ndarray, n_heads: int) -> np.ndarray:
    rows = w.shape[0]
    return w.reshape(n_heads, rows // n_heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def hf_config(reader) -> dict:
    arch = _field(reader, "general.architecture")
    if arch != "llama":
        raise CheckpointFormatError(f"GGUF architecture {arch!r} is not supported yet; supported: llama")
    p = "llama."
    n_heads = int(_field(reader, p + "attention.head_count"))
    n_vocab = _field(reader, p + "vocab_size") or len(reader.fields["tokenizer.ggml.tokens"].data)
    names = {t.name for t in reader.tensors}
    return {
        "model_type": "llama",
        "hidden_size": int(_field(reader, p + "embedding_length")),
        "intermediate_size": int(_field(reader, p + "feed_forward_length")),
        "num_hidden_layers": int(_field(reader, p + "block_count")),
        "num_attention_heads": n_heads,
        "num_key_value_heads": int(_field(reader, p + "attention.head_count_kv", n_heads)),
        "rms_norm_eps": float(_field(reader, p + "attention.layer_norm_rms_epsilon", 1e-5)),
        "rope_theta": float(_field(reader, p + "rope.freq_base", 10_000.0)),
        "vocab_size": int(n_vocab),
        "max_position_embeddings": int(_field(reader, p + "context_length", 2048)),
        "tie_word_embeddings": "output.weight" not in names,
        "bos_token_id": _field(reader, "tokenizer.ggml.bos_token_id"),
        "eos_token_id": _field(reader, "tokenizer.ggml.eos_token_id"),
    }


def read(path: str) -> tuple[dict, dict[str, np.ndarray]]:
    """(HF-style config, {HF tensor name: float32 array}) from a GGUF file."""
    import gguf

    reader = _reader(path)
    cfg = hf_config(reader)
    tensors = {}
    for t in reader.tensors:
        stem, _, suffix = t.name.rpartition(".")
        parts = stem.split(".")
        if parts[0] == "blk" and len(parts) == 3 and parts[2] in _LAYER:
            name = f"model.layers.{parts[1]}.{_LAYER[parts[2]]}.{suffix}"
        elif stem in _TOP:
            name = f"{_TOP[stem]}.{suffix}"
        else:
            continue  # e.g. rope_freqs: derived from the config here
        w = np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), np.float32)
        w = w.reshape([int(d) for d in reversed(t.shape)]) if w.size == int(np.prod(t.shape)) else w
        if name.endswith("q_proj.weight"):
            w = _unpermute(w, cfg["num_attention_heads"])
        elif name.endswith("k_proj.weight"):
            w = _unpermute(w, cfg["num_key_value_heads"])
        tensors[name] = w
    return cfg, tensors
