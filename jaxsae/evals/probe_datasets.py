"""Labelled text for the probing evaluations, offline: the `sae-probes` package's cleaned datasets
(installed with `pip install --no-deps sae-probes==0.4.2`; located on disk, never imported).

Each file is a zstandard-compressed CSV with `prompt` and `target` columns. A *dataset* here is a
group of binary tasks, the analogue of one of SAEBench's sparse-probing datasets:

  sentiment      SST-2 movie-review sentences, positive vs negative (`92_glue_sst2`)
  news_topic     AG News, each of three topics vs the others (`161..163_agnews_*`)
  code_language  GitHub code, C / Python / HTML vs other languages (`158..160_code_*`)
  gender         historical figures' names, male vs female (`5_hist_fig_ismale`)
  country        place names in 5 countries, each vs the other four (`17_world_country`)

SAEBench's own sets (bias_in_bios, Amazon reviews, github-code, AG News, EuroParl) are not
available offline; these cover the same kinds of concept (sentiment, topic, code language,
gender, geography) with the same task construction.
"""

from __future__ import annotations

import csv
import dataclasses
import importlib.util
import io
import os

PACKAGE = "sae_probes"
INSTALL = "pip install --no-deps sae-probes==0.4.2"


@dataclasses.dataclass(frozen=True)
class Source:
    file: str  # cleaned_data/<file>.csv.zst
    positive: str | None = None  # binary files: the target value of the positive class; None: multiclass


DATASETS: dict[str, tuple[Source, ...]] = {
    "sentiment": (Source("92_glue_sst2", "1"),),
    "news_topic": (Source("161_agnews_0", "1"), Source("162_agnews_1", "1"), Source("163_agnews_2", "1")),
    "code_language": (Source("158_code_C", "1"), Source("159_code_Python", "1"), Source("160_code_HTML", "1")),
    "gender": (Source("5_hist_fig_ismale", "1"),),
    "country": (Source("17_world_country"),),
}


def data_dir() -> str:
    spec = importlib.util.find_spec(PACKAGE)
    for d in (spec.submodule_search_locations or []) if spec else []:
        folder = os.path.join(d, "data", "cleaned_data")
        if os.path.isdir(folder):
            return folder
    raise FileNotFoundError(f"the probing datasets were not found (package {PACKAGE!r} is not installed); "
                            f"install them with: {INSTALL}")


def read(file: str) -> tuple[list[str], list[str]]:
    """(prompts, targets) of one cleaned dataset file."""
    import zstandard

    path = os.path.join(data_dir(), f"{file}.csv.zst")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such probing dataset in {PACKAGE}")
    with open(path, "rb") as f:
        text = zstandard.ZstdDecompressor().stream_reader(f).read().decode("utf-8")
    rows = list(csv.DictReader(io.StringIO(text)))
    return [r["prompt"] for r in rows], [r["target"] for r in rows]


def check_names(names) -> tuple[str, ...]:
    names = tuple(names)
    bad = [n for n in names if n not in DATASETS]
    if bad:
        raise ValueError(f"unknown probing dataset(s) {bad}; valid: {', '.join(DATASETS)}")
    return names


# ---- crossed designs (SCR) and multi-class sets (TPP) ----------------------------------------


@dataclasses.dataclass(frozen=True)
class Crossed:
    """A 2x2 design for spurious-correlation removal: every row carries concept 1 (SAEBench's
    profession or product category) and concept 2 (its gender or rating). `sources` are
    (file, {target: (concept1 is values1[0], concept2 is values2[0])}); a `join` design instead
    matches the prompts of two binary files (one per concept) and keeps the prompts in both."""
    values1: tuple[str, str]
    values2: tuple[str, str]
    sources: tuple[tuple[str, tuple[tuple[str, tuple[bool, bool]], ...]], ...] = ()
    join: tuple[str, str] | None = None  # (concept-1 file, concept-2 file); target "1" is the first value


def _domain(file: str, pos: str, neg: str, first_domain: bool):
    return file, ((pos, (first_domain, True)), (neg, (first_domain, False)))


CROSSED: dict[str, Crossed] = {  # domain x sentiment mirrors SAEBench's Amazon category x rating
    "movie_restaurant": Crossed(("movie", "restaurant"), ("positive", "negative"),
                                (_domain("113_movie_sent", "1", "0", True), _domain("111_yelp_data", "4", "0", False))),
    "movie_product": Crossed(("movie", "product"), ("positive", "negative"),
                             (_domain("92_glue_sst2", "1", "0", True), _domain("157_amazon_5star", "1", "0", False))),
    "restaurant_product": Crossed(("restaurant", "product"), ("positive", "negative"),
                                  (_domain("111_yelp_data", "4", "0", True),
                                   _domain("157_amazon_5star", "1", "0", False))),
    # gender x occupation mirrors bias-in-bios (small: 123-183 names per quadrant)
    "politician_gender": Crossed(("politician", "other"), ("male", "female"),
                                 join=("7_hist_fig_ispolitician", "5_hist_fig_ismale")),
}

MULTICLASS: dict[str, str] = {  # TPP: one probe per class (SAEBench: 5 professions, 5 product categories)
    "country": "17_world_country",  # places in 5 countries, 1000 each
    "news": "97_news_class",  # news headlines and ledes in 4 sections, 1250 each
}


def crossed_rows(name: str) -> tuple[list[str], list[bool], list[bool]]:
    """(prompts, concept1 is values1[0], concept2 is values2[0]) of a crossed design, deduplicated."""
    if name not in CROSSED:
        raise ValueError(f"unknown crossed design {name!r}; valid: {', '.join(CROSSED)}")
    design = CROSSED[name]
    rows: dict[str, tuple[bool, bool]] = {}
    if design.join:
        c1, c2 = (dict(zip(*read(f))) for f in design.join)
        for prompt in sorted(set(c1) & set(c2)):
            rows.setdefault(prompt, (c1[prompt] == "1", c2[prompt] == "1"))
    for file, mapping in design.sources:
        labels = dict(mapping)
        for prompt, target in zip(*read(file)):
            if target in labels:
                rows.setdefault(prompt, labels[target])
    prompts = list(rows)
    return prompts, [rows[p][0] for p in prompts], [rows[p][1] for p in prompts]


def check_designs(names, table: dict, what: str) -> tuple[str, ...]:
    names = tuple(names)
    bad = [n for n in names if n not in table]
    if bad:
        raise ValueError(f"unknown {what} {bad}; valid: {', '.join(table)}")
    return names
