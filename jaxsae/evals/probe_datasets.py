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
