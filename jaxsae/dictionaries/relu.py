"""ReLU + L1 SAE, in both published recipes.

* variant "2023" (Towards Monosemanticity): x - b_dec is encoded (tied pre-encoder bias), decoder
  rows held at unit norm, penalty lambda * ||f||_1.
* variant "april2024" (Anthropic April-2024 update, SAELens "standard"): no pre-encoder bias,
  unconstrained decoder, penalty lambda * sum_i f_i ||d_i||; decoder norms are folded at export.
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
    base_metrics,
    sse_mean,
)

VARIANTS = ("april2024", "2023")


@dataclasses.dataclass(frozen=True)
class ReLU(Dictionary):
    variant: str = "april2024"
    sparsity_coefficient: float = 5.0

    name: ClassVar[str] = "relu"
    saelens_architecture: ClassVar[str] = "standard"

    def __post_init__(self):
        if self.variant not in VARIANTS:
            raise ValueError(f"relu: unknown variant {self.variant!r}; valid: {', '.join(VARIANTS)}")
        super().__post_init__()

    @classmethod
    def create(cls, **kw) -> ReLU:
        """Fill the variant's structural choices (bias placement, decoder constraint, init norm)."""
        variant = kw.get("variant", "april2024")
        same_space = kw.get("d_out") in (None, kw.get("d_in"))
        if variant == "2023":
            kw.setdefault("apply_b_dec_to_input", same_space)
            kw.setdefault("unit_norm_decoder", True)
        else:
            kw.setdefault("apply_b_dec_to_input", False)
            kw.setdefault("unit_norm_decoder", False)
            kw.setdefault("decoder_init_norm", 0.1)
        return super().create(**kw)

    def encode(self, params, x_bd):
        return jax.nn.relu(self.pre_acts(params, x_bd))

    def loss(self, params, x_bd, y_bo, ctx: LossContext) -> LossOutput:
        f_bf = self.encode(params, x_bd)
        yhat_bo = self.decode(params, f_bf) + self.skip_out(params, x_bd)
        rec = sse_mean(y_bo - yhat_bo)
        if self.unit_norm_decoder:
            l1 = jnp.mean(jnp.sum(f_bf, axis=-1))
        else:
            l1 = jnp.mean(f_bf @ jnp.linalg.norm(params["W_dec"], axis=-1))
        coef = self.sparsity_coefficient * ctx.sparsity_scale
        l0 = jnp.mean(jnp.sum(f_bf > 0, axis=-1).astype(jnp.float32))
        metrics = {**base_metrics(y_bo, yhat_bo, l0), "loss_rec": rec, "loss_l1": l1}
        return LossOutput(rec + coef * l1, ops.batch_any(f_bf > 0), metrics, jnp.float32(jnp.nan))
