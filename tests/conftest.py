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
