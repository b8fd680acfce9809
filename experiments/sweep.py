"""Train N dictionaries of one shape with different hyperparameters in one compiled step, on the
same batches (jaxsae.train.sweep): the cartesian product of the lists given.

  python -m experiments.sweep --config=configs/demo.py --config.data.source=stream --workdir=runs/sweep \
      --k=16,32,64,128 --lr=3e-4,1e-3

Each dictionary is exported on its own (WORKDIR/export/{i}/, SAELens format); WORKDIR/sweep.csv
and sweep.md compare them (held-out FVU and L0, dead fraction, training loss; ground-truth
recovery on toy data). Resumes like train_sae (one run per WORKDIR).
"""

from absl import flags
from ml_collections import config_flags

from experiments import cli

_CONFIG = config_flags.DEFINE_config_file("config", "configs/toy.py", "Config preset (a configs/*.py file).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and the exports.", required=True)
_K = flags.DEFINE_list("k", [], "k values (TopK family; the largest sets the compiled shape).")
_SPARSITY = flags.DEFINE_list("sparsity_coefficient", [], "Sparsity coefficients (ReLU/JumpReLU/Gated).")
_LR = flags.DEFINE_list("lr", [], "Learning rates.")
_SEED = flags.DEFINE_list("seed", [], "Initialisation seeds (the data order stays the config's seed).")


def main(argv):
    del argv
    from jaxsae import config as config_lib
    from jaxsae.train import loop, sweep

    def floats(values, name):
        try:
            return [float(v) for v in values]
        except ValueError as e:
            raise ValueError(f"--{name}: expected numbers separated by commas ({e})") from None

    grid = {"k": floats(_K.value, "k"), "sparsity_coefficient": floats(_SPARSITY.value, "sparsity_coefficient"),
            "lr": floats(_LR.value, "lr"), "seed": [int(float(s)) for s in _SEED.value]}
    variants = sweep.variants({k: v for k, v in grid.items() if v})
    if len(variants) < 2:
        raise ValueError("a sweep needs at least two settings: give e.g. --k=16,32 or --lr=1e-4,3e-4")
    cfg = config_lib.from_configdict(_CONFIG.value)
    loop.train(cfg, _WORKDIR.value, sweep=variants)
    with open(f"{_WORKDIR.value}/sweep.md") as f:
        print(f.read())


if __name__ == "__main__":
    cli.run(main)
