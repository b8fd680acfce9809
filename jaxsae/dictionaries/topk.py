"""TopK SAE (Gao et al. 2024, "Scaling and evaluating sparse autoencoders").

f = ReLU(TopK_k(pre)). The decoder is sparse: each row gathers its k decoder rows (the backward
pass is a scatter-add into those rows), so the decoder costs O(B k d) instead of O(B F d).
Loss: SSE-mean reconstruction + aux_alpha * AuxK over dead latents (+ optional multi-TopK term
L(4k)/8). Decoder rows are kept at unit norm.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax.numpy as jnp

from jaxsae.dictionaries.base import (
    Dictionary,
    LossContext,
    LossOutput,
    aux_k_loss,
    base_metrics,
    encode_topk_relu,
    fired_from_sparse,
    scatter_rows,
    sse_mean,
    topk_relu,
)


@dataclasses.dataclass(frozen=True)
class TopK(Dictionary):
    k: int = 32
    k_aux: int | None = None  # None: d_in // 2 (the App. B.1 heuristic used by most libraries)
    aux_alpha: float = 1 / 32
    multi_topk: bool = False
    sparse_decoder: bool = True

    name: ClassVar[str] = "topk"
    saelens_architecture: ClassVar[str] = "topk"
    default_b_dec_to_input: ClassVar[bool] = True  # OpenAI's b_pre

    def __post_init__(self):
        super().__post_init__()
        if not isinstance(self.k, int) or not 0 < self.k <= self.d_sae:
            raise ValueError(f"{self.name}: k must be an int in [1, d_sae={self.d_sae}], got {self.k!r}")

    @property
    def aux_k(self) -> int:
        return min(self.d_sae, self.k_aux if self.k_aux is not None else max(1, self.d_in // 2))

    def encode(self, params, x_bd):
        vals, idx = topk_relu(self.pre_acts(params, x_bd), self.k)
        lead = vals.shape[:-1]
        f = scatter_rows(vals.reshape(-1, self.k), idx.reshape(-1, self.k), self.d_sae)
        return f.reshape(*lead, self.d_sae)

    def _recon(self, params, x_bd, vals_bk, idx_bk):
        if self.sparse_decoder:
            yhat = self.decode_sparse(params, vals_bk, idx_bk)
        else:
            yhat = self.decode(params, scatter_rows(vals_bk, idx_bk, self.d_sae))
        return yhat + self.skip_out(params, x_bd)

    def loss(self, params, x_bd, y_bo, ctx: LossContext) -> LossOutput:
        # top-k comes back sorted, so with multi-TopK one encoder pass at 4k serves both terms
        k_enc = min(4 * self.k, self.d_sae) if self.multi_topk else self.k
        vals_all, idx_all = encode_topk_relu(self, params, x_bd, k_enc)
        vals_bk, idx_bk = vals_all[:, : self.k], idx_all[:, : self.k]
        if ctx.k_limit is not None:  # a sweep's smaller k: the slots past it are dropped (top-k is sorted)
            vals_bk = jnp.where(jnp.arange(self.k) < ctx.k_limit, vals_bk, 0.0)
        yhat_bo = self._recon(params, x_bd, vals_bk, idx_bk)
        rec = sse_mean(y_bo - yhat_bo)
        aux = aux_k_loss(self, params, x_bd, y_bo - yhat_bo, ctx.dead_f, self.aux_k)
        loss = rec + self.aux_alpha * aux
        l0 = jnp.mean(jnp.sum(vals_bk > 0, axis=-1).astype(jnp.float32))
        metrics = {**base_metrics(y_bo, yhat_bo, l0), "loss_rec": rec, "loss_aux": aux}
        if self.multi_topk:
            yhat4_bo = self._recon(params, x_bd, vals_all, idx_all)
            rec4 = sse_mean(y_bo - yhat4_bo)
            loss = loss + rec4 / 8
            metrics["loss_rec_4k"] = rec4
        fired = fired_from_sparse(vals_bk, idx_bk, self.d_sae)
        return LossOutput(loss, fired, metrics, jnp.float32(jnp.nan))
