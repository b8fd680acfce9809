"""A 2-layer attention-only transformer trained in-library on repeated random sequences: the
known-answer model for the causal toolkit (a previous-token head in layer 0, an induction head
in layer 1 that reads it through K-composition; Olsson et al. 2022).

  lm, log = induction.train(seed=0)          # a jaxsae LanguageModel (Llama layout, MLPs zero)

It is a Llama-family model built from HF-named tensors (so every hook site, splice and causal
tool works on it) whose MLP weights are zero and never trained: each block's MLP adds exactly
zero to the residual stream.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
from penzai import pz

from jaxsae.causal import heads as heads_mod
from jaxsae.causal import interventions as iv
from jaxsae.causal import metrics


@dataclasses.dataclass(frozen=True)
class InductionConfig:
    vocab: int = 64  # id 0 is BOS; sequences use ids 1..vocab-1
    period: int = 12  # evaluation prompts: [BOS, r_1..r_n, r_1..r_n]
    min_period: int = 4  # training rows repeat a random block of min..max_period tokens, so no head
    max_period: int = 16  # can predict by a fixed offset: induction must match content
    seq: int = 32  # training tokens after BOS
    d_model: int = 64
    heads: int = 2
    layers: int = 2
    steps: int = 700
    batch: int = 64
    learning_rate: float = 3e-3
    seed: int = 0


def hf_config(cfg: InductionConfig) -> dict:
    return {"model_type": "llama", "vocab_size": cfg.vocab, "hidden_size": cfg.d_model, "intermediate_size": 4,
            "num_hidden_layers": cfg.layers, "num_attention_heads": cfg.heads, "num_key_value_heads": cfg.heads,
            "rms_norm_eps": 1e-5, "rope_theta": 10_000.0, "tie_word_embeddings": False, "bos_token_id": 0,
            "attention_only": True}


def init_tensors(cfg: InductionConfig) -> dict[str, np.ndarray]:
    """HF-named Llama tensors: normal(0, 0.02) projections and embeddings, unit norms, zero MLPs."""
    rng = np.random.default_rng(cfg.seed)
    d, hd = cfg.d_model, cfg.d_model // cfg.heads
    normal = lambda *shape: (0.02 * rng.standard_normal(shape)).astype(np.float32)  # noqa: E731
    t = {"model.embed_tokens.weight": normal(cfg.vocab, d), "lm_head.weight": normal(cfg.vocab, d),
         "model.norm.weight": np.ones(d, np.float32)}
    for i in range(cfg.layers):
        p = f"model.layers.{i}."
        t.update({p + "input_layernorm.weight": np.ones(d, np.float32),
                  p + "post_attention_layernorm.weight": np.ones(d, np.float32),
                  p + "self_attn.q_proj.weight": normal(cfg.heads * hd, d),
                  p + "self_attn.k_proj.weight": normal(cfg.heads * hd, d),
                  p + "self_attn.v_proj.weight": normal(cfg.heads * hd, d),
                  p + "self_attn.o_proj.weight": normal(d, cfg.heads * hd),
                  p + "mlp.gate_proj.weight": np.zeros((4, d), np.float32),
                  p + "mlp.up_proj.weight": np.zeros((4, d), np.float32),
                  p + "mlp.down_proj.weight": np.zeros((d, 4), np.float32)})
    return t


def build(cfg: InductionConfig, tensors: dict[str, np.ndarray] | None = None):
    from jaxsae.models import LanguageModel, llama
    from jaxsae.models.placement import Placer

    config = hf_config(cfg)
    return LanguageModel(llama.build(config, tensors or init_tensors(cfg), Placer(jnp.float32)), config)


def batch(cfg: InductionConfig, key) -> np.ndarray:
    """Training rows [batch, 1 + seq]: BOS, then a random block of a random period (per row)
    repeated to the end."""
    k_period, k_tokens = jax.random.split(key)
    period = np.asarray(jax.random.randint(k_period, (cfg.batch, 1), cfg.min_period, cfg.max_period + 1))
    block = np.asarray(jax.random.randint(k_tokens, (cfg.batch, cfg.max_period), 1, cfg.vocab))
    rows = np.take_along_axis(block, np.arange(cfg.seq)[None] % period, axis=1)
    return np.concatenate([np.zeros((cfg.batch, 1), rows.dtype), rows], axis=1).astype(np.int32)


def prompts(cfg: InductionConfig, key, n: int) -> np.ndarray:
    """Evaluation prompts [n, 1 + 2 * period]: BOS, a random block, the same block again."""
    return heads_mod.repeated_tokens(key, n, cfg.period, cfg.vocab, bos=0, low=1)


def train(cfg: InductionConfig = InductionConfig(), progress: bool = False):
    """(trained LanguageModel, {"loss": [...], "second_half_loss": float}): Adam on next-token
    cross-entropy over whole repeated sequences; MLP weights stay zero."""
    lm = build(cfg)
    slots, values = iv.freeze(lm)
    labels = [v.label for v in values]
    train_mask = tuple("/mlp/" not in lab for lab in labels)
    opt = optax.adam(cfg.learning_rate)
    state = opt.init(values)

    def loss_fn(values, tokens):
        logits = iv.call(iv.bind(slots, values), tokens)
        logp = jax.nn.log_softmax(logits[:, :-1])
        return -jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1).mean()

    @jax.jit
    def step(values, state, tokens):
        loss, grads = jax.value_and_grad(loss_fn)(values, tokens)
        grads = tuple(g if keep else jax.tree.map(jnp.zeros_like, g) for g, keep in zip(grads, train_mask))
        updates, state = opt.update(grads, state, values)
        return optax.apply_updates(values, updates), state, loss

    key = jax.random.key(cfg.seed)
    losses = []
    for i in range(cfg.steps):
        key, sub = jax.random.split(key)
        values, state, loss = step(values, state, jnp.asarray(batch(cfg, sub)))
        losses.append(float(loss))
        if progress and i % 100 == 0:
            print(f"induction model step {i}: loss {losses[-1]:.3f}", flush=True)
    model = pz.bind_variables(slots, values, unfreeze_as_copy=True)
    trained = dataclasses.replace(lm, model=model)
    test = jnp.asarray(prompts(cfg, jax.random.key(cfg.seed + 10_000), 64))
    logits = trained(test)
    first = metrics.loss(test, 1, cfg.period)(logits)  # predictions of r_2..r_n (r_1 follows BOS)
    second = metrics.loss(test, cfg.period + 1)(logits)  # the second repeat after its first token
    return trained, {"loss": losses, "first_half_loss": float(first.mean()), "second_half_loss": float(second.mean())}
