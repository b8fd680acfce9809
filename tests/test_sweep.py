"""Vmapped sweeps: each of N dictionaries trained in one compiled step equals the separate run with
its settings (k, learning rate, sparsity coefficient; unrolled and vmapped forms), on one device
and on a (2, 4) mesh; an interrupted sweep resumes bit-identically; the binary writes one export
per dictionary and the table."""

import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from helpers import batches_dying_after, toy_config

from jaxsae import config as C
from jaxsae import sharding
from jaxsae.interop import saelens
from jaxsae.train import loop, sweep


def _one():
    return sharding.make_mesh(1, 1, jax.devices()[:1])


def _separate(cfg, v, workdir, mesh):
    d = C.to_dict(cfg)
    for k, val in v.items():
        if k == "lr":
            d["train"]["lr"] = val
        elif k == "seed":
            d["seed"] = val
        else:
            d["sae"][k] = val
    loop.train(C.from_dict(d), workdir, mesh=mesh, progress=False)
    return saelens.load(os.path.join(workdir, "export"))


@pytest.mark.parametrize("arch,grid,unroll", [
    ("topk", {"k": [4, 8], "lr": [1e-3, 3e-3]}, True),
    ("batchtopk", {"k": [4, 8]}, False),  # vmapped: the smaller k as a traced limit below the spec's
    ("jumprelu", {"sparsity_coefficient": [1e-3, 1e-2], "lr": [1e-3, 3e-3]}, False),
])
def test_each_dictionary_equals_its_separate_run(arch, grid, unroll, tmp_path, monkeypatch):
    monkeypatch.setattr(sweep.Sweep, "unroll", unroll)
    variants = sweep.variants(grid)
    cfg = toy_config(arch, steps=16, d_sae=64, train={"dead_tokens": 512, "checkpoint_every": 8})
    run = loop.train(cfg, str(tmp_path / "sweep"), mesh=_one(), progress=False, sweep=variants)
    assert run.spec.n == len(variants)
    for i, v in enumerate(variants):
        a = saelens.load(str(tmp_path / "sweep" / "export" / str(i)))
        b = _separate(cfg, v, str(tmp_path / f"sep{i}"), _one())
        assert a.spec == b.spec, (a.spec, b.spec)
        for k in b.params:
            np.testing.assert_allclose(np.asarray(a.params[k]), np.asarray(b.params[k]), rtol=1e-5, atol=2e-6,
                                       err_msg=f"{v} {k}")
    table = (tmp_path / "sweep" / "sweep.csv").read_text().splitlines()
    assert len(table) == 1 + len(variants) and "eval_fvu" in table[0] and "gt_mmcs" in table[0]


def test_sharded_sweep_equals_one_device_and_resumes_exactly(tmp_path, monkeypatch, n_devices):
    from jaxsae.data import pipeline

    variants = sweep.variants({"k": [4, 8], "seed": [0, 1]})
    cfg = toy_config("topk", steps=20, d_sae=64, train={"dead_tokens": 512, "checkpoint_every": 10})
    one = loop.train(cfg, str(tmp_path / "one"), mesh=_one(), progress=False, sweep=variants)
    eight = loop.train(cfg, str(tmp_path / "eight"), mesh=sharding.make_mesh(2, 4), progress=False, sweep=variants)
    assert eight.state.params["W_dec"].sharding.spec == jax.sharding.PartitionSpec(None, "model", None)
    for name in one.state.params:
        np.testing.assert_allclose(np.asarray(one.state.params[name]), np.asarray(eight.state.params[name]),
                                   rtol=1e-4, atol=2e-6, err_msg=name)
    real = pipeline.batches
    monkeypatch.setattr(pipeline, "batches", batches_dying_after(real, 13))
    with pytest.raises(KeyboardInterrupt):
        loop.train(cfg, str(tmp_path / "cut"), mesh=_one(), progress=False, sweep=variants)
    monkeypatch.setattr(pipeline, "batches", real)
    loop.train(cfg, str(tmp_path / "cut"), mesh=_one(), progress=False, sweep=variants)
    for i in range(len(variants)):
        a = saelens.load(str(tmp_path / "one" / "export" / str(i)))
        b = saelens.load(str(tmp_path / "cut" / "export" / str(i)))
        for k in a.params:
            np.testing.assert_array_equal(np.asarray(a.params[k]), np.asarray(b.params[k]))
    assert loop.train(cfg, str(tmp_path / "cut"), mesh=_one(), progress=False, sweep=variants).already_finished


def test_sweep_binary_and_its_errors(tmp_path):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    base = [sys.executable, "-m", "experiments.sweep", "--config=configs/toy.py", "--config.train.steps=20",
            "--config.train.batch_size=256", "--config.train.checkpoint_every=20", "--config.sae.d_sae=128",
            "--config.train.b_dec_samples=512", "--config.train.norm_batches=2"]
    r = subprocess.run(base + [f"--workdir={tmp_path / 's'}", "--k=4,8", "--lr=1e-3,3e-3"], capture_output=True,
                       text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "| dict | k | lr |" in r.stdout
    for i in range(4):
        assert saelens.load(str(tmp_path / "s" / "export" / str(i))).spec.k == (4, 4, 8, 8)[i]
    one = subprocess.run(base + [f"--workdir={tmp_path / 'o'}", "--k=4"], capture_output=True, text=True, env=env,
                         timeout=600)
    assert one.returncode == 2 and "at least two settings" in one.stderr
    with pytest.raises(ValueError, match="cannot sweep"):
        sweep.variants({"d_sae": [64, 128]})
