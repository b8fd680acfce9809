"""Tokenizers from the files models come with: an HF `tokenizer.json`, the vocabulary embedded in a
GGUF file (byte-level BPE, `tokenizer.ggml.model == "gpt2"`), or GPT-2's `encoder.json` +
`vocab.bpe`. All become a `tokenizers.Tokenizer` behind one small interface."""

from __future__ import annotations

import dataclasses
import json
import os

from tokenizers import Tokenizer as _HFTokenizer
from tokenizers import decoders, models, pre_tokenizers


@dataclasses.dataclass(frozen=True)
class Tokenizer:
    backend: _HFTokenizer
    bos_id: int | None = None
    eos_id: int | None = None

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        """Token ids of `text` (no BOS: callers add it where the model wants one)."""
        return self.backend.encode(text, add_special_tokens=False).ids

    def decode(self, ids) -> str:
        return self.backend.decode([int(i) for i in ids], skip_special_tokens=False)


def _byte_level_bpe(vocab: dict[str, int], merges: list[tuple[str, str]]) -> _HFTokenizer:
    tok = _HFTokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    return tok


def _from_gguf(path: str) -> Tokenizer:
    import gguf

    reader = gguf.GGUFReader(path)
    get = lambda k: reader.fields[k].contents() if k in reader.fields else None
    kind = get("tokenizer.ggml.model")
    if kind != "gpt2":
        raise ValueError(f"{path}: GGUF tokenizer model {kind!r} is not supported yet (byte-level BPE 'gpt2' is)")
    tokens = get("tokenizer.ggml.tokens")
    merges = [tuple(m.split(" ", 1)) for m in get("tokenizer.ggml.merges")]
    tok = _byte_level_bpe({t: i for i, t in enumerate(tokens)}, merges)
    types = get("tokenizer.ggml.token_type") or []
    special = [tokens[i] for i, t in enumerate(types) if t == gguf.TokenType.CONTROL]
    tok.add_special_tokens(special)
    return Tokenizer(tok, get("tokenizer.ggml.bos_token_id"), get("tokenizer.ggml.eos_token_id"))


def _from_gpt2_files(directory: str) -> Tokenizer:
    with open(os.path.join(directory, "encoder.json")) as f:
        vocab = json.load(f)
    with open(os.path.join(directory, "vocab.bpe"), encoding="utf-8") as f:
        lines = [ln for ln in f.read().split("\n") if ln and not ln.startswith("#version")]
    tok = _byte_level_bpe(vocab, [tuple(ln.split(" ", 1)) for ln in lines])
    eos = vocab.get("<|endoftext|>")
    if eos is not None:
        tok.add_special_tokens(["<|endoftext|>"])
    return Tokenizer(tok, eos, eos)


def load_tokenizer(path: str) -> Tokenizer:
    """From a .gguf file, a tokenizer.json (or a directory holding one), or a directory with GPT-2's
    encoder.json + vocab.bpe."""
    path = str(path)
    if path.endswith(".gguf"):
        return _from_gguf(path)
    if os.path.isdir(path):
        if os.path.isfile(os.path.join(path, "tokenizer.json")):
            return load_tokenizer(os.path.join(path, "tokenizer.json"))
        if os.path.isfile(os.path.join(path, "encoder.json")) and os.path.isfile(os.path.join(path, "vocab.bpe")):
            return _from_gpt2_files(path)
        raise FileNotFoundError(f"{path}: no tokenizer.json, nor GPT-2 encoder.json + vocab.bpe; found "
                                f"{sorted(os.listdir(path))}")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no such tokenizer file {path!r}")
    tok = _HFTokenizer.from_file(path)
    cfg_path = os.path.join(os.path.dirname(path), "config.json")
    bos = eos = None
    if os.path.isfile(cfg_path):
        with open(cfg_path) as f:
            cfg = json.load(f)
        bos, eos = cfg.get("bos_token_id"), cfg.get("eos_token_id")
    return Tokenizer(tok, bos, eos)
