"""Text sources, the Grain token pipeline, and the activation store: windows start with BOS and
BOS never reaches the store; a killed harvest resumes to exactly the uninterrupted rows; stored
rows equal the model's own site values; a corrupt shard is named."""

import json
import os

import numpy as np
import pytest
from tiny_lm import make_tiny_lm

from jaxsae import models, sites
from jaxsae.config import LMConfig, TextConfig
from jaxsae.data import harvest as harvest_lib
from jaxsae.data import store as store_lib
from jaxsae.data import text as text_lib
from jaxsae.data import tokens as tokens_lib


@pytest.fixture(scope="module")
def lm_dir(tmp_path_factory):
    return make_tiny_lm(str(tmp_path_factory.mktemp("tiny_lm")))


def test_every_text_source_reads_the_same_documents(tmp_path):
    docs = ["First doc.\nTwo lines.", "Second document", "third"]
    folder = tmp_path / "txt"
    folder.mkdir()
    for i, d in enumerate(docs):
        (folder / f"{i}.txt").write_text(d)
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps({"text": d, "id": i}) for i, d in enumerate(docs)))
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"body": docs}), tmp_path / "d.parquet")
    import datasets

    datasets.Dataset.from_dict({"text": docs}).save_to_disk(str(tmp_path / "hf"))
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": docs})}).save_to_disk(str(tmp_path / "hfd"))
    assert text_lib.read_documents("text", str(folder)) == docs
    assert text_lib.read_documents("jsonl", str(tmp_path / "d.jsonl")) == docs
    assert text_lib.read_documents("parquet", str(tmp_path / "d.parquet"), field="body") == docs
    assert text_lib.read_documents("hf_disk", str(tmp_path / "hf")) == docs
    assert text_lib.read_documents("hf_disk", str(tmp_path / "hfd"), split="train") == docs
    plays = text_lib.read_documents("shakespeare")
    assert len(plays) > 30 and sum(map(len, plays)) > 4_000_000
    with pytest.raises(text_lib.TextSourceError, match="no field 'body'"):
        text_lib.read_documents("jsonl", str(tmp_path / "d.jsonl"), field="body")
    with pytest.raises(text_lib.TextSourceError, match="no column 'text'"):
        text_lib.read_documents("parquet", str(tmp_path / "d.parquet"))
    with pytest.raises(text_lib.TextSourceError, match="splits \\['train'\\], not 'test'"):
        text_lib.read_documents("hf_disk", str(tmp_path / "hfd"), split="test")
    with pytest.raises(text_lib.TextSourceError, match="no such file or folder"):
        text_lib.read_documents("text", str(tmp_path / "nope"))


def test_windows_start_with_bos_and_shard_disjointly(lm_dir):
    tok = models.load_tokenizer(lm_dir)
    docs = text_lib.read_documents("shakespeare")[:3]
    ds = tokens_lib.windows(docs, tok, 64, seed=0)
    w = tokens_lib.batch_array(ds, 0, len(ds))
    assert w.shape[1] == 64 and (w[:, 0] == tok.bos_id).all()
    # every document's tokens appear, in order, between the BOS markers (nothing lost but the tail)
    stream = np.concatenate([[tok.bos_id, *tok.encode(d)] for d in
                             [docs[i] for i in tokens_lib.grain.MapDataset.source(list(range(3))).shuffle(seed=0)]])
    rebuilt = np.sort(np.asarray([ds[i] for i in range(len(ds))]), axis=0)
    body = stream[: len(ds) * 63].reshape(-1, 63)
    np.testing.assert_array_equal(rebuilt, np.sort(np.concatenate([np.zeros((len(body), 1), np.int32), body], 1), 0))
    again = tokens_lib.windows(docs, tok, 64, seed=0)
    np.testing.assert_array_equal(tokens_lib.batch_array(again, 0, 5), w[:5])
    other = tokens_lib.windows(docs, tok, 64, seed=1)
    assert not np.array_equal(tokens_lib.batch_array(other, 0, 5), w[:5])
    parts = [tokens_lib.for_process(ds, p, 3) for p in range(3)]
    assert sum(len(p) for p in parts) == len(ds)
    got = np.sort(np.concatenate([tokens_lib.batch_array(p, 0, len(p)) for p in parts]), axis=0)
    np.testing.assert_array_equal(got, np.sort(w, axis=0))
    mask = tokens_lib.content_mask(w, tokens_lib.special_ids(tok))
    assert not mask[:, 0].any() and mask.sum() == (w != tok.bos_id).sum()


def _cfgs(lm_dir, **over):
    lm = LMConfig(**{"path": lm_dir, "sites": ("blocks.1.hook_resid_post", "blocks.0.hook_mlp_out"), "context": 32,
                     "batch_windows": 4, "windows": 24, **over})
    return lm, TextConfig(kind="shakespeare")


def _rows(root, site):
    st = store_lib.Store(root, verify=True)
    rows = st.site(site)
    return rows[np.arange(len(rows))]


def test_killed_harvest_resumes_to_exactly_the_uninterrupted_store(lm_dir, tmp_path, monkeypatch):
    lm_cfg, text_cfg = _cfgs(lm_dir)
    full = harvest_lib.harvest(lm_cfg, text_cfg, str(tmp_path / "full"), progress=False)
    assert full["complete"] and full["windows_done"] == 24 and len(full["sites"]["blocks.1.hook_resid_post"]["shards"]) == 6

    calls = {"n": 0}
    real = store_lib.write_manifest

    def dying(root, manifest):  # dies after its shards of batch 3 are on disk but before they are listed
        calls["n"] += 1
        if calls["n"] == 3:
            open(os.path.join(root, "blocks.0.hook_mlp_out", "shard_000003.npy.tmp-1"), "wb").write(b"half")
            raise KeyboardInterrupt("killed")
        real(root, manifest)

    monkeypatch.setattr(store_lib, "write_manifest", dying)
    with pytest.raises(KeyboardInterrupt):
        harvest_lib.harvest(lm_cfg, text_cfg, str(tmp_path / "cut"), progress=False)
    monkeypatch.setattr(store_lib, "write_manifest", real)
    partial = store_lib.read_manifest(str(tmp_path / "cut"))
    assert partial["windows_done"] == 8 and not partial["complete"]
    with pytest.raises(store_lib.StoreError, match="stopped after 8 of 24 windows"):
        store_lib.Store(str(tmp_path / "cut"))
    resumed = harvest_lib.harvest(lm_cfg, text_cfg, str(tmp_path / "cut"), progress=False)
    assert resumed == full
    for site in lm_cfg.sites:
        np.testing.assert_array_equal(_rows(str(tmp_path / "cut"), site), _rows(str(tmp_path / "full"), site))
    assert not [f for _, _, fs in os.walk(tmp_path / "cut") for f in fs if ".tmp-" in f]
    with pytest.raises(store_lib.StoreError, match="different settings"):
        harvest_lib.harvest(LMConfig(**{**lm_cfg.__dict__, "context": 16}), text_cfg, str(tmp_path / "cut"),
                            progress=False)


def test_store_rows_are_the_models_site_values_at_text_positions(lm_dir, tmp_path):
    lm_cfg, text_cfg = _cfgs(lm_dir, dtype="float32")
    man = harvest_lib.harvest(lm_cfg, text_cfg, str(tmp_path / "s"), progress=False)
    lm, tok = harvest_lib.load_lm(lm_cfg)
    ds = harvest_lib.token_windows(text_cfg, tok, 32, 0)
    tokens = tokens_lib.batch_array(ds, 0, 24)
    _, cache = sites.run_with_cache(lm, tokens, list(lm_cfg.sites))
    keep = tokens_lib.content_mask(tokens, tokens_lib.special_ids(tok))
    for site in lm_cfg.sites:
        want = np.asarray(cache[site])[keep]
        np.testing.assert_allclose(_rows(str(tmp_path / "s"), site), want, rtol=1e-5, atol=1e-6)
        assert man["sites"][site]["mean_sq_norm"] == pytest.approx(float((want.astype(np.float64) ** 2).sum(1).mean()),
                                                                   rel=1e-5)
    assert man["tokens"] == int(keep.sum()) == 24 * 31


def test_corrupt_or_truncated_shards_are_named(lm_dir, tmp_path):
    lm_cfg, text_cfg = _cfgs(lm_dir, windows=8)
    root = str(tmp_path / "s")
    harvest_lib.harvest(lm_cfg, text_cfg, root, progress=False)
    shard = os.path.join(root, "blocks.1.hook_resid_post", "shard_000001.npy")
    data = bytearray(open(shard, "rb").read())
    data[-5] ^= 0xFF
    open(shard, "wb").write(bytes(data))
    with pytest.raises(store_lib.StoreError, match="corrupt shard .*shard_000001.npy"):
        store_lib.Store(root, verify=True)
    open(shard, "wb").write(bytes(data[: len(data) // 2]))
    with pytest.raises(store_lib.StoreError, match="corrupt shard .*shard_000001.npy"):
        store_lib.Store(root).site("blocks.1.hook_resid_post")
    with pytest.raises(store_lib.StoreError, match="no manifest.json"):
        store_lib.Store(str(tmp_path))


def test_bfloat16_harvest_stores_bfloat16_rows(lm_dir, tmp_path):
    lm_cfg, text_cfg = _cfgs(lm_dir, windows=8)
    f32 = _rows(harvest_lib.harvest(lm_cfg, text_cfg, str(tmp_path / "a"), progress=False) and str(tmp_path / "a"),
                "blocks.1.hook_resid_post")
    bf = LMConfig(**{**lm_cfg.__dict__, "dtype": "bfloat16"})
    harvest_lib.harvest(bf, text_cfg, str(tmp_path / "b"), progress=False)
    rows = _rows(str(tmp_path / "b"), "blocks.1.hook_resid_post")
    assert rows.dtype == "bfloat16" and rows.shape == f32.shape
    assert os.path.getsize(os.path.join(tmp_path / "b", "blocks.1.hook_resid_post", "shard_000000.npy")) < \
        0.6 * os.path.getsize(os.path.join(tmp_path / "a", "blocks.1.hook_resid_post", "shard_000000.npy"))
    rel = np.abs(rows.astype(np.float32) - f32).max() / np.abs(f32).max()
    assert rel < 0.05, rel  # a bf16 model's activations, close to the float32 ones


def test_harvest_with_the_batch_sharded_over_eight_devices_equals_one(lm_dir, tmp_path):
    from jaxsae import sharding

    lm_cfg, text_cfg = _cfgs(lm_dir, windows=16, batch_windows=8)
    harvest_lib.harvest(lm_cfg, text_cfg, str(tmp_path / "one"), progress=False)
    harvest_lib.harvest(lm_cfg, text_cfg, str(tmp_path / "eight"), mesh=sharding.make_mesh(8, 1), progress=False)
    for site in lm_cfg.sites:
        np.testing.assert_allclose(_rows(str(tmp_path / "eight"), site), _rows(str(tmp_path / "one"), site),
                                   rtol=1e-5, atol=1e-6)
