"""Cross-layer transcoders: the math against a NumPy reference, ground-truth recovery on the
layered toy for every activation, 1 device vs a (2, 4) mesh, exact resume, training from several
sites of one harvest, and the circuit-tracer export read back by circuit-tracer itself."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_same_params, toy_config, train_killed_then_resumed

from jaxsae import config as C
from jaxsae import sharding
from jaxsae.dictionaries import registry
from jaxsae.dictionaries.base import LossContext
from jaxsae.interop import circuit_tracer as ct_io
from jaxsae.train import loop

L, D, F, D_OUT, B = 3, 8, 12, 6, 20


def _spec(activation, d_out=D_OUT, **kw):
    return registry.build("clt", d_in=D, d_sae=F, d_out=d_out, n_layers=L, activation=activation, k=3, **kw)


def _params(spec, seed=0):
    p = spec.init(jax.random.key(seed))
    p = {k: np.asarray(v) for k, v in p.items()}
    rng = np.random.default_rng(seed)
    p["b_enc"] = rng.normal(0, 0.3, p["b_enc"].shape).astype(np.float32)
    p["b_dec"] = rng.normal(0, 0.3, p["b_dec"].shape).astype(np.float32)
    if "log_threshold" in p:
        p["log_threshold"] = np.log(rng.uniform(0.05, 0.6, p["log_threshold"].shape)).astype(np.float32)
    return p


def _ref_acts(spec, p, x):
    pre = np.einsum("bld,ldf->blf", x, p["W_enc"]) + p["b_enc"]
    if spec.activation == "jumprelu":
        return pre, pre * (pre > np.exp(p["log_threshold"]))
    if spec.activation == "topk":
        a = np.zeros_like(pre)
        for b in range(pre.shape[0]):
            for layer in range(L):
                top = np.argsort(-pre[b, layer])[: spec.k]
                a[b, layer, top] = np.maximum(pre[b, layer, top], 0)
        return pre, a
    a = np.maximum(pre, 0)
    out = np.zeros_like(a)
    for layer in range(L):  # the floor(B k) largest of the layer over the whole batch
        flat = a[:, layer].ravel()
        thr = np.sort(flat)[::-1][int(B * spec.k) - 1]
        out[:, layer] = np.where((a[:, layer] >= thr) & (a[:, layer] > 0), a[:, layer], 0)
    return pre, out


def _ref_decode(p, a):
    y = np.tile(p["b_dec"], (a.shape[0], 1, 1))
    for src in range(L):
        for dst in range(src, L):
            y[:, dst] += a[:, src] @ p[f"W_dec_{src}"][:, dst - src]
    return y


@pytest.mark.parametrize("activation", ["jumprelu", "topk", "batchtopk"])
def test_forward_and_loss_match_numpy(activation):
    spec = _spec(activation)
    p = _params(spec)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(B, L, D)).astype(np.float32)
    y = rng.normal(size=(B, L, D_OUT)).astype(np.float32)
    pre, a_ref = _ref_acts(spec, p, x)
    a = np.asarray(spec.encode(p, x))
    np.testing.assert_allclose(a, a_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(spec.decode(p, a)), _ref_decode(p, a_ref), rtol=1e-5, atol=1e-5)
    ctx = LossContext(jnp.float32(1.0), jnp.zeros((L, F), bool))
    out = spec.loss(p, x, y, ctx)
    rec = np.mean(np.sum((y - _ref_decode(p, a_ref)) ** 2, axis=(1, 2)))
    want = rec
    if activation == "jumprelu":
        # ||W_dec,i^l||: the norm of latent i's decoders to every layer it writes, concatenated
        norms = np.stack([np.sqrt((p[f"W_dec_{layer}"] ** 2).sum(axis=(1, 2))) for layer in range(L)])
        theta = np.exp(p["log_threshold"])
        want += spec.sparsity_coefficient * np.mean(np.tanh(spec.tanh_c * norms * a_ref).sum(axis=(1, 2)))
        want += spec.pre_act_coefficient * np.mean((np.maximum(theta - pre, 0) * norms).sum(axis=(1, 2)))
    np.testing.assert_allclose(float(out.metrics["loss_rec"]), rec, rtol=1e-5)
    if activation == "jumprelu":
        np.testing.assert_allclose(float(out.loss), want, rtol=1e-5)
    np.testing.assert_array_equal(np.asarray(out.fired_f), (a_ref > 0).any(0))
    # every parameter gets a finite gradient (thresholds through the straight-through estimator)
    grads = jax.grad(lambda q: spec.loss(q, x, y, ctx).loss)(p)
    assert set(grads) == set(p) and all(np.isfinite(np.asarray(g)).all() for g in grads.values())
    if activation == "jumprelu":
        assert grads["log_threshold"].shape == (L, F) and np.abs(np.asarray(grads["log_threshold"])).sum() > 0


def test_bad_specs_and_configs_say_what_to_change():
    with pytest.raises(ValueError, match="unknown activation 'gated'"):
        _spec("gated")
    with pytest.raises(ValueError, match="k must be in"):
        registry.build("clt", d_in=D, d_sae=F, n_layers=L, activation="topk", k=F + 1)
    with pytest.raises(ValueError, match="data.in_sites"):
        C.from_dict({"sae": {"architecture": "clt", "activation": "jumprelu"}, "data": {"source": "store", "path": "x"}})
    with pytest.raises(ValueError, match="toy.layers"):
        C.from_dict({"sae": {"architecture": "clt", "activation": "jumprelu"}})
    with pytest.raises(ValueError, match="one output site per input site"):
        C.from_dict({"data": {"source": "store", "path": "x", "in_sites": ["a", "b"], "out_sites": ["c"]}})


def _clt_config(activation, steps, **over):
    sae = {"activation": activation, "d_sae": 96, "k": 2}
    train = {"lr": 3e-3, "log_every": 100, "checkpoint_every": steps, "b_dec_samples": 1024, "dead_tokens": 20_000}
    sae.update(over.pop("sae", {}))
    train.update(over.pop("train", {}))
    return toy_config("clt", steps=steps, batch=512, sae=sae, train=train,
                      toy={"d_in": 16, "n_features": 48, "firing_prob": 0.03, "layers": 3}, **over)


def _one_device():
    return sharding.make_mesh(1, 1, jax.devices()[:1])  # sharding has its own test; 8 fake devices are slow


@pytest.mark.slow
@pytest.mark.parametrize("activation", ["topk", "batchtopk", "jumprelu"])
def test_recovers_the_true_cross_layer_features(activation, tmp_path):
    """On the layered toy (each layer's features write to every later layer), the learned
    concatenated decoders match the true write directions: >= 95% of the 144 features above
    cosine 0.9 (measured: topk 1.0, batchtopk 0.99, jumprelu 0.98)."""
    steps = {"topk": 1000, "batchtopk": 800, "jumprelu": 1500}[activation]  # each well past its plateau
    run = loop.train(_clt_config(activation, steps), str(tmp_path), mesh=_one_device(), progress=False)
    summary = json.load(open(tmp_path / "summary.json"))
    dec = summary["ground_truth"]["decoder_mean"]
    assert dec["frac_recovered"] >= 0.95 and dec["mmcs"] > 0.97, dec
    final = run.metrics[-1]
    assert final["fvu"] < 0.25 and 1.0 <= final["l0_per_layer"] <= 2.5, final  # true L0 per layer: 1.44
    # the export is circuit-tracer's layout plus jaxsae's cfg.json; it loads back to the same outputs
    sae = ct_io.load(str(tmp_path / "export"))
    assert sae.spec.name == "clt" and sae.spec.activation == ("topk" if activation == "topk" else "jumprelu")
    x, y = run.source.batch(10_000)
    fvu = float(((y - sae.forward(x)) ** 2).sum() / ((y - y.mean(0)) ** 2).sum())
    assert fvu < 0.3, fvu  # raw activations: input scaling folded into the weights


def test_sharded_over_latents_equals_one_device(tmp_path, n_devices):
    cfg = _clt_config("jumprelu", 6, sae={"d_sae": 64}, train={"lr": 1e-3, "dead_tokens": 512})
    one = loop.train(cfg, str(tmp_path / "one"), mesh=sharding.make_mesh(1, 1, jax.devices()[:1]), progress=False)
    eight = loop.train(cfg, str(tmp_path / "eight"), mesh=sharding.make_mesh(2, 4), progress=False)
    st = eight.state
    assert st.params["W_enc"].sharding.spec == jax.sharding.PartitionSpec(None, None, "model")
    for layer in range(3):  # every layer's decoders are split over latents: no device holds them all
        assert st.params[f"W_dec_{layer}"].sharding.spec == jax.sharding.PartitionSpec("model", None, None)
    assert st.dict_state["tokens_since_fired"].sharding.spec == jax.sharding.PartitionSpec(None, "model")
    assert st.scale_in.shape == (3, 1)  # one normalisation scale per layer
    for a, b in zip(one.metrics, eight.metrics, strict=True):
        np.testing.assert_allclose(a["loss"], b["loss"], rtol=2e-5)
    for name in one.state.params:
        np.testing.assert_allclose(np.asarray(one.state.params[name]), np.asarray(eight.state.params[name]),
                                   rtol=1e-4, atol=2e-6, err_msg=name)


def test_interrupted_run_resumes_bit_identically(tmp_path, monkeypatch):
    cfg = _clt_config("batchtopk", 30, sae={"d_sae": 32, "threshold_start_step": 5}, train={"checkpoint_every": 10})
    loop.train(cfg, str(tmp_path / "full"), mesh=_one_device(), progress=False)
    train_killed_then_resumed(cfg, str(tmp_path / "cut"), monkeypatch, 17, mesh=_one_device())
    assert_same_params(ct_io.load(str(tmp_path / "full" / "export")), ct_io.load(str(tmp_path / "cut" / "export")))
    # a third call changes nothing: the run had finished
    assert loop.train(cfg, str(tmp_path / "cut"), mesh=_one_device(), progress=False).already_finished


def test_circuit_tracer_loads_the_export_with_equal_encodings(tmp_path):
    import torch
    from circuit_tracer.transcoder.cross_layer_transcoder import load_clt

    from jaxsae.dictionaries.bound import SAE

    spec = _spec("jumprelu", d_out=D)  # circuit-tracer's CLT reads and writes d_model
    p = _params(spec, seed=3)
    sae = SAE(spec, p)
    ct_io.save(sae, str(tmp_path), {"in_sites": ["blocks.0.ln2.hook_normalized"], "out_sites": ["blocks.0.hook_mlp_out"]})
    clt = load_clt(str(tmp_path), device=torch.device("cpu"), dtype=torch.float32, lazy_decoder=False)
    x = np.random.default_rng(5).normal(size=(7, L, D)).astype(np.float32)
    ours = np.asarray(sae.encode(x))  # [B, L, F]
    theirs = clt.encode(torch.from_numpy(x.transpose(1, 0, 2))).detach().numpy()  # [L, B, F]
    np.testing.assert_allclose(theirs.transpose(1, 0, 2), ours, rtol=1e-5, atol=1e-6)
    assert (ours > 0).mean() > 0.1  # a real test: latents fire
    dense = torch.from_numpy(ours.transpose(1, 0, 2).copy())
    recon = clt.decode(dense.to_sparse()).detach().numpy()  # [L, B, O]
    np.testing.assert_allclose(recon.transpose(1, 0, 2), np.asarray(sae.decode(ours)), rtol=1e-5, atol=1e-5)
    cfg_yaml = open(tmp_path / "config.yaml").read()
    assert "model_kind: cross_layer_transcoder" in cfg_yaml and "feature_input_hook: ln2.hook_normalized" in cfg_yaml
    back = ct_io.load(str(tmp_path))
    np.testing.assert_allclose(np.asarray(back.encode(x)), ours, rtol=1e-6, atol=1e-6)


def test_transcoder_set_round_trips_through_circuit_tracer(tmp_path):
    import torch
    from circuit_tracer.transcoder.single_layer_transcoder import load_transcoder_set

    from jaxsae.dictionaries.bound import SAE

    saes = []
    for layer in range(2):
        spec = registry.build("transcoder", activation="jumprelu", d_in=D, d_sae=F, d_out=D, skip=True)
        p = {k: np.asarray(v) for k, v in spec.init(jax.random.key(layer)).items()}
        rng = np.random.default_rng(layer)
        p["b_enc"] = rng.normal(0, 0.5, F).astype(np.float32)
        p["W_skip"] = rng.normal(0, 0.1, (D, D)).astype(np.float32)
        p["b_dec"] = rng.normal(0, 0.1, D).astype(np.float32)
        p["log_threshold"] = np.log(rng.uniform(0.05, 0.5, F)).astype(np.float32)
        saes.append(SAE(spec, p))
    ct_io.save_transcoder_set(saes, str(tmp_path))
    ts = load_transcoder_set({i: str(tmp_path / f"layer_{i}.safetensors") for i in range(2)}, scan="t",
                             feature_input_hook="ln2.hook_normalized", feature_output_hook="hook_mlp_out",
                             device=torch.device("cpu"), dtype=torch.float32, lazy_encoder=False, lazy_decoder=False)
    x = np.random.default_rng(9).normal(size=(5, D)).astype(np.float32)
    for layer, sae in enumerate(saes):
        theirs = ts[layer].encode(torch.from_numpy(x)).detach().numpy()
        np.testing.assert_allclose(theirs, np.asarray(sae.encode(x)), rtol=1e-5, atol=1e-6)
        out = ts[layer].decode(torch.from_numpy(theirs), torch.from_numpy(x)).detach().numpy()
        np.testing.assert_allclose(out, np.asarray(sae.forward(x)), rtol=1e-5, atol=1e-5)
    back = ct_io.load(str(tmp_path))
    np.testing.assert_allclose(np.asarray(back[1].forward(x)), np.asarray(saes[1].forward(x)), rtol=1e-6, atol=1e-6)


def test_trains_from_the_sites_of_one_harvest_and_from_the_stream(tmp_path):
    """A CLT over the 3 layers of a tiny Llama: one harvest writes every layer's MLP input and
    output; the store and the stream give the same [B, L, d] rows, and training exports a CLT."""
    from tiny_lm import make_tiny_lm

    from jaxsae.config import LMConfig, TextConfig
    from jaxsae.data import harvest as harvest_lib
    from jaxsae.data.store_source import LayeredStoreSource
    from jaxsae.data.stream import StreamSource

    lm_dir = make_tiny_lm(str(tmp_path / "lm"))
    ins = tuple(f"blocks.{i}.ln2.hook_normalized" for i in range(3))
    outs = tuple(f"blocks.{i}.hook_mlp_out" for i in range(3))
    lm = LMConfig(path=lm_dir, sites=ins + outs, context=32, batch_windows=8, windows=16, buffer_batches=2)
    harvest_lib.harvest(lm, TextConfig(), str(tmp_path / "store"), progress=False)
    src = LayeredStoreSource(str(tmp_path / "store"), ins, outs, seed=0, batch_size=64)
    x, y = src.batch(0)
    assert x.shape == (64, 3, 32) and y.shape == (64, 3, 32) and src.n_layers == 3
    data = C.from_dict({"data": {"source": "stream", "in_sites": ins, "out_sites": outs,
                                 "lm": {"path": lm_dir, "sites": ins + outs, "context": 32, "batch_windows": 8,
                                        "buffer_batches": 2}}}).data
    stream = StreamSource(data, seed=0, batch_size=64)
    xs, ys = stream.batch(0)
    assert xs.shape == x.shape and ys.shape == y.shape
    # the stream's rows are rows of the harvest (the same forward), each x beside its own y
    store_x = np.concatenate([src.x[np.arange(src.n)][:, i] for i in range(3)], axis=1)
    store_y = np.concatenate([src.y[np.arange(src.n)][:, i] for i in range(3)], axis=1)
    row = np.argmin(((store_x - xs[0].reshape(-1)) ** 2).sum(1))
    np.testing.assert_allclose(store_x[row], xs[0].reshape(-1), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(store_y[row], ys[0].reshape(-1), rtol=1e-4, atol=1e-5)

    cfg = C.from_dict({"sae": {"architecture": "clt", "activation": "topk", "d_sae": 64, "k": 4},
                       "train": {"steps": 8, "batch_size": 64, "log_every": 4, "checkpoint_every": 8,
                                 "norm_batches": 2, "b_dec_samples": 128},
                       "data": {"source": "store", "path": str(tmp_path / "store"), "in_sites": ins, "out_sites": outs}})
    loop.train(cfg, str(tmp_path / "run"), mesh=_one_device(), progress=False)
    sae = ct_io.load(str(tmp_path / "run" / "export"))
    assert sae.spec.n_layers == 3 and sae.spec.d_in == 32
    meta = json.load(open(tmp_path / "run" / "export" / "cfg.json"))["metadata"]
    assert meta["in_sites"] == list(ins) and meta["out_sites"] == list(outs)
    with pytest.raises(ValueError, match="lacks the site"):
        LayeredStoreSource(str(tmp_path / "store"), ins, ("blocks.0.hook_attn_out",) * 3, 0, 64)
    assert os.path.isfile(tmp_path / "run" / "export" / "config.yaml")


@pytest.mark.slow
def test_gemma2_sized_clt_compiles_sharded_over_a_pod_mesh():
    """AOT-compile the train step of a CLT for a 26-layer d_model-2304 model (4096 latents per
    layer: 3.6B parameters, 40 GiB of train state) on a fake 64-device (4 x 16) mesh: the state is
    split 16 ways over latents and the step's peak stays far below a 16 GiB chip."""
    import subprocess
    import sys

    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=64", "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, "-m", "jaxsae.train.aot", "--arch=clt", "--activation=jumprelu",
                          "--n_layers=26", "--d_in=2304", "--d_sae=4096", "--batch=1024", "--devices=64",
                          "--model=16"], capture_output=True, text=True, env=env, timeout=600,
                         cwd=os.path.dirname(os.path.dirname(__file__)))
    assert out.returncode == 0, out.stderr[-3000:]
    r = json.loads(out.stdout)
    n_layers, d, f = 26, 2304, 4096
    dec = n_layers * (n_layers + 1) // 2 * f * d
    assert r["n_params"] == dec + n_layers * d * f + n_layers * f * 2 + n_layers * d  # + b_enc, threshold, b_dec
    batch_bytes = 2 * 1024 // 4 * n_layers * d * 4  # x and y, split over the 4-way data axis
    assert r["argument_size_in_bytes"] == pytest.approx(r["state_bytes_total"] / 16 + batch_bytes, rel=0.005)
    assert r["per_device_peak_estimate"] < 8 * 2**30, r
