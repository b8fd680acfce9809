"""Harvest and evaluation outputs get the training run's guarantees: one writer per directory,
atomic files, a killed job resumes to exactly what an uninterrupted one writes, a finished one is
left alone, and activations holding nan/inf are never stored."""

import json
import os

import numpy as np
import pytest
from tiny_lm import make_tiny_lm

from jaxsae import config as C
from jaxsae import runlock
from jaxsae.config import LMConfig, TextConfig
from jaxsae.data import harvest as harvest_lib
from jaxsae.data import store as store_lib
from jaxsae.evals import core
from jaxsae.evals.run import PROGRESS, evaluate_export
from jaxsae.train import loop

SITE = "blocks.1.hook_resid_post"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("guarantees")
    lm_dir = make_tiny_lm(str(root / "lm"), layers=2)
    lm_cfg = LMConfig(path=lm_dir, sites=(SITE,), context=32, batch_windows=8, windows=32)
    harvest_lib.harvest(lm_cfg, TextConfig(), str(root / "store"), progress=False)
    cfg = C.from_dict({"sae": {"architecture": "topk", "d_sae": 64, "k": 4},
                       "train": {"steps": 20, "batch_size": 64, "log_every": 10, "checkpoint_every": 10,
                                 "dead_tokens": 4000, "b_dec_samples": 256, "norm_batches": 2},
                       "data": {"source": "store", "path": str(root / "store"),
                                "lm": {"path": lm_dir, "sites": [SITE], "context": 32, "batch_windows": 8}}})
    loop.train(cfg, str(root / "run"), progress=False)
    return root, lm_cfg, cfg


def _eval(trained, out):
    _, _, cfg = trained
    return evaluate_export(str(trained[0] / "run" / "export"), cfg.data, str(out), windows=32, downstream_windows=16,
                           n_latents=2, progress=False)


def test_killed_evaluation_resumes_to_the_same_metrics(trained, tmp_path, monkeypatch, caplog):
    whole = _eval(trained, tmp_path / "whole")
    monkeypatch.setattr(core, "PROGRESS_EVERY_S", 0.0)  # save after every batch (a long evaluation's pace)
    saves = {"n": 0}
    real_save = core._Progress.save

    def dying_save(self, force=False):
        real_save(self, force)
        saves["n"] += 1
        if saves["n"] == 3:  # mid-way: after the 3rd of 4 reconstruction batches
            raise KeyboardInterrupt

    monkeypatch.setattr(core._Progress, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        _eval(trained, tmp_path / "cut")
    monkeypatch.setattr(core._Progress, "save", real_save)
    assert os.path.isfile(tmp_path / "cut" / PROGRESS) and not os.path.exists(tmp_path / "cut" / "metrics.json")
    with caplog.at_level("INFO", logger="jaxsae"):
        resumed = _eval(trained, tmp_path / "cut")
    assert "evaluation resumes at reconstruction window 24" in caplog.text
    assert resumed == whole
    assert not os.path.exists(tmp_path / "cut" / PROGRESS)  # removed once complete
    assert json.load(open(tmp_path / "cut" / "metrics.json")) == json.load(open(tmp_path / "whole" / "metrics.json"))


def test_finished_evaluation_is_left_alone(trained, tmp_path, caplog):
    first = _eval(trained, tmp_path)
    stamps = {f: os.stat(tmp_path / f).st_mtime_ns for f in os.listdir(tmp_path)}
    with caplog.at_level("INFO", logger="jaxsae"):
        again = _eval(trained, tmp_path)
    assert "already holds this evaluation" in caplog.text and again == first
    assert {f: os.stat(tmp_path / f).st_mtime_ns for f in os.listdir(tmp_path)} == stamps


def test_one_evaluation_per_directory(trained, tmp_path):
    lock = runlock.acquire(str(tmp_path), "evaluation")
    try:
        with pytest.raises(runlock.LockedError, match=rf"{tmp_path} is in use by pid {os.getpid()} on host "):
            _eval(trained, tmp_path)
    finally:
        lock.release()
    assert not os.path.exists(tmp_path / "metrics.json")


def test_one_harvest_per_store(trained, tmp_path):
    _, lm_cfg, _ = trained
    lock = runlock.acquire(str(tmp_path / "store"), "harvest")
    try:
        with pytest.raises(runlock.LockedError, match=r"is in use by pid \d+ on host .*\(harvest since"):
            harvest_lib.harvest(lm_cfg, TextConfig(), str(tmp_path / "store"), progress=False)
    finally:
        lock.release()
    assert not os.path.exists(tmp_path / "store" / store_lib.MANIFEST)


def test_nonfinite_activations_are_never_stored(trained, tmp_path, monkeypatch):
    _, lm_cfg, _ = trained
    real = harvest_lib.sites.capture_fn

    def capture_fn(model, names):
        inner = real(model, names)
        calls = {"n": 0}

        def capture(tokens):
            calls["n"] += 1
            acts = inner(tokens)
            return {k: v * np.float32("inf") for k, v in acts.items()} if calls["n"] == 2 else acts

        return capture

    monkeypatch.setattr(harvest_lib.sites, "capture_fn", capture_fn)
    with pytest.raises(store_lib.StoreError, match=r"hold nan/inf in windows 8..15; nothing of this batch was written"):
        harvest_lib.harvest(lm_cfg, TextConfig(), str(tmp_path / "store"), progress=False)
    manifest = store_lib.read_manifest(str(tmp_path / "store"))
    assert manifest["windows_done"] == 8 and not manifest["complete"]
    monkeypatch.setattr(harvest_lib.sites, "capture_fn", real)  # the cause fixed: the rerun resumes and finishes
    harvest_lib.harvest(lm_cfg, TextConfig(), str(tmp_path / "store"), progress=False)
    a = store_lib.Store(str(tmp_path / "store"), verify=True).site(SITE)
    b = store_lib.Store(str(trained[0] / "store")).site(SITE)
    np.testing.assert_array_equal(a[np.arange(len(a))], b[np.arange(len(b))])


def test_interrupted_harvest_says_how_to_resume(trained, tmp_path, monkeypatch):
    _, lm_cfg, _ = trained
    real = store_lib.write_manifest
    calls = {"n": 0}

    def write_then_interrupt(root, manifest):
        real(root, manifest)
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(store_lib, "write_manifest", write_then_interrupt)
    with pytest.raises(KeyboardInterrupt, match=r"harvest interrupted after 16 windows .*rerun the same command to "
                                                r"resume from there"):
        harvest_lib.harvest(lm_cfg, TextConfig(), str(tmp_path / "store"), progress=False)


def test_interrupted_evaluation_says_how_to_resume(trained, tmp_path, monkeypatch):
    monkeypatch.setattr(core, "PROGRESS_EVERY_S", 0.0)
    real = core._Progress.save

    def save_then_interrupt(self, force=False):
        real(self, force)
        raise KeyboardInterrupt

    monkeypatch.setattr(core._Progress, "save", save_then_interrupt)
    with pytest.raises(KeyboardInterrupt, match=r"evaluation interrupted; its progress is saved in .*: rerun the "
                                                r"same command to resume"):
        _eval(trained, tmp_path)
