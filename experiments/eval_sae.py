"""Evaluate an exported dictionary (SAELens format) on a language model: core metrics, plots and
an HTML report with top-activating contexts.

  python -m experiments.eval_sae --config=configs/demo.py --sae=runs/demo/export --out=runs/demo/eval

The site comes from the export's metadata (hook_name), else data.site / data.lm.sites[0]; the model
and text from the config. Evaluation windows are drawn with --seed (the harvest uses the config's
seed, so the default 1 gives different windows).
"""

import json

from absl import flags
from ml_collections import config_flags

from experiments import cli
from jaxsae import config as config_lib

_CONFIG = config_flags.DEFINE_config_file("config", "configs/demo.py", "Config preset (model and text).")
_SAE = flags.DEFINE_string("sae", None, "SAELens-format export directory (cfg.json + safetensors).", required=True)
_OUT = flags.DEFINE_string("out", None, "Output directory for metrics.json, plots and report.html.", required=True)
_WINDOWS = flags.DEFINE_integer("windows", 128, "Context windows for the reconstruction metrics.")
_DOWNSTREAM = flags.DEFINE_integer("downstream_windows", 32, "Of those, windows for the spliced-model losses.")
_LATENTS = flags.DEFINE_integer("latents", 16, "Latents shown with their top-activating contexts.")
_SEED = flags.DEFINE_integer("seed", 1, "Seed of the evaluation windows' shuffle.")


def main(argv):
    del argv
    from jaxsae.evals.run import evaluate_export

    cfg = config_lib.from_configdict(_CONFIG.value)
    metrics = evaluate_export(_SAE.value, cfg.data, _OUT.value, seed=_SEED.value, windows=_WINDOWS.value,
                              downstream_windows=_DOWNSTREAM.value, n_latents=_LATENTS.value)
    print(json.dumps(metrics, indent=2))


if __name__ == "__main__":
    cli.run(main)
