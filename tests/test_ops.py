"""The matmul-form batch reductions equal plain reductions, values and gradients."""

import jax
import jax.numpy as jnp
import numpy as np

from jaxsae import ops


def test_batch_sum_and_any_over_every_leading_axis():
    rng = np.random.default_rng(0)
    a = jnp.asarray(rng.standard_normal((3, 5, 7)), jnp.float32)
    np.testing.assert_allclose(ops.batch_sum(a), a.reshape(-1, 7).sum(0), rtol=1e-6, atol=1e-6)
    mask = a > 1.0
    np.testing.assert_array_equal(ops.batch_any(mask), mask.reshape(-1, 7).any(0))


def test_bias_and_column_scale_gradients_match_autodiff():
    rng = np.random.default_rng(1)
    a = jnp.asarray(rng.standard_normal((6, 4, 9)), jnp.float32)
    b = jnp.asarray(rng.standard_normal(9), jnp.float32)
    w = jnp.asarray(rng.standard_normal(a.shape), jnp.float32)

    def check(f_ops, f_ref):
        got = jax.grad(lambda a, b: jnp.sum(w * jnp.sin(f_ops(a, b))), argnums=(0, 1))(a, b)
        want = jax.grad(lambda a, b: jnp.sum(w * jnp.sin(f_ref(a, b))), argnums=(0, 1))(a, b)
        np.testing.assert_allclose(f_ops(a, b), f_ref(a, b), rtol=1e-6)
        for g, e in zip(got, want):
            np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-6)

    check(ops.add_bias, lambda a, b: a + b)
    check(ops.scale_cols, lambda a, b: a * b)
