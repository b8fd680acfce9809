"""`SAE`: a spec bound to its parameters, the object users hold (a pytree: params are leaves)."""

from __future__ import annotations

import flax.struct
import jax

from jaxsae.dictionaries.base import Dictionary, Params


@flax.struct.dataclass
class SAE:
    spec: Dictionary = flax.struct.field(pytree_node=False)
    params: Params

    def encode(self, x: jax.Array) -> jax.Array:
        """Latents f [..., d_sae] for activations x [..., d_in]."""
        return self.spec.encode(self.params, x)

    def decode(self, f: jax.Array) -> jax.Array:
        """f W_dec + b_dec (no skip path; see `forward`)."""
        return self.spec.decode(self.params, f)

    def forward(self, x: jax.Array) -> jax.Array:
        return self.spec.forward(self.params, x)

    __call__ = forward

    @property
    def d_in(self) -> int:
        return self.spec.d_in

    @property
    def d_sae(self) -> int:
        return self.spec.d_sae
