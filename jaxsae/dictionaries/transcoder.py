"""Transcoders (Dunefsky et al. 2024; Ge et al. 2024) and skip transcoders (Paulo et al. 2025).

A transcoder reads x (e.g. the MLP input) and predicts a different target y (the MLP output):
f = sigma(x W_enc + b_enc), y_hat = f W_dec + b_dec [+ x W_skip]. Any activation works; the
shared base already carries d_out and the skip path, so a transcoder is that architecture with
d_out set and no pre-encoder b_dec (the two spaces differ). The registry builds it from the
activation's class; this module only states the rules.
"""

from __future__ import annotations

ACTIVATIONS = ("topk", "relu", "jumprelu", "batchtopk")


def transcoder_fields(activation: str, kw: dict) -> dict:
    """The fields of a transcoder with this activation (validated)."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"transcoder: unknown activation {activation!r}; valid: {', '.join(ACTIVATIONS)}")
    if kw.get("apply_b_dec_to_input"):
        raise ValueError("transcoder: apply_b_dec_to_input must be False (b_dec lives in the output space)")
    return {**kw, "apply_b_dec_to_input": False}
