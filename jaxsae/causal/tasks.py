"""Ready-made clean/corrupted tasks with known answers, for the binaries and notebooks.

  task = tasks.induction(lm, tokenizer, period=15, batch=2)
  task = tasks.capitals(lm, tokenizer, pairs=8)
  causal.patch(lm, task.clean, task.corrupt, sites, task.metric)

induction: [BOS, r, r] against [BOS, r, r'] (the second repeat re-randomised); metric: mean
log-prob of the clean second repeat. capitals: "The capital of A is" against "The capital of B
is" (length-matched, both known to the model); metric: logit(capital of A) - logit(capital of B).
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from jaxsae.causal import facts as facts_mod
from jaxsae.causal import heads, metrics

TASKS = ("induction", "capitals")


@dataclasses.dataclass(frozen=True)
class Task:
    name: str
    clean: np.ndarray
    corrupt: np.ndarray
    metric: object
    labels: list[str]  # one per position, for plots
    info: dict


def induction(lm, tokenizer, period: int = 15, batch: int = 2, seed: int = 0) -> Task:
    vocab = int(lm.config["vocab_size"])
    low = min(1000, vocab // 4)
    bos = tokenizer.bos_id
    clean = heads.repeated_tokens(jax.random.key(seed), batch, period, vocab, bos=bos, low=low)
    first = 1 if bos is not None else 0
    corrupt = clean.copy()
    corrupt[:, first + period :] = heads.repeated_tokens(jax.random.key(seed + 1), batch, period, vocab, low=low)[:, :period]
    labels = (["BOS"] if bos is not None else []) + [f"r{i + 1}" for i in range(period)] + [f"r{i + 1}'" for i in range(period)]
    return Task("induction", clean, corrupt, metrics.next_token_logprob(clean, first + period), labels,
                {"period": period, "batch": batch, "seed": seed, "first_repeat_start": first})


def capitals(lm, tokenizer, pairs: int = 8, n_countries: int = 80) -> Task:
    known = facts_mod.capital_facts(lm, tokenizer, n=n_countries)
    chosen = facts_mod.length_matched_pairs(known, max_pairs=pairs)
    clean, corrupt, good, bad, subject = facts_mod.paired_batch(chosen)
    labels = [tokenizer.decode([int(t)]) for t in clean[0]]
    labels[subject] = "<subject>"
    return Task("capitals", clean, corrupt, metrics.logit_diff(good, bad), labels,
                {"pairs": [[a.subject, b.subject] for a, b in chosen], "subject_position": int(subject),
                 "known_facts": len(known), "countries_tried": n_countries})


def build(name: str, lm, tokenizer, **kw) -> Task:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; choose one of {', '.join(TASKS)}")
    return {"induction": induction, "capitals": capitals}[name](lm, tokenizer, **kw)
