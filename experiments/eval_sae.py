"""Evaluate an exported dictionary (SAELens format) on a language model: core metrics, plots and
an HTML report with top-activating contexts, and SAEBench-schema results in OUT/evals/ (core, and
e.g. --evals=core,sparse_probing,scr,tpp,meta_structure,autointerp).

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
_LATENTS = flags.DEFINE_integer("latents", 16, "Latents shown with their top-activating contexts (report and "
                                "dashboard).")
_SEED = flags.DEFINE_integer("seed", 1, "Seed of the evaluation windows' shuffle.")
_EVALS = flags.DEFINE_list("evals", ["core"], "Evaluations to run, comma-separated: core, sparse_probing, scr, tpp, "
                            "absorption, ravel, unlearning, meta_structure, autointerp, dashboard.")
_JUDGE = flags.DEFINE_enum("judge", "lexical", ["lexical", "openai", "local"], "Autointerp judge: lexical "
                           "(deterministic token baseline), openai (--judge_url, --judge_model, key from "
                           "--judge_key_env) or local (the evaluated model, greedy: a smoke test).")
_JUDGE_URL = flags.DEFINE_string("judge_url", "https://api.openai.com/v1", "OpenAI-compatible base URL.")
_JUDGE_MODEL = flags.DEFINE_string("judge_model", "gpt-4o-mini", "Judge model name (SAEBench: gpt-4o-mini).")
_JUDGE_KEY = flags.DEFINE_string("judge_key_env", "OPENAI_API_KEY", "Environment variable holding the API key.")
_INTERP_LATENTS = flags.DEFINE_integer("autointerp_latents", 1000, "Autointerp: latents scored (SAEBench: 1000).")
_INTERP_TOKENS = flags.DEFINE_integer("autointerp_tokens", 2_000_000, "Autointerp: tokens scanned (SAEBench: 2M).")
_PROBE_DATASETS = flags.DEFINE_list("probe_datasets", None, "Sparse probing datasets (default: all of "
                                    "sentiment, news_topic, code_language, gender, country).")
_PROBE_TRAIN = flags.DEFINE_integer("probe_train", 4000, "Sparse probing: training rows per task (SAEBench: 4000).")
_PROBE_TEST = flags.DEFINE_integer("probe_test", 1000, "Sparse probing: test rows per task (SAEBench: 1000).")
_PROBE_CONTEXT = flags.DEFINE_integer("probe_context", 128, "Sparse probing, SCR, TPP and unlearning: tokens per "
                                      "text (SAEBench: 128; one forward per prompt serves the first three).")
_SCR_DESIGNS = flags.DEFINE_list("scr_designs", None, "SCR crossed designs (default: all of movie_restaurant, "
                                 "movie_product, restaurant_product, politician_gender).")
_TPP_DATASETS = flags.DEFINE_list("tpp_datasets", None, "TPP multi-class sets (default: all of country, news).")
_SCR_TRAIN = flags.DEFINE_integer("scr_train", 1600, "SCR/TPP: at most this many training rows per probe "
                                  "(SAEBench: 4000; each design uses what its data allow).")
_ABS_WORDS = flags.DEFINE_integer("absorption_words", None, "Absorption: words (alphabetic tokens) used, 80% for "
                                  "training the probes (default: the whole vocabulary, as SAEBench).")
_DASH = flags.DEFINE_list("dashboard_latents", None, "Dashboard: latents that also get a page of their own, "
                          "OUT/dashboard/latent_{i}.html (the run's page shows --latents sampled live latents).")
_ABS_POS = flags.DEFINE_integer("absorption_position", -6, "Absorption: the word's token position from the prompt's "
                                "end (-6 for SAEBench's template on SmolLM2, Gemma and GPT-2 tokenizers).")
_RAVEL_ENTITIES = flags.DEFINE_integer("ravel_entities", 500, "RAVEL: entities kept per type, those the model knows "
                                       "most facts of (SAEBench: 500).")
_RAVEL_PAIRS = flags.DEFINE_integer("ravel_pairs", 5000, "RAVEL: cause pairs per attribute (SAEBench: 5000).")
_FORGET = flags.DEFINE_string("forget_topic", "Sport", "Unlearning (topic-forgetting proxy): the news section to "
                              "forget (Politics, Technology, Entertainment, Sport); the others are retained.")
_FORGET_TEXTS = flags.DEFINE_integer("unlearning_texts", 400, "Unlearning: forget and retain texts each (half measure "
                                     "latent frequencies, half are scored).")
_SCR_TEST = flags.DEFINE_integer("scr_test", 400, "SCR/TPP: at most this many test rows per probe (SAEBench: 1000).")


def main(argv):
    del argv
    from jaxsae.evals import probe_datasets
    from jaxsae.evals.absorption import AbsorptionConfig
    from jaxsae.evals.ravel import RavelConfig
    from jaxsae.evals.run import check_evals, evaluate
    from jaxsae.evals.scr_tpp import ScrTppConfig
    from jaxsae.evals.sparse_probing import SparseProbingConfig
    from jaxsae.evals.unlearning import UnlearningConfig

    evals = check_evals(_EVALS.value)  # unknown names fail before anything loads
    cfg = config_lib.from_configdict(_CONFIG.value)
    probing = SparseProbingConfig(datasets=tuple(_PROBE_DATASETS.value or probe_datasets.DATASETS),
                                  train_size=_PROBE_TRAIN.value, test_size=_PROBE_TEST.value,
                                  context=_PROBE_CONTEXT.value).validate()
    removal = ScrTppConfig(scr_designs=tuple(_SCR_DESIGNS.value or probe_datasets.CROSSED),
                           tpp_datasets=tuple(_TPP_DATASETS.value or probe_datasets.MULTICLASS),
                           train_size=_SCR_TRAIN.value, test_size=_SCR_TEST.value,
                           context=_PROBE_CONTEXT.value).validate()
    forgetting = UnlearningConfig(texts_per_side=_FORGET_TEXTS.value, context=_PROBE_CONTEXT.value,
                                  forget_topic=_FORGET.value).validate()
    facts = RavelConfig(top_n_entities=_RAVEL_ENTITIES.value, candidate_entities=2 * _RAVEL_ENTITIES.value,
                        num_pairs_per_attribute=_RAVEL_PAIRS.value).validate()
    absorb = AbsorptionConfig(max_words=_ABS_WORDS.value, prompt_token_pos=_ABS_POS.value).validate()
    from jaxsae.evals import judges
    from jaxsae.evals.autointerp import AutointerpConfig

    interp = AutointerpConfig(n_latents=_INTERP_LATENTS.value, total_tokens=_INTERP_TOKENS.value)
    judge = {"lexical": judges.LexicalJudge, "local": lambda: None,
             "openai": lambda: judges.OpenAICompatibleJudge(_JUDGE_URL.value, _JUDGE_MODEL.value, _JUDGE_KEY.value)}[
        _JUDGE.value]()
    out = evaluate(_SAE.value, cfg.data, _OUT.value, evals, seed=_SEED.value, windows=_WINDOWS.value,
                   downstream_windows=_DOWNSTREAM.value, n_latents=_LATENTS.value, probing=probing, interp=interp,
                   judge=judge, scr_tpp_config=removal, absorption_config=absorb,
                   dashboard_latents=[int(i) for i in _DASH.value or ()], ravel_config=facts,
                   unlearning_config=forgetting)
    if "core" in out:
        out["core"] = {k: v for k, v in out["core"].items() if k != "identity"}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    cli.run(main)
