"""Training from an activation store through Grain: per-process shares add up to the global batch,
the data iterator's state lives in the same checkpoint as the train state, and a run interrupted
and resumed ends bit-identical to an uninterrupted one."""

import json
import os

import numpy as np
import pytest
from helpers import batches_dying_after, toy_config
from tiny_lm import make_tiny_lm

from jaxsae import config as C
from jaxsae.config import LMConfig, TextConfig
from jaxsae.data import harvest as harvest_lib
from jaxsae.data import pipeline
from jaxsae.data.store_source import StoreSource
from jaxsae.interop import saelens
from jaxsae.train import loop

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
    monkeypatch.setattr(pipeline, "batches", batches_dying_after(real, 27))
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


def test_streaming_mixes_the_same_rows_a_store_holds_and_resumes_by_step(store_dir, tmp_path):
    """Streaming: chunk 0 holds exactly the activations a harvest of the same windows stores, in a
    seeded shuffle; batch(step) of a fresh source (a resumed run) equals the original's; a stream
    run trains end to end."""
    from jaxsae.data.store import Store
    from jaxsae.data.stream import StreamSource

    man = json.load(open(os.path.join(store_dir, "manifest.json")))
    data = C.from_dict({"data": {"source": "stream", "site": SITE,
                                 "lm": {"path": man["model"], "sites": [SITE], "context": 32, "batch_windows": 8,
                                        "buffer_batches": 2}}}).data
    a = StreamSource(data, seed=0, batch_size=64)
    rows = Store(store_dir).site(SITE)
    stored = rows[np.arange(a.starts[1])]  # the store's first 16 windows = the stream's first chunk
    np.testing.assert_allclose(np.sort(a._chunk(0), axis=0), np.sort(stored, axis=0), rtol=1e-5, atol=1e-6)
    assert not np.allclose(a._chunk(0), stored)  # mixed, not in window order
    late = a.epoch_rows // 64 + 3  # a step in the second epoch
    want = a.batch(late)[0]
    b = StreamSource(data, seed=0, batch_size=64)
    np.testing.assert_array_equal(b.batch(late)[0], want)
    cfg = C.from_dict({**C.to_dict(_cfg(store_dir, steps=20)), "data": C.to_dict(C.Config(data=data))["data"]})
    run = loop.train(cfg, str(tmp_path / "stream"), progress=False)
    assert run.metrics[-1]["step"] == 19 and np.isfinite(run.metrics[-1]["loss"])
