"""Unlearning by clamping latents: SAEBench's algorithm (evals/unlearning; Farrell et al.
2410.19278) with pluggable forget and retain text, and a clearly named *topic-forgetting proxy*.

SAEBench measures WMDP-bio and MMLU multiple-choice accuracy on >= 2B instruct models; that data
is gated or absent offline and a 135M model is at chance on it. The algorithm is kept; the measure
is replaced, so **no SAEBench comparability is claimed** (eval_config says so):

1. Each latent's firing frequency over the text tokens of the forget texts and of the retain texts.
2. For each (retain threshold, n): the n latents firing most on the forget texts among those firing
   on fewer than `retain threshold` of the retain tokens.
3. Intervention at the site (SAEBench's anthropic_clamp_resid_SAE_features): encode; the latents at
   position 0 (BOS) are zeroed (before the error term is taken, so BOS passes unchanged); wherever a selected latent is > 0 it is set to -multiplier; the
   activation becomes dec(f') + (x - dec(f)) (the error term kept).
4. The measure (the proxy): the mean probability of the true next token on held-out forget texts
   and on held-out retain texts, each relative to the unmodified model. Score = 1 - min{forget ratio : retain ratio >=
   `retain_floor`} over the settings (SAEBench: 1 - min{WMDP accuracy : MMLU accuracy >= 0.99});
   0 when no setting keeps the retain texts.

The default proxy forgets one news section (sae-probes' news headlines, "Sport") and retains the
others: `topic_proxy()`.
"""

from __future__ import annotations

import dataclasses
import logging

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from jaxsae import sites
from jaxsae.data import tokens as tokens_lib
from jaxsae.evals import pooled, probe_datasets, results

log = logging.getLogger("jaxsae")
NEWS_SECTIONS = ("Politics", "Technology", "Entertainment", "Sport")  # sae-probes' 97_news_class
PROXY_NOTE = ("topic-forgetting proxy: the true next token's probability on forget/retain text in place of WMDP/MMLU "
              "multiple choice; not comparable with SAEBench's unlearning score")


@dataclasses.dataclass(frozen=True)
class UnlearningConfig:
    retain_thresholds: tuple[float, ...] = (0.001, 0.01)
    n_features_list: tuple[int, ...] = (10, 20)
    multipliers: tuple[float, ...] = (25.0, 50.0, 100.0, 200.0)
    retain_floor: float = 0.99  # SAEBench: all_side_effects_mcq >= 0.99
    context: int = 128
    batch: int = 16
    frequency_fraction: float = 0.5  # of each text list, used to measure frequencies; the rest is scored
    texts_per_side: int = 400  # the topic proxy's forget and retain texts (SAEBench: dataset_size 1024)
    forget_topic: str = "Sport"  # the topic proxy's news section to forget

    def validate(self) -> UnlearningConfig:
        if not self.retain_thresholds or not self.n_features_list or not self.multipliers:
            raise ValueError("unlearning: retain_thresholds, n_features_list and multipliers must be non-empty")
        if self.forget_topic not in NEWS_SECTIONS:
            raise ValueError(f"unlearning: unknown forget_topic {self.forget_topic!r}; valid: {', '.join(NEWS_SECTIONS)}")
        if min(self.n_features_list) < 1 or not 0 < self.frequency_fraction < 1 or self.context < 2:
            raise ValueError("unlearning: n >= 1, 0 < frequency_fraction < 1 and context >= 2 are required")
        return self


def topic_proxy(forget: str = "Sport", n: int = 400, seed: int = 0) -> tuple[str, list[str], list[str]]:
    """(name, forget texts, retain texts): one section of sae-probes' news set against the others."""
    texts, labels = probe_datasets.read("97_news_class")
    labels = np.asarray(labels)
    if forget not in set(labels.tolist()):
        raise ValueError(f"unlearning proxy: no news section {forget!r}; valid: {sorted(set(labels.tolist()))}")
    rng = np.random.default_rng(seed)
    f = [texts[i] for i in rng.permutation(np.nonzero(labels == forget)[0])[:n]]
    r = [texts[i] for i in rng.permutation(np.nonzero(labels != forget)[0])[:n]]
    return f"topic_forgetting_proxy:news/{forget}", f, r


@dataclasses.dataclass(frozen=True)
class _Clamp:
    """fn(x, payload) of the intervention (step 3)."""

    def __call__(self, x_btd, payload):
        sae, chosen_f, c = payload["sae"], payload["chosen"], payload["multiplier"]
        x = x_btd.astype(jnp.float32)
        f = sae.encode(x).at[:, 0].set(0.0)  # BOS zeroed before the error is taken: BOS passes unchanged
        err = x - sae.decode(f)
        f = jnp.where(chosen_f & (f > 0), -c, f)
        return sae.decode(f) + err


def clamp(x_btd, sae, chosen_f, multiplier: float):
    """The intervention on activations [batch, seq, d] (for tests and other callers)."""
    return _Clamp()(jnp.asarray(x_btd), {"sae": sae, "chosen": jnp.asarray(chosen_f), "multiplier":
                                         jnp.float32(multiplier)})


def frequencies(lm, sae, site: str, tokens_nt: np.ndarray, specials, batch: int, progress: bool = False) -> np.ndarray:
    """Fraction of text tokens on which each latent fires [d_sae]."""
    capture = sites.capture_fn(lm, [site])
    fired, total = np.zeros(sae.d_sae, np.float64), 0
    encode = jax.jit(lambda s, x: (s.encode(x) > 0).sum(0))
    for s in tqdm(range(0, len(tokens_nt), batch), desc="unlearning: frequencies", disable=not progress, leave=False):
        tok = _full(tokens_nt[s : s + batch], batch)
        keep = tokens_lib.content_mask(tok, specials)
        keep[len(tokens_nt[s : s + batch]):] = False
        x = tokens_lib.text_rows(capture(jnp.asarray(tok))[site], keep).astype(np.float32)
        fired += np.asarray(encode(sae, jnp.asarray(x)))
        total += len(x)
    return fired / max(total, 1)


def _full(tok: np.ndarray, batch: int) -> np.ndarray:
    return tok if len(tok) == batch else np.concatenate([tok, np.repeat(tok[-1:], batch - len(tok), 0)])


def select(forget_freq: np.ndarray, retain_freq: np.ndarray, threshold: float, n: int) -> np.ndarray:
    """Bool [d_sae]: the n latents firing most on forget text among those below `threshold` on retain
    text (latents that never fire on the forget text are never chosen)."""
    ok = np.nonzero((retain_freq < threshold) & (forget_freq > 0))[0]
    best = ok[np.argsort(-forget_freq[ok], kind="stable")][:n]
    mask = np.zeros(len(forget_freq), bool)
    mask[best] = True
    return mask


@jax.jit
def _correct(logits_btv, tokens_bt, valid_bt):
    logp = jax.nn.log_softmax(logits_btv[:, :-1].astype(jnp.float32), -1)
    p = jnp.exp(jnp.take_along_axis(logp, tokens_bt[:, 1:, None], -1)[..., 0])
    return jnp.where(valid_bt[:, 1:], p, 0.0).sum(), valid_bt[:, 1:].sum()


def accuracy(lm, tokens_nt: np.ndarray, specials, batch: int, surgery=None) -> float:
    """Mean probability the model gives each text token's true next token (a smooth next-token
    accuracy: meaningful even where top-1 accuracy is near 0); `surgery`: a spliced model instead."""
    model = surgery or lm
    hits, total = 0, 0
    for s in range(0, len(tokens_nt), batch):
        real = len(tokens_nt[s : s + batch])
        tok = _full(tokens_nt[s : s + batch], batch)
        valid = tokens_lib.content_mask(tok, specials)
        valid[real:] = False
        h, t = _correct(model(jnp.asarray(tok)), jnp.asarray(tok), jnp.asarray(valid))
        hits, total = hits + float(h), total + int(t)
    return hits / max(total, 1)


@jax.jit
def _clamped(x_btd, sae, chosen_f, c):
    return _Clamp()(x_btd, {"sae": sae, "chosen": chosen_f, "multiplier": c})


class _Scorer:
    """Accuracy of the clean and the clamped model on one text set. At a residual-stream site the
    activations there are taken once and each setting runs only the layers after the site."""

    def __init__(self, lm, site: str, tokens_nt: np.ndarray, specials, batch: int):
        self.lm, self.site, self.batch, self.specials = lm, site, batch, specials
        self.tokens = tokens_nt
        self.resume = sites.resume_fn(lm, site)
        self.parts = []
        if self.resume is not None:
            capture = sites.capture_fn(lm, [site])
            for s in range(0, len(tokens_nt), batch):
                tok = _full(tokens_nt[s : s + batch], batch)
                valid = tokens_lib.content_mask(tok, specials)
                valid[len(tokens_nt[s : s + batch]):] = False
                self.parts.append((capture(jnp.asarray(tok))[site], jnp.asarray(tok), jnp.asarray(valid)))

    def __call__(self, sae=None, chosen=None, multiplier: float = 0.0) -> float:
        if self.resume is None:
            surgery = None if sae is None else sites.splice(self.lm, self.site, _Clamp(), {
                "sae": sae, "chosen": jnp.asarray(chosen), "multiplier": jnp.float32(multiplier)})
            return accuracy(self.lm, self.tokens, self.specials, self.batch, surgery)
        hits, total = 0.0, 0
        for x, tok, valid in self.parts:
            if sae is not None:
                x = _clamped(x, sae, jnp.asarray(chosen), jnp.float32(multiplier))
            h, t = _correct(self.resume(x), tok, valid)
            hits, total = hits + float(h), total + int(t)
        return hits / max(total, 1)


def run(lm, sae, site: str, tokenizer, forget_texts, retain_texts, cfg: UnlearningConfig = UnlearningConfig(),
        data_name: str = "custom", sae_cfg: dict | None = None, model_name: str = "", progress: bool = True) -> dict:
    """The unlearning result (SAEBench schema, eval_type_id "unlearning") of forgetting `forget_texts`
    while keeping `retain_texts` (see the module docstring: a proxy, not SAEBench's measure)."""
    cfg = cfg.validate()
    sites.require_reconstruction(sae, site, "unlearning")
    if len(forget_texts) < 4 or len(retain_texts) < 4:
        raise ValueError(f"unlearning: needs >= 4 forget and retain texts, got {len(forget_texts)} and "
                         f"{len(retain_texts)}")
    specials = tokens_lib.special_ids(tokenizer)
    split = {}
    for name, texts in (("forget", list(forget_texts)), ("retain", list(retain_texts))):
        cut = max(1, int(len(texts) * cfg.frequency_fraction))
        split[name] = (pooled.tokenize(texts[:cut], tokenizer, cfg.context),
                       pooled.tokenize(texts[cut:], tokenizer, cfg.context))
    freq = {k: frequencies(lm, sae, site, v[0], specials, cfg.batch, progress) for k, v in split.items()}
    scorers = {k: _Scorer(lm, site, v[1], specials, cfg.batch) for k, v in split.items()}
    base = {k: scorer() for k, scorer in scorers.items()}
    details, best = [], None
    settings = [(t, n, c) for t in cfg.retain_thresholds for n in cfg.n_features_list for c in cfg.multipliers]
    for t, n, c in tqdm(settings, desc="unlearning: settings", disable=not progress, leave=False):
        chosen = select(freq["forget"], freq["retain"], t, n)
        row = {"retain_threshold": t, "n_features": n, "multiplier": c, "latents_chosen": int(chosen.sum()),
               "latents": np.nonzero(chosen)[0].tolist()}
        if chosen.any():
            acc = {k: scorer(sae, chosen, c) for k, scorer in scorers.items()}
        else:  # nothing to clamp: the model is unchanged
            acc = dict(base)
        ratio = {k: acc[k] / base[k] if base[k] > 0 else float("nan") for k in acc}
        row.update({"forget_accuracy": acc["forget"], "retain_accuracy": acc["retain"],
                    "forget_ratio": ratio["forget"], "retain_ratio": ratio["retain"]})
        details.append(row)
        if ratio["retain"] >= cfg.retain_floor and (best is None or ratio["forget"] < best):
            best = ratio["forget"]
    score = 0.0 if best is None else float(1.0 - best)
    metrics = {"unlearning": {"unlearning_score": score}}
    eval_config = {"dataset_names": [data_name], "intervention_method": "clamp_feature_activation",
                   "retain_thresholds": list(cfg.retain_thresholds), "n_features_list": list(cfg.n_features_list),
                   "multipliers": list(cfg.multipliers), "dataset_size": len(forget_texts), "seq_len": cfg.context,
                   "n_batch_loss_added": 0, "target_metric": "next_token_probability", "save_metrics": True,
                   "model_name": model_name, "llm_batch_size": cfg.batch, "llm_dtype": "float32", "site": site,
                   "retain_floor": cfg.retain_floor, "proxy": PROXY_NOTE,
                   "clean_accuracy": base}
    return results.build("unlearning", eval_config, metrics, details, sae_cfg,
                         differences={"measure": PROXY_NOTE,
                                      "data": f"{data_name} (forget) against the other texts (retain), offline"})
