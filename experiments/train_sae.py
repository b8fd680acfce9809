"""Train a sparse dictionary.

  python -m experiments.train_sae --config=configs/toy.py --workdir=runs/toy \
      --config.sae.architecture=jumprelu --config.train.steps=2000

Resumes from the newest checkpoint in WORKDIR/checkpoints; writes metrics.jsonl, summary.json
and the SAELens-format dictionary in WORKDIR/export/.
"""

import json
import logging
import sys

from absl import app, flags
from ml_collections import config_flags

from jaxsae import config as config_lib
from jaxsae.train import loop

_CONFIG = config_flags.DEFINE_config_file("config", "configs/toy.py", "Config preset (a configs/*.py file).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and the export.", required=True)


def main(argv):
    del argv
    logging.getLogger("jaxsae").setLevel(logging.INFO)
    for noisy in ("jax", "absl", "orbax"):  # backend probing and per-save checkpoint chatter
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        cfg = config_lib.from_configdict(_CONFIG.value)
        run = loop.train(cfg, _WORKDIR.value)
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    with open(f"{_WORKDIR.value}/summary.json") as f:
        print(json.dumps(json.load(f), indent=2))
    del run


if __name__ == "__main__":
    app.run(main)
