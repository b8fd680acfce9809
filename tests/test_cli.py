"""The training binary: flags and dotted overrides, npy data, export, and errors for people."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(*args, timeout=300):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "", "PYTHONPATH": ROOT}
    return subprocess.run([sys.executable, "-m", "experiments.train_sae", "--config=configs/toy.py", *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def test_train_from_npy_writes_saelens_export(tmp_path):
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((3000, 24)) * 3 + 1).astype(np.float32)
    np.save(tmp_path / "acts.npy", x)
    out = _run(f"--workdir={tmp_path / 'run'}", "--config.data.source=npy", f"--config.data.path={tmp_path / 'acts.npy'}",
               "--config.sae.architecture=jumprelu", "--config.sae.d_sae=96", "--config.train.steps=30",
               "--config.train.batch_size=128", "--config.train.lr=1e-3", "--config.seed=3")
    assert out.returncode == 0, out.stderr[-3000:]
    cfg = json.load(open(tmp_path / "run" / "export" / "cfg.json"))
    assert (cfg["architecture"], cfg["d_in"], cfg["d_sae"]) == ("jumprelu", 24, 96)
    from safetensors.numpy import load_file

    w = load_file(tmp_path / "run" / "export" / "sae_weights.safetensors")
    assert {k: v.shape for k, v in w.items()} == {"W_enc": (24, 96), "b_enc": (96,), "W_dec": (96, 24),
                                                  "b_dec": (24,), "threshold": (96,)}
    # the export acts on raw activations: it reconstructs them better than their mean does
    from jaxsae.interop import saelens

    sae = saelens.load(str(tmp_path / "run" / "export"))
    err = np.mean(np.sum((np.asarray(sae(x)) - x) ** 2, -1))
    assert err < np.mean(np.sum((x - x.mean(0)) ** 2, -1))


@pytest.mark.parametrize("arch,extra", [("relu", []), ("batchtopk", ["--config.sae.k=3"]),
                                        ("gated", []), ("matryoshka", ["--config.sae.k=3"]),
                                        ("transcoder", ["--config.data.toy.d_out=20", "--config.sae.skip=true"])])
def test_architecture_flag(arch, extra, tmp_path):
    out = _run(f"--workdir={tmp_path}", f"--config.sae.architecture={arch}", "--config.sae.d_sae=128",
               "--config.train.steps=10", "--config.train.batch_size=64", *extra)
    assert out.returncode == 0, out.stderr[-3000:]
    cfg = json.load(open(tmp_path / "export" / "cfg.json"))
    want = {"relu": "standard", "batchtopk": "jumprelu", "gated": "gated", "matryoshka": "jumprelu",
            "transcoder": "topk_skip_transcoder"}[arch]
    assert cfg["architecture"] == want


def test_unknown_architecture_names_the_choices(tmp_path):
    out = _run(f"--workdir={tmp_path}", "--config.sae.architecture=sparsemax")
    assert out.returncode == 2
    assert "sparsemax" in out.stderr and "relu, topk, batchtopk, jumprelu, gated, matryoshka, transcoder" in out.stderr


def test_missing_data_file_is_named(tmp_path):
    out = _run(f"--workdir={tmp_path}", "--config.data.source=npy", f"--config.data.path={tmp_path}/nope.npy")
    assert out.returncode == 2 and "nope.npy" in out.stderr and "no such file" in out.stderr


def test_wrong_width_data_fails_at_once(tmp_path):
    np.save(tmp_path / "a.npy", np.zeros((100, 8), np.float32))
    np.save(tmp_path / "b.npy", np.zeros((100, 5), np.float32))
    out = _run(f"--workdir={tmp_path / 'r'}", "--config.data.source=npy", f"--config.data.path={tmp_path}/a.npy",
               f"--config.data.y_path={tmp_path}/b.npy", "--config.sae.d_out=7", "--config.sae.architecture=transcoder")
    assert out.returncode == 2 and "d_out=7" in out.stderr and "width is 5" in out.stderr
    np.save(tmp_path / "c.npy", np.zeros((100,), np.float32))
    out = _run(f"--workdir={tmp_path / 'r2'}", "--config.data.source=npy", f"--config.data.path={tmp_path}/c.npy")
    assert out.returncode == 2 and "2-D float array" in out.stderr


def test_bad_config_value_is_named(tmp_path):
    out = _run(f"--workdir={tmp_path}", "--config.train.normalize=zscore")
    assert out.returncode == 2 and "train.normalize='zscore'" in out.stderr and "expected_norm" in out.stderr
