"""From a train state to the inference dictionary users get: BatchTopK-family models become
JumpReLU with their threshold, the input scaling is folded into the weights, and an unconstrained
decoder gets unit-norm rows (norms folded into the encoder). Outputs are unchanged by each step."""

from __future__ import annotations

import jax
import numpy as np

from jaxsae.dictionaries.base import Dictionary
from jaxsae.dictionaries.bound import SAE
from jaxsae.train.state import TrainState


def inference_sae(spec: Dictionary, state: TrainState) -> SAE:
    params = jax.tree.map(lambda a: np.asarray(a, np.float32), jax.device_get(state.params))
    dict_state = jax.device_get(state.dict_state)
    inf_spec, params = spec.to_inference(params, dict_state)
    c_in, c_out = np.asarray(state.scale_in, np.float32), np.asarray(state.scale_out, np.float32)
    if c_in.ndim == 0:  # one scalar per site (multi-layer dictionaries: one per layer)
        c_in, c_out = float(c_in), float(c_out)
    params = inf_spec.fold_input_scaling(params, c_in, c_out)
    if not spec.unit_norm_decoder:
        params = inf_spec.fold_decoder_norms(params)
    return SAE(inf_spec, jax.tree.map(np.asarray, params))
