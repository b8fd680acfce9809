"""Every ```python block of README.md runs as written.

Each block is run verbatim (nothing substituted) as its own script in a fresh Python process, with
a temporary directory as the working directory (blocks write `runs/...` and `acts.npy` relative
to it), the repository root on PYTHONPATH, JAX on the CPU and no fake-device flags: the
environment of a fresh clone after `make venv`. The README keeps its examples small enough for
that (under a minute each on a 2-core CPU); the SmolLM2 block uses the packaged model that
`make venv` installs, with no network.
"""

import os
import re
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")
TIMEOUT_S = 300  # per block; they take ~10 s (toy) and ~45 s (SmolLM2) on 2 cores

pytestmark = pytest.mark.slow  # ~1.5 minutes in all


def python_blocks(text: str) -> list[tuple[int, str]]:
    """(line number, code) of every fenced block opened with ```python."""
    blocks = []
    for m in re.finditer(r"^```python[ \t]*\n(.*?)^```[ \t]*$", text, flags=re.S | re.M):
        blocks.append((text.count("\n", 0, m.start()) + 1, m.group(1)))
    return blocks


BLOCKS = python_blocks(open(README, encoding="utf-8").read())


def test_readme_has_python_blocks():
    assert BLOCKS, "README.md has no ```python blocks (did the fence style change?)"


@pytest.mark.parametrize("line,code", BLOCKS, ids=[f"README.md:{line}" for line, _ in BLOCKS])
def test_readme_block_runs(line, code, tmp_path):
    script = tmp_path / "block.py"
    script.write_text(code, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # conftest's 8 fake devices stay here
    env.update(JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
    out = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=TIMEOUT_S)
    assert out.returncode == 0, (f"README.md block at line {line} exited {out.returncode}\n"
                                 f"--- stdout ---\n{out.stdout[-3000:]}\n--- stderr ---\n{out.stderr[-6000:]}")


def documented_fields(text: str, heading: str) -> set[str]:
    """Backticked names in the first column of the table that follows the paragraph naming `heading`."""
    start = text.index(heading)
    table = re.search(r"\n(\|.*?\n)(?!\|)", text[start:], flags=re.S).group(1)
    names = set()
    for row in table.splitlines()[2:]:
        names.update(re.findall(r"`([a-zA-Z0-9_]+)`", row.split("|")[1]))
    return names


@pytest.mark.parametrize("arch,extra", [("topk", {"multi_topk": True}), ("relu", {}), ("batchtopk", {}),
                                        ("jumprelu", {}), ("gated", {}), ("matryoshka", {})])
def test_every_training_field_is_documented(arch, extra, tmp_path):
    import json

    from helpers import toy_config

    from jaxsae.train import loop

    text = open(README, encoding="utf-8").read()
    run = loop.train(toy_config(arch, steps=6, sae=extra, train={"log_every": 3, "checkpoint_every": 6}),
                     str(tmp_path), progress=False)
    logged = {re.sub(r"prefix\d+$", "prefixN", k) for r in run.metrics for k in r}  # one row for all prefixes
    assert logged <= documented_fields(text, "`metrics.jsonl`, one JSON object"), logged
    summary = json.load(open(tmp_path / "summary.json"))
    assert set(summary) <= documented_fields(text, "`summary.json` (written atomically"), set(summary)


def test_every_eval_field_is_documented():
    from jaxsae.evals import core

    text = open(README, encoding="utf-8").read()
    fields = documented_fields(text, "Evaluation (`OUT/metrics.json`")
    s = core._Stream(4, 6)
    s.add(np.ones((3, 4)), np.ones((3, 4)), np.ones((3, 6)), 0)
    reconstruction = set(s.metrics(4))
    source = open(os.path.join(ROOT, "jaxsae", "evals", "core.py")).read()
    downstream = set(re.findall(r'"((?:ce_loss|kl_div|delta_lm|downstream)[a-z_]*)":', source))
    written = reconstruction | downstream | {"site", "export", "model", "identity"}
    assert written <= fields, written - fields
