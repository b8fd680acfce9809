"""Each architecture's forward pass and loss against the NumPy references (tests/ref_numpy.py),
plus the estimators' gradients and the output-preserving transforms (folds, conversions)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import ref_numpy as ref

from jaxsae import dictionaries as D
from jaxsae.dictionaries.base import LossContext, batch_kth_largest
from jaxsae.dictionaries.jumprelu import jumprelu, step

B, DIN, F = 64, 12, 48
RTOL = 1e-4


def _rand_params(spec, seed=0):
    rng = np.random.default_rng(seed)
    p = {}
    for name, (shape, _) in spec.param_shapes().items():
        scale = 0.3 if name.startswith("W") else 0.1
        p[name] = (scale * rng.standard_normal(shape)).astype(np.float32)
    if "log_threshold" in p:
        p["log_threshold"] = np.log(rng.uniform(0.05, 0.3, size=F)).astype(np.float32)
    return p


def _data(seed=1, d_out=None):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((B, DIN)).astype(np.float32)
    y = x if d_out is None else rng.standard_normal((B, d_out)).astype(np.float32)
    return x, y


def _ctx(dead=None, scale=1.0):
    dead = np.zeros(F, bool) if dead is None else dead
    return LossContext(jnp.float32(scale), jnp.asarray(dead))


def _f64(p):
    return {k: np.asarray(v, np.float64) for k, v in p.items()}


DEAD = np.zeros(F, bool)
DEAD[::3] = True


@pytest.mark.parametrize("variant,b_dec_in", [("april2024", False), ("2023", True)])
def test_relu_matches_numpy(variant, b_dec_in):
    spec = D.build("relu", d_in=DIN, d_sae=F, variant=variant, sparsity_coefficient=0.7)
    assert spec.apply_b_dec_to_input == b_dec_in and spec.unit_norm_decoder == (variant == "2023")
    p, (x, y) = _rand_params(spec), _data()
    f_ref, yhat_ref, loss_ref = ref.relu_sae(_f64(p), x, y, 0.7, variant, b_dec_in)
    np.testing.assert_allclose(spec.encode(p, x), f_ref, rtol=RTOL, atol=1e-5)
    np.testing.assert_allclose(spec.forward(p, x), yhat_ref, rtol=RTOL, atol=1e-5)
    np.testing.assert_allclose(spec.loss(p, x, y, _ctx()).loss, loss_ref, rtol=RTOL)
    # the sparsity warm-up scales only the penalty
    half = spec.loss(p, x, y, _ctx(scale=0.0)).loss
    np.testing.assert_allclose(half, ref.sse_mean(y - yhat_ref), rtol=RTOL)


@pytest.mark.parametrize("multi", [False, True])
@pytest.mark.parametrize("sparse", [True, False])
def test_topk_matches_numpy(multi, sparse):
    spec = D.build("topk", d_in=DIN, d_sae=F, k=5, k_aux=8, multi_topk=multi, sparse_decoder=sparse)
    p, (x, y) = _rand_params(spec), _data()
    f_ref, yhat_ref, loss_ref = ref.topk_sae(_f64(p), x, y, 5, DEAD, 8, 1 / 32, True, multi)
    np.testing.assert_allclose(spec.encode(p, x), f_ref, rtol=RTOL, atol=1e-5)
    assert (np.count_nonzero(spec.encode(p, x), axis=-1) <= 5).all()
    np.testing.assert_allclose(spec.loss(p, x, y, _ctx(DEAD)).loss, loss_ref, rtol=RTOL)


def test_topk_sparse_and_dense_decoder_gradients_agree():
    kw = dict(d_in=DIN, d_sae=F, k=5, k_aux=8)
    sp, de = D.build("topk", sparse_decoder=True, **kw), D.build("topk", sparse_decoder=False, **kw)
    p, (x, y) = _rand_params(sp), _data()
    gs = jax.grad(lambda q: sp.loss(q, x, y, _ctx(DEAD)).loss)(p)
    gd = jax.grad(lambda q: de.loss(q, x, y, _ctx(DEAD)).loss)(p)
    for k in gs:
        np.testing.assert_allclose(gs[k], gd[k], rtol=1e-4, atol=1e-6)


def test_auxk_is_zero_without_dead_latents_and_stops_gradient_into_residual():
    spec = D.build("topk", d_in=DIN, d_sae=F, k=5)
    p, (x, y) = _rand_params(spec), _data()
    out = spec.loss(p, x, y, _ctx())
    assert float(out.metrics["loss_aux"]) == 0.0
    # AuxK only moves dead latents' encoder columns (and the shared decoder rows of dead latents)
    g_aux = jax.grad(lambda q: spec.loss(q, x, y, _ctx(DEAD)).loss - spec.loss(q, x, y, _ctx()).loss)(p)
    alive_cols = np.asarray(g_aux["W_enc"])[:, ~DEAD]
    np.testing.assert_allclose(alive_cols, 0.0, atol=1e-7)
    assert np.abs(np.asarray(g_aux["W_enc"])[:, DEAD]).sum() > 0


@pytest.mark.parametrize("k", [4, 2.5])
def test_batchtopk_matches_numpy(k):
    spec = D.build("batchtopk", d_in=DIN, d_sae=F, k=k, k_aux=8)
    p, (x, y) = _rand_params(spec), _data()
    f_ref, yhat_ref, loss_ref, thr_ref = ref.batchtopk_sae(_f64(p), x, y, k, DEAD, 8, 1 / 32, True)
    out = spec.loss(p, x, y, _ctx(DEAD))
    np.testing.assert_allclose(spec.encode(p, x), f_ref, rtol=RTOL, atol=1e-5)
    np.testing.assert_allclose(out.loss, loss_ref, rtol=RTOL)
    np.testing.assert_allclose(out.batch_threshold, thr_ref, rtol=1e-6)
    assert np.count_nonzero(spec.encode(p, x)) == int(np.floor(B * k))  # mean L0 is exactly k


def test_batch_kth_largest_is_exact():
    rng = np.random.default_rng(0)
    a = np.abs(rng.standard_normal((33, 70))).astype(np.float32)
    a[a < 0.5] = 0.0
    for n in (1, 7, 100, 1000, int((a > 0).sum())):
        want = np.sort(a.reshape(-1))[::-1][n - 1]
        assert float(batch_kth_largest(jnp.asarray(a), n)) == want


def test_matryoshka_prefix_losses_match_numpy():
    spec = D.build("matryoshka", d_in=DIN, d_sae=F, k=4, k_aux=8, group_fractions=(0.25, 0.25, 0.5))
    assert spec.group_sizes == (12, 12, 24)
    p, (x, y) = _rand_params(spec), _data()
    _, _, loss_ref, _ = ref.batchtopk_sae(_f64(p), x, y, 4, DEAD, 8, 1 / 32, True, groups=spec.group_sizes)
    np.testing.assert_allclose(spec.loss(p, x, y, _ctx(DEAD)).loss, loss_ref, rtol=RTOL)
    with pytest.raises(ValueError, match="sum to 1"):
        D.build("matryoshka", d_in=DIN, d_sae=F, k=4, group_fractions=(0.5, 0.2))


def test_jumprelu_matches_numpy():
    spec = D.build("jumprelu", d_in=DIN, d_sae=F, sparsity_coefficient=0.3)
    p, (x, y) = _rand_params(spec), _data()
    f_ref, yhat_ref, loss_ref = ref.jumprelu_sae(_f64(p), x, y, 0.3, False)
    np.testing.assert_allclose(spec.encode(p, x), f_ref, rtol=RTOL, atol=1e-5)
    np.testing.assert_allclose(spec.loss(p, x, y, _ctx()).loss, loss_ref, rtol=RTOL)


def test_jumprelu_straight_through_gradients():
    """d/dtheta of sum(g * JumpReLU) = sum -(theta/eps) K((z-theta)/eps) g over every leading axis;
    d/dz = H(z - theta) g; the Heaviside step gives z no gradient and theta -(1/eps) K g."""
    eps = 0.5
    rng = np.random.default_rng(0)
    z = rng.uniform(-1, 2, size=(3, 5, 7)).astype(np.float32)  # batch AND sequence axes
    theta = rng.uniform(0.2, 1.0, size=7).astype(np.float32)
    g = rng.standard_normal(z.shape).astype(np.float32)
    k = (np.abs((z - theta) / eps) < 0.5).astype(np.float32)
    dz, dth = jax.grad(lambda z_, t_: jnp.sum(g * jumprelu(z_, t_, eps)), argnums=(0, 1))(z, theta)
    np.testing.assert_allclose(dz, (z > theta) * g, rtol=1e-6)
    np.testing.assert_allclose(dth, (-(theta / eps) * k * g).reshape(-1, 7).sum(0), rtol=1e-5)
    dz, dth = jax.grad(lambda z_, t_: jnp.sum(g * step(z_, t_, eps)), argnums=(0, 1))(z, theta)
    np.testing.assert_allclose(dz, 0.0)
    np.testing.assert_allclose(dth, (-(1 / eps) * k * g).reshape(-1, 7).sum(0), rtol=1e-5)


def test_jumprelu_l0_penalty_moves_only_thresholds():
    spec = D.build("jumprelu", d_in=DIN, d_sae=F, sparsity_coefficient=1.0, bandwidth=0.2)
    p, (x, y) = _rand_params(spec), _data()
    g_pen = jax.grad(lambda q: spec.loss(q, x, y, _ctx()).loss - spec.loss(q, x, y, _ctx(scale=0.0)).loss)(p)
    for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
        np.testing.assert_allclose(g_pen[name], 0.0, atol=1e-6)
    assert np.all(np.asarray(g_pen["log_threshold"]) <= 0) and np.abs(g_pen["log_threshold"]).sum() > 0


def test_gated_matches_numpy_and_aux_stops_decoder_gradient():
    spec = D.build("gated", d_in=DIN, d_sae=F, sparsity_coefficient=0.4)
    assert spec.apply_b_dec_to_input
    p, (x, y) = _rand_params(spec), _data()
    f_ref, yhat_ref, loss_ref = ref.gated_sae(_f64(p), x, y, 0.4, True)
    np.testing.assert_allclose(spec.encode(p, x), f_ref, rtol=RTOL, atol=1e-5)
    np.testing.assert_allclose(spec.loss(p, x, y, _ctx()).loss, loss_ref, rtol=RTOL)
    # the decoder's gradient comes from the main reconstruction only (aux uses sg(W_dec))
    g_full = jax.grad(lambda q: spec.loss(q, x, y, _ctx()).loss)(p)["W_dec"]
    f = spec.encode(p, x)
    g_rec = jax.grad(lambda w: jnp.mean(jnp.sum((y - (f @ w + p["b_dec"])) ** 2, -1)))(p["W_dec"])
    np.testing.assert_allclose(g_full, g_rec, rtol=1e-4, atol=1e-6)


def test_gated_equals_jumprelu_on_magnitude():
    spec = D.build("gated", d_in=DIN, d_sae=F, apply_b_dec_to_input=False)
    p, (x, _) = _rand_params(spec), _data()
    mag = spec.pre_acts(p, x)
    theta = spec.jumprelu_threshold(p)
    want = np.where(np.asarray(mag) > np.asarray(theta), np.maximum(mag, 0), 0)
    np.testing.assert_allclose(spec.encode(p, x), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("activation", ["topk", "relu", "jumprelu"])
@pytest.mark.parametrize("skip", [False, True])
def test_transcoder_predicts_a_different_target(activation, skip):
    kw = {"k": 5} if activation == "topk" else {}
    spec = D.build("transcoder", activation=activation, d_in=DIN, d_sae=F, d_out=7, skip=skip, **kw)
    assert not spec.apply_b_dec_to_input and spec.out_dim == 7 and ("W_skip" in spec.param_shapes()) == skip
    p, (x, y) = _rand_params(spec), _data(d_out=7)
    q = _f64(p)
    f = np.asarray(spec.encode(p, x), np.float64)
    want = f @ q["W_dec"] + q["b_dec"] + (x @ q["W_skip"] if skip else 0)
    np.testing.assert_allclose(spec.forward(p, x), want, rtol=RTOL, atol=1e-5)
    if activation == "relu":
        _, _, loss_ref = ref.relu_sae(q, x, y, spec.sparsity_coefficient, "april2024", False)
        np.testing.assert_allclose(spec.loss(p, x, y, _ctx()).loss, loss_ref, rtol=RTOL)
    with pytest.raises(ValueError, match="apply_b_dec_to_input"):
        D.build("transcoder", activation=activation, d_in=DIN, d_sae=F, d_out=7, apply_b_dec_to_input=True, **kw)


@pytest.mark.parametrize("arch", ["relu", "jumprelu", "gated"])
def test_fold_decoder_norms_changes_no_output(arch):
    spec = D.build(arch, d_in=DIN, d_sae=F)
    p, (x, _) = _rand_params(spec), _data()
    p["W_dec"] = p["W_dec"] * np.random.default_rng(3).uniform(0.2, 3.0, size=(F, 1)).astype(np.float32)
    q = spec.fold_decoder_norms(p)
    np.testing.assert_allclose(np.linalg.norm(q["W_dec"], axis=-1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(spec.forward(q, x), spec.forward(p, x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("arch", ["relu", "topk", "jumprelu", "gated"])
def test_fold_input_scaling_is_exact(arch):
    """A dictionary trained on c x behaves on raw x, after folding, exactly as before on c x."""
    spec = D.build(arch, d_in=DIN, d_sae=F, **({"k": 5} if arch == "topk" else {}))
    p, (x, _) = _rand_params(spec), _data()
    c = 3.7
    q = spec.fold_input_scaling(p, c, c)
    np.testing.assert_allclose(spec.forward(q, x), np.asarray(spec.forward(p, c * x)) / c, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(spec.encode(q, x), spec.encode(p, c * x), rtol=1e-4, atol=1e-5)


def test_batchtopk_converts_to_jumprelu_with_its_threshold():
    spec = D.build("batchtopk", d_in=DIN, d_sae=F, k=4)
    p, (x, _) = _rand_params(spec), _data()
    thr = 0.21
    inf_spec, q = spec.to_inference(p, {"threshold": jnp.float32(thr)})
    assert inf_spec.name == "jumprelu"
    a = np.maximum(np.asarray(spec.pre_acts(p, x)), 0)
    np.testing.assert_allclose(inf_spec.encode(q, x), np.where(a > thr, a, 0), rtol=1e-5, atol=1e-6)


def test_unknown_architecture_and_fields_are_named():
    with pytest.raises(ValueError, match="valid choices: relu, topk"):
        D.build("sparse_magic", d_in=4, d_sae=8)
    with pytest.raises(ValueError, match="unknown field"):
        D.build("relu", d_in=4, d_sae=8, k=3)
    with pytest.raises(ValueError, match="k must be"):
        D.build("topk", d_in=4, d_sae=8, k=9)


@pytest.mark.parametrize("k", [4, 40])  # 4 * 128 <= 1024: scatter backward; 40: dense backward
def test_encode_topk_custom_vjp_equals_autodiff(k):
    from jaxsae.dictionaries import latent_ops

    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((32, 16)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((16, 1024)), jnp.float32)
    b = jnp.asarray(rng.standard_normal(1024), jnp.float32)
    g = jnp.asarray(rng.standard_normal((32, k)), jnp.float32)

    def via(fn):
        return jax.grad(lambda x, w, b: jnp.sum(g * jax.nn.relu(fn(x, w, b)[0])), argnums=(0, 1, 2))(x, w, b)

    got = via(lambda x, w, b: latent_ops.encode_topk(x, w, b, k))
    want = via(lambda x, w, b: jax.lax.top_k(x @ w + b, k))
    for a, e in zip(got, want):
        np.testing.assert_allclose(a, e, rtol=1e-5, atol=1e-5)
    v, i = latent_ops.encode_topk(x, w, b, k)
    v0, i0 = jax.lax.top_k(x @ w + b, k)
    np.testing.assert_array_equal(i, i0)


def test_batchtopk_without_a_learned_threshold_refuses_to_export():
    spec = D.build("batchtopk", d_in=DIN, d_sae=F, k=4)
    with pytest.raises(ValueError, match="never estimated"):
        spec.to_inference(_rand_params(spec), {"threshold": jnp.float32(-1.0)})
