"""The causal binaries end to end on a tiny language model (a real BPE tokenizer): patch writes
its grids, heatmaps and page and reuses them on a rerun; steer writes its curves; bad input is
one clear line."""

import json
import os
import subprocess
import sys

import pytest
from tiny_lm import make_tiny_lm


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return make_tiny_lm(str(tmp_path_factory.mktemp("tiny_lm")), layers=2)


def _run(module, *args, timeout=600):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    return subprocess.run([sys.executable, "-m", module, "--config=configs/demo.py", *args], capture_output=True,
                          text=True, timeout=timeout, env=env)


def test_patch_binary_writes_grids_figures_and_reuses_them(tiny_dir, tmp_path):
    out = tmp_path / "patch"
    r = _run("experiments.patch", f"--config.data.lm.path={tiny_dir}", "--task=induction", "--period=5", "--batch=2",
             f"--out={out}")
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.load(open(out / "patch.json"))
    assert len(res["resid_patch"]) == 2 and len(res["resid_patch"][0]) == 11  # layers x (BOS + 2 x 5)
    assert len(res["heads_patch"]) == 2 and len(res["heads_patch"][0]) == 4
    assert len(res["induction_scores"]) == 2 and "resid_spearman_atp_vs_patching" in res["agreement"]
    for f in ("resid_patch.png", "resid_atp.png", "heads_patch.png", "heads_atp.png", "index.html"):
        assert (out / f).stat().st_size > 0, f
    assert "data:image/png;base64" in (out / "index.html").read_text()
    again = _run("experiments.patch", f"--config.data.lm.path={tiny_dir}", "--task=induction", "--period=5",
                 "--batch=2", f"--out={out}")
    assert again.returncode == 0 and "already holds this run" in again.stdout


def test_patch_binary_names_a_task_the_model_cannot_do(tiny_dir, tmp_path):
    r = _run("experiments.patch", f"--config.data.lm.path={tiny_dir}", "--task=capitals", f"--out={tmp_path / 'c'}")
    assert r.returncode == 2 and "no length-matched pairs" in r.stderr, r.stderr[-2000:]


def test_steer_binary_writes_curves(tiny_dir, tmp_path):
    out = tmp_path / "steer"
    r = _run("experiments.steer", f"--config.data.lm.path={tiny_dir}", "--site=blocks.1.hook_resid_post",
             "--coefficients=-1,0,1", "--prompts=3", "--contrast=8", "--max_new_tokens=4", f"--out={out}")
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.load(open(out / "steer.json"))
    rows = res["directions"]["diff-in-means"]
    assert [row["coefficient"] for row in rows] == [-1.0, 0.0, 1.0]
    assert all(-1 <= row["property_mean"] <= 1 for row in rows) and (out / "curves.png").stat().st_size > 0
