"""Evaluating a multitoken transcoder (MTC) as a replacement for its attention layer.

  splice(lm, layer, sae)               the model with that layer's attention output replaced by the
                                       MTC's, from the live normalised input and live patterns
  reconstruction(sae, arrays)          FVU of the attention output on held-out contexts
  head_profile(sae)                    each latent's loading over (identity, head 1..H)
  induction_check(lm, sae, cfg, ...)   the known-answer test on the attention-only induction model
                                       (jaxsae.toy.induction): the MTC keeps in-context loss low,
                                       routes through the induction heads, and each copied token is
                                       carried by the few latents of its source (ablating them
                                       undoes the copy; as many other latents do not)
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from jaxsae import sites
from jaxsae.dictionaries.multitoken import pack


@dataclasses.dataclass(frozen=True)
class _MTCOut:
    """fn of sites.splice_attention (a value-compared dataclass: equal splices share one compile)."""

    keep_error: bool = False

    def __call__(self, x_btd, pattern_bhts, out_btd, payload):
        sae, keep_f = payload
        yhat = sae.spec.apply(sae.params, x_btd, pattern_bhts, keep_f)
        return yhat + jax.lax.stop_gradient(out_btd - yhat) if self.keep_error else yhat


def splice(lm, layer: int, sae, keep_f=None, keep_error: bool = False, input_kind: str = "ln1.hook_normalized"):
    """`lm` with block `layer`'s attention output replaced by the MTC's prediction (keep_f [F]:
    latents kept, 0 ablates; keep_error: add the MTC's error back, outputs unchanged)."""
    if sae.spec.name != "multitoken_transcoder":
        raise ValueError(f"splice: expected a multitoken transcoder, got {sae.spec.name}")
    keep = jnp.ones((sae.d_sae,), jnp.float32) if keep_f is None else jnp.asarray(keep_f, jnp.float32)
    return sites.splice_attention(lm, layer, _MTCOut(keep_error), (sae, keep), input_kind=input_kind)


def reconstruction(sae, arrays: dict[str, np.ndarray], batch: int = 64) -> dict[str, float]:
    """FVU (against the per-dimension mean) and L0 per token on contexts {"x", "pattern", "y"},
    positions >= loss_from."""
    spec, lo = sae.spec, sae.spec.loss_from
    sse = var = l0 = n = 0.0
    y_all = np.asarray(arrays["y"][:, lo:], np.float64)
    mean = y_all.reshape(-1, y_all.shape[-1]).mean(0)
    fwd = jax.jit(lambda p, x, pat: (spec.apply(p, x, pat), spec.source_acts(p, x)[0]))
    for i in range(0, len(arrays["x"]), batch):
        x, pat = np.asarray(arrays["x"][i : i + batch]), np.asarray(arrays["pattern"][i : i + batch])
        yhat, a = fwd(sae.params, jnp.asarray(x), jnp.asarray(pat))
        y = y_all[i : i + batch]
        sse += float(np.sum((y - np.asarray(yhat)[:, lo:]) ** 2))
        var += float(np.sum((y - mean) ** 2))
        l0 += float(np.sum(np.asarray(a)[:, lo:] > 0))
        n += y.shape[0] * y.shape[1]
    return {"fvu": sse / max(var, 1e-30), "l0": l0 / max(n, 1)}


def head_profile(sae) -> np.ndarray:
    """[F, H + 1]: |c_ih| of each latent (rows sum to 1; column 0 is the identity head)."""
    c = np.abs(np.asarray(sae.spec.head_weights(sae.params)))
    return c / np.maximum(c.sum(-1, keepdims=True), 1e-12)


def induction_check(lm, sae, cfg, layer: int = 1, n_prompts: int = 64, seed: int = 1) -> dict:
    """The known-answer test on `jaxsae.toy.induction` (config `cfg`), on prompts
    [BOS, r_1..r_n, r_1..r_n] (n = cfg.period):

    * second-repeat loss of the model, with the MTC spliced at `layer`, with that attention zeroed;
    * the MTC's routing: the mean loading of the firing latents on the identity head and on the
      induction heads (induction score >= 0.5 at `layer`, else the best head);
    * per token, the copy is carried by a few latents: at destination n + i (predicting r_{i+1}) the
      induction heads read source i + 1, where at most k latents are active. Ablating exactly those
      latents (everywhere in the prompt) and, as the control, as many other latents firing in the
      same prompt, gives the loss of predicting r_{i+1} each way (means over prompts and i)."""
    from jaxsae.causal import heads as heads_lib
    from jaxsae.causal import metrics
    from jaxsae.toy import induction

    n = cfg.period
    tokens = jnp.asarray(induction.prompts(cfg, jax.random.key(seed), n_prompts))
    second = metrics.loss(tokens, n + 1)

    def loss_of(model) -> float:
        return float(second(model(tokens)).mean())

    scores = heads_lib.induction_scores(lm, np.asarray(tokens), n)[layer]
    heads = np.nonzero(scores >= 0.5)[0] if (scores >= 0.5).any() else np.array([int(np.argmax(scores))])
    profile = head_profile(sae)
    site = f"blocks.{layer}.ln1.hook_normalized"
    _, cache = sites.run_with_cache(lm, tokens, [site])
    a_btf = np.asarray(sae.spec.source_acts(sae.params, cache[site])[0])
    firing = (a_btf[:, 1:] > 0).any(axis=(0, 1))
    rng = np.random.default_rng(seed)
    b_idx = np.arange(len(tokens))
    carried, control, count = [], [], []
    for i in range(1, n):
        dest, src = n + i, i + 1
        keep_c = np.ones((len(tokens), 1, sae.d_sae), np.float32)
        keep_r = keep_c.copy()
        for b in b_idx:
            on = np.nonzero(a_btf[b, src] > 0)[0]
            pool = np.setdiff1d(np.nonzero((a_btf[b, 1:] > 0).any(0))[0], on)
            keep_c[b, 0, on] = 0
            keep_r[b, 0, rng.choice(pool, min(len(on), len(pool)), replace=False)] = 0
            count.append(len(on))
        for keep, acc in ((keep_c, carried), (keep_r, control)):
            logits = np.asarray(splice(lm, layer, sae, keep_f=keep)(tokens), np.float64)[:, dest]
            logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
                - logits.max(-1, keepdims=True)
            acc.append(-logp[b_idx, np.asarray(tokens)[:, dest + 1]])
    return {"loss_model": loss_of(lm), "loss_mtc": loss_of(splice(lm, layer, sae)),
            "loss_attention_zeroed": loss_of(sites.splice_zero(lm, f"blocks.{layer}.hook_attn_out")),
            "induction_heads": [int(h) for h in heads], "induction_scores": [float(s) for s in scores],
            "n_latents": int(sae.d_sae), "n_firing": int(firing.sum()),
            "identity_loading": float(profile[firing, 0].mean()),
            "induction_loading": float(profile[firing][:, heads + 1].sum(-1).mean()),
            "latents_per_source_token": float(np.mean(count)),
            "loss_source_latents_ablated": float(np.mean(carried)),
            "loss_random_latents_ablated": float(np.mean(control))}


def lm_check(lm, sae, layer: int, tokens_bt, repeated_bt=None, period: int | None = None,
             batch: int = 8) -> dict:
    """The MTC as a replacement on a language model: next-token CE over text windows `tokens_bt`
    (positions >= 1) clean, with the MTC spliced at `layer`, and with that attention output zeroed;
    ce_recovered = (zeroed - mtc) / (zeroed - clean). With `repeated_bt` ([BOS, r, r] rows of
    period `period`) the same three second-repeat losses (in-context copying)."""
    from jaxsae.causal import metrics

    models = {"clean": lm, "mtc": splice(lm, layer, sae),
              "attention_zeroed": sites.splice_zero(lm, f"blocks.{layer}.hook_attn_out")}

    def mean_loss(model, toks, start):
        vals = [np.asarray(metrics.loss(jnp.asarray(toks[i : i + batch]), start)(model(toks[i : i + batch])))
                for i in range(0, len(toks), batch)]
        return float(np.mean(np.concatenate(vals)))

    out = {f"ce_{name}": mean_loss(m, tokens_bt, 1) for name, m in models.items()}
    gap = out["ce_attention_zeroed"] - out["ce_clean"]
    out["ce_recovered"] = (out["ce_attention_zeroed"] - out["ce_mtc"]) / gap if gap > 0 else float("nan")
    if repeated_bt is not None:
        out.update({f"induction_loss_{name}": mean_loss(m, repeated_bt, period + 1) for name, m in models.items()})
    return out


def contexts_of(lm, tokens_nt, layer: int, batch_windows: int = 16) -> dict[str, np.ndarray]:
    """Shorthand: jaxsae.data.contexts.collect at block `layer` (ln1.hook_normalized -> hook_attn_out)."""
    from jaxsae.data import contexts

    return contexts.collect(lm, tokens_nt, f"blocks.{layer}.ln1.hook_normalized", f"blocks.{layer}.hook_attn_out",
                            batch_windows)


def packed(arrays: dict[str, np.ndarray]) -> np.ndarray:
    return pack(np.asarray(arrays["x"]), np.asarray(arrays["pattern"]))
