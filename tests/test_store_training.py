"""Training from an activation store through Grain: per-process shares add up to the global batch,
the data iterator's state lives in the same checkpoint as the train state, and a run interrupted
and resumed ends bit-identical to an uninterrupted one."""

import json
import os

import numpy as np
import pytest

from helpers import toy_config
from jaxsae import config as C
from jaxsae.config import LMConfig, TextConfig
from jaxsae.data import harvest as harvest_lib
from jaxsae.data import pipeline
from jaxsae.data.store_source import StoreSource
from jaxsae.interop import saelens
from jaxsae.train import loop
from tiny_lm import make_tiny_lm

SITE = "blocks.1.hook_resid_post"


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory):
    lm_dir = make_tiny_lm(str(tmp_path_factory.mktemp("lm")))
    root = str(tmp_path_factory.mktemp("store"))
    harvest_lib.harvest(LMConfig(path=lm_dir, sites=(SITE, "blocks.0.hook_resid_post"), context=32, batch_windows=8,
                                 windows=64), TextConfig(), root, progress=False)
    return root


def _cfg(store_dir, steps=40):
    base = C.to_dict(toy_config("topk", steps=steps, batch=64, d_sae=64))
    base["data"] = {"source": "store", "path": store_dir, "site": SITE}
    return C.from_dict(base)


def test_process_shares_make_up_the_global_batch(store_dir):
    whole = StoreSource(store_dir, SITE, seed=3, batch_size=64)
    parts = [StoreSource(store_dir, SITE, seed=3, batch_size=64, process=(p, 2)) for p in range(2)]
    for step in (0, 5, 40):  # 40 crosses an epoch boundary (64 windows x 31 tokens = 1984 rows)
        x, _ = whole.batch(step)
        np.testing.assert_array_equal(np.concatenate([p.batch(step)[0] for p in parts]), x)
    assert whole.n == 64 * 31
    with pytest.raises(ValueError, match="choose one with --config.data.site"):
        StoreSource(store_dir, None, 0, 64)
    with pytest.raises(ValueError, match="does not split over 3 processes"):
        StoreSource(store_dir, SITE, 0, 64, process=(0, 3))


def test_interrupted_store_training_resumes_bit_identically(store_dir, tmp_path, monkeypatch):
    cfg = _cfg(store_dir)
    loop.train(cfg, str(tmp_path / "full"), progress=False)
    real = pipeline.batches

    def dying(*a, **k):
        it = real(*a, **k)

        class Dies:
            n = 0

            def __next__(self):
                Dies.n += 1
                if Dies.n > 27:
                    raise KeyboardInterrupt("killed at step 27")
                return next(it)

            def get_state(self):
                return it.get_state()

        return Dies()

    monkeypatch.setattr(pipeline, "batches", dying)
    with pytest.raises(KeyboardInterrupt):
        loop.train(cfg, str(tmp_path / "cut"), progress=False)
    monkeypatch.setattr(pipeline, "batches", real)
    ck = tmp_path / "cut" / "checkpoints"
    done = sorted(int(s) for s in os.listdir(ck) if s.isdigit())  # the save at 20 may still be in flight
    assert done and done[0] == 10
    with open(ck / "10" / "data" / "metadata") as f:
        assert json.load(f) == {"next_index": 10}
    loop.train(cfg, str(tmp_path / "cut"), progress=False)
    a = saelens.load(str(tmp_path / "full" / "export"))
    b = saelens.load(str(tmp_path / "cut" / "export"))
    for k in a.params:
        np.testing.assert_array_equal(np.asarray(a.params[k]), np.asarray(b.params[k]))
