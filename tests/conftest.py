"""Test set-up: 8 fake CPU devices (set before JAX initialises its backend)."""

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
def tiny_lm_tok(tmp_path_factory):
    """(model, tokenizer) of the 2-layer tiny Llama with a real BPE tokenizer (tests/tiny_lm.py), built
    once per test process for every eval test that needs a language model."""
    from tiny_lm import make_tiny_lm

    from jaxsae import models

    d = make_tiny_lm(str(tmp_path_factory.mktemp("tiny_lm")), layers=2)
    return models.load(d), models.load_tokenizer(d)


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
