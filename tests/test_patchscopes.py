"""Patchscopes: writing a prompt's own state back is an identity, another state changes the
continuation the way a full-sequence splice does, and on SmolLM2 the identity prompt decodes
a word's state at early layers and not at late ones."""

import jax.numpy as jnp
import numpy as np
import pytest

from jaxsae import generate, sites
from jaxsae.causal import interventions as iv
from jaxsae.causal import patchscopes as ps


@pytest.fixture
def tiny(tiny_llama):
    return tiny_llama


def test_patch_into_writes_the_state_at_one_position(tiny):
    target = np.random.default_rng(0).integers(1, 97, 9).astype(np.int32)
    source = np.random.default_rng(1).integers(1, 97, (2, 6)).astype(np.int32)
    layer, pos = 0, 5
    own = ps.source_states(tiny, target[None], [layer], pos)[layer]
    np.testing.assert_array_equal(ps.patch_into(tiny, own, target, layer, pos, 5)[0],
                                  np.asarray(generate.greedy(tiny, target[None], 5))[0])
    states = ps.source_states(tiny, source, [layer], [3, 4])[layer]
    got = ps.patch_into(tiny, states, target, layer, pos, 5)
    # reference: the same write as a Blend splice on the whole growing sequence, one forward per token
    seq = np.broadcast_to(target, (2, 9)).copy()
    for _ in range(5):
        value = np.zeros((2, seq.shape[1], 32), np.float32)
        value[:, pos] = states
        mask = np.zeros(seq.shape[1], np.float32)
        mask[pos] = 1
        m = sites.splice(tiny, f"blocks.{layer}.hook_resid_post", iv.Blend("resid"), (jnp.asarray(value),
                                                                                        jnp.asarray(mask)))
        seq = np.concatenate([seq, np.asarray(m(seq))[:, -1].argmax(-1)[:, None].astype(np.int32)], axis=1)
    np.testing.assert_array_equal(got, seq[:, 9:])


@pytest.mark.slow
def test_smollm2_identity_patchscope_decodes_early_layers(smollm2):
    lm, tok = smollm2
    words = ("dog house river apple chair water music table green window paper bread horse train money light "
             "garden doctor phone city").split()
    r = ps.identity_accuracy(lm, tok, words, layers=range(0, 30, 3))
    acc = np.asarray(r["accuracy"])
    # measured (19 words): baseline 0.42; layers 0,3,..,27: 0.47 0.26 0.26 0.37 0.26 0.05 0 0 0 0
    assert len(r["words"]) >= 15
    assert acc[:3].mean() > 0.2 and acc[-3:].mean() <= 0.05, acc
    assert acc[0] >= 0.3 and r["baseline"] >= 0.3
