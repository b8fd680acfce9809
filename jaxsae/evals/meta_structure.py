"""Meta-structure (SAEBench's meta_structure_decoder_variance): how much of a dictionary's decoder is
itself sparse in a smaller dictionary of "meta-latents".

A BatchTopK meta-dictionary (width 0.25 x d_sae, k = 4, 1500 steps of batch 1024, Adam at a constant
lr 5e-4: SAEBench's settings) is trained with jaxsae's own loop on the rows of W_dec, and scored by
the fraction of the rows' variance (about their mean) its reconstructions explain. The training run
lives in OUT/meta_structure/ (checkpointed and resumable like any run). Uses the weights only.

Differences from SAEBench (written into eval_config): rows are drawn in shuffled epochs rather than
with replacement, and the reconstructions come from the exported meta-dictionary (BatchTopK as
JumpReLU at its learned threshold, as every BatchTopK export) rather than a batch top-k.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time

import numpy as np

from jaxsae.evals import results

DIFFERENCES = {
    "sampling": "decoder rows drawn in shuffled epochs (SAEBench draws with replacement)",
    "reconstruction": "by the exported meta-dictionary: BatchTopK as JumpReLU at its learned threshold "
                      "(SAEBench reconstructs with its training-mode BatchTopK)",
}


@dataclasses.dataclass(frozen=True)
class MetaStructureConfig:
    width_ratio: float = 0.25
    k: int = 4
    train_steps: int = 1500
    train_batch_size: int = 1024
    learning_rate: float = 5e-4
    random_seed: int = 42

    def validate(self) -> MetaStructureConfig:
        if not 0 < self.width_ratio <= 4 or self.k < 1 or self.train_steps < 1 or self.train_batch_size < 1:
            raise ValueError(f"meta_structure: invalid settings {self}")
        return self


def variance_explained(rows_nd: np.ndarray, recon_nd: np.ndarray) -> tuple[float, float]:
    """(1 - sum |row - recon|^2 / sum |row - mean row|^2, mse per element)."""
    rows, recon = np.asarray(rows_nd, np.float64), np.asarray(recon_nd, np.float64)
    resid = float(((rows - recon) ** 2).sum())
    total = float(((rows - rows.mean(0)) ** 2).sum())
    return (1.0 - resid / total if total > 0 else 0.0), resid / rows.size


def run(sae, out_dir: str, cfg: MetaStructureConfig = MetaStructureConfig(), sae_cfg: dict | None = None,
        progress: bool = True) -> dict:
    """Train the meta-dictionary on `sae`'s decoder rows (in OUT/meta_structure/) and return the
    SAEBench-schema result."""
    from jaxsae import config as config_lib
    from jaxsae.interop import saelens
    from jaxsae.train import loop

    cfg = cfg.validate()
    rows = np.asarray(sae.params["W_dec"], np.float32)
    width = max(math.ceil(rows.shape[0] * cfg.width_ratio), cfg.k)
    work = os.path.join(out_dir, "meta_structure")
    os.makedirs(work, exist_ok=True)
    rows_path = os.path.join(work, "decoder_rows.npy")
    if not os.path.isfile(rows_path) or not np.array_equal(np.load(rows_path), rows):
        from jaxsae.atomic import atomic_write_bytes

        atomic_write_bytes(rows_path, lambda f: np.save(f, rows))
    batch = min(cfg.train_batch_size, rows.shape[0]) // 8 * 8 or 8  # divisible by the mesh's data axis
    train_cfg = config_lib.from_dict({
        "sae": {"architecture": "batchtopk", "d_sae": width, "k": cfg.k},
        "train": {"steps": cfg.train_steps, "batch_size": batch, "lr": cfg.learning_rate, "lr_warmup_steps": 0,
                  "lr_decay_fraction": 0.0, "normalize": "none", "b_dec_init": "zeros",
                  "b_dec_samples": batch, "norm_batches": 1, "log_every": max(1, cfg.train_steps // 10),
                  "checkpoint_every": max(1, cfg.train_steps // 3), "dead_tokens": 10 * rows.shape[0]},
        "data": {"source": "npy", "path": rows_path},
        "seed": cfg.random_seed,
    })
    start = time.perf_counter()
    loop.train(train_cfg, os.path.join(work, "run"), progress=progress)
    train_time = time.perf_counter() - start
    meta = saelens.load(os.path.join(work, "run", "export"))
    recon = np.concatenate([np.asarray(meta.forward(rows[s : s + 4096])) for s in range(0, len(rows), 4096)])
    fve, mse = variance_explained(rows, recon)
    eval_config = {"random_seed": cfg.random_seed, "width_ratio": cfg.width_ratio, "k": cfg.k,
                   "train_steps": cfg.train_steps, "train_batch_size": batch, "learning_rate": cfg.learning_rate,
                   "weight_decay": 0.0, "autocast": False, "eval_batch_size": 4096, "dead_feature_window": 0,
                   "feature_sampling_window": 0, "dtype": "float32", "meta_width": width}
    metrics = {"meta_structure": {"decoder_fraction_variance_explained": fve, "train_time_seconds": train_time,
                                  "final_reconstruction_mse": mse}}
    return results.build("meta_structure_decoder_variance", eval_config, metrics, None, sae_cfg,
                         differences=DIFFERENCES)
