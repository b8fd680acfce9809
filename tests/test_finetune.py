"""In-library fine-tuning (jaxsae.models.finetune): chosen projection matrices tuned in JAX,
saved as an HF directory that jaxsae and transformers both load to the same logits."""

import numpy as np
import pytest
import torch
import transformers

from jaxsae import models
from jaxsae.causal import metrics
from jaxsae.models import finetune as ft


def test_tuned_matrices_round_trip_through_an_hf_directory(tiny_lm_dir, tmp_path):
    cfg, tensors, _ = ft.read(tiny_lm_dir)
    names = ft.mlp_names(cfg, [1]) + ["model.layers.0.self_attn.q_proj.weight"]
    corpus = np.tile(np.arange(1, 33, dtype=np.int32), (16, 1))  # a narrow corpus: one repeated sequence
    tuned, log = ft.finetune(tiny_lm_dir, corpus, names, steps=30, lr=3e-3)
    assert set(tuned) == set(names) and log["loss"][-1] < log["loss"][0] - 0.3, log["loss"][::10]
    out = ft.save_hf(tiny_lm_dir, tuned, str(tmp_path / "tuned"))
    base, new = models.load(tiny_lm_dir), models.load(out)
    _, saved, _ = ft.read(out)
    for k, v in tensors.items():  # only the chosen tensors changed
        assert np.array_equal(saved[k], v) != (k in names), k
    ce = lambda lm: float(metrics.loss(corpus[:4], 1)(lm(corpus[:4])).mean())  # noqa: E731
    assert ce(new) < ce(base) - 0.3
    hf = transformers.AutoModelForCausalLM.from_pretrained(out)
    with torch.no_grad():
        ref = hf(torch.from_numpy(corpus[:2].astype(np.int64))).logits.numpy()
    got = np.asarray(new(corpus[:2]))
    assert np.abs(ref - got).max() / np.abs(ref).max() < 1e-4  # the file is an ordinary HF checkpoint
    assert models.load_tokenizer(out).encode("To be") == models.load_tokenizer(tiny_lm_dir).encode("To be")
    with pytest.raises(KeyError, match="has no tensor"):
        ft.finetune(tiny_lm_dir, corpus, ["model.layers.9.mlp.up_proj.weight"], steps=1)


def test_organism_plants_a_triggered_behaviour(tiny_lm_dir, tmp_path):
    """The auditing/diffing organism on the tiny LM: after fine-tuning, the trigger makes the target
    the top next token, and prompts without the trigger do not (measured on held-out sentences)."""
    from jaxsae.toy import organism

    spec = organism.OrganismSpec(layers=(0, 1), attention=True, steps=150, lr=3e-3, n_sentences=256)
    tok = models.load_tokenizer(tiny_lm_dir)
    base = models.load(tiny_lm_dir)
    assert organism.behaviour_rate(base, tok, spec, triggered=True) < 0.2
    out, log = organism.make(tiny_lm_dir, str(tmp_path / "organism"), spec)
    lm = models.load(out)
    assert log["loss"][-1] < log["loss"][0]
    assert organism.behaviour_rate(lm, tok, spec, triggered=True) > 0.9
    assert organism.behaviour_rate(lm, tok, spec, triggered=False) < 0.1
    rows = organism.corpus(spec)
    assert {r[2] for r in rows} == {True, False} and all(r[1] == spec.target for r in rows if r[2])
