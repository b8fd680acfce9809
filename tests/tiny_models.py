"""Tiny random models of every supported family, built with HF transformers (the oracle) and
saved to a directory, plus the values transformers computes at each hook site."""

import numpy as np
import torch
import transformers

VOCAB = 97


def save_tiny(tmp_path, kind="llama", shard=None, **extra):
    torch.manual_seed(0)
    cls = {"llama": transformers.LlamaConfig, "mistral": transformers.MistralConfig, "qwen2": transformers.Qwen2Config,
           "gemma": transformers.GemmaConfig, "gemma2": transformers.Gemma2Config,
           "gemma3_text": transformers.Gemma3TextConfig, "gpt_neox": transformers.GPTNeoXConfig,
           "gpt2": transformers.GPT2Config}[kind]
    if kind == "gpt2":
        cfg = cls(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=32, attn_implementation="eager",
                  **extra)
    else:
        eps = {"layer_norm_eps": 1e-5} if kind == "gpt_neox" else {"rms_norm_eps": 1e-5}
        cfg = cls(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                  attn_implementation="eager", **{**eps, **extra})
    hf = transformers.AutoModelForCausalLM.from_config(cfg).eval()
    with torch.no_grad():  # norms away from 1 so their mapping matters
        for name, p in hf.named_parameters():
            if "norm" in name or ".ln_" in name or name.endswith("bias"):  # biases start at 0: make them matter
                p.add_(0.1 * torch.randn_like(p))
    kw = {"max_shard_size": shard} if shard else {}
    hf.save_pretrained(str(tmp_path), **kw)
    return hf


def hf_logits(hf, tokens):
    with torch.no_grad():
        return hf(torch.from_numpy(np.array(tokens))).logits.numpy()


TOKENS = np.random.default_rng(0).integers(0, VOCAB, size=(2, 13))
CASES = {
    "llama_gqa": ("llama", {"num_key_value_heads": 2}),
    "llama_mha": ("llama", {"num_key_value_heads": 4}),
    "llama_mqa": ("llama", {"num_key_value_heads": 1}),
    "smollm2_tied": ("llama", {"num_key_value_heads": 2, "tie_word_embeddings": True, "rope_theta": 100000.0}),
    "mistral_sliding_window": ("mistral", {"num_key_value_heads": 2, "sliding_window": 5}),
    "qwen2_qkv_bias": ("qwen2", {"num_key_value_heads": 2}),
    "gemma1": ("gemma", {"num_key_value_heads": 1, "head_dim": 16}),
    "gemma2_softcap_local_global": ("gemma2", {"num_key_value_heads": 2, "head_dim": 16, "sliding_window": 4,
                                               "query_pre_attn_scalar": 24, "final_logit_softcapping": 0.3,
                                               "attn_logit_softcapping": 0.05}),  # caps that bite
    "gemma3_qk_norm_local_global_rope": ("gemma3_text", {
        "num_key_value_heads": 2, "head_dim": 16, "sliding_window": 4, "query_pre_attn_scalar": 24,
        "layer_types": ["sliding_attention", "full_attention"],
        "rope_parameters": {"full_attention": {"rope_type": "linear", "factor": 4.0, "rope_theta": 1000.0},
                            "sliding_attention": {"rope_type": "default", "rope_theta": 10.0}}}),
    "pythia_parallel_partial_rotary": ("gpt_neox", {"rope_parameters": {"rope_theta": 100.0,
                                                                        "partial_rotary_factor": 0.5}}),
    "gpt_neox_sequential_tied_nobias": ("gpt_neox", {"use_parallel_residual": False, "tie_word_embeddings": True,
                                                     "attention_bias": False, "hidden_act": "gelu_new"}),
    "gpt2_learned_positions": ("gpt2", {"n_inner": 40}),
}


def _hf_layers(hf):
    inner = getattr(hf, "model", None) or getattr(hf, "gpt_neox", None) or hf.transformer
    return getattr(inner, "layers", None) or inner.h


def _parts(kind, blk):
    """(attention module, its output projection, mlp module, module whose output is added to the
    residual after attention / after the MLP) of one HF block."""
    if kind == "gpt2":
        return blk.attn, blk.attn.c_proj, blk.mlp, blk.attn, blk.mlp
    if kind == "gpt_neox":
        return blk.attention, blk.attention.dense, blk.mlp, blk.attention, blk.mlp
    post = kind in ("gemma2", "gemma3_text")
    return (blk.self_attn, blk.self_attn.o_proj, blk.mlp, blk.post_attention_layernorm if post else blk.self_attn,
            blk.post_feedforward_layernorm if post else blk.mlp)


def hf_sites(hf, kind, layer, tokens, parallel=False):
    """(logits, {site: value}) from transformers with forward hooks on block `layer`."""
    caps = {}
    blk = _hf_layers(hf)[layer]
    attn, o_proj, mlp, attn_add, mlp_add = _parts(kind, blk)
    first = lambda o: o[0] if isinstance(o, tuple) else o
    hooks = [blk.register_forward_pre_hook(lambda m, a, k: caps.__setitem__("pre", a[0] if a else k["hidden_states"]),
                                           with_kwargs=True),
             attn.register_forward_pre_hook(lambda m, a, k: caps.__setitem__("attn_in", a[0] if a else k["hidden_states"]),
                                            with_kwargs=True),
             o_proj.register_forward_pre_hook(lambda m, a: caps.__setitem__("z", a[0])),
             attn_add.register_forward_hook(lambda m, i, o: caps.__setitem__("attn", first(o))),
             mlp.register_forward_pre_hook(lambda m, a, k: caps.__setitem__("mlp_in", a[0] if a else k["hidden_states"]),
                                           with_kwargs=True),
             mlp_add.register_forward_hook(lambda m, i, o: caps.__setitem__("mlp", first(o))),
             blk.register_forward_hook(lambda m, i, o: caps.__setitem__("post", first(o)))]
    with torch.no_grad():
        out = hf(torch.from_numpy(tokens), output_attentions=True)
        logits = out.logits.numpy()
    for h in hooks:
        h.remove()
    b, t = tokens.shape
    n_heads = hf.config.num_attention_heads if kind != "gpt2" else hf.config.n_head
    want = {"hook_resid_pre": caps["pre"], "hook_attn_out": caps["attn"], "ln2.hook_normalized": caps["mlp_in"],
            "ln1.hook_normalized": caps["attn_in"],
            "hook_mlp_out": caps["mlp"], "hook_resid_post": caps["post"], "attn.hook_z": caps["z"].reshape(b, t, n_heads, -1),
            "attn.hook_pattern": out.attentions[layer]}
    if not parallel:
        want["hook_resid_mid"] = caps["pre"] + caps["attn"]
    return logits, {f"blocks.{layer}.{k}": v.numpy() for k, v in want.items()}
