"""Train a sparse dictionary.

  python -m experiments.train_sae --config=configs/toy.py --workdir=runs/toy \
      --config.sae.architecture=jumprelu --config.train.steps=2000

Resumes from the newest verified checkpoint in WORKDIR/checkpoints; writes metrics.jsonl,
summary.json and the SAELens-format dictionary in WORKDIR/export/. One run per WORKDIR at a time.
"""

import json

from absl import flags
from ml_collections import config_flags

from experiments import cli
from jaxsae import config as config_lib
from jaxsae.train import loop

_CONFIG = config_flags.DEFINE_config_file("config", "configs/toy.py", "Config preset (a configs/*.py file).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and the export.", required=True)


def main(argv):
    del argv
    cfg = config_lib.from_configdict(_CONFIG.value)
    loop.train(cfg, _WORKDIR.value)
    with open(f"{_WORKDIR.value}/summary.json") as f:
        print(json.dumps(json.load(f), indent=2))


if __name__ == "__main__":
    cli.run(main)
