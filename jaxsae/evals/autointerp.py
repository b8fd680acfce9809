"""Automated interpretability as SAEBench scores it (evals/autointerp), with any judge
(jaxsae.evals.judges) and two of the reference's bugs fixed.

1. Activations of every latent are collected over `total_tokens` of text (BOS/pad excluded), kept
   sparse; `n_latents` latents are sampled uniformly among those firing at least
   `dead_latent_threshold` times.
2. Per latent, examples are windows of 2*buffer+1 tokens centred on a token: the top activations
   (non-overlapping), importance-weighted ones (probability proportional to a^2, among activations
   below the smallest top value) and random windows.
3. The judge explains the latent from 10 top + 5 importance-weighted examples, the tokens active
   above `act_threshold_frac` of the latent's maximum shown as <<token>>; the explanation is the text
   after "activates on" when the reply has it.
4. The judge then marks which of 14 shuffled, unhighlighted examples (2 top + 2 importance-weighted
   + 10 random) the latent fires on; the score is the fraction it got right.

Fixed (eval_config says so): a random example on which the latent does fire counts as a positive
(SAEBench assumes every random example inactive), and replies that cannot be parsed are counted and
reported (`parse_failures`, per-latent logs) instead of silently dropping the latent.
"""

from __future__ import annotations

import dataclasses
import logging
import re

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from jaxsae import sites
from jaxsae.data import tokens as tokens_lib
from jaxsae.evals import results

log = logging.getLogger("jaxsae")
DIFFERENCES = {
    "random_examples": "scored as active when the latent fires in them (SAEBench counts every random example "
                       "as inactive)",
    "parse_failures": "an unparseable scoring reply counts as predicting no example and is reported in "
                      "parse_failures (SAEBench drops the latent silently)",
    "judge": "any jaxsae.evals.judges.Judge (SAEBench: gpt-4o-mini)",
}
EXPLAIN_SYSTEM = ("We're studying neurons in a neural network. Each neuron activates on some particular word, "
                  "words or concept in a short document. The activating words are marked <<like this>>. Look at "
                  "the examples and summarize in a single sentence what the neuron activates on. Reply in the form "
                  "'This neuron activates on ...'.")
SCORE_SYSTEM = ("We're studying neurons in a neural network. Each neuron activates on some particular word, words "
                "or concept. You are given an explanation of one neuron and numbered examples. Return the numbers "
                "of the examples on which the neuron activates, comma-separated, or None if it activates on none.")


@dataclasses.dataclass(frozen=True)
class AutointerpConfig:
    n_latents: int = 1000
    dead_latent_threshold: int = 15
    total_tokens: int = 2_000_000
    context: int = 128
    buffer: int = 10
    act_threshold_frac: float = 0.01
    n_top_explain: int = 10
    n_iw_explain: int = 5
    n_top_score: int = 2
    n_iw_score: int = 2
    n_random_score: int = 10
    max_tokens_in_explanation: int = 30
    batch_windows: int = 16
    seed: int = 42


def collect(lm, sae, site: str, tokens_nt: np.ndarray, specials, batch: int, progress: bool = False):
    """Sparse latent activations over every text position: (window, position, latent, value) arrays."""
    capture = sites.capture_fn(lm, [site])
    encode = jax.jit(lambda s, x: s.encode(x))
    parts = []
    for s in tqdm(range(0, len(tokens_nt), batch), desc="autointerp: activations", disable=not progress, leave=False):
        tok = tokens_nt[s : s + batch]
        real = len(tok)
        if real < batch:
            tok = np.concatenate([tok, np.repeat(tok[-1:], batch - real, 0)])
        f = np.asarray(encode(sae, capture(jnp.asarray(tok))[site].astype(jnp.float32)))[:real]
        f = f * tokens_lib.content_mask(tok[:real], specials)[..., None]
        w, t, i = np.nonzero(f > 0)
        parts.append((w + s, t, i, f[w, t, i]))
    w, t, i, v = (np.concatenate(a) for a in zip(*parts))
    return w.astype(np.int64), t.astype(np.int32), i.astype(np.int64), v.astype(np.float32)


def _windows_around(centres, n_ctx: int, buffer: int) -> list[tuple[int, int, int]]:
    out = []
    for w, t in centres:
        lo = min(max(int(t) - buffer, 0), max(n_ctx - (2 * buffer + 1), 0))
        out.append((int(w), lo, lo + 2 * buffer + 1))
    return out


def examples_for(dense_nt: np.ndarray, entries, cfg: AutointerpConfig, rng: np.random.Generator,
                 positions_p2: np.ndarray):
    """{"top", "iw", "random"}: lists of (window, lo, hi) for one latent, from its firings `entries`
    (window, position, value arrays), its dense activations [n, ctx] and every text position."""
    w_e, t_e, v_e = entries
    n_ctx = dense_nt.shape[1]
    n_top = cfg.n_top_explain + cfg.n_top_score
    taken: dict[int, list[tuple[int, int]]] = {}

    def free(w, lo, hi):
        return all(hi <= a or lo >= b for a, b in taken.get(w, []))

    def take(w, t, into):
        (win,) = _windows_around([(w, t)], n_ctx, cfg.buffer)
        if free(*win):
            into.append(win)
            taken.setdefault(win[0], []).append(win[1:])

    top = []
    for j in np.argsort(-v_e, kind="stable"):  # only the latent's firings, largest first
        if len(top) == n_top:
            break
        take(int(w_e[j]), int(t_e[j]), top)
    floor = min(dense_nt[w, lo:hi].max() for w, lo, hi in top) if top else 0.0
    below = np.nonzero(v_e < floor)[0]
    iw = []
    if len(below):
        p = v_e[below].astype(np.float64) ** 2
        for j in rng.choice(below, size=len(below), replace=False, p=p / p.sum()):
            if len(iw) == cfg.n_iw_explain + cfg.n_iw_score:
                break
            take(int(w_e[j]), int(t_e[j]), iw)
    rand = _windows_around(positions_p2[rng.choice(len(positions_p2), size=cfg.n_random_score, replace=False)],
                           n_ctx, cfg.buffer)
    return {"top": top, "iw": iw, "random": rand}


def parse_explanation(reply: str) -> str:
    m = re.search(r"activates on(.*)", reply, re.S | re.I)
    text = (m.group(1) if m else reply).strip()
    return text.rstrip(".").strip() or reply.strip()


def parse_predictions(reply: str, n: int) -> set[int] | None:
    """1-based indices the judge named, or None when the reply cannot be read."""
    text = reply.strip()
    if re.fullmatch(r"(?i)none\.?", text):
        return set()
    found = [int(x) for x in re.findall(r"\d+", text)]
    if not found or any(not 1 <= x <= n for x in found):
        return None
    return set(found)


def run(lm, sae, site: str, tokenizer, windows_ds, judge, cfg: AutointerpConfig = AutointerpConfig(),
        sae_cfg: dict | None = None, progress: bool = True) -> dict:
    """The autointerp result (SAEBench schema) of `sae` at `site`, judged by `judge`, on the token
    windows of `windows_ds` (jaxsae.data.tokens.windows)."""
    n_windows = min(len(windows_ds), max(1, cfg.total_tokens // cfg.context))
    tokens_nt = tokens_lib.batch_array(windows_ds, 0, n_windows)
    specials = tokens_lib.special_ids(tokenizer)
    valid_nt = tokens_lib.content_mask(tokens_nt, specials)
    w, t, i, v = collect(lm, sae, site, tokens_nt, specials, cfg.batch_windows, progress)
    fires = np.bincount(i, minlength=sae.d_sae)
    alive = np.nonzero(fires >= cfg.dead_latent_threshold)[0]
    rng = np.random.default_rng(cfg.seed)
    chosen = np.sort(rng.choice(alive, size=min(cfg.n_latents, len(alive)), replace=False)) if len(alive) else []
    pieces: dict[int, str] = {}

    def piece(tok_id: int) -> str:
        if tok_id not in pieces:
            pieces[tok_id] = tokenizer.decode([tok_id])
        return pieces[tok_id]

    by_latent = np.argsort(i, kind="stable")  # the firings grouped by latent: one slice per latent
    bounds = np.searchsorted(i[by_latent], np.arange(sae.d_sae + 1))
    positions_p2 = np.argwhere(valid_nt)
    dense = np.zeros(tokens_nt.shape, np.float32)  # one buffer, refilled per latent
    scores, logs, failures = [], [], 0
    for latent in tqdm(chosen, desc="autointerp: latents", disable=not progress):
        sel = by_latent[bounds[latent] : bounds[latent + 1]]
        entries = (w[sel], t[sel], v[sel])
        dense[entries[0], entries[1]] = entries[2]
        thr = cfg.act_threshold_frac * float(entries[2].max())
        ex = examples_for(dense, entries, cfg, rng, positions_p2)

        def render(win, highlight):
            wi, lo, hi = win
            toks = [(piece(int(tokens_nt[wi, j])), bool(dense[wi, j] > thr) and bool(valid_nt[wi, j]))
                    for j in range(lo, hi)]
            text = "".join(f"<<{p}>>" if a and highlight else p for p, a in toks)
            return toks, text

        top, iw = list(ex["top"]), list(ex["iw"])
        rng.shuffle(top)
        explain_set = top[: cfg.n_top_explain] + iw[: cfg.n_iw_explain]
        score_set = top[cfg.n_top_explain :][: cfg.n_top_score] + iw[cfg.n_iw_explain :][: cfg.n_iw_score] + ex["random"]
        shown = [render(win, True) for win in explain_set]
        user = "\n".join(f"Example {k + 1}: {text}" for k, (_, text) in enumerate(shown))
        reply = judge.complete([{"role": "system", "content": EXPLAIN_SYSTEM}, {"role": "user", "content": user}],
                               max_tokens=cfg.max_tokens_in_explanation, seed=cfg.seed,
                               context={"task": "explain", "latent": int(latent), "examples": [s for s, _ in shown]})
        explanation = parse_explanation(reply)
        order = rng.permutation(len(score_set))
        scored = [render(score_set[k], False) for k in order]
        truth = [any(a for _, a in toks) for toks, _ in scored]  # fixed: random windows can fire too
        user = (f"Explanation: {explanation}\n\nExamples:\n"
                + "\n".join(f"{k + 1}. {text}" for k, (_, text) in enumerate(scored)))
        answer = judge.complete([{"role": "system", "content": SCORE_SYSTEM}, {"role": "user", "content": user}],
                                max_tokens=50, seed=cfg.seed,
                                context={"task": "score", "latent": int(latent), "explanation": explanation,
                                         "examples": [s for s, _ in scored]})
        predicted = parse_predictions(answer, len(scored))
        failed = predicted is None
        failures += failed
        predicted = predicted or set()
        correct = [(k + 1 in predicted) == truth[k] for k in range(len(scored))]
        scores.append(float(np.mean(correct)))
        logs.append({"latent": int(latent), "explanation": explanation, "reply": answer, "parse_failed": failed,
                     "predicted": sorted(predicted), "active": [k + 1 for k, a in enumerate(truth) if a],
                     "score": scores[-1]})
        dense[entries[0], entries[1]] = 0.0
    metrics = {"autointerp": {"autointerp_score": float(np.mean(scores)) if scores else float("nan"),
                              "autointerp_std_dev": float(np.std(scores)) if scores else float("nan"),
                              "parse_failures": failures, "n_latents_scored": len(scores)}}
    eval_config = {**dataclasses.asdict(cfg), "site": site, "judge": type(judge).__name__,
                   "n_windows": n_windows, "alive_latents": int(len(alive))}
    return results.build("autointerp", eval_config, metrics, None, sae_cfg, unstructured=logs, differences=DIFFERENCES)
