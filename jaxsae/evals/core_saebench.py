"""The core evaluation as SAEBench writes it (`evals/core.json`): its categories and keys, the
per-latent details (densities, consistent activation, encoder/decoder weight statistics), and
each deliberate difference from SAEBench named in eval_config, with both values written."""

from __future__ import annotations

import numpy as np

from jaxsae.evals import results

DIFFERENCES = {
    "explained_variance": "1 - FVU against the mean of all evaluation tokens (SAEBench's default formula "
                          "subtracts a scalar mean, which misstates the variance); SAEBench's per-token "
                          "batch-mean form is explained_variance_legacy",
    "mse": "squared error per element, independent of the batch size; SAEBench's per-token SSE divided by "
           "the batch's token count is mse_saebench",
    "l1": "sum of |f| per token (SAEBench sums f signed; equal for non-negative latents)",
    "special_tokens": "BOS and padding are excluded from every metric and keep their clean values in the "
                      "spliced runs (SAEBench's exclude_special_tokens_from_reconstruction=True)",
    "token_stats": "counts of the tokens actually scored (SAEBench counts context x batches, masked ones included)",
}


def _unit_rows(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, np.float64)
    return a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)


def max_other_cosine(rows_fd: np.ndarray, chunk: int = 1024) -> np.ndarray:
    """For each row, its largest cosine with any other row (chunked: never F x F at once)."""
    u = _unit_rows(rows_fd).astype(np.float32)
    out = np.empty(len(u), np.float64)
    for s in range(0, len(u), chunk):
        sim = u[s : s + chunk] @ u.T
        sim[np.arange(sim.shape[0]), np.arange(s, s + sim.shape[0])] = -np.inf
        out[s : s + chunk] = sim.max(1) if len(u) > 1 else np.nan
    return out


def weight_stats(params: dict) -> dict[str, np.ndarray]:
    """Per latent: encoder bias and norm, encoder/decoder cosine, max cosine with another latent's
    encoder column and decoder row."""
    w_enc = np.asarray(params["W_enc"], np.float64).T  # [F, D]
    w_dec = np.asarray(params["W_dec"], np.float64)  # [F, O]
    bias = params.get("b_enc", params.get("b_gate"))
    stats = {
        "encoder_bias": np.asarray(bias, np.float64) if bias is not None else np.zeros(len(w_enc)),
        "encoder_norm": np.linalg.norm(w_enc, axis=1),
        "max_encoder_cosine_sim": max_other_cosine(w_enc),
        "max_decoder_cosine_sim": max_other_cosine(w_dec),
    }
    if w_enc.shape[1] == w_dec.shape[1]:
        stats["encoder_decoder_cosine_sim"] = (_unit_rows(w_enc) * _unit_rows(w_dec)).sum(1)
    else:  # a transcoder: encoder and decoder live in different spaces
        stats["encoder_decoder_cosine_sim"] = np.full(len(w_enc), np.nan)
    return stats


def core_result(m: dict, density_f: np.ndarray, consistent_f: np.ndarray, params: dict, eval_config: dict,
                sae_cfg: dict) -> dict:
    """The SAEBench-schema result for the core metrics `m` (jaxsae.evals.core.evaluate's)."""
    w = weight_stats(params)
    metrics = {
        "model_behavior_preservation": {"kl_div_score": m["kl_div_score"], "kl_div_with_ablation": m["kl_div_zero_ablation"],
                                        "kl_div_with_sae": m["kl_div"]},
        "model_performance_preservation": {"ce_loss_score": m["ce_loss_recovered"],
                                           "ce_loss_with_ablation": m["ce_loss_zero_ablation"],
                                           "ce_loss_with_sae": m["ce_loss_with_sae"],
                                           "ce_loss_without_sae": m["ce_loss_clean"]},
        "reconstruction_quality": {"explained_variance": m["explained_variance"],
                                   "explained_variance_legacy": m["explained_variance_legacy"], "mse": m["mse"],
                                   "mse_saebench": m["mse_saebench"], "cossim": m["cosine_similarity"]},
        "shrinkage": {"l2_norm_in": m["l2_norm_in"], "l2_norm_out": m["l2_norm_out"], "l2_ratio": m["l2_ratio"],
                      "relative_reconstruction_bias": m["relative_reconstruction_bias"]},
        "sparsity": {"l0": m["l0"], "l1": m["l1"]},
        "token_stats": {"total_tokens_eval_reconstruction": m["downstream_tokens"],
                        "total_tokens_eval_sparsity_variance": m["n_tokens"]},
        "misc_metrics": {"freq_over_1_percent": m["dense_fraction_over_1_percent"],
                         "freq_over_10_percent": m["dense_fraction_over_10_percent"],
                         "normalized_freq_over_1_percent": m["normalized_freq_over_1_percent"],
                         "normalized_freq_over_10_percent": m["normalized_freq_over_10_percent"],
                         "average_max_encoder_cosine_sim": float(np.nanmean(w["max_encoder_cosine_sim"])),
                         "average_max_decoder_cosine_sim": float(np.nanmean(w["max_decoder_cosine_sim"])),
                         "frac_alive": m["frac_alive"]},
    }
    details = [{"index": i, "feature_density": float(density_f[i]),
                "consistent_activation_heuristic": float(consistent_f[i]),
                **{k: float(v[i]) for k, v in w.items()}} for i in range(len(density_f))]
    return results.build("core", eval_config, metrics, details, sae_cfg, differences=DIFFERENCES)
