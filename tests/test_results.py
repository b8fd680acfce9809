"""The SAEBench-schema result writer and the core evaluation's per-latent weight statistics."""

import json
import math

import numpy as np
import pytest

from jaxsae.evals import core_saebench, results


def test_result_has_every_schema_key_and_round_trips(tmp_path):
    r = results.build("core", {"context_size": 32}, {"sparsity": {"l0": 3.0, "l1": float("nan")}},
                      [{"index": 0, "feature_density": float("inf")}], {"d_in": 4, "metadata": {"sae_lens_id": "x"}},
                      differences={"l1": "why"})
    assert set(r) == set(results.KEYS)
    assert r["eval_result_metrics"]["sparsity"] == {"l0": 3.0, "l1": -1}  # nan written as SAEBench does
    assert r["eval_result_details"][0]["feature_density"] == -1
    assert r["eval_config"]["jaxsae"] == {"nan_written_as": -1, "differences_from_saebench": {"l1": "why"}}
    assert r["sae_lens_id"] == "x" and isinstance(r["datetime_epoch_millis"], int)
    path = results.write(str(tmp_path), r)
    assert path.endswith("evals/core.json")
    assert results.read(path) == json.loads(open(path).read())


def test_nested_categories_and_unknown_types_are_refused(tmp_path):
    with pytest.raises(results.ResultError, match=r"\['sparsity'\]\['l0'\] is a dict; categories must be flat"):
        results.build("core", {}, {"sparsity": {"l0": {"a": 1}}})
    with pytest.raises(results.ResultError, match="eval_type_id 'coer' is unknown"):
        results.build("coer", {}, {"a": {"b": 1}})
    bad = tmp_path / "x.json"
    bad.write_text(json.dumps({"eval_type_id": "core"}))
    with pytest.raises(results.ResultError, match="missing"):
        results.read(str(bad))


def test_weight_statistics_equal_the_direct_formulas():
    rng = np.random.default_rng(0)
    w_enc, w_dec, b = rng.normal(size=(6, 9)), rng.normal(size=(9, 6)), rng.normal(size=9)
    w_dec[3] = 2.5 * w_dec[7]  # a duplicate direction: max cosine 1 for both
    st = core_saebench.weight_stats({"W_enc": w_enc, "W_dec": w_dec, "b_enc": b})
    unit = lambda a: a / np.linalg.norm(a, axis=1, keepdims=True)  # noqa: E731
    cos = unit(w_dec) @ unit(w_dec).T
    np.fill_diagonal(cos, -np.inf)
    np.testing.assert_allclose(st["max_decoder_cosine_sim"], cos.max(1), rtol=1e-5)
    assert st["max_decoder_cosine_sim"][3] == pytest.approx(1.0, abs=1e-6)
    enc = unit(w_enc.T) @ unit(w_enc.T).T
    np.fill_diagonal(enc, -np.inf)
    np.testing.assert_allclose(st["max_encoder_cosine_sim"], enc.max(1), rtol=1e-5)
    np.testing.assert_allclose(st["encoder_decoder_cosine_sim"], (unit(w_enc.T) * unit(w_dec)).sum(1))
    np.testing.assert_allclose(st["encoder_norm"], np.linalg.norm(w_enc, axis=0))
    np.testing.assert_allclose(st["encoder_bias"], b)
    small = core_saebench.max_other_cosine(w_dec, chunk=4)  # chunking changes nothing
    np.testing.assert_allclose(small, st["max_decoder_cosine_sim"])
    tc = core_saebench.weight_stats({"W_enc": w_enc, "W_dec": rng.normal(size=(9, 5)), "b_enc": b})
    assert all(math.isnan(v) for v in tc["encoder_decoder_cosine_sim"])  # a transcoder: no such cosine
