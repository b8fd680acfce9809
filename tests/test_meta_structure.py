"""Meta-structure: a decoder whose rows are sparse mixtures of a few shared directions is found to
be highly structured, a random decoder is not; the result loads in SAEBench's output class."""

import numpy as np
import pytest

from jaxsae import dictionaries as D
from jaxsae.dictionaries.bound import SAE
from jaxsae.evals import meta_structure as ms


def _sae_with_decoder(w_dec):
    f, d = w_dec.shape
    spec = D.build("relu", d_in=d, d_sae=f)
    return SAE(spec, {"W_enc": np.zeros((d, f), np.float32), "b_enc": np.zeros(f, np.float32),
                      "W_dec": w_dec.astype(np.float32), "b_dec": np.zeros(d, np.float32)})


def test_variance_explained_formula():
    rows = np.random.default_rng(0).normal(size=(50, 4))
    assert ms.variance_explained(rows, rows) == (1.0, 0.0)
    fve, _ = ms.variance_explained(rows, np.broadcast_to(rows.mean(0), rows.shape))
    assert fve == pytest.approx(0.0)


def test_structured_decoder_is_found_and_random_is_not(tmp_path):
    from sae_bench.evals.meta_structure.eval_output import MetaStructureEvalOutput

    rng = np.random.default_rng(0)
    atoms = rng.normal(size=(32, 64))
    atoms /= np.linalg.norm(atoms, axis=1, keepdims=True)
    mix = np.zeros((512, 32))
    for i in range(512):  # each decoder row: 2 of 32 shared directions
        mix[i, rng.choice(32, 2, replace=False)] = rng.uniform(0.5, 1.5, 2)
    structured = mix @ atoms
    structured /= np.linalg.norm(structured, axis=1, keepdims=True)
    random = rng.normal(size=(512, 64))
    random /= np.linalg.norm(random, axis=1, keepdims=True)
    cfg = ms.MetaStructureConfig(k=2, train_steps=600, train_batch_size=256, learning_rate=3e-3)
    r_s = ms.run(_sae_with_decoder(structured), str(tmp_path / "s"), cfg, progress=False)
    r_r = ms.run(_sae_with_decoder(random), str(tmp_path / "r"), cfg, progress=False)
    fve_s = r_s["eval_result_metrics"]["meta_structure"]["decoder_fraction_variance_explained"]
    fve_r = r_r["eval_result_metrics"]["meta_structure"]["decoder_fraction_variance_explained"]
    # measured 0.998 vs 0.50: 128 meta-latents can partly memorise 512 random rows, never all of them
    assert fve_s > 0.95 and fve_r < 0.7 and fve_s > fve_r + 0.3, (fve_s, fve_r)
    parsed = MetaStructureEvalOutput(**r_s)
    assert parsed.eval_type_id == "meta_structure_decoder_variance" and parsed.eval_config.width_ratio == 0.25
    again = ms.run(_sae_with_decoder(structured), str(tmp_path / "s"), cfg, progress=False)  # resumes: done
    assert again["eval_result_metrics"]["meta_structure"]["decoder_fraction_variance_explained"] == fve_s
