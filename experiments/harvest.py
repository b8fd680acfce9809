"""Harvest activations of a language model into an activation store.

  python -m experiments.harvest --config=configs/demo.py --config.data.path=runs/demo/store \
      [--config.data.lm.sites="('blocks.6.hook_resid_post',)" --config.data.lm.windows=2000]

Runs the model truncated after the deepest site, several sites in one forward, batch sharded over
the mesh. Started again on the same directory it finishes a killed harvest exactly; `--verify`
re-hashes every shard of a finished store and names any corrupt one.
"""

import json

from absl import flags
from ml_collections import config_flags

from experiments import cli
from jaxsae import config as config_lib
from jaxsae import sharding

_CONFIG = config_flags.DEFINE_config_file("config", "configs/demo.py", "Config preset (a configs/*.py file).")
_VERIFY = flags.DEFINE_bool("verify", False, "Only verify the store at data.path (sha256 of every shard).")


def main(argv):
    del argv
    from jaxsae.data import harvest, store

    cfg = config_lib.from_configdict(_CONFIG.value)
    if not cfg.data.path:
        raise ValueError("set --config.data.path=DIR: where the store is written")
    if _VERIFY.value:
        store.Store(cfg.data.path, verify=True)
        print(f"{cfg.data.path}: every shard matches the manifest")
        return
    mesh = sharding.make_mesh(cfg.mesh.data, cfg.mesh.model)
    manifest = harvest.harvest(cfg.data.lm, cfg.data.text, cfg.data.path, seed=cfg.seed, mesh=mesh)
    summary = {k: manifest[k] for k in ("model", "site_names", "tokens", "windows_done", "dtype", "context")}
    summary["norm_scale"] = {s: v["norm_scale"] for s, v in manifest["sites"].items()}
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    cli.run(main)
