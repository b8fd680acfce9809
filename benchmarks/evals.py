"""Wall time of each evaluation on one exported dictionary (the demo's by default), one after the
other in one process on this machine, each into a fresh output directory:

  core            128 windows of reconstruction metrics, 32 of them through the spliced model
  sparse_probing  5 datasets, --probe_train / --probe_test rows per task (SAEBench: 4000 / 1000)
  scr, tpp        4 crossed designs / 2 multi-class sets, at most --scr_train / --scr_test rows per probe
  absorption      --absorption_words alphabetic tokens (SAEBench: the whole vocabulary)
  ravel           --ravel_entities per entity type, --ravel_pairs cause pairs per attribute
  unlearning      the topic-forgetting proxy, --unlearning_texts forget and retain texts
  meta_structure  the BatchTopK meta-dictionary on the decoder rows (SAEBench's 1500 steps)
  autointerp      --interp_latents latents over --interp_tokens tokens, the lexical judge (no network)
  dashboard       --latents latents from 128 windows (its own forward: core runs apart here)

  python -m benchmarks.evals [--sae runs/demo/export] [--only scr,tpp] [--json]

The model loads once (its load time is reported apart); each figure is the eval's own wall time,
each eval into a fresh output directory (so nothing is shared between them; `shared` then times
sparse_probing, scr and tpp in one call, where each prompt's forward serves all three).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sae", default="runs/demo/export")
    ap.add_argument("--config", default="configs/demo.py")
    ap.add_argument("--probe_train", type=int, default=100)
    ap.add_argument("--probe_test", type=int, default=50)
    ap.add_argument("--probe_context", type=int, default=64)
    ap.add_argument("--interp_latents", type=int, default=50)
    ap.add_argument("--interp_tokens", type=int, default=50_000)
    ap.add_argument("--scr_train", type=int, default=200)
    ap.add_argument("--scr_test", type=int, default=100)
    ap.add_argument("--absorption_words", type=int, default=2000)
    ap.add_argument("--ravel_entities", type=int, default=50)
    ap.add_argument("--ravel_pairs", type=int, default=200)
    ap.add_argument("--unlearning_texts", type=int, default=100)
    ap.add_argument("--latents", type=int, default=16)
    ap.add_argument("--only", default="", help="comma list of evals (default: all, then the shared run)")
    ap.add_argument("--out", default="", help="keep each eval's output in OUT/<eval> (default: temporary)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    import importlib.util

    from jaxsae import config as config_lib
    from jaxsae.data import harvest
    from jaxsae.evals import judges
    from jaxsae.evals import run as run_lib
    from jaxsae.evals.absorption import AbsorptionConfig
    from jaxsae.evals.autointerp import AutointerpConfig
    from jaxsae.evals.ravel import RavelConfig
    from jaxsae.evals.scr_tpp import ScrTppConfig
    from jaxsae.evals.sparse_probing import SparseProbingConfig
    from jaxsae.evals.unlearning import UnlearningConfig

    spec = importlib.util.spec_from_file_location("preset", args.config)
    preset = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(preset)
    data = config_lib.from_configdict(preset.get_config()).data
    t = time.perf_counter()
    model = harvest.load_lm(data.lm)
    times = {"model_load": time.perf_counter() - t}
    probing = SparseProbingConfig(train_size=args.probe_train, test_size=args.probe_test, context=args.probe_context)
    interp = AutointerpConfig(n_latents=args.interp_latents, total_tokens=args.interp_tokens)
    settings = dict(
        windows=128, downstream_windows=32, n_latents=args.latents, probing=probing, interp=interp,
        judge=judges.LexicalJudge(), model=model, progress=False,
        scr_tpp_config=ScrTppConfig(train_size=args.scr_train, test_size=args.scr_test, context=args.probe_context),
        absorption_config=AbsorptionConfig(max_words=args.absorption_words),
        ravel_config=RavelConfig(top_n_entities=args.ravel_entities, candidate_entities=2 * args.ravel_entities,
                                 num_pairs_per_attribute=args.ravel_pairs),
        unlearning_config=UnlearningConfig(texts_per_side=args.unlearning_texts, context=args.probe_context))
    names = [n for n in args.only.split(",") if n] or list(run_lib.EVALS)
    results = {}
    for name in names:
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(args.out, name) if args.out else tmp
            t = time.perf_counter()
            results[name] = run_lib.evaluate(args.sae, data, out, (name,), **settings)[name]
            times[name] = time.perf_counter() - t
    if not args.only:
        with tempfile.TemporaryDirectory() as out:
            t = time.perf_counter()
            run_lib.evaluate(args.sae, data, out, ("sparse_probing", "scr", "tpp"), **settings)
            times["shared"] = time.perf_counter() - t
    if args.json:
        print(json.dumps({"seconds": times, "results": results}, indent=2, default=str))
        return
    print(f"{'eval':<16} {'seconds':>9}")
    for name, s in times.items():
        print(f"{name:<16} {s:9.1f}")
    print(f"{'all evals':<16} {sum(v for k, v in times.items() if k not in ('model_load', 'shared')):9.1f}")


if __name__ == "__main__":
    main()
