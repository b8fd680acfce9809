"""Sharding: parameters placed as the rules table says, the same numbers on 1 and 8 devices,
and the latent-sharded top-k / decode equal to their single-device forms."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import toy_config
from jax.sharding import PartitionSpec as P

from jaxsae import axes, sharding
from jaxsae.dictionaries import latent_ops
from jaxsae.train import loop


def test_rules_table_maps_logical_axes(n_devices):
    mesh = sharding.make_mesh(2, 4)
    assert sharding.spec((axes.BATCH, axes.D_IN)) == P("data", None)
    assert sharding.spec((axes.D_IN, axes.D_SAE)) == P(None, "model")
    assert sharding.named(mesh, (axes.D_SAE, axes.D_OUT)).spec == P("model", None)
    with pytest.raises(KeyError, match="unknown logical axis"):
        sharding.spec(("bogus",))
    with pytest.raises(ValueError, match="does not tile"):
        sharding.make_mesh(3, 2)


def test_every_parameter_gets_the_rules_sharding(tmp_path, n_devices):
    mesh = sharding.make_mesh(2, 4)
    run = loop.train(toy_config("jumprelu", steps=2, d_sae=64), str(tmp_path), mesh=mesh, progress=False)
    st = run.state
    want = {"W_enc": P(None, "model"), "b_enc": P("model"), "W_dec": P("model", None), "b_dec": P(None),
            "log_threshold": P("model")}
    for name, spec in want.items():
        assert st.params[name].sharding.spec == spec, name
    # Adam moments follow their parameters; the step counter and scales are replicated
    adam = [s for s in jax.tree.leaves(st.opt_state, is_leaf=lambda x: hasattr(x, "mu")) if hasattr(s, "mu")][0]
    assert adam.mu["W_enc"].sharding.spec == P(None, "model") and adam.nu["W_dec"].sharding.spec == P("model", None)
    assert st.dict_state["tokens_since_fired"].sharding.spec == P("model")
    assert st.step.sharding.is_fully_replicated and st.scale_in.sharding.is_fully_replicated


@pytest.mark.parametrize("arch", ["topk", "batchtopk", "jumprelu", "relu", "gated", "matryoshka"])
def test_one_device_equals_eight(arch, tmp_path, n_devices):
    over = {"sae": {"group_fractions": (0.25, 0.25, 0.5)}} if arch == "matryoshka" else {}
    cfg = toy_config(arch, steps=6, d_sae=64, train={"lr": 1e-3, "dead_tokens": 512}, **over)
    one = loop.train(cfg, str(tmp_path / "one"), mesh=sharding.make_mesh(1, 1, jax.devices()[:1]), progress=False)
    eight = loop.train(cfg, str(tmp_path / "eight"), mesh=sharding.make_mesh(2, 4), progress=False)
    for a, b in zip(one.metrics, eight.metrics, strict=True):
        np.testing.assert_allclose(a["loss"], b["loss"], rtol=2e-5)
    for name in one.state.params:
        np.testing.assert_allclose(np.asarray(one.state.params[name]), np.asarray(eight.state.params[name]),
                                   rtol=1e-4, atol=2e-6, err_msg=name)


def test_latent_sharded_topk_and_decode_equal_single_device(n_devices):
    rng = np.random.default_rng(0)
    pre = jnp.asarray(rng.standard_normal((16, 64)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((64, 5)), jnp.float32)
    v0, i0 = jax.lax.top_k(pre, 6)
    d0 = jnp.einsum("bk,bko->bo", v0, w[i0])
    mesh = sharding.make_mesh(2, 4)
    pre_s = jax.device_put(pre, sharding.named(mesh, (axes.BATCH, axes.D_SAE)))
    w_s = jax.device_put(w, sharding.named(mesh, (axes.D_SAE, axes.D_OUT)))

    @jax.jit
    def f(p, w):
        v, i = latent_ops.top_k(p, 6)
        return v, i, latent_ops.decode_rows(v, i, w)

    with jax.set_mesh(mesh):
        v, i, d = f(pre_s, w_s)
        g = jax.jit(jax.grad(lambda p, w: jnp.sum(latent_ops.decode_rows(*latent_ops.top_k(p, 6), w) ** 2),
                             argnums=(0, 1)))(pre_s, w_s)
    g0 = jax.grad(lambda p, w: jnp.sum(jnp.einsum("bk,bko->bo", *_tk(p, w)) ** 2), argnums=(0, 1))(pre, w)
    np.testing.assert_array_equal(np.asarray(i), np.asarray(i0))
    np.testing.assert_allclose(v, v0, rtol=1e-6)
    np.testing.assert_allclose(d, d0, rtol=1e-5, atol=1e-6)
    for a, b in zip(g, g0):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def _tk(p, w):
    v, i = jax.lax.top_k(p, 6)
    return v, w[i]


@pytest.mark.slow
def test_pod_size_step_compiles_and_fits(tmp_path):
    """AOT-compile a d_in 2304, d_sae 2^20 TopK step on a fake 64-device (4 x 16) mesh and read
    XLA's per-device memory: the sharded state is 1/16 of the whole, and nothing is gathered."""
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=64", "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, "-m", "jaxsae.train.aot", "--d_in=2304", "--d_sae=1048576",
                          "--devices=64", "--model=16"], capture_output=True, text=True, env=env, timeout=600,
                         cwd=os.path.dirname(os.path.dirname(__file__)))
    assert out.returncode == 0, out.stderr[-3000:]
    r = json.loads(out.stdout)
    assert r["n_params"] == 2304 * 2**20 * 2 + 2**20 + 2304
    # params + two Adam moments, sharded 16 ways over latents (replicated over data)
    assert r["argument_size_in_bytes"] == pytest.approx(r["state_bytes_total"] / 16, rel=0.01)
    # a gathered [B, F] or full decoder would add tens of GiB; the step stays within a 16 GiB chip
    assert r["per_device_peak_estimate"] < 12 * 2**30, r
