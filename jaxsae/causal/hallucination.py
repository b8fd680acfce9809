"""Known against made-up entities: is there a direction that separates them, and does steering
along it change how often the model confidently completes an attribute of an entity that does
not exist?

  r = hallucination.experiment(lm, tok, "blocks.10.hook_resid_post", HallucinationConfig(), sae=None)

Entities: the countries the model names the capital of (`facts.capital_facts`) and made-up names
of the same shape (halves of two real single-word country names joined, real names rejected).
Prompt: "The capital of {name} is". A completion is *confident* when the top next token has
probability above `confident_at` and is a capitalised word (the shape of a capital's name).
Direction ("knownness"): mean activation at the name's last token over known entities minus over
made-up ones, from a training half; its separation is measured on the other half. Steering adds
c x |x| x unit direction at every position after BOS (c > 0 toward "known", c < 0 toward
"unknown"); for each c: the
confident rate on held-out made-up entities (hallucination) and the accuracy on held-out known
ones (the cost); a random direction of the same norm is the control, and with a dictionary the
latent that best separates the two sets is steered beside it. The mean top-1 probability on the
made-up prompts (`made_up_top_p`) is reported beside the rate, since a small model may rarely
cross the threshold at all.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from jaxsae.causal import facts as facts_mod
from jaxsae.causal import steering, steering_eval


@dataclasses.dataclass(frozen=True)
class HallucinationConfig:
    n_countries: int = 120
    n_made_up: int = 60
    coefficients: tuple[float, ...] = (-0.2, -0.1, 0.0, 0.1, 0.2)  # + toward "known", - toward "unknown"
    confident_at: float = 0.1
    seed: int = 0


def made_up_names(real: list[str], n: int, seed: int = 0) -> list[str]:
    """`n` names built from the first half of one real single-word name and the second half of
    another, none of them a real name."""
    words = sorted({r for r in real if r.isalpha() and r.isascii()})
    if len(words) < 4:
        raise ValueError("made_up_names needs at least 4 single-word real names")
    rng = np.random.default_rng(seed)
    taken, out = {w.lower() for w in words}, []
    for _ in range(100 * n):
        a, b = rng.choice(words, 2, replace=False)
        name = a[: max(2, len(a) // 2)] + b[len(b) // 2 :]
        if name.lower() not in taken and 4 <= len(name) <= 12:
            taken.add(name.lower())
            out.append(name[0].upper() + name[1:].lower())
        if len(out) == n:
            break
    return out


def _prompt(tokenizer, name: str, template: str) -> tuple[list[int], int]:
    bos = [] if tokenizer.bos_id is None else [tokenizer.bos_id]
    ids, last = facts_mod.subject_span(tokenizer, template, name)
    return bos + ids, (last + len(bos) if last >= 0 else -1)


def next_token_stats(lm, tokenizer, prompts) -> tuple[np.ndarray, np.ndarray]:
    """(top-1 probability [n], whether the top token is a capitalised word [n])."""
    tokens, lengths = steering._right_pad(prompts)
    probs = np.asarray(jax.nn.softmax(jnp.asarray(lm(jnp.asarray(tokens)), jnp.float32), -1))
    last = probs[np.arange(len(prompts)), lengths - 1]
    top = last.argmax(-1)
    words = [tokenizer.decode([int(t)]) for t in top]
    shaped = np.asarray([w.startswith(" ") and w[1:2].isupper() and w[1:].replace("-", "").isalpha() for w in words])
    return last.max(-1), shaped


def _confident(lm, tokenizer, prompts, threshold) -> tuple[float, float]:
    p, shaped = next_token_stats(lm, tokenizer, prompts)
    return float(((p > threshold) & shaped).mean()), float(p.mean())


def _accuracy(lm, known: list[facts_mod.Fact]) -> float:
    tokens, lengths = steering._right_pad([list(f.tokens) for f in known])
    logits = np.asarray(lm(jnp.asarray(tokens)))
    top = logits[np.arange(len(known)), lengths - 1].argmax(-1)
    return float(np.mean([t == f.answer_id for t, f in zip(top, known)]))


def experiment(lm, tokenizer, site: str, cfg: HallucinationConfig = HallucinationConfig(), sae=None,
               progress: bool = False) -> dict:
    from jaxsae.evals import ravel

    template = facts_mod.TEMPLATE
    known = facts_mod.capital_facts(lm, tokenizer, n=cfg.n_countries)
    if len(known) < 8:
        raise ValueError(f"the model names only {len(known)} capitals; the experiment needs at least 8 known entities")
    real = list(ravel.facts("country", 250))
    fake_prompts = [p for p in (_prompt(tokenizer, n, template) for n in made_up_names(real, cfg.n_made_up, cfg.seed))
                    if p[1] >= 0]
    rng = np.random.default_rng(cfg.seed)
    k_idx, f_idx = rng.permutation(len(known)), rng.permutation(len(fake_prompts))
    k_train, k_test = [known[i] for i in k_idx[::2]], [known[i] for i in k_idx[1::2]]
    f_train, f_test = [fake_prompts[i] for i in f_idx[::2]], [fake_prompts[i] for i in f_idx[1::2]]
    upto = lambda toks, last: list(toks[: last + 1])  # noqa: E731  (the prompt through the name's last token)
    a_known = steering.activations(lm, site, [upto(f.tokens, f.subject_last) for f in k_train])
    a_fake = steering.activations(lm, site, [upto(t, last) for t, last in f_train])
    v = a_known.mean(0) - a_fake.mean(0)
    # separation on the held-out halves: projection onto v, threshold at the training midpoint
    mid = float(((a_known @ v).mean() + (a_fake @ v).mean()) / 2)
    h_known = steering.activations(lm, site, [upto(f.tokens, f.subject_last) for f in k_test]) @ v
    h_fake = steering.activations(lm, site, [upto(t, last) for t, last in f_test]) @ v
    separation = float((np.sum(h_known > mid) + np.sum(h_fake <= mid)) / (len(h_known) + len(h_fake)))
    norm = steering_eval.mean_norm(lm, site, [list(t) for t, _ in f_test])
    directions = {"knownness (diff-in-means)": v}
    r = np.random.default_rng(cfg.seed + 1).standard_normal(v.shape).astype(np.float32)
    directions["random direction"] = r
    if sae is not None:
        steering._check_sae(lm, site, sae)
        f_k = np.asarray(sae.encode(jnp.asarray(a_known))).mean(0)
        f_f = np.asarray(sae.encode(jnp.asarray(a_fake))).mean(0)
        best = int(np.argmax(f_k - f_f))
        directions[f"sae latent {best}"] = np.asarray(steering.decoder_row(sae, best))
    fake_eval = [list(t) for t, _ in f_test]
    curves = {}
    for name, d in directions.items():
        unit = np.asarray(d, np.float32) / max(float(np.linalg.norm(d)), 1e-12)
        rows = []
        for c in cfg.coefficients:
            model = lm if c == 0 else steering.add(lm, site, unit, c * norm)
            rate, top_p = _confident(model, tokenizer, fake_eval, cfg.confident_at)
            row = {"coefficient": float(c), "made_up_confident_rate": rate, "made_up_top_p": top_p,
                   "known_accuracy": _accuracy(model, k_test)}
            rows.append(row)
            if progress:
                print(f"{name} c={c:g}: made-up confident {row['made_up_confident_rate']:.2f} (top p "
                      f"{row['made_up_top_p']:.3f}), known accuracy {row['known_accuracy']:.2f}", flush=True)
        curves[name] = rows
    return {"site": site, "config": dataclasses.asdict(cfg), "known_entities": len(known),
            "made_up_entities": len(fake_prompts), "held_out": {"known": len(k_test), "made_up": len(f_test)},
            "separation_accuracy": separation, "norm": norm, "curves": curves,
            "made_up_examples": [tokenizer.decode(t[1:]) for t, _ in f_test[:5]]}
