"""Steering evaluation, offline: the targeted property against fluency, as curves over the
coefficient, every direction scored on the same prompts with the same decoding.

  curves = steering_eval.curves(lm, tokenizer, site, {"sae latent 7": d_7, "diff-in-means": v},
                                prompts, SteeringEvalConfig(coefficients=(-8, -4, 0, 4, 8)))

Each direction is scaled to unit norm and then by coefficient x the site's mean activation norm
on the prompts (so coefficients are comparable across directions and sites). For each
coefficient: continuations are generated with the direction added at every position after BOS,
the property is scored on the continuation text (default: the VADER sentiment lexicon's
compound score, packaged with vaderSentiment), and fluency is the mean log-probability of the
continuation's tokens under the *unsteered* model. `target_logprob` is the cheaper property
for a token-promoting direction: log p(target) at the next position, no generation.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxsae import generate, sites
from jaxsae.causal import steering

# Neutral openings for sentiment steering (no sentiment word of VADER's lexicon in them).
NEUTRAL_PROMPTS = ("I watched the movie last night and", "The food at this place was", "My week has been",
                   "The new phone is", "The concert yesterday was", "Our hotel room was",
                   "This book made me feel", "The weather today is", "I think the meeting was",
                   "The train ride home was", "My new neighbours are", "The museum exhibition was")


@dataclasses.dataclass(frozen=True)
class SteeringEvalConfig:
    coefficients: tuple[float, ...] = (-8.0, -4.0, -2.0, 0.0, 2.0, 4.0, 8.0)
    max_new_tokens: int = 24
    temperature: float = 0.0  # 0: greedy; otherwise sampled with `seed`
    seed: int = 0
    batch_size: int = 16
    examples_kept: int = 3  # continuations written into the result per coefficient

    def __post_init__(self):
        if not self.coefficients:
            raise ValueError("coefficients must name at least one value")
        if self.max_new_tokens < 1:
            raise ValueError("max_new_tokens must be at least 1")
        if self.temperature < 0:
            raise ValueError("temperature must be >= 0 (0 is greedy decoding)")


@functools.lru_cache(maxsize=1)
def _vader():
    try:
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
    except ImportError as e:  # pragma: no cover - installed with jaxsae
        raise ImportError("the sentiment scorer needs vaderSentiment: pip install vaderSentiment") from e
    return SentimentIntensityAnalyzer()


def sentiment(texts) -> np.ndarray:
    """VADER compound sentiment in [-1, 1] per text (lexicon and rules, no model)."""
    analyzer = _vader()
    return np.asarray([analyzer.polarity_scores(t)["compound"] for t in texts], np.float64)


def mean_norm(lm, site: str, prompts) -> float:
    """Mean L2 norm of the site's activations on the prompts' tokens after BOS."""
    capture = sites.capture_fn(lm, [site])
    tokens, lengths = steering._right_pad(prompts)  # one batch, one compile
    acts = np.asarray(capture(jnp.asarray(tokens))[site], np.float32)
    norms = [np.linalg.norm(acts[i, 1 if n > 1 else 0 : n], axis=-1) for i, n in enumerate(lengths)]
    return float(np.mean(np.concatenate(norms)))


def continuation_logprob(lm, prompts, continuations, width: int | None = None) -> np.ndarray:
    """[n] mean log p(continuation tokens | prompt, earlier ones) under `lm`, right-padded to
    `width` (causal attention: padding after a row changes none of its positions)."""
    rows = [list(p) + list(c) for p, c in zip(prompts, continuations)]
    width = max(width or 0, max(len(r) for r in rows))
    tokens = np.zeros((len(rows), width), np.int32)
    for i, r in enumerate(rows):
        tokens[i, : len(r)] = r
    logp = jax.nn.log_softmax(jnp.asarray(lm(jnp.asarray(tokens)), jnp.float32))
    logp = np.asarray(logp)
    out = []
    for i, (p, c) in enumerate(zip(prompts, continuations)):
        pos = np.arange(len(p) - 1, len(p) + len(c) - 1)
        out.append(float(logp[i, pos, np.asarray(c)].mean()) if len(c) else np.nan)
    return np.asarray(out)


def _cut(new_row, eos: int | None) -> list[int]:
    row = [int(t) for t in new_row]
    return row[: row.index(eos)] if eos is not None and eos in row else row


def generate_steered(lm, site: str, vector, coefficient: float, prompts, cfg: SteeringEvalConfig,
                     eos: int | None = None) -> list[list[int]]:
    """Continuations (token ids, cut at EOS) of each prompt with coefficient * vector added."""
    surgery = (lambda m: steering.add(m, site, vector, coefficient)) if coefficient != 0 else None
    pad = generate.pad_id_for(lm)
    out = []
    for at in range(0, len(prompts), cfg.batch_size):
        chunk = prompts[at : at + cfg.batch_size]
        tokens, _, pad = generate.left_pad(chunk, pad_id=pad)
        if cfg.temperature > 0:
            new = generate.sample(lm, tokens, cfg.max_new_tokens, key=jax.random.key(cfg.seed + at),
                                  temperature=cfg.temperature, model_surgery=surgery, pad_id=pad)
        else:
            new = generate.greedy(lm, tokens, cfg.max_new_tokens, model_surgery=surgery, pad_id=pad)
        out.extend(_cut(r, eos) for r in np.asarray(new))
    return out


def curves(lm, tokenizer, site: str, directions: dict[str, np.ndarray], prompts, cfg: SteeringEvalConfig,
           score=sentiment, progress: bool = False) -> dict:
    """{"site", "norm", "coefficients", "directions": {name: [{coefficient, property_mean,
    property_sem, fluency_mean, fluency_sem, examples}]}} (see the module docstring)."""
    if not directions:
        raise ValueError("curves needs at least one direction")
    prompts = [list(map(int, p)) for p in prompts]
    scale = mean_norm(lm, site, prompts)
    eos = getattr(tokenizer, "eos_id", None)
    result = {"site": site, "norm": scale, "coefficients": list(cfg.coefficients), "directions": {}}
    baseline = None
    for name, v in directions.items():
        v = np.asarray(v, np.float32)
        unit = v / max(float(np.linalg.norm(v)), 1e-12)
        rows = []
        for c in cfg.coefficients:
            if c == 0 and baseline is not None:
                rows.append(dict(baseline))
                continue
            new = generate_steered(lm, site, unit, c * scale, prompts, cfg, eos)
            texts = [tokenizer.decode(t) for t in new]
            prop = np.asarray(score(texts), np.float64)
            flu = continuation_logprob(lm, prompts, new, max(map(len, prompts)) + cfg.max_new_tokens)
            row = {"coefficient": float(c), "property_mean": float(np.nanmean(prop)),
                   "property_sem": float(np.nanstd(prop) / np.sqrt(max(1, len(prop)))),
                   "fluency_mean": float(np.nanmean(flu)),
                   "fluency_sem": float(np.nanstd(flu) / np.sqrt(max(1, np.isfinite(flu).sum()))),
                   "examples": texts[: cfg.examples_kept]}
            if c == 0:
                baseline = row
            rows.append(row)
            if progress:
                print(f"steering {name} c={c:+g}: property {row['property_mean']:+.3f} "
                      f"fluency {row['fluency_mean']:.2f}", flush=True)
        result["directions"][name] = rows
    return result


def target_logprob(lm, site: str, vector, prompts, target_id: int, coefficients) -> np.ndarray:
    """[n_coefficients] mean log p(target_id) at the position after each prompt, with
    coefficient * vector added (raw units: no rescaling here)."""
    tokens, lengths = steering._right_pad(prompts)
    out = []
    for c in coefficients:
        m = steering.add(lm, site, vector, c) if c != 0 else lm
        logp = np.asarray(jax.nn.log_softmax(jnp.asarray(m(jnp.asarray(tokens)), jnp.float32)))
        out.append(float(np.mean([logp[i, n - 1, target_id] for i, n in enumerate(lengths)])))
    return np.asarray(out)


def sentiment_contrast(tokenizer, n: int = 64, max_tokens: int = 40) -> tuple[list[list[int]], list[list[int]]]:
    """(positive, negative) token lists: SST-2 reviews from the offline sae-probes data."""
    from jaxsae.evals import probe_datasets

    texts, labels = probe_datasets.read(probe_datasets.DATASETS["sentiment"][0].file)
    bos = [] if tokenizer.bos_id is None else [tokenizer.bos_id]
    enc = lambda t: bos + tokenizer.encode(t)[:max_tokens]  # noqa: E731
    pos = [enc(t) for t, y in zip(texts, labels) if y == "1"][:n]
    neg = [enc(t) for t, y in zip(texts, labels) if y != "1"][:n]
    return pos, neg


def contrast_directions(lm, site: str, positive, negative, sae=None, n_latents: int = 2) -> dict[str, np.ndarray]:
    """{"diff-in-means": v} plus, with a dictionary, "sae latent i" decoder rows for the `n_latents`
    latents whose mean activation (over tokens after BOS) rises most from negative to positive."""
    out = {"diff-in-means": steering.diff_in_means(lm, site, positive, negative, reduce="mean")}
    if sae is not None:
        steering._check_sae(lm, site, sae)
        a_pos = steering.activations(lm, site, positive, reduce="mean")
        a_neg = steering.activations(lm, site, negative, reduce="mean")
        f_pos = np.asarray(sae.encode(jnp.asarray(a_pos))).mean(0)
        f_neg = np.asarray(sae.encode(jnp.asarray(a_neg))).mean(0)
        for i in np.argsort(-(f_pos - f_neg))[:n_latents]:
            out[f"sae latent {int(i)}"] = np.asarray(steering.decoder_row(sae, int(i)))
    return out
