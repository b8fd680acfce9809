"""Test set-up: 8 fake CPU devices (set before JAX initialises its backend)."""

import dataclasses
import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax
import pytest

jax.config.update("jax_default_matmul_precision", "highest")


@pytest.fixture(scope="session")
def n_devices():
    n = jax.device_count()
    assert n == 8, f"expected 8 fake CPU devices, got {n}: XLA_FLAGS was set too late"
    return n


@pytest.fixture(scope="session")
def tiny_lm_dir(tmp_path_factory):
    """The HF directory of the 2-layer tiny Llama with a real BPE tokenizer (tests/tiny_lm.py), built
    once per test process."""
    from tiny_lm import make_tiny_lm

    return make_tiny_lm(str(tmp_path_factory.mktemp("tiny_lm")), layers=2)


@pytest.fixture(scope="session")
def tiny_lm_tok(tiny_lm_dir):
    """(model, tokenizer) of that tiny Llama, for every eval test that needs a language model."""
    from jaxsae import models

    return models.load(tiny_lm_dir), models.load_tokenizer(tiny_lm_dir)


@pytest.fixture(scope="session")
def shared_tmp(tmp_path_factory):
    """A directory every xdist worker of this test session shares (this session's own, never an
    earlier session's)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@pytest.fixture(scope="session")
def induction_model(shared_tmp):
    """(config, model, training log) of the 2-layer attention-only induction model
    (jaxsae.toy.induction, default config), trained once per test session: the first xdist worker
    to need it trains it and leaves its parameter values in the workers' shared temp directory."""
    import pickle

    import jax
    import numpy as np
    from filelock import FileLock

    from jaxsae.causal import interventions as iv
    from jaxsae.toy import induction

    cfg = induction.InductionConfig()
    path = shared_tmp / "induction_model.pkl"
    with FileLock(str(path) + ".lock"):
        if path.is_file():
            values, log = pickle.loads(path.read_bytes())
            slots, _ = iv.freeze(induction.build(cfg))
            lm = induction.build(cfg)
            return cfg, dataclasses.replace(lm, model=iv.bind(slots, values)), log
        lm, log = induction.train(cfg)
        _, values = iv.freeze(lm)
        path.write_bytes(pickle.dumps((jax.tree.map(np.asarray, values), log)))
        return cfg, lm, log


@pytest.fixture(scope="session")
def smollm2():
    """(model, tokenizer) of the packaged SmolLM2-135M-Instruct, loaded once per test process."""
    from jaxsae import models, packaged

    path = packaged.smollm2_path()
    return models.load(path), models.load_tokenizer(path)


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory):
    """The tiny random Llama with grouped-query attention (tests/tiny_models.py CASES["llama_gqa"]),
    as a jaxsae model, built once per test process."""
    from tiny_models import CASES, save_tiny

    from jaxsae import models

    kind, extra = CASES["llama_gqa"]
    d = tmp_path_factory.mktemp("tiny_llama_gqa")
    save_tiny(d, kind, **extra)
    return models.load(str(d))
