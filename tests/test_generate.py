"""Generation on the key/value cache: greedy tokens equal transformers' greedy generation on tiny
models of every family; a surgery applies at every generated position (equal to re-running the
spliced model on the whole sequence each step); one compile per shape; sampling is reproducible
per key and follows softmax(logits / temperature)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from tiny_models import CASES, VOCAB, save_tiny

from jaxsae import generate, models, sites

PROMPT = np.random.default_rng(1).integers(0, VOCAB, size=(3, 7))
N_NEW = 10


def _hf_greedy(hf, prompt, n):
    """transformers' greedy generate, run to n tokens: no end-of-sequence stop (jaxsae's generation
    has none; min_new_tokens would instead forbid the EOS token and change the argmax)."""
    hf.generation_config.eos_token_id = None
    with torch.no_grad():
        ids = torch.from_numpy(prompt)
        out = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False,
                          pad_token_id=VOCAB - 1)
    return out[:, prompt.shape[1]:].numpy()


FAST = {"llama_gqa", "gpt2_learned_positions"}


@pytest.mark.parametrize("case", [pytest.param(c, marks=() if c in FAST else pytest.mark.slow) for c in CASES])
def test_greedy_equals_transformers(case, tmp_path):
    kind, extra = CASES[case]
    hf = save_tiny(tmp_path, kind, **extra)
    got = np.asarray(generate.greedy(models.load(str(tmp_path)), PROMPT, N_NEW))
    assert got.shape == (3, N_NEW) and got.dtype == np.int32
    np.testing.assert_array_equal(got, _hf_greedy(hf, PROMPT, N_NEW))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("llama")
    save_tiny(d, "llama", num_key_value_heads=2)
    return models.load(str(d))


def _naive_greedy(model, prompt, n):
    """Re-run the whole (possibly spliced) model on the sequence so far for every new token."""
    seq = jnp.asarray(prompt, jnp.int32)
    for _ in range(n):
        nxt = jnp.argmax(model(seq)[:, -1], axis=-1).astype(jnp.int32)
        seq = jnp.concatenate([seq, nxt[:, None]], axis=1)
    return np.asarray(seq[:, prompt.shape[1]:])


def test_surgery_applies_at_every_generated_position(tiny):
    site = "blocks.0.hook_resid_post"
    v = jnp.asarray(np.random.default_rng(2).normal(size=(32,)) * 3.0, jnp.float32)

    def steer(m):
        return sites.splice(m, site, lambda x, d: x + d, v)

    got = np.asarray(generate.greedy(tiny, PROMPT, N_NEW, model_surgery=steer))
    np.testing.assert_array_equal(got, _naive_greedy(steer(tiny), PROMPT, N_NEW))
    assert (got != np.asarray(generate.greedy(tiny, PROMPT, N_NEW))).any()  # the steering changed the text


def test_compiled_once_per_shape(tiny):
    generate.greedy(tiny, PROMPT, 4)
    before = generate._decode._cache_size()
    scaled = sites.splice(tiny, "blocks.1.hook_resid_post", lambda x, c: x * c, jnp.float32(0.5))
    generate.greedy(tiny, PROMPT[::-1].copy(), 4)  # new prompt values
    generate.greedy(scaled, PROMPT, 4, model_surgery=None)  # same shapes, different model structure
    assert generate._decode._cache_size() - before == 1  # only the spliced model's structure is new
    generate.greedy(sites.splice(tiny, "blocks.1.hook_resid_post", lambda x, c: x * c, jnp.float32(2.0)), PROMPT, 4)
    assert generate._decode._cache_size() - before == 2  # a new lambda is a new function: one more, not per call


def test_sampling_is_reproducible_and_follows_the_softmax(tiny):
    key = jax.random.key(7)
    a = np.asarray(generate.sample(tiny, PROMPT, N_NEW, key=key, temperature=1.3))
    np.testing.assert_array_equal(a, np.asarray(generate.sample(tiny, PROMPT, N_NEW, key=key, temperature=1.3)))
    assert (a != np.asarray(generate.sample(tiny, PROMPT, N_NEW, key=jax.random.key(8), temperature=1.3))).any()
    np.testing.assert_array_equal(np.asarray(generate.sample(tiny, PROMPT, N_NEW, key=key, top_k=1)),
                                  np.asarray(generate.greedy(tiny, PROMPT, N_NEW)))
    # first sampled token over 4000 identical rows vs softmax(logits / T) of the prompt's last position
    rows = np.repeat(PROMPT[:1], 4000, axis=0)
    t = 2.0
    first = np.asarray(generate.sample(tiny, rows, 1, key=jax.random.key(3), temperature=t))[:, 0]
    p = np.asarray(jax.nn.softmax(tiny(PROMPT[:1])[0, -1] / t))
    freq = np.bincount(first, minlength=VOCAB) / len(first)
    assert np.abs(freq - p).max() < 4 * np.sqrt(p.max() / len(first)) + 1e-3
    top3 = np.argsort(p)[-3:]
    k3 = np.asarray(generate.sample(tiny, rows[:500], 1, key=jax.random.key(4), temperature=t, top_k=3))[:, 0]
    assert set(k3.tolist()) <= set(top3.tolist())


def test_bad_arguments_are_named(tiny):
    with pytest.raises(ValueError, match=r"prompt tokens must be \[batch, seq\]"):
        generate.greedy(tiny, PROMPT[0], 3)
    with pytest.raises(ValueError, match="max_new_tokens must be >= 1"):
        generate.greedy(tiny, PROMPT, 0)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        generate.sample(tiny, PROMPT, 3, key=jax.random.key(0), temperature=0.0)


@pytest.mark.parametrize("case", sorted(FAST))
def test_left_padded_rows_generate_what_they_generate_alone(case, tmp_path):
    kind, extra = CASES[case]
    save_tiny(tmp_path, kind, **extra)
    lm = models.load(str(tmp_path))
    rng = np.random.default_rng(3)
    prompts = [rng.integers(1, VOCAB, size=n).tolist() for n in (7, 3, 5)]
    tokens, pads, pad_id = generate.left_pad(prompts)
    assert tokens.shape == (3, 7) and pads.tolist() == [0, 4, 2] and all(pad_id not in p for p in prompts)
    got = np.asarray(generate.greedy(lm, tokens, 6, pad_id=pad_id))
    outside, _, pad_out = generate.left_pad(prompts, pad_id=generate.pad_id_for(lm))  # past the vocabulary
    assert pad_out == VOCAB or pad_out >= VOCAB
    np.testing.assert_array_equal(np.asarray(generate.greedy(lm, outside, 6, pad_id=pad_out)), got)
    for row, p in enumerate(prompts):
        alone = np.asarray(generate.greedy(lm, np.asarray([p]), 6))[0]
        np.testing.assert_array_equal(got[row], alone)
    with pytest.raises(ValueError, match="at least one token"):
        generate.left_pad([[1, 2], []])
    with pytest.raises(ValueError, match="is a token of a prompt"):
        generate.left_pad([[1, 2]], pad_id=2)
