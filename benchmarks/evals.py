"""Wall time of each evaluation on one exported dictionary (the demo's by default), one after the
other in one process on this machine, each into a fresh output directory:

  core            128 windows of reconstruction metrics, 32 of them through the spliced model
  sparse_probing  5 datasets, --probe_train / --probe_test rows per task (SAEBench: 4000 / 1000)
  meta_structure  the BatchTopK meta-dictionary on the decoder rows (SAEBench's 1500 steps)
  autointerp      --interp_latents latents over --interp_tokens tokens, the lexical judge (no network)

  python -m benchmarks.evals [--sae runs/demo/export] [--probe_train 100 --probe_test 50] [--json]

The model loads once (its load time is reported apart); each figure is the eval's own wall time.
"""

from __future__ import annotations

import argparse
import json
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
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    import importlib.util

    from jaxsae import config as config_lib
    from jaxsae.data import harvest
    from jaxsae.evals import judges
    from jaxsae.evals import run as run_lib
    from jaxsae.evals.autointerp import AutointerpConfig
    from jaxsae.evals.sparse_probing import SparseProbingConfig

    spec = importlib.util.spec_from_file_location("preset", args.config)
    preset = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(preset)
    data = config_lib.from_configdict(preset.get_config()).data
    t = time.perf_counter()
    model = harvest.load_lm(data.lm)
    times = {"model_load": time.perf_counter() - t}
    probing = SparseProbingConfig(train_size=args.probe_train, test_size=args.probe_test, context=args.probe_context)
    interp = AutointerpConfig(n_latents=args.interp_latents, total_tokens=args.interp_tokens)
    results = {}
    for name in run_lib.EVALS:
        with tempfile.TemporaryDirectory() as out:
            t = time.perf_counter()
            results[name] = run_lib.evaluate(args.sae, data, out, (name,), windows=128, downstream_windows=32,
                                             probing=probing, interp=interp, judge=judges.LexicalJudge(),
                                             model=model, progress=False)[name]
            times[name] = time.perf_counter() - t
    if args.json:
        print(json.dumps({"seconds": times, "results": results}, indent=2, default=str))
        return
    print(f"{'eval':<16} {'seconds':>9}")
    for name, s in times.items():
        print(f"{name:<16} {s:9.1f}")
    print(f"{'all evals':<16} {sum(v for k, v in times.items() if k != 'model_load'):9.1f}")


if __name__ == "__main__":
    main()
