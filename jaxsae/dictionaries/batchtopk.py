"""BatchTopK SAE (Bussmann, Leask, Nanda 2024, 2412.06410).

a = ReLU((x - b_dec) W_enc + b_enc); keep the floor(B * k) largest entries of the whole batch.
Mean L0 is exactly k (up to ties) while per-token L0 varies. Loss: SSE-mean + aux_alpha * AuxK.
Training tracks an EMA of the smallest kept activation per batch; `to_inference` turns the model
into a JumpReLU with that global threshold, which is how it must be evaluated and exported
(batch top-k leaks information across tokens).
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp

from jaxsae import ops
from jaxsae.dictionaries.base import (
    Dictionary,
    LossContext,
    LossOutput,
    aux_k_loss,
    base_metrics,
    batch_kth_largest,
    n_batch_keep,
    sse_mean,
    threshold_ema,
)


@dataclasses.dataclass(frozen=True)
class BatchTopK(Dictionary):
    k: float = 32
    k_aux: int | None = None
    aux_alpha: float = 1 / 32
    threshold_ema: float = 0.999  # dictionary_learning's rate
    threshold_start_step: int = 1000

    name: ClassVar[str] = "batchtopk"
    saelens_architecture: ClassVar[str] = "jumprelu"
    default_b_dec_to_input: ClassVar[bool] = True

    def __post_init__(self):
        super().__post_init__()
        if not 0 < self.k <= self.d_sae:
            raise ValueError(f"{self.name}: k must be in (0, d_sae={self.d_sae}], got {self.k!r}")

    @property
    def aux_k(self) -> int:
        return min(self.d_sae, self.k_aux if self.k_aux is not None else max(1, self.d_in // 2))

    def batch_encode(self, params, x_bd, k=None):
        """(f, smallest kept value) with the batch-level top-k over all of x's rows (k: the spec's,
        or a traced one from a sweep)."""
        a_bf = jax.nn.relu(self.pre_acts(params, x_bd))
        flat = a_bf.reshape(-1, self.d_sae)
        thr = batch_kth_largest(flat, n_batch_keep(flat.shape[0], self.k if k is None else k))
        keep = (a_bf >= thr) & (a_bf > 0)
        return jnp.where(keep, a_bf, 0.0), thr

    def encode(self, params, x_bd):
        return self.batch_encode(params, x_bd)[0]

    def reconstruct_groups(self, params, x_bd, f_bf):
        """Full reconstruction, skip included (Matryoshka overrides this with prefix sums)."""
        return [self.decode(params, f_bf) + self.skip_out(params, x_bd)]

    def loss(self, params, x_bd, y_bo, ctx: LossContext) -> LossOutput:
        f_bf, thr = self.batch_encode(params, x_bd, ctx.k_limit)
        yhats = self.reconstruct_groups(params, x_bd, f_bf)
        recs = [sse_mean(y_bo - yh) for yh in yhats]
        rec = sum(recs) / len(recs)
        yhat_bo = yhats[-1]
        aux = aux_k_loss(self, params, x_bd, y_bo - yhat_bo, ctx.dead_f, self.aux_k)
        l0 = jnp.mean(jnp.sum(f_bf > 0, axis=-1).astype(jnp.float32))
        metrics = {**base_metrics(y_bo, yhat_bo, l0), "loss_rec": rec, "loss_aux": aux, "batch_threshold": thr}
        if len(recs) > 1:
            metrics.update({f"loss_rec_prefix{i}": r for i, r in enumerate(recs)})
        fired = ops.batch_any(f_bf > 0)
        return LossOutput(rec + self.aux_alpha * aux, fired, metrics, thr)

    def init_state(self):
        return {**super().init_state(), "threshold": jnp.float32(-1.0)}

    def state_axes(self):
        return {**super().state_axes(), "threshold": ()}

    def update_state(self, state, out: LossOutput, n_tokens, step):
        state = super().update_state(state, out, n_tokens, step)
        return {**state, "threshold": threshold_ema(state["threshold"], out.batch_threshold, self.threshold_ema,
                                                    step, self.threshold_start_step)}

    def to_inference(self, params, state):
        from jaxsae.dictionaries.jumprelu import JumpReLU

        if state is None or "threshold" not in state:
            raise ValueError(f"{self.name}: converting to JumpReLU needs the trained threshold (dict state)")
        thr = float(state["threshold"])
        if thr < 0:
            raise ValueError(f"{self.name}: the inference threshold was never estimated (training stopped before "
                             f"threshold_start_step={self.threshold_start_step}); train longer or lower it")
        spec = JumpReLU(d_in=self.d_in, d_sae=self.d_sae, d_out=self.d_out,
                        apply_b_dec_to_input=self.apply_b_dec_to_input, skip=self.skip)
        out = dict(params)
        out["log_threshold"] = jnp.full((self.d_sae,), jnp.log(max(thr, 1e-30)), jnp.float32)
        return spec, out
