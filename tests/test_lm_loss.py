"""Next-token NLL and perplexity on hand-built cases."""

import jax.numpy as jnp
import numpy as np
import pytest

from jaxsae.evals.lm_loss import perplexity, token_nll


class Fixed:
    def __init__(self, logits):
        self.logits = jnp.asarray(logits, jnp.float32)

    def __call__(self, tokens):
        return self.logits


def test_uniform_logits_give_vocab_size_perplexity():
    tokens = np.array([[0, 3, 1, 4]])
    assert perplexity(Fixed(np.zeros((1, 4, 10))), tokens) == pytest.approx(10.0, rel=1e-5)


def test_targets_are_next_tokens_and_masks_exclude_positions():
    tokens = np.array([[0, 2, 1]])
    logits = np.full((1, 3, 3), -30.0)
    logits[0, 0, 2] = 0.0  # position 0 predicts token 2 with certainty
    logits[0, 1, :] = 0.0  # position 1 is uniform over 3
    total, count = token_nll(Fixed(logits), tokens)
    assert count == 2 and total == pytest.approx(np.log(3.0), rel=1e-4)
    total, count = token_nll(Fixed(logits), tokens, mask_bt=np.array([[True, True, False]]))
    assert count == 1 and total == pytest.approx(0.0, abs=1e-5)
