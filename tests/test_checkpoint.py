"""Checkpoints: SIGKILL mid-run and resume ends bit-identical to an uninterrupted run; corrupt or
mismatched checkpoints are clear errors, never a silent restart."""

import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from helpers import toy_config

from jaxsae.train import loop
from jaxsae.train.checkpoint import CheckpointError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 400


def _cmd(workdir):
    return [sys.executable, "-m", "experiments.train_sae", "--config=configs/toy.py", f"--workdir={workdir}",
            f"--config.train.steps={STEPS}", "--config.train.batch_size=256", "--config.train.checkpoint_every=20",
            "--config.sae.d_sae=256", "--config.data.toy.d_in=32", "--config.data.toy.n_features=128",
            "--config.train.dead_tokens=5000", "--config.sae.architecture=batchtopk",
            "--config.sae.threshold_start_step=10"]


def _env():
    return {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "", "PYTHONPATH": ROOT}


def _final_params(workdir):
    from safetensors.numpy import load_file

    return load_file(os.path.join(workdir, "export", "sae_weights.safetensors"))


@pytest.mark.slow
def test_sigkill_and_resume_is_bit_identical(tmp_path):
    full, killed = str(tmp_path / "full"), str(tmp_path / "killed")
    subprocess.run(_cmd(full), check=True, env=_env(), cwd=ROOT, capture_output=True, timeout=600)

    proc = subprocess.Popen(_cmd(killed), env=_env(), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt_dir = os.path.join(killed, "checkpoints")
    deadline = time.time() + 300
    while time.time() < deadline:  # kill once a mid-run checkpoint exists
        steps = [int(d) for d in os.listdir(ckpt_dir) if d.isdigit()] if os.path.isdir(ckpt_dir) else []
        if any(60 <= s < STEPS for s in steps):
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not os.path.exists(os.path.join(killed, "export")), "killed run must not have finished"

    out = subprocess.run(_cmd(killed), env=_env(), cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "resumed from step" in out.stderr
    a, b = _final_params(full), _final_params(killed)
    assert set(a) == set(b)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_mismatched_checkpoint_is_refused(tmp_path):
    loop.train(toy_config("topk", steps=10), str(tmp_path), progress=False)
    with pytest.raises(CheckpointError, match="different run.*spec"):
        loop.train(toy_config("topk", steps=20, d_sae=256), str(tmp_path), progress=False)
    with pytest.raises(CheckpointError, match="seed"):
        loop.train(toy_config("topk", steps=20, seed=3), str(tmp_path), progress=False)


def test_corrupt_checkpoint_is_named_not_restarted(tmp_path):
    loop.train(toy_config("topk", steps=10), str(tmp_path), progress=False)
    step_dir = tmp_path / "checkpoints" / "10" / "state"
    victims = [p for p in step_dir.rglob("*") if p.is_file() and p.stat().st_size > 0]
    assert victims
    for p in victims:  # scramble every array file
        p.write_bytes(b"\x00garbage" * 8)
    with pytest.raises(CheckpointError, match=r"no usable checkpoint in .*checkpoints \(step 10: corrupt"):
        loop.train(toy_config("topk", steps=20), str(tmp_path), progress=False)


def test_unrecognisable_checkpoint_dir_is_not_overwritten(tmp_path):
    (tmp_path / "checkpoints" / "notes").mkdir(parents=True)
    with pytest.raises(CheckpointError, match="no complete checkpoint"):
        loop.train(toy_config("topk", steps=5), str(tmp_path), progress=False)
    assert (tmp_path / "checkpoints" / "notes").exists()


def test_finished_run_resumes_to_the_same_export(tmp_path):
    loop.train(toy_config("topk", steps=10), str(tmp_path), progress=False)
    before = _final_params(str(tmp_path))
    shutil.rmtree(tmp_path / "export")
    loop.train(toy_config("topk", steps=10), str(tmp_path), progress=False)
    after = _final_params(str(tmp_path))
    for k in before:
        np.testing.assert_array_equal(before[k], after[k])
