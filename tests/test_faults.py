"""Fault injection on the training binary: kills (during training, a checkpoint save, the export),
Ctrl-C, corrupted checkpoint arrays, divergence and nan input, concurrent runs, reruns of a finished
run. Each asserts that nothing already written is lost or silently changed, and that a rerun ends
exactly where an uninterrupted run does."""

import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 60
ARGS = ["--config=configs/toy.py", f"--config.train.steps={STEPS}", "--config.train.batch_size=128",
        "--config.train.checkpoint_every=20", "--config.train.log_every=7", "--config.train.keep_checkpoints=3",
        "--config.sae.d_sae=128", "--config.data.toy.d_in=16", "--config.data.toy.n_features=64",
        "--config.train.dead_tokens=5000", "--config.train.b_dec_samples=512", "--config.train.norm_batches=2"]


def _env():
    return {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "", "PYTHONPATH": ROOT}


def train(workdir, *extra, fault=None, timeout=300, check=False):
    cmd = ([sys.executable, os.path.join(ROOT, "tests", "fault_runner.py"), fault, "--"] if fault else
           [sys.executable, "-m", "experiments.train_sae"])
    out = subprocess.run([*cmd, *ARGS, f"--workdir={workdir}", *extra], env=_env(), cwd=ROOT, capture_output=True,
                         text=True, timeout=timeout)
    if check:
        assert out.returncode == 0, out.stderr[-3000:]
    return out


def weights(workdir):
    from safetensors.numpy import load_file

    return load_file(os.path.join(workdir, "export", "sae_weights.safetensors"))


def assert_same_export(a, b):
    wa, wb = weights(a), weights(b)
    assert set(wa) == set(wb)
    for k in wa:
        np.testing.assert_array_equal(wa[k], wb[k], err_msg=k)


def metric_steps(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line)["step"] for line in f]


def snapshot(workdir):
    """Every file under workdir (but the lock) -> (bytes, mtime)."""
    out = {}
    for p in glob.glob(os.path.join(workdir, "**", "*"), recursive=True):
        if os.path.isfile(p) and not p.endswith(".jaxsae.lock"):
            with open(p, "rb") as f:
                out[os.path.relpath(p, workdir)] = (f.read(), os.stat(p).st_mtime_ns)
    return out


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    ref = str(tmp_path_factory.mktemp("reference"))
    train(ref, check=True)
    assert metric_steps(ref) == list(range(STEPS))
    return ref


def test_kill_mid_run_resumes_exactly_and_logs_each_step_once(reference, tmp_path):
    out = train(tmp_path, fault="kill_at_step=50")
    assert out.returncode == -signal.SIGKILL
    assert max(metric_steps(tmp_path)) > 40  # rows past the newest checkpoint were written before the kill
    out = train(tmp_path, check=True)
    assert "resumed from step 40" in out.stderr
    assert metric_steps(tmp_path) == list(range(STEPS))
    assert_same_export(reference, tmp_path)


def test_kill_during_checkpoint_save(reference, tmp_path):
    out = train(tmp_path, fault="kill_during_save=40")
    assert out.returncode == -signal.SIGKILL
    out = train(tmp_path, check=True)
    ckpts = tmp_path / "checkpoints"
    assert not [d for d in os.listdir(ckpts) if "tmp" in d]
    assert "the save of this step never finished" in out.stderr  # reported, and moved aside (kept)
    assert [d for d in os.listdir(str(ckpts) + ".quarantine") if d.startswith("40.orbax-checkpoint-tmp")]
    assert "resumed from step 20" in out.stderr
    assert metric_steps(tmp_path) == list(range(STEPS))
    assert_same_export(reference, tmp_path)


def test_leftover_temporary_checkpoint_is_ignored_and_reported(reference, tmp_path):
    train(tmp_path, fault="kill_at_step=30")
    ckpts = tmp_path / "checkpoints"
    assert sorted(os.listdir(ckpts)) == ["20"]
    shutil.copytree(ckpts / "20", ckpts / "20.orbax-checkpoint-tmp-1")  # as an async save that failed leaves it
    os.rename(ckpts / "20", ckpts / "40.orbax-checkpoint-tmp-7")  # the only checkpoint now half-saved
    out = train(tmp_path, fault="kill_at_step=5")  # nothing complete: starts from scratch, reporting them
    assert "the save of this step never finished" in out.stderr and "40.orbax-checkpoint-tmp-7" in out.stderr
    assert sorted(os.listdir(str(ckpts) + ".quarantine"))  # kept, not deleted
    out = train(tmp_path, check=True)
    assert_same_export(reference, tmp_path)


def test_kill_during_export_keeps_checkpoints_and_rerun_finishes(reference, tmp_path):
    out = train(tmp_path, fault="kill_during_export")
    assert out.returncode == -signal.SIGKILL
    assert not os.path.exists(tmp_path / "export" / "sae_weights.safetensors")  # only a temporary, never the name
    assert not os.path.exists(tmp_path / "summary.json")
    assert glob.glob(str(tmp_path / "export" / "*.tmp-*"))
    train(tmp_path, check=True)
    assert not glob.glob(str(tmp_path / "export" / "*.tmp-*"))  # the killed writer's temporary is cleaned up
    assert_same_export(reference, tmp_path)
    assert metric_steps(tmp_path) == list(range(STEPS))


def test_ctrl_c_says_how_to_resume(reference, tmp_path):
    out = train(tmp_path, fault="sigint_at_step=45")
    assert out.returncode == 130, out.stderr[-2000:]
    last = out.stderr.strip().splitlines()[-1]
    assert last == "interrupted at step 45; rerun the same command to resume from step 40", out.stderr[-2000:]
    train(tmp_path, check=True)
    assert_same_export(reference, tmp_path)


def _flip(path, offset, n=64):
    with open(path, "r+b") as f:
        f.seek(offset)
        data = bytearray(f.read(n))
        f.seek(offset)
        f.write(bytes(b ^ 0xFF for b in data))


def _rewrite_array(step_dir, pick):
    """Rewrite the checkpoint's state item with one array changed by one flipped bit, through orbax
    (a well-formed file whose contents differ from what was saved: only the checksums can tell)."""
    import jax
    import orbax.checkpoint as ocp

    state_dir = os.path.join(step_dir, "state")
    tree = ocp.StandardCheckpointer().restore(os.path.abspath(state_dir))
    leaves, treedef = jax.tree_util.tree_flatten_with_path(tree)
    names = [jax.tree_util.keystr(p) for p, _ in leaves]  # e.g. "['params']['W_dec']", "['opt_state'][1]..."
    i = next(i for i, n in enumerate(names) if pick(n))
    arr = np.array(leaves[i][1])
    arr.view(np.uint32).reshape(-1)[3] ^= 1 << 20
    new = jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(tree), [arr if j == i else v for j, (_, v) in enumerate(leaves)])
    ckptr = ocp.StandardCheckpointer()
    ckptr.save(os.path.abspath(state_dir + ".new"), new)
    ckptr.wait_until_finished()
    shutil.rmtree(state_dir)
    os.rename(state_dir + ".new", state_dir)
    return names[i]


@pytest.mark.parametrize("which", ["params", "opt_state"])
def test_corrupt_array_is_named_and_the_run_falls_back(reference, tmp_path, which):
    train(tmp_path, fault="kill_at_step=50")
    _rewrite_array(str(tmp_path / "checkpoints" / "40"), lambda n: n.startswith(f"['{which}']") and "W_dec" in n)
    out = train(tmp_path, check=True)
    line = next(ln for ln in out.stderr.splitlines() if "checksum of" in ln)
    assert f"checksum of .{which}" in line and "W_dec" in line and "checkpoints/40" in line, line
    assert "falling back to step 20" in line
    assert "resumed from step 20" in out.stderr
    quarantined = os.listdir(str(tmp_path / "checkpoints") + ".quarantine")
    assert len(quarantined) == 1 and quarantined[0].startswith("40-")
    assert_same_export(reference, tmp_path)


def test_flipped_bytes_in_a_chunk_file_are_caught(reference, tmp_path):
    train(tmp_path, fault="kill_at_step=50")
    files = [p for p in glob.glob(str(tmp_path / "checkpoints" / "40" / "state" / "**" / "*"), recursive=True)
             if os.path.isfile(p) and "/d/" in p]
    victim = max(files, key=os.path.getsize)
    size = os.path.getsize(victim)
    _flip(victim, size // 2)
    assert os.path.getsize(victim) == size
    out = train(tmp_path, check=True)
    assert "checkpoints/40" in out.stderr and "falling back to step 20" in out.stderr, out.stderr[-3000:]
    assert_same_export(reference, tmp_path)


def test_every_checkpoint_corrupt_refuses_and_names_them(tmp_path):
    train(tmp_path, fault="kill_at_step=50")
    for step in ("20", "40"):
        _rewrite_array(str(tmp_path / "checkpoints" / step), lambda n: n.startswith("['params']"))
    before = snapshot(tmp_path)
    out = train(tmp_path)
    assert out.returncode == 2
    msg = out.stderr.strip().splitlines()[-1]
    assert msg.startswith("error: no usable checkpoint in") and "step 40: corrupt" in msg and "step 20: corrupt" in msg
    assert "Delete that directory" in msg
    assert snapshot(tmp_path) == before  # refused: nothing moved, nothing written


def test_divergence_keeps_good_checkpoints_and_the_fix_works(reference, tmp_path):
    # checkpoint_every (20) is not a multiple of log_every (7): the check must still run before each save
    out = train(tmp_path, fault="blowup_from_step=25")
    assert out.returncode == 2
    msg = out.stderr.strip().splitlines()[-1]
    assert "training diverged" in msg and "at step 25" in msg and "newest good checkpoint is step 20" in msg, msg
    assert "--config.train.lr" in msg
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["20"]
    assert not os.path.exists(tmp_path / "export")
    # the fix (here: the data is good again) resumes from the good checkpoint and ends as if nothing happened
    out = train(tmp_path, check=True)
    assert "resumed from step 20" in out.stderr
    assert metric_steps(tmp_path) == list(range(STEPS))
    assert_same_export(reference, tmp_path)


def test_divergence_then_lower_lr_resumes_with_the_change_said(tmp_path):
    train(tmp_path, fault="blowup_from_step=25")
    out = train(tmp_path, "--config.train.lr=1e-3", check=True)
    assert "resuming from step 20 with a changed config: train.lr 0.003 -> 0.001" in out.stderr
    summary = json.load(open(tmp_path / "summary.json"))
    assert summary["resumed_with_changes"] == ["train.lr 0.003 -> 0.001"]


def test_nan_input_stops_before_saving_and_blames_the_data(tmp_path):
    out = train(tmp_path, fault="nan_from_step=33")
    assert out.returncode == 2
    msg = out.stderr.strip().splitlines()[-1]
    assert "nan/inf input values" in msg and "at step 33" in msg and "[20]" in msg, msg
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["20"]


def test_nan_rows_in_npy_are_refused_at_load(tmp_path):
    x = np.random.default_rng(0).normal(size=(500, 16)).astype(np.float32)
    x[123, 4] = np.inf
    np.save(tmp_path / "acts.npy", x)
    out = train(tmp_path / "run", "--config.data.source=npy", f"--config.data.path={tmp_path / 'acts.npy'}")
    assert out.returncode == 2
    msg = out.stderr.strip().splitlines()[-1]
    assert "acts.npy" in msg and "1 row(s) holding nan/inf (first: row 123)" in msg, msg
    assert not os.path.exists(tmp_path / "run" / "checkpoints")


def test_two_runs_in_one_workdir(reference, tmp_path):
    first = subprocess.Popen([sys.executable, os.path.join(ROOT, "tests", "fault_runner.py"), "sleep_per_step=20", "--",
                              *ARGS, f"--workdir={tmp_path}", "--config.train.steps=400"], env=_env(), cwd=ROOT, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    lock = tmp_path / ".jaxsae.lock"
    deadline = time.time() + 120
    while time.time() < deadline and not (lock.exists() and lock.stat().st_size):
        time.sleep(0.05)
    second = train(tmp_path, "--config.train.steps=400")
    first.communicate(timeout=300)
    assert first.returncode == 0
    assert second.returncode == 2
    msg = second.stderr.strip().splitlines()[-1]
    assert f"is in use by pid {first.pid}" in msg and "(training" in msg, msg
    assert metric_steps(tmp_path) == list(range(400))
    assert not lock.exists()  # released at the end


def test_stale_lock_of_a_dead_process_is_taken_over(reference, tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / ".jaxsae.lock").write_text(json.dumps({"pid": dead.pid, "host": os.uname().nodename, "since": 0,
                                                        "what": "training"}))
    out = train(tmp_path, check=True)
    assert f"taking over a stale lock left by pid {dead.pid}" in out.stderr
    assert_same_export(reference, tmp_path)


def test_rerun_of_a_finished_run_changes_nothing(reference, tmp_path):
    shutil.copytree(reference, tmp_path, dirs_exist_ok=True)
    before = snapshot(tmp_path)
    out = train(tmp_path, check=True)
    assert "already finished at step 60: nothing to do" in out.stderr
    assert snapshot(tmp_path) == before
    assert json.load(open(tmp_path / "summary.json"))["final"]["step"] == STEPS - 1


def test_exported_files_are_readable_by_others(reference):
    for name in ("cfg.json", "sae_weights.safetensors"):
        assert os.stat(os.path.join(reference, "export", name)).st_mode & 0o044 == 0o044, name
    assert os.stat(os.path.join(reference, "summary.json")).st_mode & 0o044 == 0o044
