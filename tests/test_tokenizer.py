"""Tokenizers from GGUF metadata, tokenizer.json and GPT-2 BPE files, against transformers."""

import json
import os

import pytest
from transformers import AutoTokenizer, GPT2Tokenizer

from jaxsae import packaged
from jaxsae.models.tokenizer import load_tokenizer

TEXT = ("ROMEO.\nBut soft, what light through yonder window breaks?\n\tIt is the east, and Juliet is the sun.  "
        "12345 café naïve — ‘quotes’ <|im_start|>user\n")


@pytest.fixture(scope="module")
def smollm2():
    path = packaged.smollm2_path()
    ref = AutoTokenizer.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path))
    return path, ref


def test_gguf_tokenizer_matches_transformers(smollm2):
    path, ref = smollm2
    tok = load_tokenizer(path)
    ids = tok.encode(TEXT)
    assert ids == ref(TEXT, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == TEXT
    assert (tok.vocab_size, tok.bos_id, tok.eos_id) == (49152, 1, 2)


def test_tokenizer_json_round_trip(smollm2, tmp_path):
    _, ref = smollm2
    ref.backend_tokenizer.save(str(tmp_path / "tokenizer.json"))
    json.dump({"bos_token_id": 1, "eos_token_id": 2}, open(tmp_path / "config.json", "w"))
    tok = load_tokenizer(str(tmp_path))
    assert tok.encode(TEXT) == ref(TEXT, add_special_tokens=False)["input_ids"]
    assert (tok.bos_id, tok.eos_id) == (1, 2)


def test_gpt2_bpe_files_match_transformers_gpt2_tokenizer(smollm2, tmp_path):
    """encoder.json + vocab.bpe (GPT-2's file layout; SmolLM2's vocabulary written in it)."""
    _, ref = smollm2
    model = json.loads(ref.backend_tokenizer.to_str())["model"]
    vocab = dict(model["vocab"])
    vocab["<|endoftext|>"] = vocab.pop("<|endoftext|>", len(vocab))
    json.dump(vocab, open(tmp_path / "encoder.json", "w"))
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    (tmp_path / "vocab.bpe").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    oracle = GPT2Tokenizer(str(tmp_path / "encoder.json"), str(tmp_path / "vocab.bpe"))
    tok = load_tokenizer(str(tmp_path))
    text = TEXT.replace("<|im_start|>", "")
    assert tok.encode(text) == oracle.encode(text)
    assert tok.decode(tok.encode(text)) == text


def test_missing_tokenizer_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="no tokenizer.json, nor GPT-2"):
        load_tokenizer(str(tmp_path))
