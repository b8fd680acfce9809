"""The main job's three binaries, end to end on a tiny model (what `make demo` runs on SmolLM2):
experiments.harvest -> experiments.train_sae (data.source=store) -> experiments.eval_sae, plus
harvest --verify naming a corrupt shard."""

import json
import os
import subprocess
import sys

from tiny_lm import make_tiny_lm

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(module, *args, timeout=400):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "", "PYTHONPATH": ROOT}
    return subprocess.run([sys.executable, "-m", module, "--config=configs/demo.py", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def _word_position(lm_dir: str) -> int:
    from jaxsae import models

    return -(len(models.load_tokenizer(lm_dir).encode(" has the first letter:")) + 1)


def test_harvest_train_evaluate_binaries(tmp_path):
    lm = make_tiny_lm(str(tmp_path / "lm"))
    store, work = str(tmp_path / "store"), str(tmp_path / "run")
    common = [f"--config.data.lm.path={lm}", "--config.data.lm.sites=('blocks.2.hook_resid_post',)",
              "--config.data.lm.context=32", "--config.data.lm.batch_windows=8", f"--config.data.path={store}"]
    out = _run("experiments.harvest", *common, "--config.data.lm.windows=48")
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads(out.stdout)["tokens"] == 48 * 31
    out = _run("experiments.train_sae", *common, f"--workdir={work}", "--config.sae.d_sae=128", "--config.sae.k=8",
               "--config.train.steps=60", "--config.train.batch_size=128", "--config.train.checkpoint_every=30")
    assert out.returncode == 0, out.stderr[-3000:]
    out = _run("experiments.eval_sae", *common, f"--sae={work}/export", f"--out={work}/eval", "--evals=core,probing")
    assert out.returncode == 2 and "unknown evaluation(s) ['probing']; valid: core, sparse_probing, scr, tpp" in out.stderr
    out = _run("experiments.eval_sae", *common, f"--sae={work}/export", f"--out={work}/eval", "--windows=16",
               "--downstream_windows=8", "--latents=4",
               "--probe_datasets=sentiment,gender", "--probe_train=40", "--probe_test=20", "--probe_context=16",
               "--scr_designs=movie_product", "--tpp_datasets=country", "--scr_train=32", "--scr_test=16",
               "--absorption_words=80", f"--absorption_position={_word_position(lm)}",
               "--evals=core,sparse_probing,scr,tpp,absorption,autointerp,dashboard,unlearning,ravel",
               "--ravel_entities=8", "--ravel_pairs=8", "--unlearning_texts=16", "--autointerp_latents=4",
               "--autointerp_tokens=4000", "--dashboard_latents=3")
    assert out.returncode == 0, out.stderr[-3000:]
    printed = json.loads(out.stdout)
    probing = json.load(open(os.path.join(work, "eval", "evals", "sparse_probing.json")))
    assert probing["eval_result_metrics"] == printed["sparse_probing"]
    assert [d["dataset_name"] for d in probing["eval_result_details"]] == ["sentiment", "gender"]
    assert os.path.isfile(os.path.join(work, "eval", "evals", "core.json"))
    for name, category in (("scr", "scr_metrics"), ("tpp", "tpp_metrics"), ("absorption_first_letter", "mean"),
                           ("unlearning", "unlearning"), ("ravel", "ravel")):
        r = json.load(open(os.path.join(work, "eval", "evals", f"{name}.json")))
        printed_as = "absorption" if name.startswith("absorption") else name
        assert r["eval_result_metrics"] == printed[printed_as] and category in printed[printed_as]
    interp = json.load(open(os.path.join(work, "eval", "evals", "autointerp.json")))
    assert interp["eval_config"]["judge"] == "LexicalJudge" and interp["eval_result_metrics"] == printed["autointerp"]
    assert interp["eval_result_metrics"]["autointerp"]["n_latents_scored"] == 4
    page = open(os.path.join(work, "eval", "dashboard.html")).read()
    assert printed["dashboard"]["latents"] and all(f"'latent': {i}" not in page for i in [-1])
    assert '"explanation": "' in page  # autointerp ran first: its explanations are on the page
    assert os.path.isfile(os.path.join(work, "eval", "dashboard", "latent_3.html"))
    m = json.load(open(os.path.join(work, "eval", "metrics.json")))
    assert m["site"] == "blocks.2.hook_resid_post" and {"ce_loss_recovered", "kl_div", "l0", "fvu",
                                                        "dead_fraction"} <= set(m)
    assert os.path.isfile(os.path.join(work, "eval", "report.html"))
    shard = os.path.join(store, "blocks.2.hook_resid_post", "shard_000002.npy")
    data = bytearray(open(shard, "rb").read())
    data[200] ^= 1
    open(shard, "wb").write(bytes(data))
    out = _run("experiments.harvest", *common, "--config.data.lm.windows=48", "--verify")
    assert out.returncode == 2 and "corrupt shard" in out.stderr and "shard_000002.npy" in out.stderr
