"""The comparison of several dictionaries' results: one row each, every metric a column, one PNG per
metric against L0; a run without results is named."""

import csv
import os
import subprocess
import sys

import pytest

from jaxsae.evals import compare, results

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run_dir(root, name, l0, ev, probe=None):
    d = root / name
    results.write(str(d), results.build("core", {}, {"sparsity": {"l0": l0, "l1": float("nan")},
                                                     "reconstruction_quality": {"explained_variance": ev}}))
    if probe is not None:
        results.write(str(d), results.build("sparse_probing", {}, {"sae": {"sae_test_accuracy": probe,
                                                                           "sae_top_2_test_accuracy": None}}))
    return str(d)


def test_table_and_plots(tmp_path):
    runs = [_run_dir(tmp_path, "k16", 16.0, 0.8, 0.9), _run_dir(tmp_path, "k64", 64.0, 0.95)]
    rows = compare.collect(runs)
    assert rows[0] == {"run": "k16", "core/sparsity/l0": 16.0, "core/reconstruction_quality/explained_variance": 0.8,
                       "sparse_probing/sae/sae_test_accuracy": 0.9}  # nan (-1) and null left out
    paths = compare.write(rows, str(tmp_path / "cmp"))
    table = list(csv.reader(open(paths["csv"])))
    assert table[0][:2] == ["run", "core/sparsity/l0"] and table[2][0] == "k64"
    assert table[2][table[0].index("sparse_probing/sae/sae_test_accuracy")] == ""
    assert open(paths["md"]).read().startswith("| run | core/sparsity/l0 |")
    pngs = sorted(os.listdir(tmp_path / "cmp" / "plots"))
    assert pngs == ["core_reconstruction_quality_explained_variance.png", "sparse_probing_sae_sae_test_accuracy.png"]
    assert open(tmp_path / "cmp" / "plots" / pngs[0], "rb").read(4) == b"\x89PNG"


def test_binary_and_missing_results(tmp_path):
    runs = [_run_dir(tmp_path, "a", 8.0, 0.7), _run_dir(tmp_path, "b", 32.0, 0.9)]
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": ROOT}
    out = subprocess.run([sys.executable, "-m", "experiments.compare", f"--out={tmp_path / 'cmp'}", *runs],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "| a | 8 | 0.7 |" in out.stdout and "wrote 1 plots" in out.stdout
    (tmp_path / "empty").mkdir()
    out = subprocess.run([sys.executable, "-m", "experiments.compare", f"--out={tmp_path / 'x'}", str(tmp_path / "empty")],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "no evals/*.json result files" in out.stderr
    with pytest.raises(FileNotFoundError):
        compare.collect([str(tmp_path / "empty")])
