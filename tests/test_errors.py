"""Bad input gets one line naming the file or key and the fix (never a traceback from deep inside a
library, never a silent load of something broken)."""

import json
import os
import shutil
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest
from helpers import toy_config
from safetensors.numpy import load_file, save_file
from tiny_lm import make_tiny_lm

from jaxsae import config as C
from jaxsae import models, sites
from jaxsae.interop import saelens
from jaxsae.train import loop
from jaxsae.train.checkpoint import CheckpointError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cli(*args):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "", "PYTHONPATH": ROOT}
    return subprocess.run([sys.executable, "-m", "experiments.train_sae", "--config=configs/toy.py", *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def _one_line_error(out) -> str:
    assert out.returncode == 2, out.stderr[-3000:]
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert lines[-1].startswith("error: ") and len(lines[-1]) < 800, lines[-1]
    return lines[-1]


@pytest.mark.parametrize("flag,want", [
    ("--config.train.foo=3", "unknown config key 'train.foo' (in --config.train.foo=3); valid keys under train: steps,"),
    ("--config.trian.lr=3", "unknown config key 'trian.lr' (in --config.trian.lr=3); valid keys under the top level: sae, train"),
    ("--config.train.lr=fast", "--config.train.lr=fast"),
])
def test_bad_config_flag_is_one_line(tmp_path, flag, want):
    msg = _one_line_error(_cli(f"--workdir={tmp_path}", flag))
    assert want in msg, msg
    assert not os.listdir(tmp_path)


def test_unknown_transcoder_activation_names_the_choices():
    with pytest.raises(ValueError, match=r"sae.activation='foo' is unknown for a transcoder; valid choices: topk, relu"):
        C.from_dict({"sae": {"architecture": "transcoder", "activation": "foo"}})


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    loop.train(toy_config("topk", steps=10, toy={"d_in": 32}), str(run), progress=False)  # fits the tiny LM
    return str(run / "export")


def _copy(export, tmp_path):
    dest = str(tmp_path / "sae")
    shutil.copytree(export, dest)
    return dest


def test_truncated_saelens_weights_name_the_file(export, tmp_path):
    d = _copy(export, tmp_path)
    w = os.path.join(d, saelens.WEIGHTS)
    os.truncate(w, os.path.getsize(w) // 2)
    with pytest.raises(ValueError, match=rf"{w}: unreadable safetensors file .*truncated or damaged"):
        saelens.load(d)


@pytest.mark.parametrize("name,shape,want", [
    ("W_dec", (64, 32), r"W_dec has shape \(64, 32\), cfg.json's d_sae=128 needs \[128, d_out\]"),
    ("b_enc", (100,), r"b_enc is \(100,\) but should be \(128,\)"),
    ("b_dec", (7,), r"b_dec is \(7,\) but should be \(32,\)"),
])
def test_saelens_shapes_that_disagree_with_cfg_are_refused(export, tmp_path, name, shape, want):
    d = _copy(export, tmp_path)
    w = os.path.join(d, saelens.WEIGHTS)
    tensors = load_file(w)
    tensors[name] = np.zeros(shape, np.float32)
    save_file(tensors, w)
    with pytest.raises(ValueError, match=want):
        saelens.load(d)


def test_damaged_saelens_cfg_is_named(export, tmp_path):
    d = _copy(export, tmp_path)
    with open(os.path.join(d, saelens.CFG), "r+") as f:
        f.truncate(40)
    with pytest.raises(ValueError, match="cfg.json: not valid JSON"):
        saelens.load(d)


@pytest.fixture(scope="module")
def lm_dir(tmp_path_factory):
    return make_tiny_lm(str(tmp_path_factory.mktemp("lm")), layers=2, d=32)


def test_truncated_model_safetensors_names_the_file(lm_dir, tmp_path):
    d = str(tmp_path / "lm")
    shutil.copytree(lm_dir, d)
    w = os.path.join(d, "model.safetensors")
    os.truncate(w, os.path.getsize(w) - 1000)
    with pytest.raises(models.CheckpointFormatError, match=rf"{w}: unreadable safetensors file"):
        models.load(d)


def test_a_file_that_is_not_gguf_is_named(tmp_path):
    bogus = tmp_path / "weights.bin"
    bogus.write_bytes(b"PK\x03\x04 not a model")
    with pytest.raises(models.CheckpointFormatError, match=r"weights.bin' is a file but not a GGUF file"):
        models.load(str(bogus))
    with pytest.raises(models.CheckpointFormatError, match="no such file or directory"):
        models.load(str(tmp_path / "missing"))


def test_splicing_a_dictionary_of_the_wrong_width_is_refused(lm_dir, export):
    import jax

    from jaxsae import dictionaries as D
    from jaxsae.dictionaries.bound import SAE

    lm = models.load(lm_dir)
    spec = D.build("topk", d_in=16, d_sae=64, k=4)
    wrong = SAE(spec, spec.init(jax.random.key(0)))
    with pytest.raises(ValueError, match=r"splice_sae at blocks.1.hook_resid_post: the dictionary reads vectors of "
                                         r"width d_in=16 but this model's hook_resid_post has width 32"):
        sites.splice_sae(lm, "blocks.1.hook_resid_post", wrong)
    patched = sites.splice_sae(lm, "blocks.1.hook_resid_post", saelens.load(export))  # d_in 32 fits
    assert np.isfinite(np.asarray(patched(jnp.zeros((1, 4), jnp.int32)))).all()


def _one_checkpoint(tmp_path):
    loop.train(toy_config("topk", steps=10), str(tmp_path), progress=False)
    return tmp_path / "checkpoints" / "10"


def test_truncated_checkpoint_is_one_line(tmp_path):
    step = _one_checkpoint(tmp_path)
    data = [p for p in step.joinpath("state").rglob("*") if p.is_file() and "/d/" in str(p)]
    for p in data:
        os.truncate(p, p.stat().st_size // 2)
    with pytest.raises(CheckpointError) as e:
        loop.train(toy_config("topk", steps=20), str(tmp_path), progress=False)
    msg = str(e.value)
    assert "\n" not in msg and len(msg) < 800, msg
    assert msg.startswith(f"no usable checkpoint in {tmp_path / 'checkpoints'} (step 10: corrupt or incomplete state")
    assert msg.endswith("Delete that directory to train from scratch (or restore it from a copy).")


@pytest.mark.parametrize("item,problem", [("state/_METADATA", "corrupt or incomplete state (JSONDecodeError"),
                                          ("manifest/metadata", "unreadable manifest (JSONDecodeError"),
                                          ("_CHECKPOINT_METADATA", None)])
def test_truncated_checkpoint_metadata_is_one_line(tmp_path, item, problem):
    step = _one_checkpoint(tmp_path)
    target = step / item
    os.truncate(target, target.stat().st_size // 2)
    if problem is None:  # orbax's step metadata is advisory: the resume goes on, verified by the checksums
        run = loop.train(toy_config("topk", steps=20), str(tmp_path), progress=False)
        assert run.metrics[-1]["step"] == 19
        return
    with pytest.raises(CheckpointError) as e:
        loop.train(toy_config("topk", steps=20), str(tmp_path), progress=False)
    msg = str(e.value)
    assert "\n" not in msg and len(msg) < 800, msg
    assert f"(step 10: {problem}" in msg and msg.endswith("Delete that directory to train from scratch (or restore it "
                                                          "from a copy).")


def test_a_failed_save_is_one_line_and_keeps_the_finished_ones(tmp_path, monkeypatch):
    import orbax.checkpoint as ocp

    loop.train(toy_config("topk", steps=10), str(tmp_path), progress=False)
    real = ocp.CheckpointManager.save

    def full_disk(self, step, *a, **kw):
        if step == 20:
            raise OSError(28, "No space left on device")
        return real(self, step, *a, **kw)

    monkeypatch.setattr(ocp.CheckpointManager, "save", full_disk)
    with pytest.raises(CheckpointError) as e:
        loop.train(toy_config("topk", steps=30), str(tmp_path), progress=False)
    msg = str(e.value)
    assert "\n" not in msg and "failed (OSError: [Errno 28] No space left on device)" in msg
    assert "the finished checkpoints [10] are intact: rerun to resume from the newest" in msg


def test_schedule_change_on_resume_is_said(tmp_path, caplog):
    loop.train(toy_config("topk", steps=10), str(tmp_path), progress=False)
    with caplog.at_level("WARNING", logger="jaxsae"):
        run = loop.train(toy_config("topk", steps=20, train={"lr": 1e-3}), str(tmp_path), progress=False)
    text = caplog.text
    assert "resuming from step 10 with a changed config" in text and "train.steps 10 -> 20" in text
    assert "train.lr None -> 0.001" in text
    summary = json.load(open(tmp_path / "summary.json"))
    assert "train.steps 10 -> 20" in summary["resumed_with_changes"]
    assert run.metrics[-1]["step"] == 19


def test_resume_past_the_end_is_refused(tmp_path):
    loop.train(toy_config("topk", steps=10), str(tmp_path), progress=False)
    with pytest.raises(loop.TrainingError, match=r"at step 10, past train.steps=5; raise --config.train.steps"):
        loop.train(toy_config("topk", steps=5), str(tmp_path), progress=False)


def test_an_async_save_that_fails_is_one_line(tmp_path, monkeypatch):
    from orbax.checkpoint._src.path import atomicity

    real = atomicity.AtomicRenameTemporaryPath.finalize

    async def failing(self, *a, **kw):
        if os.path.basename(str(self._final_path)) == "20":
            raise OSError(28, "No space left on device")
        return await real(self, *a, **kw)

    monkeypatch.setattr(atomicity.AtomicRenameTemporaryPath, "finalize", failing)
    with pytest.raises(CheckpointError) as e:
        loop.train(toy_config("topk", steps=30), str(tmp_path), progress=False)
    msg = str(e.value)
    assert "\n" not in msg and "No space left on device" in msg and "are intact: rerun to resume" in msg, msg
    assert (tmp_path / "checkpoints" / "10").is_dir()


def test_a_changed_state_layout_is_not_called_corrupt(tmp_path):
    loop.train(toy_config("topk", steps=10), str(tmp_path), progress=False)
    with pytest.raises(CheckpointError, match=r"holds a train state of another layout .*e.g. train.grad_clip"):
        loop.train(toy_config("topk", steps=20, train={"grad_clip": 0.0}), str(tmp_path), progress=False)
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["10"]  # nothing quarantined
    assert not (tmp_path / "checkpoints.quarantine").exists()


@pytest.mark.parametrize("arch", ["batchtopk", "matryoshka"])
def test_raising_the_steps_resumes_every_architecture(tmp_path, arch):
    loop.train(toy_config(arch, steps=10), str(tmp_path), progress=False)
    run = loop.train(toy_config(arch, steps=20), str(tmp_path), progress=False)
    assert [r["step"] for r in run.metrics][-1] == 19
    cfg = json.load(open(tmp_path / "export" / "cfg.json"))
    assert cfg["metadata"]["training_steps"] == 20


def test_a_line_cut_by_a_kill_is_dropped_on_resume(tmp_path):
    loop.train(toy_config("topk", steps=10), str(tmp_path), progress=False)
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 9, "lo')  # what a kill mid-write leaves
    loop.train(toy_config("topk", steps=20), str(tmp_path), progress=False)
    steps = [json.loads(line)["step"] for line in open(tmp_path / "metrics.jsonl")]
    assert steps == list(range(20))


def test_an_export_of_a_shorter_run_is_not_taken_as_finished(tmp_path, monkeypatch):
    loop.train(toy_config("topk", steps=10), str(tmp_path), progress=False)
    real = loop.finish

    def killed(run, workdir):
        raise KeyboardInterrupt

    monkeypatch.setattr(loop, "finish", killed)  # trained to 20 and checkpointed, killed before the export
    with pytest.raises(KeyboardInterrupt):
        loop.train(toy_config("topk", steps=20), str(tmp_path), progress=False)
    monkeypatch.setattr(loop, "finish", real)
    run = loop.train(toy_config("topk", steps=20), str(tmp_path), progress=False)
    assert not run.already_finished
    assert json.load(open(tmp_path / "export" / "cfg.json"))["metadata"]["training_steps"] == 20
    assert json.load(open(tmp_path / "summary.json"))["steps"] == 20
