"""Activation patching and attribution patching on a known-answer task: a (layer x position)
grid of the residual stream and a (layer x head) grid of attention heads, each by patching and
by AtP, with their agreement; JSON, PNG heatmaps and one HTML page.

  python -m experiments.patch --config=configs/demo.py --task=induction --out=runs/patch/induction
  python -m experiments.patch --task=capitals --out=runs/patch/capitals

The model comes from the config (the packaged SmolLM2 by default). OUT/patch.json holds every
grid; a second run with the same settings reuses it and only redraws the figures.
"""

from absl import flags
from ml_collections import config_flags

from experiments import cli

_CONFIG = config_flags.DEFINE_config_file("config", "configs/demo.py", "Config preset (the model: data.lm).")
_TASK = flags.DEFINE_enum("task", "induction", ["induction", "capitals"], "Clean/corrupted task (causal/tasks.py).")
_OUT = flags.DEFINE_string("out", None, "Output directory.", required=True)
_PERIOD = flags.DEFINE_integer("period", 15, "induction: random tokens per repeat.")
_BATCH = flags.DEFINE_integer("batch", 2, "induction: prompts; capitals: country pairs.")
_HEADS = flags.DEFINE_bool("heads", True, "Also the (layer x head) grid on attn.hook_z (all positions at once).")
_DIRECTION = flags.DEFINE_enum("direction", "denoise", ["denoise", "noise"], "Patch clean into corrupt or back.")


def main(argv):
    import json
    import os

    import numpy as np

    from jaxsae import config as config_lib
    from jaxsae import runlock
    from jaxsae.data import harvest
    from jaxsae.report import causal as report

    cfg = config_lib.from_configdict(_CONFIG.value)
    settings = {"task": _TASK.value, "period": _PERIOD.value, "batch": _BATCH.value, "heads": _HEADS.value,
                "direction": _DIRECTION.value, "model": os.path.abspath(harvest.model_path(cfg.data.lm))}
    os.makedirs(_OUT.value, exist_ok=True)
    path = os.path.join(_OUT.value, "patch.json")
    with runlock.hold(_OUT.value, "patching"):
        result = report.reuse_or_compute(path, settings, lambda: _grids(*harvest.load_lm(cfg.data.lm)))
        images = {
            "residual stream, patching": report.heatmap(np.asarray(result["resid_patch"]), os.path.join(
                _OUT.value, "resid_patch.png"), f"{_TASK.value}: patching hook_resid_pre", result["labels"]),
            "residual stream, AtP": report.heatmap(np.asarray(result["resid_atp"]), os.path.join(
                _OUT.value, "resid_atp.png"), f"{_TASK.value}: attribution patching", result["labels"])}
        if "heads_patch" in result:
            images["heads, patching"] = report.heatmap(np.asarray(result["heads_patch"]), os.path.join(
                _OUT.value, "heads_patch.png"), "heads (attn.hook_z, all positions): patching", xlabel="head")
            images["heads, AtP"] = report.heatmap(np.asarray(result["heads_atp"]), os.path.join(
                _OUT.value, "heads_atp.png"), "heads: attribution patching", xlabel="head")
        if "induction_scores" in result:
            images["induction scores"] = report.heatmap(np.asarray(result["induction_scores"]), os.path.join(
                _OUT.value, "induction_scores.png"), "induction score per head", xlabel="head", center=False)
        page = report.page(os.path.join(_OUT.value, "index.html"), f"Patching: {_TASK.value}",
                           {"settings": result["settings"], "task": result["task"], "agreement": result["agreement"]},
                           images)
    print(json.dumps(result["agreement"], indent=1))
    print(f"wrote {path} and {page}")


def _grids(lm, tok) -> dict:
    from jaxsae import causal
    from jaxsae.causal import tasks

    kw = {"period": _PERIOD.value, "batch": _BATCH.value} if _TASK.value == "induction" else {"pairs": _BATCH.value}
    task = tasks.build(_TASK.value, lm, tok, **kw)
    L = causal.patching.n_blocks(lm)
    resid = [f"blocks.{i}.hook_resid_pre" for i in range(L)]
    args = (lm, task.clean, task.corrupt)
    print(f"patching {L} layers x {task.clean.shape[1]} positions ...", flush=True)
    grid = causal.patch(*args, resid, task.metric, direction=_DIRECTION.value)
    atp = causal.attribution_patch(*args, resid, task.metric, direction=_DIRECTION.value)
    result = {"task": task.info, "labels": task.labels, "resid_patch": [grid[s].tolist() for s in resid],
              "resid_atp": [atp[s].tolist() for s in resid]}
    if _HEADS.value:
        z = [f"blocks.{i}.attn.hook_z" for i in range(L)]
        print(f"patching {L} layers x heads ...", flush=True)
        hp = causal.patch(*args, z, task.metric, positions="all", direction=_DIRECTION.value)
        ha = causal.attribution_patch(*args, z, task.metric, positions="all", direction=_DIRECTION.value)
        result["heads_patch"] = [hp[s].tolist() for s in z]
        result["heads_atp"] = [ha[s].tolist() for s in z]
        if _TASK.value == "induction":
            result["induction_scores"] = causal.induction_scores(lm, task.clean, _PERIOD.value).tolist()
    result["agreement"] = _agreement(result)
    return result


def _agreement(result: dict) -> dict:
    import numpy as np

    def spearman(a, b):
        a, b = np.asarray(a).ravel(), np.asarray(b).ravel()
        ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
        return float(np.corrcoef(ra, rb)[0, 1])

    out = {"resid_spearman_atp_vs_patching": spearman(result["resid_patch"], result["resid_atp"])}
    if "heads_patch" in result:
        out["heads_spearman_atp_vs_patching"] = spearman(result["heads_patch"], result["heads_atp"])
    return out


if __name__ == "__main__":
    cli.run(main)
