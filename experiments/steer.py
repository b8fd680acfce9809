"""Steering and mitigation, offline.

--task=sentiment (default): steering curves: sentiment of greedy continuations of neutral prompts (VADER lexicon)
against fluency (their log-prob under the unsteered model), over the coefficient, for the
difference-in-means direction of positive minus negative SST-2 reviews and, with --sae, the
dictionary latents that best separate them; JSON, a PNG of the curves and an HTML page.

  python -m experiments.steer --config=configs/demo.py --out=runs/steer [--sae=runs/demo/export]
      [--site=blocks.10.hook_resid_post] [--coefficients=-0.4,-0.2,0,0.2,0.4]

Coefficients are in units of the site's mean activation norm (every direction scaled to unit
norm first), so the baseline and the latents are compared at equal strength.

--task=repetition (needs --sae): the worked mitigation of degenerate repetition in greedy
continuations of the config's text (jaxsae/causal/mitigation.py): the behaviour rate before, the
latents that drive it by attribution, the rate with the top --top_k zero-ablated (error kept)
against random-latent controls, and the held-out loss each costs.

  python -m experiments.steer --task=repetition --sae=runs/demo/export --out=runs/mitigate

--task=hallucination (optional --sae): known against made-up countries (jaxsae/causal/
hallucination.py): the held-out separation of the "knownness" direction, and how steering it
(and a random direction, and the best-separating latent) changes how often the model confidently
names a capital for a country that does not exist, against accuracy on real ones.
"""

from absl import flags
from ml_collections import config_flags

from experiments import cli

_CONFIG = config_flags.DEFINE_config_file("config", "configs/demo.py", "Config preset (the model: data.lm).")
_OUT = flags.DEFINE_string("out", None, "Output directory.", required=True)
_SAE = flags.DEFINE_string("sae", None, "Optional SAELens-format dictionary at --site (its latents are steered too).")
_SITE = flags.DEFINE_string("site", None, "Site to steer (default: the dictionary's hook, else blocks.10.hook_resid_post).")
_COEFS = flags.DEFINE_list("coefficients", ["-0.4", "-0.2", "0", "0.2", "0.4"], "Coefficients x mean norm.")
_PROMPTS = flags.DEFINE_integer("prompts", 12, "Neutral prompts (of steering_eval.NEUTRAL_PROMPTS).")
_CONTRAST = flags.DEFINE_integer("contrast", 64, "Positive and negative reviews for the directions.")
_LATENTS = flags.DEFINE_integer("latents", 2, "Dictionary latents steered (with --sae).")
_NEW = flags.DEFINE_integer("max_new_tokens", 20, "Tokens generated per prompt (repetition: 40 is typical).")
_TASK = flags.DEFINE_enum("task", "sentiment", ["sentiment", "repetition", "hallucination"],
                          "Steering curves, the repetition mitigation, or the known/made-up entity experiment.")
_TOP_K = flags.DEFINE_integer("top_k", 10, "repetition: latents ablated.")
_CONTROLS = flags.DEFINE_integer("controls", 3, "repetition: random-latent control draws.")
_PROMPT_TOKENS = flags.DEFINE_integer("prompt_tokens", 24, "repetition: tokens per prompt window.")


def main(argv):
    import json
    import os

    from jaxsae import config as config_lib
    from jaxsae import runlock
    from jaxsae.causal import steering_eval as se
    from jaxsae.data import harvest
    from jaxsae.report import causal as report

    cfg = config_lib.from_configdict(_CONFIG.value)
    sae, site = None, _SITE.value
    if _SAE.value:
        from jaxsae.interop import saelens

        sae = saelens.load(_SAE.value)
        with open(os.path.join(_SAE.value, saelens.CFG)) as f:
            exported = json.load(f)
        site = site or (exported.get("metadata") or {}).get("hook_name") or exported.get("hook_name")
    site = site or "blocks.10.hook_resid_post"
    if _TASK.value == "repetition":
        return _repetition(cfg, sae, site)
    if _TASK.value == "hallucination":
        return _hallucination(cfg, sae, site)
    coefficients = tuple(float(c) for c in _COEFS.value)
    n_prompts = min(_PROMPTS.value, len(se.NEUTRAL_PROMPTS))
    settings = {"site": site, "sae": os.path.abspath(_SAE.value) if _SAE.value else None, "coefficients": coefficients,
                "prompts": n_prompts, "contrast": _CONTRAST.value, "latents": _LATENTS.value,
                "max_new_tokens": _NEW.value, "model": os.path.abspath(harvest.model_path(cfg.data.lm))}
    os.makedirs(_OUT.value, exist_ok=True)
    path = os.path.join(_OUT.value, "steer.json")
    def compute():
        lm, tok = harvest.load_lm(cfg.data.lm)
        pos, neg = se.sentiment_contrast(tok, _CONTRAST.value)
        directions = se.contrast_directions(lm, site, pos, neg, sae, _LATENTS.value)
        bos = [] if tok.bos_id is None else [tok.bos_id]
        prompts = [bos + tok.encode(p) for p in se.NEUTRAL_PROMPTS[:n_prompts]]
        run_cfg = se.SteeringEvalConfig(coefficients=coefficients, max_new_tokens=_NEW.value)
        return se.curves(lm, tok, site, directions, prompts, run_cfg, progress=True)

    with runlock.hold(_OUT.value, "steering"):
        result = report.reuse_or_compute(path, settings, compute)
        png = report.steering_curves(result, os.path.join(_OUT.value, "curves.png"))
        rows = [{"direction": name, "coefficient": r["coefficient"], "sentiment": r["property_mean"],
                 "fluency": r["fluency_mean"], "example": r["examples"][0] if r["examples"] else ""}
                for name, rs in result["directions"].items() for r in rs]
        page = report.page(os.path.join(_OUT.value, "index.html"), f"Steering at {site}",
                           {"settings": result["settings"], "mean activation norm": result["norm"]},
                           {"sentiment and fluency against the coefficient": png}, {"results": rows})
    print(f"wrote {path} and {page}")


def _repetition(cfg, sae, site):
    import dataclasses
    import json
    import os

    from jaxsae import runlock
    from jaxsae.causal import mitigation
    from jaxsae.data import harvest
    from jaxsae.data import tokens as tokens_lib
    from jaxsae.report import causal as report

    if sae is None:
        raise ValueError("--task=repetition finds the latents behind the behaviour in a dictionary: pass --sae=EXPORT_DIR")
    run_cfg = mitigation.MitigationConfig(max_new_tokens=max(_NEW.value, 8), top_k=_TOP_K.value,
                                          controls=_CONTROLS.value)
    settings = {"site": site, "sae": os.path.abspath(_SAE.value), "prompts": _PROMPTS.value,
                "prompt_tokens": _PROMPT_TOKENS.value, "config": dataclasses.asdict(run_cfg),
                "model": os.path.abspath(harvest.model_path(cfg.data.lm)), "text": dataclasses.asdict(cfg.data.text)}
    os.makedirs(_OUT.value, exist_ok=True)
    path = os.path.join(_OUT.value, "repetition.json")
    def compute():
        lm, tok = harvest.load_lm(cfg.data.lm)
        prompts = tokens_lib.batch_array(harvest.token_windows(cfg.data.text, tok, _PROMPT_TOKENS.value,
                                                               cfg.seed + 7), 0, _PROMPTS.value)
        held = tokens_lib.batch_array(harvest.token_windows(cfg.data.text, tok, 64, cfg.seed + 11), 0, 16)
        return mitigation.repetition(lm, sae, site, prompts, held, run_cfg, progress=True)

    with runlock.hold(_OUT.value, "mitigation"):
        result = report.reuse_or_compute(path, settings, compute)
        rows = [{"run": "unablated", **{k: result["before"].get(k) for k in ("rate", "mean_repetition")},
                 "loss_increase": 0.0}]
        if "ablated" in result:
            rows.append({"run": f"top {len(result['top_latents'])} latents ablated",
                         **{k: result["ablated"][k] for k in ("rate", "mean_repetition", "loss_increase")}})
            rows += [{"run": f"random control {i + 1}", **{k: c[k] for k in ("rate", "mean_repetition",
                                                                          "loss_increase")}}
                     for i, c in enumerate(result["random_controls"])]
        png = report.bars(rows, "run", ["rate", "mean_repetition", "loss_increase"],
                          os.path.join(_OUT.value, "repetition.png"), "degenerate repetition and its cost")
        page = report.page(os.path.join(_OUT.value, "index.html"), f"Mitigating repetition at {site}",
                           {"settings": result["settings"], "latents": result.get("top_latents", "none")},
                           {"degenerate rate, mean repetition, held-out loss increase": png},
                           {"degenerate rate, mean repetition and held-out loss cost": rows})
    print(json.dumps(rows, indent=1))
    print(f"wrote {path} and {page}")


def _hallucination(cfg, sae, site):
    import dataclasses
    import json
    import os

    from jaxsae import runlock
    from jaxsae.causal import hallucination
    from jaxsae.data import harvest
    from jaxsae.report import causal as report

    run_cfg = hallucination.HallucinationConfig()
    settings = {"site": site, "sae": os.path.abspath(_SAE.value) if _SAE.value else None,
                "config": dataclasses.asdict(run_cfg), "model": os.path.abspath(harvest.model_path(cfg.data.lm))}
    os.makedirs(_OUT.value, exist_ok=True)
    path = os.path.join(_OUT.value, "hallucination.json")

    def compute():
        lm, tok = harvest.load_lm(cfg.data.lm)
        return hallucination.experiment(lm, tok, site, run_cfg, sae=sae, progress=True)

    with runlock.hold(_OUT.value, "hallucination"):
        result = report.reuse_or_compute(path, settings, compute)
        rows = [{"direction": name, **r} for name, rs in result["curves"].items() for r in rs]
        png = report.lines(result["curves"], "coefficient", ["made_up_confident_rate", "made_up_top_p",
                                                              "known_accuracy"],
                           os.path.join(_OUT.value, "hallucination.png"), "steering along each direction")
        page = report.page(os.path.join(_OUT.value, "index.html"), f"Known vs made-up entities at {site}",
                           {k: result[k] for k in ("known_entities", "made_up_entities", "held_out",
                                                   "separation_accuracy", "made_up_examples")},
                           {"made-up confident rate, top-1 probability and known accuracy": png},
                           {"steering: confident completions for made-up entities vs known accuracy": rows})
    print(json.dumps(rows, indent=1))
    print(f"wrote {path} and {page}")


if __name__ == "__main__":
    cli.run(main)
