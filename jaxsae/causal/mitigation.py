"""Mitigating an undesired behaviour end to end: degenerate repetition in greedy continuations.

  result = mitigation.repetition(lm, sae, site, prompts_bt, heldout_bt, MitigationConfig())

1. Measure: greedy continuations of the prompts; a continuation's repetition is the fraction of
   its n-grams that already occurred earlier in it (0 for none, near 1 for a loop); the behaviour
   rate is the fraction of continuations above `degenerate_at`.
2. Attribute: teacher-forced on prompt + continuation, the metric is the mean log-prob of the
   tokens that complete a repeated n-gram; each latent's attribution is sum_t f_i(t) dm/df_i(t)
   (first-order effect of zero-ablating it, error node kept), summed over rows and positions.
3. Intervene: zero-ablate the top-k latents (error kept) at every position of generation, and as
   a control k random latents among those that fired; for each: the behaviour rate and mean
   repetition of new greedy continuations, and the cost as held-out next-token loss against the
   unablated model.

Everything is reported as measured, a null result included.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxsae import generate
from jaxsae.causal import interventions as iv
from jaxsae.causal import steering
from jaxsae.evals import lm_loss


@dataclasses.dataclass(frozen=True)
class MitigationConfig:
    max_new_tokens: int = 40
    ngram: int = 4
    degenerate_at: float = 0.3  # repetition above this counts as degenerate
    top_k: int = 10  # latents ablated
    controls: int = 3  # random-latent control draws
    seed: int = 0

    def __post_init__(self):
        if self.ngram < 1 or self.top_k < 1 or self.max_new_tokens <= self.ngram:
            raise ValueError("need ngram >= 1, top_k >= 1 and max_new_tokens > ngram")


def repetition_score(tokens, n: int) -> float:
    """Fraction of the n-grams of `tokens` that occurred earlier in it."""
    grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
    seen, repeats = set(), 0
    for g in grams:
        repeats += g in seen
        seen.add(g)
    return repeats / len(grams) if grams else 0.0


def repeat_mask(tokens, n: int) -> np.ndarray:
    """[len] 1 at positions whose token completes an n-gram seen earlier in the sequence."""
    out = np.zeros(len(tokens), np.float32)
    seen = set()
    for i in range(len(tokens) - n + 1):
        g = tuple(tokens[i : i + n])
        if g in seen:
            out[i + n - 1] = 1
        seen.add(g)
    return out


def continuations(lm, prompts_bt, cfg: MitigationConfig, surgery=None) -> np.ndarray:
    return np.asarray(generate.greedy(lm, prompts_bt, cfg.max_new_tokens, model_surgery=surgery))


def behaviour(new_bn: np.ndarray, cfg: MitigationConfig) -> dict:
    scores = np.asarray([repetition_score(list(r), cfg.ngram) for r in new_bn])
    return {"rate": float((scores > cfg.degenerate_at).mean()), "mean_repetition": float(scores.mean())}


@functools.partial(jax.jit, static_argnames=("site",))
def _latent_grads(slots, values, tokens_bt, mask_bt, sae, d_f, site: str):
    def m(d_f):
        d0 = jnp.zeros(d_f.shape[:-1] + (sae.d_in,), jnp.float32)
        model = iv.rewrite(iv.bind(slots, values), {site: (iv.SaeNodes(), (sae, d0, d_f, d0))})
        logp = jax.nn.log_softmax(iv.call(model, tokens_bt)[:, :-1].astype(jnp.float32))
        lp = jnp.take_along_axis(logp, tokens_bt[:, 1:, None], axis=-1)[..., 0]
        return (lp * mask_bt[:, 1:]).sum() / jnp.maximum(mask_bt[:, 1:].sum(), 1)

    return jax.grad(m)(d_f)


def latent_attribution(lm, sae, site: str, tokens_bt, mask_bt) -> tuple[np.ndarray, np.ndarray]:
    """([d_sae] sum over rows and positions of f_i dm/df_i, [d_sae] whether the latent fired), m
    the mean log-prob at mask_bt's positions (first order: m falls by about the attribution when
    latent i is zero-ablated)."""
    from jaxsae import sites as sites_mod

    tokens = jnp.asarray(tokens_bt, jnp.int32)
    _, cache = sites_mod.run_with_cache(lm, tokens, [site])
    f = sae.encode(cache[site])
    slots, values = iv.freeze(lm)
    g = _latent_grads(slots, values, tokens, jnp.asarray(mask_bt, jnp.float32), sae, jnp.zeros_like(f), site=site)
    return np.asarray((f * g).sum(axis=(0, 1)), np.float64), np.asarray((f > 0).any(axis=(0, 1)))


def mean_loss(lm, tokens_bt) -> float:
    total, count = lm_loss.token_nll(lm, tokens_bt)
    return total / max(count, 1)


def repetition(lm, sae, site: str, prompts_bt, heldout_bt, cfg: MitigationConfig = MitigationConfig(),
               progress: bool = False) -> dict:
    """The whole experiment (module docstring) as a JSON-ready dict."""
    prompts = np.asarray(prompts_bt, np.int32)
    heldout = jnp.asarray(heldout_bt, jnp.int32)
    say = print if progress else (lambda *_a, **_k: None)
    base_new = continuations(lm, prompts, cfg)
    base_loss = mean_loss(lm, heldout)
    before = {**behaviour(base_new, cfg), "heldout_loss": float(base_loss)}
    say(f"before: degenerate {before['rate']:.2f}, mean repetition {before['mean_repetition']:.3f}", flush=True)
    full = np.concatenate([prompts, base_new], axis=1)
    mask = np.zeros(full.shape, np.float32)
    for r in range(len(full)):
        mask[r, prompts.shape[1] :] = repeat_mask(list(base_new[r]), cfg.ngram)
    if mask.sum() == 0:
        return {"before": before, "note": "no repeated n-gram in any continuation: nothing to attribute",
                "config": dataclasses.asdict(cfg), "site": site}
    attr, fired = latent_attribution(lm, sae, site, full, mask)
    top = [int(i) for i in np.argsort(-attr)[: cfg.top_k]]

    def trial(latents):
        surgery = lambda m: steering.ablate_latents(m, site, sae, latents)  # noqa: E731
        new = continuations(lm, prompts, cfg, surgery)
        loss = mean_loss(steering.ablate_latents(lm, site, sae, latents), heldout)
        return {**behaviour(new, cfg), "heldout_loss": float(loss), "loss_increase": float(loss - base_loss),
                "latents": [int(i) for i in latents]}

    ablated = trial(top)
    say(f"top-{cfg.top_k} ablated: degenerate {ablated['rate']:.2f}, mean repetition "
        f"{ablated['mean_repetition']:.3f}, held-out loss +{ablated['loss_increase']:.4f}", flush=True)
    rng = np.random.default_rng(cfg.seed)
    pool = np.flatnonzero(fired)
    controls = []
    for _ in range(cfg.controls):
        pick = rng.choice(pool, size=min(cfg.top_k, len(pool)), replace=False)
        controls.append(trial(pick))
        say(f"random control: degenerate {controls[-1]['rate']:.2f}, mean repetition "
            f"{controls[-1]['mean_repetition']:.3f}, held-out loss +{controls[-1]['loss_increase']:.4f}", flush=True)
    return {"site": site, "config": dataclasses.asdict(cfg), "before": before,
            "top_latents": top, "top_attribution": [float(attr[i]) for i in top], "ablated": ablated,
            "random_controls": controls,
            "control_mean": {k: float(np.mean([c[k] for c in controls])) for k in ("rate", "mean_repetition",
                                                                                  "loss_increase")},
            "repeated_tokens_attributed": int(mask.sum()), "prompts": int(len(prompts))}
